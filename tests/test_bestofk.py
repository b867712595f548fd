"""Best-of-k from one candidate pool (components/evaluation/bestofk.py): the closed forms equal brute
force over every subset, a selector that knows the right answer reaches pass@k, and the intervals
cover what they should."""
import itertools
import math
import random

import numpy as np
import pytest

from components.evaluation import bestofk as b


def brute(pool: list[dict], k: int, pick) -> float:
    """Mean over every k-subset of the credit `pick(subset)` gives (a tie shares its credit)."""
    subsets = list(itertools.combinations(pool, k))
    return sum(pick(list(s)) for s in subsets) / len(subsets)


def pick_ranked(subset):
    top = max(s["score"] for s in subset)
    tied = [s for s in subset if s["score"] == top]
    return sum(s["correct"] for s in tied) / len(tied)


def pick_voted(subset):
    totals: dict = {}
    for s in subset:
        if s["answer"] is not None:
            totals[s["answer"]] = totals.get(s["answer"], 0.0) + s["weight"]
    if not totals:
        return 0.0
    top = max(totals.values())
    won = [a for a, t in totals.items() if t == top]
    return sum(a == "right" for a in won) / len(won)


def random_pool(rng: random.Random, n: int) -> list[dict]:
    answers = ["right", "w1", "w2", None]
    pool = []
    for _ in range(n):
        a = rng.choice(answers)
        pool.append({"answer": a, "correct": a == "right", "score": rng.choice([0.1, 0.5, 0.5, 0.9, rng.random()]),
                     "weight": rng.choice([1.0, 0.5, 2.0])})
    return pool


@pytest.mark.parametrize("seed", range(40))
def test_closed_forms_equal_brute_force(seed):
    rng = random.Random(seed)
    pool = random_pool(rng, rng.randint(1, 7))
    n = len(pool)
    correct = [s["correct"] for s in pool]
    groups = b.answer_groups([s["answer"] for s in pool])
    for k in range(1, n + 1):
        assert b.ranked([s["score"] for s in pool], correct, k) == pytest.approx(brute(pool, k, pick_ranked))
        got, exact = b.voted(groups, [s["weight"] for s in pool], correct, k)
        assert exact and got == pytest.approx(brute(pool, k, pick_voted))
        assert b.pass_at_k(n, sum(correct), k) == pytest.approx(brute(pool, k, lambda s: float(any(x["correct"] for x in s))))


def test_sampled_subsets_when_there_are_too_many():
    rng = random.Random(7)
    pool = random_pool(rng, 12)
    groups, correct = b.answer_groups([s["answer"] for s in pool]), [s["correct"] for s in pool]
    exact, _ = b.voted(groups, [s["weight"] for s in pool], correct, 6)
    approx, is_exact = b.voted(groups, [s["weight"] for s in pool], correct, 6, np.random.default_rng(1), max_subsets=500)
    assert not is_exact and approx == pytest.approx(exact, abs=0.06)


def test_a_verifier_that_knows_the_answer_reaches_pass_at_k():
    rng = random.Random(3)
    pools = [[{"answer": a, "correct": a == "right", "scores": {"oracle": float(a == "right"), "noise": rng.random()}}
              for a in rng.choices(["right", "w1", "w2", None], k=16)] for _ in range(30)]
    ks = b.ks_for(16)
    assert ks == [1, 2, 4, 8, 16] and b.ks_for(6) == [1, 2, 4, 6]
    values, exact = b.per_problem(pools, b.selectors(["oracle", "noise"]), ks)
    assert exact
    for k in ks:
        assert values[("oracle", k)] == pytest.approx(values[("pass_at_k", k)])
        assert values[("noise", 1)] == pytest.approx(values[("random", 1)])  # k = 1: any selector is a random pick
    assert values[("oracle", 16)].mean() > values[("vote", 16)].mean() > values[("random", 16)].mean() - 0.2


def test_bootstrap_intervals_and_paired_differences():
    rng = np.random.default_rng(0)
    a = rng.random(200) < 0.6
    ci = b.bootstrap({"a": a.astype(float)}, seed=1)["a"]
    assert ci[1] < 0.6 < ci[2] and ci[1] < ci[0] < ci[2] and ci[2] - ci[1] < 0.2
    # Two selectors right on mostly the same problems: their paired gap is tight around its true value.
    better = a | (rng.random(200) < 0.1)
    mean, lo, hi = b.paired_difference(better.astype(float), a.astype(float))
    assert 0 < lo <= mean <= hi and mean == pytest.approx((better.astype(float) - a).mean())
    same = b.paired_difference(a.astype(float), a.astype(float))
    assert same == (0.0, 0.0, 0.0)


def test_a_sample_costs_its_generation_plus_its_verifier():
    table = {"flops": {"generate": 10.0, "prm_min": 3.0, "orm": 2.0}}
    assert b.sample_flops(table, "vote") == 10.0 and b.sample_flops(table, "prm_min") == 13.0
    assert b.sample_flops(table, "weighted_vote/orm") == 12.0 and b.sample_flops({}, "orm") is None


