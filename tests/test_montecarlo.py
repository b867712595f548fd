"""Monte Carlo step scores on a real tiny model through vLLM, checked against the family's gold labels."""
import pytest

from components import montecarlo
from components.config import MCConfig
from components.generation import Sampling, load_backend


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
    from components.metrics import first_error_f1

    probs = smoke_family.problems("train")[:20]
    outs = engine.generate([p.prompt for p in probs], Sampling(n=4, temperature=1.0, max_tokens=48, seed=3))
    items = [(p, s.text) for p, o in zip(probs, outs) for s in o]
    results, _ = montecarlo.estimate(smoke_family, engine, items, MCConfig(rollouts=8), 48, seed=1)
    gold = [smoke_family.first_error(p, c) for p, c in items]
    q = first_error_f1([r.first_error for r in results], gold)
    assert q["n_erroneous"] > 0 and q["n_correct"] > 0  # the sample has both kinds, so F1 means something
    assert q["f1"] > 0.5, q
