"""Figures a test recomputes on its own, from what a stage published, to check what it reported:
written here from the papers, apart from the code under test."""
from __future__ import annotations


def first_error_f1(predicted: list[int | None], gold: list[int | None]) -> float:
    """ProcessBench (Zheng et al. 2024, section 3): the harmonic mean of the accuracy on erroneous
    traces (the first wrong step named exactly) and on correct ones (none named: -1). Traces without
    gold are left out; a trace the labeller gave no verdict on (None) counts as missed."""
    pairs = [(p, g) for p, g in zip(predicted, gold) if g is not None]
    wrong = [p == g for p, g in pairs if g >= 0]
    right = [p == -1 for p, g in pairs if g < 0]
    if not wrong or not right:
        return float("nan")  # one kind only: F1 is undefined (and the stage reports none)
    a, b = sum(wrong) / len(wrong), sum(right) / len(right)
    return 0.0 if a + b == 0 else 2 * a * b / (a + b)


def reported_f1(rows: list[dict], column: str) -> float:
    """first_error_f1 of one label source's column (`<column>_first_error`) against the rows' gold."""
    return first_error_f1([r[f"{column}_first_error"] for r in rows], [r["gold_first_error"] for r in rows])


def agreement(rows: list[dict], a: str, b: str) -> float:
    """How often two sources name the same first error, where both gave a verdict."""
    both = [(r[f"{a}_first_error"], r[f"{b}_first_error"]) for r in rows
            if r[f"{a}_first_error"] is not None and r[f"{b}_first_error"] is not None]
    return sum(x == y for x, y in both) / len(both)


def assert_reported(metrics: dict, key: str, value: float) -> None:
    """`metrics[key]` is `value` as recomputed (absent where that is undefined)."""
    import pytest

    if value != value:
        assert key not in metrics, (key, metrics.get(key))
    else:
        assert metrics[key] == pytest.approx(value), (key, metrics[key], value)


def prm_f1(rows: list[dict], calculator: bool = False, threshold: float = 0.5, key: str = "prm_scores") -> float:
    """The PRM's first-error F1 on evaluation samples: its first error is the first step scored below
    `threshold` (-1: none); with `calculator`, the earlier of that and the calculator's first wrong
    step (`calc_labels`: 0 marks one). `key`: the implicit PRM's step scores instead."""
    pred = []
    for r in rows:
        e = next((i for i, s in enumerate(r[key]) if s < threshold), -1)
        if calculator:
            c = next((i for i, lab in enumerate(r["calc_labels"]) if lab == 0), -1)
            e = min((x for x in (e, c) if x >= 0), default=-1)
        pred.append(e)
    return first_error_f1(pred, [r["gold_first_error"] for r in rows])
