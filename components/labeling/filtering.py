"""Aggregate step scores into a trace score, and keep the traces worth training on.

A trace is kept when its final answer is right and (in `step` mode) its aggregate step score clears
the threshold; `outcome` mode checks the answer alone (the STaR / V-STaR filter, and the ablation).
The step scores are the label source's, or those of the source `filter.rank_by` names; with
`filter.keep: m` the m best-scored right traces are kept instead of those over the threshold (outcome
mode: the first m), so verifiers compare at one budget.
"""
from __future__ import annotations

import math

from components.config_scoring import FilterConfig

AGGREGATES = {
    "min": lambda s: min(s),
    "prod": lambda s: math.prod(s),
    "last": lambda s: s[-1],
    "mean": lambda s: sum(s) / len(s),
}


def aggregate(scores: list[float | None], how: str = "min") -> float:
    """Over the labelled steps (None = a source said nothing about the step). A trace with no
    labelled step scores 0: what nobody checked is not kept by a step filter."""
    if how not in AGGREGATES:
        raise ValueError(f"filter.aggregate: unknown aggregate {how!r}; known: {sorted(AGGREGATES)}")
    known = [s for s in scores if s is not None]
    return AGGREGATES[how](known) if known else 0.0


def step_scores(row: dict, cfg: FilterConfig) -> list[float | None]:
    """The step scores the filter ranks by: `filter.rank_by`'s column of the scored rows, or the label source's."""
    return row[f"{cfg.rank_by.replace('+', '_')}_scores"] if cfg.rank_by else row["step_scores"]


def passes(row: dict, cfg: FilterConfig) -> bool:
    if not row["correct"]:
        return False
    if cfg.mode == "outcome":
        return True
    scores = step_scores(row, cfg)
    if all(s is None for s in scores):  # no step labelled (e.g. MC and judge disagreed on every one):
        return False  # what nobody checked is not kept, at threshold 0 and under a `keep` budget too
    return cfg.keep is not None or aggregate(scores, cfg.aggregate) >= cfg.threshold


def _keep(rows: list[dict], cfg: FilterConfig) -> list[dict]:
    """Passing rows, at most `max_per_problem` distinct completions per problem. In `step` mode the
    best-scored come first within each problem (ties: the order seen), so the cap keeps the traces
    the step scores like most, not whichever were sampled first; `outcome` mode never looks at them."""
    scored = [{**row, "trace_score": aggregate(step_scores(row, cfg), cfg.aggregate)} for row in rows if passes(row, cfg)]
    if cfg.mode == "step":
        scored.sort(key=lambda r: -r["trace_score"])  # stable
    kept: list[dict] = []
    seen: dict[str, set[str]] = {}
    for row in scored:
        done = seen.setdefault(row["problem_id"], set())
        if row["completion"] in done or len(done) >= cfg.max_per_problem:
            continue
        done.add(row["completion"])
        kept.append(row)
    return kept if cfg.keep is None else kept[: cfg.keep]


def _flawed(rows: list[dict]) -> int:
    """Kept traces with a step the gold check calls wrong (0 where the family has no gold)."""
    return sum(r.get("gold_first_error") is not None and r["gold_first_error"] >= 0 for r in rows)


def select(rows: list[dict], cfg: FilterConfig) -> tuple[list[dict], dict]:
    """Kept rows (at most `max_per_problem` distinct completions per problem) and counts.

    The counts put this filter next to what outcome-only filtering keeps under the same dedup and
    cap, and count kept traces holding a step the gold labels call wrong ("flawed but correct").
    """
    kept = _keep(rows, cfg)
    outcome = kept if cfg.mode == "outcome" else _keep(rows, cfg.model_copy(update={"mode": "outcome"}))
    stats = {
        "traces": len(rows),
        "correct": sum(bool(r["correct"]) for r in rows),
        "kept": len(kept),
        "kept_fraction": len(kept) / len(rows) if rows else 0.0,
        "kept_flawed": _flawed(kept),
        "kept_flawed_share": _flawed(kept) / len(kept) if kept else 0.0,
        "outcome_only_kept": len(outcome),
        "outcome_only_flawed": _flawed(outcome),
        "outcome_only_flawed_share": _flawed(outcome) / len(outcome) if outcome else 0.0,
        "problems_with_kept": len({r["problem_id"] for r in kept}),
    }
    if rows and "rationalized" in rows[0]:  # STaR's rationalization was on: what its traces add, how clean
        hinted = [r for r in kept if r["rationalized"]]
        stats.update(rationalized=sum(bool(r["rationalized"]) for r in rows), kept_rationalized=len(hinted),
                     kept_rationalized_share=len(hinted) / len(kept) if kept else 0.0,
                     kept_rationalized_flawed_share=_flawed(hinted) / len(hinted) if hinted else 0.0)
    return kept, stats
