"""Monte Carlo step scores on a real tiny model through vLLM, checked against the family's gold labels."""
import pytest

from components.labeling import montecarlo
from components.config_sections import MCConfig
from components.models.generation import Sampling, load_backend


@pytest.fixture(scope="module")
def engine(tiny_model_dir, smoke_cfg):
    return load_backend("vllm", str(tiny_model_dir), smoke_cfg.generation, smoke_cfg.model.max_positions)


def solved_problem(engine, family):
    """A 2-op problem without absorbing ops (%10, max, *0) that the model solves greedily."""
    probs = [p for p in family.problems("eval") if p.difficulty == 2
             and all(op in "+-" or (op == "*" and c > 0) for op, c in p.meta["ops"])]
    outs = engine.generate([p.prompt for p in probs], Sampling(n=1, temperature=0.0, max_tokens=48))
    return next(p for p, o in zip(probs, outs) if family.is_correct(p, o[0].text))


def test_scores_per_step_and_shared_prefixes(engine, smoke_family):
    p = solved_problem(engine, smoke_family)
    good = smoke_family.gold_solution(p)
    steps = smoke_family.split_steps(good)
    a, rest = steps[0].split("=")
    slip = smoke_family.steps_text([f"{a}={int(rest) + 1}"])  # wrong at step 0, then let the model go on
    items = [(p, good), (p, good), (p, slip + "Answer: 0\n")]
    results, stats = montecarlo.estimate(smoke_family, engine, items, MCConfig(rollouts=8), 48, seed=0)
    # Identical traces share their prefixes: 2 step prefixes for `good`, 1 for the slipped trace.
    assert stats["mc_prefixes"] == 3 and stats["mc_step_refs"] == 5 and stats["mc_rollouts"] == 24
    assert results[0].scores == results[1].scores
    assert all(0.0 <= s <= 1.0 for r in results for s in r.scores)
    # The answer line needs no rollouts: its score is the outcome.
    assert results[0].scores[-1] == 1.0 and results[2].scores[-1] == 0.0
    # From the right prefix the model (which solves it greedily) gets there; from a wrong value only a
    # second, compensating slip could.
    assert results[0].scores[0] > 0.25 >= results[2].scores[0]


def test_mc_labels_track_gold_on_sampled_traces(engine, smoke_family):
    from components.labeling.quality import first_error_f1

    probs = smoke_family.problems("train")[:20]
    outs = engine.generate([p.prompt for p in probs], Sampling(n=4, temperature=1.0, max_tokens=48, seed=3))
    items = [(p, s.text) for p, o in zip(probs, outs) for s in o]
    results, _ = montecarlo.estimate(smoke_family, engine, items, MCConfig(rollouts=8), 48, seed=1)
    gold = [smoke_family.first_error(p, c) for p, c in items]
    q = first_error_f1([r.first_error for r in results], gold)
    assert q["n_erroneous"] > 0 and q["n_correct"] > 0  # the sample has both kinds, so F1 means something
    assert q["f1"] > 0.5, q


# ----------------------------------------------------------------------------- binary search (OmegaPRM)

@pytest.fixture(scope="module")
def sampled_items(engine, smoke_family):
    """Candidates sampled from the tiny model: a mix of correct and wrong traces, several per problem."""
    probs = smoke_family.problems("train")[:20]
    outs = engine.generate([p.prompt for p in probs], Sampling(n=4, temperature=1.0, max_tokens=48, seed=3))
    return [(p, s.text) for p, o in zip(probs, outs) for s in o]


def test_binary_search_finds_the_per_step_first_error(engine, smoke_family, sampled_items):
    # Greedy rollouts: both labellers see the same deterministic estimate at every prefix.
    greedy = MCConfig(rollouts=1, temperature=0.0, reuse_completion=False)
    per_step, _ = montecarlo.estimate(smoke_family, engine, sampled_items, greedy, 48, seed=0)
    binary, _ = montecarlo.estimate_binary(smoke_family, engine, sampled_items, greedy, 48, seed=0)
    monotone = 0
    for ps, bs in zip(per_step, binary):
        assert bs.hard == [int(s > 0) for s in bs.scores] and len(bs.hard) == len(ps.hard)
        b = len(ps.hard) if bs.first_error < 0 else bs.first_error
        # Bisection always lands on a 1 -> 0 boundary of the per-step labels (or past a last 1) ...
        assert b == 0 or ps.hard[b - 1] == 1
        assert b == len(ps.hard) or ps.hard[b] == 0
        # ... which is the per-step first error whenever the labels are monotone (1..1 0..0).
        if ps.hard == sorted(ps.hard, reverse=True):
            monotone += 1
            assert bs.first_error == ps.first_error
    assert monotone >= 0.8 * len(sampled_items)
    assert any(r.first_error >= 0 for r in binary) and any(r.first_error < 0 for r in binary)


