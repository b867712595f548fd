"""Monte Carlo step scores on a real tiny model through vLLM, checked against the family's gold labels."""
import pytest

from components import montecarlo
from components.config import MCConfig
from components.families.arith import make_problem
from components.generation import load_backend


@pytest.fixture(scope="module")
def engine(tiny_model_dir, smoke_cfg):
    return load_backend("vllm", str(tiny_model_dir), smoke_cfg.generation, smoke_cfg.model.max_positions)


def test_scores_per_step_and_shared_prefixes(engine, smoke_family):
    p = make_problem(12, [["+", 3], ["*", 2]])      # 12+3=15, 15*2=30
    good = smoke_family.gold_solution(p)
    slip = "12+3=16\n16*2=32\nAnswer: 32\n"          # wrong at step 0
    items = [(p, good), (p, good), (p, slip)]
    results, stats = montecarlo.estimate(smoke_family, engine, items, MCConfig(rollouts=8), 48, seed=0)
    # Identical traces share their prefixes: 2 distinct step prefixes for `good`, 2 for `slip`.
    assert stats["mc_prefixes"] == 4 and stats["mc_step_refs"] == 6 and stats["mc_rollouts"] == 32
    assert results[0].scores == results[1].scores
    assert len(results[2].scores) == 3 and all(0.0 <= s <= 1.0 for s in results[2].scores)
    # The answer line needs no rollouts: its score is the outcome.
    assert results[0].scores[-1] == 1.0 and results[2].scores[-1] == 0.0
    # From a prefix holding a wrong value only a second, compensating slip could reach the gold answer.
    assert results[2].scores[0] <= 0.25 < results[0].scores[0]


def test_mc_labels_track_gold_on_sampled_traces(engine, smoke_family):
    from components.generation import Sampling
    from components.metrics import first_error_f1

    probs = smoke_family.problems("train")[:20]
    outs = engine.generate([p.prompt for p in probs], Sampling(n=4, temperature=1.0, max_tokens=48, seed=3))
    items = [(p, s.text) for p, o in zip(probs, outs) for s in o]
    results, _ = montecarlo.estimate(smoke_family, engine, items, MCConfig(rollouts=8), 48, seed=1)
    gold = [smoke_family.first_error(p, c) for p, c in items]
    q = first_error_f1([r.first_error for r in results], gold)
    assert q["n_erroneous"] > 0 and q["n_correct"] > 0  # the sample has both kinds, so F1 means something
    assert q["f1"] > 0.6, q
