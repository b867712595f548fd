"""Monte Carlo step scores on a real tiny model through vLLM, checked against the family's gold labels.

The tiny model is trained from scratch in the session, so what it solves and what it samples differ
from one CPU to another. Assertions on MC values therefore use greedy rollouts on `planted` traces,
whose continuations the model itself produced greedily (so every rollout reproduces them exactly),
or hold for any model (counts, bisection invariants)."""
import pytest

from components.labeling import montecarlo
from components.config_scoring import MCConfig
from components.models.generation import Sampling, load_backend

GREEDY = Sampling(n=1, temperature=0.0, max_tokens=48)
# One greedy rollout per prefix (vLLM refuses n > 1 at temperature 0): a deterministic estimate.
GREEDY_MC = MCConfig(rollouts=1, temperature=0.0, reuse_completion=False)


@pytest.fixture(scope="module")
def engine(tiny_model_dir, smoke_cfg):
    return load_backend("vllm", str(tiny_model_dir), smoke_cfg.generation, smoke_cfg.model.max_positions)


def greedy_texts(engine, prompts: list[str]) -> list[str]:
    return [o[0].text for o in engine.generate(prompts, GREEDY)]


def off_by_one(line: str) -> str:
    """`a<op>c=r` -> `a<op>c=r+1`: a wrong result (every op's result is a single number)."""
    lhs, r = line.rsplit("=", 1)
    return f"{lhs}={int(r) + 1}"


@pytest.fixture(scope="module")
def planted(engine, smoke_family):
    """(solved, items): traces whose greedy MC labels are known exactly, whatever the model learned.

    solved: the 2-op eval problems whose greedy completion is the gold solution, character for character.
    items, per solved problem: the gold trace (gold first error -1); the gold steps with a wrong answer
    line (first error 2); and per step j < 2 the gold steps before j, step j off by one, then the
    model's own greedy continuation (first error j), kept only where that continuation ends at a wrong
    answer (a slip that a later op absorbs or a second slip undoes reaches the gold answer: MC's
    documented blind spot, see test_absorbed_slip_is_invisible_to_hard_mc_labels) and is canonical
    text (so the prefixes MC builds from the steps are exactly what the model read and wrote).

    Why exact: greedy decoding is deterministic, so a greedy rollout from any prefix of a text the model
    produced greedily reproduces the rest of that text. From step k of an item it reaches the gold answer
    iff k is before the first error: before it, the prefix is a prefix of the gold trace (the model's own);
    from it on, the prefix is a prefix of the slipped trace (continued by the model itself), which ends
    wrong. So greedy MC's hard labels and soft scores are the gold step labels, on every item.
    """
    fam = smoke_family
    probs = [p for p in fam.problems("eval") if p.difficulty == 2]
    solved = [p for p, t in zip(probs, greedy_texts(engine, [p.prompt for p in probs])) if t == fam.gold_solution(p)]
    # Measured: the smoke bootstrap solves 14 of these 20 greedily; one is enough for the tests below.
    assert solved, "the bootstrap model solves none of the 2-op eval problems greedily: is it trained?"
    items, heads = [], []
    for p in solved:
        gold = fam.split_steps(fam.gold_solution(p))
        items.append((p, fam.steps_text(gold)))
        items.append((p, fam.steps_text(gold[:-1] + [f"Answer: {int(p.answer) + 1}"])))
        heads += [(p, fam.steps_text(gold[:j] + [off_by_one(gold[j])])) for j in range(len(gold) - 1)]
    for (p, head), cont in zip(heads, greedy_texts(engine, [p.prompt + h for p, h in heads])):
        trace = head + cont
        if fam.steps_text(fam.split_steps(trace)) == trace and not fam.is_correct(p, trace):
            items.append((p, trace))
    return solved, items


def test_scores_per_step_and_shared_prefixes(engine, smoke_family, planted):
    fam = smoke_family
    _, items = planted
    # A solved problem whose step-0 slip the model carries to a wrong answer (greedily, so MC's
    # rollout from the slipped step does the same).
    p, carried = next(((p, c) for p, c in items if fam.first_error(p, c) == 0), (None, None))
    assert p, "the model undoes every first-step slip of the solved problems"
    good = fam.gold_solution(p)  # the model's own greedy completion
    slip = fam.steps_text([fam.split_steps(carried)[0], f"Answer: {int(p.answer) + 1}"])
    trio = [(p, good), (p, good), (p, slip)]
    results, stats = montecarlo.estimate(fam, engine, trio, GREEDY_MC, 48, seed=0)
    # Identical traces share their prefixes: 2 step prefixes for `good`, 1 for the slipped trace.
    assert stats["mc_prefixes"] == 3 and stats["mc_step_refs"] == 5 and stats["mc_rollouts"] == 3
    assert results[0].scores == results[1].scores
    # The answer line needs no rollouts: its score is the outcome.
    assert results[0].scores[-1] == 1.0 and results[2].scores[-1] == 0.0
    # From a prefix of its own greedy trace the model's rollout reproduces it and gets there; from the
    # slipped value its rollout is the carried-on continuation of `planted`, which misses.
    assert results[0].scores == [1.0, 1.0, 1.0] and results[2].scores == [0.0, 0.0]
    # Sampled rollouts (the product's setting): the same sharing, N rollouts per prefix, scores are hit
    # fractions; what they come to depends on the session's model, so only their form is asserted.
    sampled, stats = montecarlo.estimate(fam, engine, trio, MCConfig(rollouts=8), 48, seed=0)
    assert stats["mc_prefixes"] == 3 and stats["mc_step_refs"] == 5 and stats["mc_rollouts"] == 24
    assert sampled[0].scores == sampled[1].scores and all((8 * s).is_integer() for r in sampled for s in r.scores)
    assert sampled[0].scores[-1] == 1.0 and sampled[2].scores[-1] == 0.0


