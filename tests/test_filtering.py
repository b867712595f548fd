import math

import pytest

from components.config_sections import FilterConfig
from components.labeling.filtering import aggregate, select
from components.labeling.quality import first_error_f1


def row(pid, completion, correct, scores, gold=-1):
    return {"problem_id": pid, "completion": completion, "correct": correct, "step_scores": scores,
            "gold_first_error": gold}


def test_aggregates():
    s = [0.9, 0.5, 1.0]
    assert aggregate(s, "min") == 0.5 and aggregate(s, "last") == 1.0
    assert math.isclose(aggregate(s, "prod"), 0.45) and math.isclose(aggregate(s, "mean"), 0.8)
    with pytest.raises(ValueError, match="filter.aggregate"):
        aggregate(s, "max")


def test_step_filter_drops_flawed_correct_trace_that_outcome_filter_keeps():
    rows = [row("a", "good", True, [1.0, 0.9, 1.0]),
            row("a", "lucky", True, [1.0, 0.0, 1.0], gold=1),   # right answer through a wrong step
            row("b", "wrong", False, [1.0, 1.0, 0.0], gold=2)]
    kept, stats = select(rows, FilterConfig(mode="step", threshold=0.5))
    assert [r["completion"] for r in kept] == ["good"]
    assert stats["kept_flawed"] == 0 and stats["outcome_only_kept"] == 2
    assert stats["outcome_only_flawed_share"] == 0.5
    kept, stats = select(rows, FilterConfig(mode="outcome"))
    assert {r["completion"] for r in kept} == {"good", "lucky"} and stats["kept_flawed"] == 1


def test_duplicates_and_per_problem_cap():
    rows = [row("a", c, True, [1.0]) for c in ["x", "x", "y", "z"]]
    kept, _ = select(rows, FilterConfig(max_per_problem=2))
    assert [r["completion"] for r in kept] == ["x", "y"]


def test_first_error_f1_processbench():
    gold = [-1, -1, 2, 0]
    assert first_error_f1(gold, gold)["f1"] == 1.0
    all_ok = first_error_f1([-1, -1, -1, -1], gold)
    assert all_ok["acc_correct"] == 1.0 and all_ok["f1"] == 0.0  # calling everything correct scores 0
    half = first_error_f1([-1, 1, 2, 1], gold)
    assert half["acc_erroneous"] == 0.5 and half["acc_correct"] == 0.5 and half["f1"] == 0.5
