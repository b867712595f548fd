"""Held-out evaluation of a round: the generator alone, and the generator ranked by the PRM.

- pass@1: greedy, per difficulty.
- maj@k: the most frequent answer among k samples (self-consistency), answers grouped by the
  family's own equivalence.
- best-of-k by PRM: the sample with the highest aggregate step score (min, prod, last), against
  majority vote and against a random pick (the mean accuracy of the samples).
- PRM first-error F1 against the gold step labels (ProcessBench definition), and the implicit PRM's
  (the DPO verifier's step scores) where it scored the samples.
"""
from __future__ import annotations

import operator
from typing import Callable

from components.labeling.filtering import AGGREGATES
from components.labeling.quality import first_error_f1
from components.labeling.step_labels import first_error_from_scores, first_error_of


def majority(samples: list[dict], same: Callable[[str, str], bool] = operator.eq) -> dict | None:
    """The first-seen sample of the largest group of equivalent answers (`same`: the family's answer
    equivalence, so `\\dfrac34` and `\\frac{3}{4}` are one vote); None when no sample has an answer."""
    groups: list[list[dict]] = []
    for s in samples:
        if s["answer"] is None:
            continue
        home = next((g for g in groups if same(g[0]["answer"], s["answer"])), None)
        if home is None:
            groups.append([s])
        else:
            home.append(s)
    return max(groups, key=len)[0] if groups else None  # max keeps the first of equal-size groups


def best_of_k(samples: list[dict], how: str) -> dict:
    return max(samples, key=lambda s: AGGREGATES[how](s["prm_scores"]) if s["prm_scores"] else -1.0)


def sampled_metrics(groups: list[list[dict]], with_prm: bool,
                    same: Callable[[str, str], bool] = operator.eq) -> dict[str, float]:
    """Metrics over problems, each a list of k sample dicts with answer, correct, prm_scores. A vote
    is right when the winning answer is: its sample's `correct` is the family's own check."""
    n = len(groups)
    if n == 0:
        return {}
    out = {
        "maj_at_k": sum(bool((m := majority(g, same)) and m["correct"]) for g in groups) / n,
        "random_at_k": sum(sum(s["correct"] for s in g) / len(g) for g in groups) / n,
        "pass_at_k": sum(any(s["correct"] for s in g) for g in groups) / n,
    }
    if with_prm:
        for how in ("min", "prod", "last"):
            out[f"bestofk_prm_{how}"] = sum(best_of_k(g, how)["correct"] for g in groups) / n
    return out


def prm_first_error_f1(samples: list[dict], threshold: float = 0.5, calculator: bool = False,
                       key: str = "prm_scores") -> dict[str, float]:
    """`calculator`: the PRM's first error or the calculator's (`calc_labels`), whichever comes first.
    `key`: which step scores, the PRM's or the implicit PRM's (`implicit_scores`)."""
    pred = [first_error_from_scores(x[key], threshold) for x in samples]
    if calculator:
        pred = [min((e for e in (p, first_error_of(x["calc_labels"])) if e >= 0), default=-1) for p, x in zip(pred, samples)]
    return first_error_f1(pred, [x["gold_first_error"] for x in samples])


def round_metrics(greedy: list[dict], samples: list[dict], with_prm: bool,
                  same: Callable[[str, str], bool] = operator.eq,
                  thresholds: dict[str, float] | None = None) -> dict[str, float]:
    """pass@1 per difficulty and overall from the greedy rows; maj@k, best-of-k (and PRM F1) from the
    sampled rows, grouped by problem, per difficulty and overall. `thresholds`: a verifier's calibrated
    step threshold by its scores' key ("prm_scores"): its F1 at it too (`prm_f1_calibrated`)."""
    levels = sorted({r["difficulty"] for r in greedy})
    by_problem: dict[str, list[dict]] = {}
    for s in samples:
        by_problem.setdefault(s["problem_id"], []).append(s)
    metrics: dict = {}
    for n in levels:
        at = [r for r in greedy if r["difficulty"] == n]
        metrics[f"pass1_n{n}"] = sum(r["correct"] for r in at) / len(at)
        groups = [g for g in by_problem.values() if g[0]["difficulty"] == n]
        metrics.update({f"{k}_n{n}": v for k, v in sampled_metrics(groups, with_prm, same).items()})
    metrics["pass1_all"] = sum(r["correct"] for r in greedy) / len(greedy)
    metrics.update({f"{k}_all": v for k, v in sampled_metrics(list(by_problem.values()), with_prm, same).items()})
    # The PRM alone, with the family's calculator on top where the samples carry its verdict, and the
    # DPO verifier read as an implicit PRM where it scored them.
    calc = bool(samples) and all("calc_labels" in s for s in samples)
    implicit = bool(samples) and all("implicit_scores" in s for s in samples)
    for name, with_calc, key in ([("prm", False, "prm_scores")] + ([("prm_calc", True, "prm_scores")] if calc else [])
                                 if with_prm else []) + ([("implicit", False, "implicit_scores")] if implicit else []):
        metrics.update({f"{name}_{k}": v for k, v in prm_first_error_f1(samples, calculator=with_calc, key=key).items()})
        if key in (thresholds or {}):
            metrics[f"{name}_f1_calibrated"] = prm_first_error_f1(samples, thresholds[key], with_calc, key)["f1"]
        for n in levels:  # per difficulty: is the PRM right where the generator is being pushed?
            at = [s for s in samples if s["difficulty"] == n]
            if at:
                metrics[f"{name}_f1_n{n}"] = prm_first_error_f1(at, calculator=with_calc, key=key)["f1"]
    # An undefined metric (NaN: F1 with one side empty) is left out, as MLflow leaves it out; NaN
    # would also make two identical results compare unequal.
    return {k: v for k, v in metrics.items() if v == v}