def test_curve_metrics_are_valid_mlflow_names_with_intervals():
    import re

    rng = random.Random(5)
    pools = [[{"answer": a, "correct": a == "right", "scores": {"prm_min": rng.random(), "prm_prod": rng.random(), "orm": rng.random()}}
              for a in rng.choices(["right", "w1", None], k=4)] for _ in range(12)]
    metrics, table = b.curve_metrics(pools, ["prm_min", "orm"])
    assert all(re.fullmatch(r"[\w\-. :/]+", k) for k in metrics), [k for k in metrics if not re.fullmatch(r"[\w\-. :/]+", k)]
    assert table["ks"] == [1, 2, 4] and metrics["bok_pool"] == 4 and metrics["bok_problems"] == 12
    for name in ("vote", "prm_min", "orm", "weighted_vote/orm", "pass_at_k", "random"):
        assert metrics[f"bok/{name}/k4/lo"] <= metrics[f"bok/{name}/k4"] <= metrics[f"bok/{name}/k4/hi"]
    assert {"prm_min-vote", "orm-vote", "prm_min-orm"} == set(table["differences"])
    metrics, table = b.curve_metrics(pools, ["prm_min", "prm_prod", "orm"])  # not every pair: each vs vote, PRM vs ORM
    assert {"prm_min-vote", "prm_prod-vote", "orm-vote", "prm_min-orm"} == set(table["differences"])


def test_accuracy_at_equal_compute_interpolates_in_log_k():
    table = {"ks": [1, 2, 4], "selectors": {"vote": {"1": [0.5, 0, 1], "2": [0.6, 0, 1], "4": [0.8, 0, 1]}}}
    assert b.at_k(table, "vote", 2) == pytest.approx(0.6) and b.at_k(table, "vote", 2 ** 1.5) == pytest.approx(0.7)
    assert b.at_k(table, "vote", 0.3) == 0.5 and b.at_k(table, "vote", 4) == 0.8
    # Past the pool nothing was measured: best-of-4 is not the accuracy at a budget of 64 samples.
    with pytest.raises(ValueError, match=r"k = 64.00 is past the pool of N = 4 samples"):
        b.at_k(table, "vote", 64)
    from components.stages.evaluate import beam_metrics

    full = {**table, "selectors": {**table["selectors"], "prm_min": table["selectors"]["vote"]}}
    # Equal compute counts the verifier: a PRM-ranked sample costs its generation and its scoring (here
    # as much again), a voted one its generation alone, so the vote gets twice the samples for the budget.
    per_sample = {"vote": 2.5e5, "prm_min": 5e5}
    within, past = (beam_metrics({"problems": 2, "correct": 1, "tokens": 200, "flops": 2e6}, full, 50, per_sample),
                    beam_metrics({"problems": 2, "correct": 1, "tokens": 900, "flops": 9e6}, full, 50, per_sample))
    assert within["beam/k_equal_tokens"] == 2 and within["beam/vote_equal_tokens"] == pytest.approx(0.6)
    assert within["beam/k_equal_compute_bestofk_prm_min"] == 2 and within["beam/bestofk_prm_min_equal_compute"] == pytest.approx(0.6)
    assert within["beam/k_equal_compute_vote"] == 4 and within["beam/vote_equal_compute"] == pytest.approx(0.8)
    assert past["beam/k_equal_tokens"] == 9 and "beam/vote_equal_tokens" not in past
    assert past["beam/k_equal_compute_vote"] == 18 and "beam/vote_equal_compute" not in past


def test_the_dpo_verifier_ranks_by_its_reward_even_past_sigmoids_float_range():
    """V-STaR ranks by r = beta log(pi/pi_ref). As sigmoid(r), rewards of 40 and 50 were both 1.0 and
    tied (a coin flip between a right and a wrong answer), and r = -800 raised OverflowError, which
    ended the evaluation."""
    from components.evaluation.scorers import dpo_scores

    rewards = [[40.0, 50.0, -800.0, -750.0], [-900.0, 45.0, 38.0, -710.0]]  # the 50 and the 45 are right
    pools = []
    for rs, right in zip(rewards, (1, 1)):
        scores = dpo_scores(rs, [-0.5] * len(rs), [[r] for r in rs])
        pools.append([{"answer": "right" if i == right else f"w{i}", "correct": i == right,
                       "scores": {"dpo": scores["dpo"][i]}} for i in range(len(rs))])
    values, exact = b.per_problem(pools, b.selectors(["dpo"]), [4])
    assert exact and values[("dpo", 4)].tolist() == [1.0, 1.0]
    assert b.sigmoid(-800.0) == pytest.approx(0.0) and b.sigmoid(800.0) == 1.0 and b.sigmoid(0.0) == 0.5
    # a vote weighted by the reward: sigmoid(r) per sample, so no error; the two large rewards of each pool
    # weigh 1.0 each (one right, one wrong) and the rest ~0: a tie, half the credit
    assert values[("weighted_vote/dpo", 4)].tolist() == [0.5, 0.5]


def test_a_short_pool_is_left_out_and_counted_not_cutting_every_pool():
    """One problem with 3 samples where the others have 8 (a quarantined sample): its pool is left out
    and counted; the others keep their 8. No pool at all: no curve, and no error."""
    rng = random.Random(5)

    def pool(n):
        return [{"answer": a, "correct": a == "right", "scores": {"orm": rng.random()}}
                for a in rng.choices(["right", "w1"], k=n)]

    metrics, table = b.curve_metrics([pool(8) for _ in range(6)] + [pool(3)], ["orm"], n_boot=50)
    assert metrics["bok_pool"] == 8 and metrics["bok_problems"] == 6 and metrics["bok_short_pools"] == 1
    assert table["ks"] == [1, 2, 4, 8] and "bok/orm/k8" in metrics
    assert metrics["bok_diff_intervals"] == 1  # orm - vote: how many paired intervals were computed
    metrics, table = b.curve_metrics([[], []], ["orm"])
    assert metrics == {"bok_problems": 0, "bok_pool": 0, "bok_short_pools": 0} and table["ks"] == []