def test_mc_labels_match_gold_on_planted_traces(engine, smoke_family, planted):
    """Greedy MC labels every step of every planted trace as gold does (why: see `planted`). MC's F1 on
    traces sampled from the session's model depends on how well that model solves, so it is measured
    (the score stage reports it), not asserted here."""
    from components.labeling.quality import first_error_f1

    fam = smoke_family
    _, items = planted
    results, _ = montecarlo.estimate(fam, engine, items, GREEDY_MC, 48, seed=1)
    gold = [fam.first_error(p, c) for p, c in items]
    assert set(gold) == {-1, 0, 1, 2}  # no error, each step, the answer line
    for (p, c), r in zip(items, results):
        assert r.hard == fam.step_labels(p, c) and r.scores == [float(h) for h in r.hard], (p.prompt, c, r)
    q = first_error_f1([r.first_error for r in results], gold)
    assert q["n_erroneous"] > 0 and q["n_correct"] > 0 and q["f1"] == 1.0, q


# ----------------------------------------------------------------------------- binary search (OmegaPRM)

@pytest.fixture(scope="module")
def sampled_items(engine, smoke_family):
    """Candidates sampled from the tiny model, several per problem: how many are correct depends on the
    model, so tests that need both kinds add the `planted` items."""
    probs = smoke_family.problems("train")[:20]
    outs = engine.generate([p.prompt for p in probs], Sampling(n=4, temperature=1.0, max_tokens=48, seed=3))
    return [(p, s.text) for p, o in zip(probs, outs) for s in o]


def test_binary_search_finds_the_per_step_first_error(engine, smoke_family, sampled_items, planted):
    # Greedy rollouts: both labellers see the same deterministic estimate at every prefix.
    items = sampled_items + planted[1]
    per_step, _ = montecarlo.estimate(smoke_family, engine, items, GREEDY_MC, 48, seed=0)
    binary, _ = montecarlo.estimate_binary(smoke_family, engine, items, GREEDY_MC, 48, seed=0)
    for ps, bs in zip(per_step, binary):
        assert bs.hard == [int(s > 0) for s in bs.scores] and len(bs.hard) == len(ps.hard)
        b = len(ps.hard) if bs.first_error < 0 else bs.first_error
        # Bisection always lands on a 1 -> 0 boundary of the per-step labels (or past a last 1) ...
        assert b == 0 or ps.hard[b - 1] == 1
        assert b == len(ps.hard) or ps.hard[b] == 0
        # ... which is the per-step first error whenever the labels are monotone (1..1 0..0).
        if ps.hard == sorted(ps.hard, reverse=True):
            assert bs.first_error == ps.first_error
    # The planted traces' per-step labels are their gold labels (see `planted`): monotone, with every
    # first error (none, each step, the answer line), so bisection must find exactly the gold one.
    for (p, c), bs in zip(planted[1], binary[len(sampled_items):]):
        assert bs.first_error == smoke_family.first_error(p, c), (p.prompt, c, bs)
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


def test_reusing_the_own_completion_saves_rollouts(engine, smoke_family, sampled_items, planted):
    fam = smoke_family
    items = sampled_items + planted[1]  # the planted ones: correct traces whatever the model samples
    reused, st_reused = montecarlo.estimate_binary(fam, engine, items, MCConfig(rollouts=4, reuse_completion=True),
                                                   48, seed=0)
    assert st_reused["mc_rollouts"] == 3 * st_reused["mc_estimates"]  # the own completion is the 4th
    # Its scores are its labels: a soft-target PRM gets no fraction at a probed step beside 0/1 elsewhere.
    assert all(r.scores == [float(h) for h in r.hard] for r in reused)
    for (p, c), r in zip(items, reused):
        if fam.is_correct(p, c):  # its own completion is a success from every prefix
            assert r.first_error == -1 and all(r.hard)
        elif fam.extract_answer(c) is not None:  # a wrong answer line is always a known error
            assert 0 <= r.first_error < len(r.hard) and r.hard[-1] == 0
    correct = [(p, c) for p, c in items if fam.is_correct(p, c)]
    assert len(correct) >= len(planted[0])

    # The saving, exactly: with one greedy rollout per estimate and no prefix sharing, a wrong trace gets
    # the same labels with or without its own completion (a free failure, plus the same greedy rollout),
    # so the same bisection and estimates; a correct one needs none with it. So reusing draws exactly the
    # fresh run's rollouts less those of the correct traces, of which the planted ones need at least one.
    greedy = dict(temperature=0.0, share_prefixes=False)
    fresh_cfg = MCConfig(rollouts=1, reuse_completion=False, **greedy)
    _, st_fresh = montecarlo.estimate_binary(fam, engine, items, fresh_cfg, 48, seed=0)
    _, st_fresh_correct = montecarlo.estimate_binary(fam, engine, correct, fresh_cfg, 48, seed=0)
    _, st_reuse = montecarlo.estimate_binary(fam, engine, items, MCConfig(rollouts=2, reuse_completion=True, **greedy),
                                             48, seed=0)
    assert st_fresh_correct["mc_rollouts"] > 0
    assert st_reuse["mc_rollouts"] == st_reuse["mc_estimates"]  # the own completion is the 2nd
    assert st_reuse["mc_rollouts"] == st_fresh["mc_rollouts"] - st_fresh_correct["mc_rollouts"]

    # Correct traces alone need no rollouts at all.
    _, st = montecarlo.estimate_binary(fam, engine, correct, MCConfig(rollouts=4), 48, seed=0)
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
