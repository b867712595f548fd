import math

import pytest

from components.config_scoring import FilterConfig
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


def test_per_problem_cap_keeps_the_best_scored_traces():
    """Issue #12: the cap kept the first traces seen, not the ones the step scores rank highest."""
    rows = [row("a", "first", True, [0.6]), row("a", "second", True, [0.7]), row("a", "best", True, [0.99]),
            row("a", "runner-up", True, [0.9]), row("b", "only", True, [0.8])]
    kept, _ = select(rows, FilterConfig(max_per_problem=2, threshold=0.5))
    assert {r["completion"] for r in kept if r["problem_id"] == "a"} == {"best", "runner-up"}
    # outcome-only filtering never looks at step scores: the first seen stay
    kept, _ = select(rows, FilterConfig(mode="outcome", max_per_problem=2))
    assert {r["completion"] for r in kept if r["problem_id"] == "a"} == {"first", "second"}


def test_consensus_rejects_a_trace_whose_first_error_the_sources_dispute():
    """Issue #12: where MC and the judge disagreed, the disputed steps were unlabelled and the min over
    the rest passed the trace; Zhang et al. (2025) keep only what both agree on."""
    from components.labeling.builtin_sources import agree
    from components.labeling.step_labels import from_first_error

    mc, judge = from_first_error(4, 2), from_first_error(4, -1)  # MC flags step 2, the judge sees no error
    disputed = agree(mc, judge)
    r = row("a", "t", True, disputed.scores, gold=2)
    assert disputed.first_error is None and all(y is None for y in disputed.labels)  # no PRM trains on it
    assert select([r], FilterConfig(mode="step"))[0] == []
    # ...nor at threshold 0, nor under a budget of the `keep` best (before, both let it through)
    assert select([r], FilterConfig(mode="step", threshold=0.0))[0] == []
    assert select([r], FilterConfig(mode="step", keep=5))[0] == []
    both = agree(from_first_error(4, 2), from_first_error(4, 2))
    assert both.first_error == 2 and both.labels == [1, 1, 0, 0]
    assert agree(from_first_error(3, -1), from_first_error(3, -1)).labels == [1, 1, 1]
    assert agree(from_first_error(3, -1), from_first_error(3, None)).first_error is None  # judge had no verdict


def test_first_error_f1_processbench():
    gold = [-1, -1, 2, 0]
    assert first_error_f1(gold, gold)["f1"] == 1.0
    all_ok = first_error_f1([-1, -1, -1, -1], gold)
    assert all_ok["acc_correct"] == 1.0 and all_ok["f1"] == 0.0  # calling everything correct scores 0
    half = first_error_f1([-1, 1, 2, 1], gold)
    assert half["acc_erroneous"] == 0.5 and half["acc_correct"] == 0.5 and half["f1"] == 0.5


def test_first_error_f1_is_undefined_with_one_side():
    """Issue #12: with every trace correct, an always-"no error" labeller scored F1 1.0."""
    q = first_error_f1([-1, -1, -1], [-1, -1, -1])
    assert math.isnan(q["f1"]) and q["acc_correct"] == 1.0 and math.isnan(q["acc_erroneous"])
    assert math.isnan(first_error_f1([0, 1], [0, 1])["f1"])


def test_any_source_can_filter_and_a_budget_keeps_the_best_m():
    """`filter.rank_by` ranks by a source scored beside the label source (its `<source>_scores` column);
    `filter.keep: m` keeps the m best-scored right traces, threshold or not: one budget for every verifier."""
    rows = [{**row("a", "p", True, [0.9, 0.9]), "prm_scores": [0.2, 0.3]},
            {**row("a", "q", True, [0.6, 0.6]), "prm_scores": [0.9, 0.8]},
            {**row("b", "r", True, [0.4, 0.4]), "prm_scores": [0.7, 0.6]},
            {**row("b", "s", False, [1.0, 1.0]), "prm_scores": [1.0, 1.0]}]
    by_labels, _ = select(rows, FilterConfig(threshold=0.5))
    by_prm, _ = select(rows, FilterConfig(threshold=0.5, verifier="prm"))
    assert [r["completion"] for r in by_labels] == ["p", "q"] and [r["completion"] for r in by_prm] == ["q", "r"]
    two, stats = select(rows, FilterConfig(threshold=0.99, keep=2, verifier="prm"))
    assert [r["completion"] for r in two] == ["q", "r"] and stats["outcome_only_kept"] == 2  # the same budget


def test_the_filter_verifier_must_be_scored(tmp_path):
    from components.checks import load_config
    from components.config import ConfigError

    with pytest.raises(ConfigError, match="filter.rank_by 'prm'.*scoring.also"):
        load_config("configs/smoke.yaml", ["filter.rank_by=prm"])
    cfg = load_config("configs/smoke.yaml", ["filter.rank_by=confidence", "scoring.also=[confidence]"])
    assert cfg.filter.rank_by == "confidence"
    # Its name until issue #34 still reads, and names the same loop (the identity keeps the old name).
    old = load_config("configs/smoke.yaml", ["filter.verifier=confidence", "scoring.also=[confidence]"])
    assert old == cfg and old.loop_id() == cfg.loop_id()