def test_binary_search_needs_log_steps_estimates_on_long_traces(engine, smoke_family):
    from components.data.families.arith import APPLY, make_problem

    # A 7-op chain without absorbing ops; trace j slips by one at step j and carries the wrong value on.
    ops = [["+", 3], ["-", 2], ["+", 4], ["-", 1], ["+", 2], ["-", 3], ["+", 1]]
    p = make_problem(10, ops)
    items = []
    for j in range(7):
        lines, v = [], 10
        for i, (sym, c) in enumerate(ops):
            r = APPLY[sym](v, c) + (i == j)
            lines.append(f"{v}{sym}{c}={r}")
            v = r
        items.append((p, smoke_family.steps_text(lines + [f"Answer: {v}"])))
    assert [smoke_family.first_error(p, c) for _, c in items] == list(range(7))
    cfg = MCConfig(rollouts=2, share_prefixes=False, reuse_completion=False)
    _, per_step = montecarlo.estimate(smoke_family, engine, items, cfg, 48, seed=0)
    results, binary = montecarlo.estimate_binary(smoke_family, engine, items, cfg, 48, seed=0)
    assert per_step["mc_estimates"] == 7 * len(items)  # one per step before the answer line
    # The wrong answer line is a known error: 8 possible first errors (steps 0-6, the answer) = 3 probes.
    assert binary["mc_estimates"] <= 3 * len(items)
    assert binary["mc_levels"] <= 3 and binary["mc_engine_calls"] == binary["mc_levels"]  # one call a level
    assert binary["mc_rollouts"] == 2 * binary["mc_estimates"] and binary["mc_traces"] == len(items)
    assert all(len(r.hard) == 8 and 0 <= r.first_error <= 7 for r in results)


def test_reusing_the_own_completion_saves_rollouts(engine, smoke_family, sampled_items):
    fresh, st_fresh = montecarlo.estimate_binary(smoke_family, engine, sampled_items,
                                                 MCConfig(rollouts=4, reuse_completion=False), 48, seed=0)
    reused, st_reused = montecarlo.estimate_binary(smoke_family, engine, sampled_items,
                                                   MCConfig(rollouts=4, reuse_completion=True), 48, seed=0)
    assert st_reused["mc_rollouts"] < st_fresh["mc_rollouts"]
    assert st_reused["mc_rollouts"] == 3 * st_reused["mc_estimates"]  # the own completion is the 4th
    for (p, c), r in zip(sampled_items, reused):
        if smoke_family.is_correct(p, c):  # its own completion is a success from every prefix
            assert r.first_error == -1 and all(r.hard)
        elif smoke_family.extract_answer(c) is not None:  # a wrong answer line is always a known error
            assert 0 <= r.first_error < len(r.hard) and r.hard[-1] == 0
    # Correct traces alone need no rollouts at all.
    correct = [(p, c) for p, c in sampled_items if smoke_family.is_correct(p, c)]
    assert correct
    _, st = montecarlo.estimate_binary(smoke_family, engine, correct, MCConfig(rollouts=4), 48, seed=0)
    assert st["mc_rollouts"] == 0 and st["mc_engine_calls"] == 0


def test_shared_prefixes_are_estimated_once(engine, smoke_family, sampled_items):
    twice = sampled_items + sampled_items  # every prefix is held by at least two traces
    greedy = dict(rollouts=1, temperature=0.0, reuse_completion=False)
    shared, st_shared = montecarlo.estimate_binary(smoke_family, engine, twice,
                                                   MCConfig(share_prefixes=True, **greedy), 48, seed=0)
    alone, st_alone = montecarlo.estimate_binary(smoke_family, engine, twice,
                                                 MCConfig(share_prefixes=False, **greedy), 48, seed=0)
    assert st_alone["mc_estimates"] >= 2 * st_shared["mc_estimates"] > 0
    assert [r.first_error for r in shared] == [r.first_error for r in alone]  # same labels, fewer calls


def test_absorbed_slip_is_invisible_to_hard_mc_labels(engine, smoke_family):
    from components.data.families.arith import make_problem

    # 57 +5 %10: a wrong sum that %10 maps to the right digit still ends at the gold answer.
    p = make_problem(57, [["+", 5], ["%", 10]])
    slipped = "57+5=72\n72%10=2\nAnswer: 2\n"
    assert smoke_family.is_correct(p, slipped) and smoke_family.first_error(p, slipped) == 0
    results, st = montecarlo.estimate_binary(smoke_family, engine, [(p, slipped)], MCConfig(rollouts=4), 48, seed=0)
    assert results[0].first_error == -1 and st["mc_rollouts"] == 0  # documented limitation, like per-step MC
