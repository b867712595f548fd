"""Held-out evaluation of a round: the generator alone, and the generator ranked by the PRM.

- pass@1: greedy, per difficulty.
- maj@k: the most frequent answer among k samples (self-consistency).
- best-of-k by PRM: the sample with the highest aggregate step score (min, prod, last), against
  majority vote and against a random pick (the mean accuracy of the samples).
- PRM first-error F1 against the gold step labels (ProcessBench definition).
"""
from __future__ import annotations

from collections import Counter

from components.filtering import AGGREGATES
from components.metrics import first_error_f1


def majority(answers: list[str | None]) -> str | None:
    """Most frequent non-empty answer; ties go to the one seen first (deterministic)."""
    counts = Counter(a for a in answers if a is not None)
    if not counts:
        return None
    best = max(counts.values())
    return next(a for a in answers if a is not None and counts[a] == best)


def best_of_k(samples: list[dict], how: str) -> dict:
    return max(samples, key=lambda s: AGGREGATES[how](s["prm_scores"]) if s["prm_scores"] else -1.0)


def sampled_metrics(groups: list[list[dict]], with_prm: bool) -> dict[str, float]:
    """Metrics over problems, each a list of k sample dicts with answer, correct, gold, prm_scores."""
    n = len(groups)
    if n == 0:
        return {}
    out = {
        "maj_at_k": sum(majority([s["answer"] for s in g]) == g[0]["gold"] for g in groups) / n,
        "random_at_k": sum(sum(s["correct"] for s in g) / len(g) for g in groups) / n,
        "pass_at_k": sum(any(s["correct"] for s in g) for g in groups) / n,
    }
    if with_prm:
        for how in ("min", "prod", "last"):
            out[f"bestofk_prm_{how}"] = sum(best_of_k(g, how)["correct"] for g in groups) / n
    return out


def prm_first_error_f1(samples: list[dict], threshold: float = 0.5) -> dict[str, float]:
    pred = [next((i for i, s in enumerate(x["prm_scores"]) if s < threshold), -1) for x in samples]
    return first_error_f1(pred, [x["gold_first_error"] for x in samples])


def next_difficulty(pass1: dict[int, float], promote_at: float, lo: int, hi: int) -> int:
    """Curriculum (Lee et al. 2025): one level past the longest chain already solved at `promote_at`."""
    solved = [n for n, acc in sorted(pass1.items()) if acc >= promote_at]
    return max(lo, min(hi, (max(solved) if solved else lo - 1) + 1))
