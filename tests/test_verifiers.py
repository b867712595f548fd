"""The outcome verifier (components/stages/orm.py) and V-STaR's DPO verifier (components/models/dpo.py)
on the real tiny generator: each separates right from wrong traces on a planted task, on traces of
problems it never saw, scored the way evaluate scores them."""
import math
import random

import pytest

from components.models import dpo, prm_scoring, prm_training
from components.stages.orm import outcome_examples
from tests.test_prm import THREADS, planted_trace


def outcome_rows(fam, problems, seed: int) -> list[dict]:
    """Planted traces (a slip carried forward, or none) with the family's own verdict on their answer."""
    rng = random.Random(seed)
    rows = []
    for p in problems:
        t = planted_trace(fam, p, rng, p_clean=1 / 2)
        rows.append({**t, "correct": fam.is_correct(p, fam.steps_text(t["steps"]))})
    return rows


@pytest.fixture(scope="module")
def planted_orm(tiny_model_dir, smoke_family, tmp_path_factory):
    rows = outcome_rows(smoke_family, smoke_family.problems("bootstrap")[:1200], seed=0)
    out = tmp_path_factory.mktemp("orm") / "planted"
    # lr 1e-3, 3 epochs: held-out AUROC 1.00 for 6 of 6 seeds here; at 2e-3 one seed in three stalled (0.66).
    stats = prm_training.train_prm(tiny_model_dir, out, outcome_examples(rows), epochs=3, lr=1e-3, batch_size=32, seed=0,
                                   soft=False, threads=THREADS, balance=True)
    return out, stats, rows


def test_outcome_examples_label_the_last_step_only(smoke_family):
    rows = outcome_rows(smoke_family, smoke_family.problems("train")[:20], seed=3)
    ex = outcome_examples(rows + [{"prompt": "p", "steps": [], "correct": True}])
    assert len(ex) == 20  # a trace without steps has no tag to read: left out
    for e, r in zip(ex, rows):
        assert e["labels"][:-1] == [None] * (len(r["steps"]) - 1) and e["labels"][-1] == float(r["correct"])


def test_the_equal_budget_orm_sees_only_the_last_step_labels_of_the_prms_rows(smoke_cfg, smoke_family, tmp_path):
    """`orm.labels: prm`: PRM vs ORM at one label budget. The ORM takes exactly the rows the PRM
    trains on, in its order, each with its last step's label alone, never the answer check's verdict
    (planted here to disagree) nor a row whose last step is unlabelled."""
    from components.artifacts import store
    from components.stages import orm, prm as train_prm_stage

    rows = outcome_rows(smoke_family, smoke_family.problems("train")[:60], seed=4)
    for i, r in enumerate(rows):  # Monte Carlo-like soft scores; every 7th last step unlabelled
        r["step_scores"] = [round(0.2 + 0.6 * ((i + k) % 3) / 2, 2) for k in range(len(r["steps"]))]
        r["step_scores"][-1] = None if i % 7 == 0 else (0.0 if r["correct"] else 1.0)
        r["step_labels"] = [None if x is None else float(x >= 0.5) for x in r["step_scores"]]
    uri = str(tmp_path / "scored")
    store.write_rows(rows, uri, {"stage": "score"})
    cfg = smoke_cfg.model_copy(update={"orm": smoke_cfg.orm.model_copy(update={"enabled": True, "labels": "prm"}),
                                       "prm": smoke_cfg.prm.model_copy(update={"max_examples": 40})})
    prm_rows, _ = train_prm_stage.training_rows(cfg, 1, [uri])
    examples, counts = orm.training_examples(cfg, 1, [uri])
    assert len(prm_rows) == 40 == counts["prm_rows"]
    expected = [r for r in prm_rows if r["step_scores"][-1] is not None]
    assert 0 < len(expected) < 40 and [e["prompt"] for e in examples] == [r["prompt"] for r in expected]
    for e, r in zip(examples, expected):
        assert e["steps"] == r["steps"] and e["labels"][:-1] == [None] * (len(r["steps"]) - 1)
        assert e["labels"][-1] == r["step_scores"][-1] == (0.0 if r["correct"] else 1.0)  # the PRM's, not the check's
    outcome = cfg.model_copy(update={"orm": cfg.orm.model_copy(update={"labels": "outcome"})})
    by_check, _ = orm.training_examples(outcome, 1, [uri])
    assert len(by_check) == 60 and all(e["labels"][-1] in (0.0, 1.0) for e in by_check)


def test_orm_separates_right_from_wrong_traces_it_never_saw(planted_orm, smoke_family):
    model_dir, stats, train_rows = planted_orm
    assert 0.3 < sum(r["correct"] for r in train_rows) / len(train_rows) < 0.8  # both kinds, neither rare
    assert stats["heldout_auroc"] >= 0.9, stats  # its own held-out tenth
    # Problems of other splits (never trained on), scored as evaluate scores them: P(right) at the last tag.
    held = outcome_rows(smoke_family, smoke_family.problems("eval") + smoke_family.problems("train"), seed=1)
    scores = prm_scoring.load_scorer("transformers", model_dir).score([r["prompt"] for r in held],
                                                                      [r["steps"] for r in held])
    auroc = prm_training.auroc([s[-1] for s in scores], [r["correct"] for r in held])
    print(f"ORM held-out AUROC {stats['heldout_auroc']:.3f} (own tenth), {auroc:.3f} (other splits)")
    assert auroc >= 0.9, auroc


def test_compute_is_counted_from_the_checkpoints(planted_orm, tiny_model_dir):
    """What a verifier costs: its checkpoint's parameters (read from the safetensors headers) and the
    tokens it trained on; FLOPs ~ 6 x params x tokens for training."""
    from transformers import AutoModelForCausalLM, AutoModelForTokenClassification

    from components.models.serving import param_count

    model_dir, stats, _ = planted_orm
    assert param_count(tiny_model_dir) == AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)).num_parameters()
    assert param_count(model_dir) == AutoModelForTokenClassification.from_pretrained(str(model_dir)).num_parameters()
    assert stats["params"] == param_count(model_dir)
    # Non-padding tokens of 3 epochs over the training traces (~20-40 tokens each).
    assert 3 * 1000 * 15 < stats["train_tokens"] < 3 * 1200 * 80
    assert stats["train_flops"] == 6.0 * stats["params"] * stats["train_tokens"]


def solutions(fam, problems, seed: int, per_problem: int) -> list[dict]:
    """`per_problem` planted solutions of each problem (half with a slip), as the generator's rows."""
    rng = random.Random(seed)
    rows = []
    for p in problems:
        for _ in range(per_problem):
            t = planted_trace(fam, p, rng, p_clean=1 / 2)
            text = fam.steps_text(t["steps"])
            rows.append({"prompt": t["prompt"], "completion": text, "correct": fam.is_correct(p, text)})
    return rows


def test_preference_pairs_pair_a_right_with_a_wrong_solution_of_the_same_problem():
    rows = [{"prompt": "a", "completion": c, "correct": ok} for c, ok in (("r1", True), ("r2", True), ("r1", True),
                                                                          ("w1", False), ("w2", False))]
    rows += [{"prompt": "b", "completion": "r", "correct": True}]  # solved every time: nothing to prefer
    pairs = dpo.preference_pairs(rows, per_problem=3, seed=0)
    assert len(pairs) == 3 and {p["prompt"] for p in pairs} == {"a"}
    assert all(p["chosen"] in ("r1", "r2") and p["rejected"] in ("w1", "w2") for p in pairs)
    assert len({(p["chosen"], p["rejected"]) for p in pairs}) == 3  # distinct pairings, duplicates counted once
    assert len(dpo.preference_pairs(rows, per_problem=10, seed=0)) == 4  # all 2 x 2 of them


@pytest.fixture(scope="module")
def planted_dpo(tiny_model_dir, smoke_family, tmp_path_factory):
    rows = solutions(smoke_family, smoke_family.problems("bootstrap")[:600], seed=0, per_problem=4)
    out = tmp_path_factory.mktemp("dpo") / "planted"
    # lr 5e-4, 3 epochs, ~850 pairs: held-out within-problem AUROC 0.98-0.995 for 4 of 4 seeds here;
    # at 1e-3 and at 2e-3 with half the pairs one seed each stalled near 0.8.
    # Labelled traces of other problems (the train split's), which choose the implicit PRM's threshold.
    from tests.test_prm import planted_trace

    rng = random.Random(11)
    calibration = [dict(t, completion=smoke_family.steps_text(t["steps"]))
                   for t in (planted_trace(smoke_family, p, rng, p_clean=1 / 2) for p in smoke_family.problems("train")[:200])]
    stats = dpo.train_dpo(tiny_model_dir, out, dpo.preference_pairs(rows, per_problem=2, seed=0), beta=0.1,
                          epochs=3, lr=5e-4, batch_size=16, seed=0, threads=THREADS, calibration=calibration)
    return out, stats


def test_dpo_verifier_ranks_right_above_wrong_on_problems_it_never_saw(planted_dpo, tiny_model_dir, smoke_family):
    model_dir, stats = planted_dpo
    assert stats["loss_last"] < 0.5 * stats["loss_first"] and stats["heldout_pair_accuracy"] >= 0.9, stats
    # Problems of other splits, scored as evaluate scores them: beta * log(pi / pi_ref), the reference
    # the generator it was trained from. Untrained, the ratio is 0 for every solution: the ranking is learned.
    held = solutions(smoke_family, smoke_family.problems("eval") + smoke_family.problems("train")[:200], seed=1,
                     per_problem=4)
    scored = dpo.score(model_dir, tiny_model_dir, None, [r["prompt"] for r in held], [r["completion"] for r in held])
    reward, logp = scored.reward, scored.mean_logp
    right, groups = [r["correct"] for r in held], [r["prompt"] for r in held]
    within = prm_training.within_auroc(reward, right, groups)
    print(f"DPO held-out within-problem AUROC {within:.3f}, across problems {prm_training.auroc(reward, right):.3f}; "
          f"its mean token log-probability within problems {prm_training.within_auroc(logp, right, groups):.3f}")
    assert within >= 0.9, within
    assert stats["train_flops"] == 8.0 * stats["params"] * stats["train_tokens"] > 0


def test_within_problem_auroc_compares_solutions_of_one_problem_only():
    # Right outranks wrong inside each problem, though problem b's scores all sit below problem a's.
    scores, right, groups = [0.9, 0.8, 0.2, 0.1], [True, False, True, False], ["a", "a", "b", "b"]
    assert prm_training.within_auroc(scores, right, groups) == 1.0 and prm_training.auroc(scores, right) == 0.75
    assert prm_training.within_auroc([0.5, 0.5], [True, False], ["a", "a"]) == 0.5  # a tie counts half
    assert math.isnan(prm_training.within_auroc([0.9, 0.1], [True, False], ["a", "b"]))  # no problem has both kinds


def test_the_calculator_verifier_and_the_prm_with_a_calculator(smoke_cfg, smoke_family):
    """`calc` scores what a calculator sees; `prm_calc` is the PRM overruled by it. A PRM that calls
    every step good misses the slip the calculator finds: the pair's first-error F1 is the calculator's."""
    from components.data.families.arith import gold_lines
    from components.evaluation import heldout, scorers

    samples = []
    for p in smoke_family.problems("eval")[:40]:
        lines = gold_lines(p)
        if len(samples) % 2:  # a slip in the first step, carried on: the answer comes out wrong
            first = lines[0].rsplit("=", 1)
            lines = [f"{first[0]}={int(first[1]) + 1}"] + lines[1:]
        text = smoke_family.steps_text(lines)
        samples.append({"problem_id": p.id, "prompt": p.prompt, "completion": text, "difficulty": p.difficulty,
                        "correct": smoke_family.is_correct(p, text), "gold_first_error": smoke_family.first_error(p, text),
                        "answer": smoke_family.extract_answer(text), "prm_scores": [0.9] * len(lines)})
    ctx = scorers.Context(smoke_cfg, smoke_family, generator=None, flops={"prm_min": 5.0})
    out = scorers.calc(samples, ctx)
    slipped = [s["gold_first_error"] == 0 for s in samples]
    assert out["calc"] == [0.0 if x else 1.0 for x in slipped]
    assert out["prm_calc"] == [0.0 if x else 0.9 for x in slipped] and ctx.flops["prm_calc"] == 5.0
    assert heldout.prm_first_error_f1(samples)["f1"] == 0.0  # the PRM alone calls every trace clean
    assert heldout.prm_first_error_f1(samples, calculator=True)["f1"] == 1.0
    m = heldout.round_metrics(samples, samples, with_prm=True)
    assert m["prm_calc_f1"] == 1.0 and m["prm_f1"] == 0.0


def test_dpo_score_of_a_training_pair_is_the_reward_trl_logs(planted_dpo, tiny_model_dir, smoke_family):
    """The reward evaluate ranks by is the one DPO trained: TRL's own evaluation of the verifier against
    its reference logs beta * (log pi - log pi_ref) of each chosen and rejected solution. Before, the
    score left out the EOS TRL appends to both, off by beta times the EOS's log-ratio."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    model_dir, _ = planted_dpo
    pairs = dpo.preference_pairs(solutions(smoke_family, smoke_family.problems("eval")[:40], seed=2, per_problem=4),
                                 per_problem=1, seed=0)[:16]
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    tok.pad_token = tok.pad_token or tok.eos_token
    args = DPOConfig(output_dir=str(model_dir.parent / "trl-eval"), beta=dpo.load_beta(model_dir), report_to=[],
                     per_device_eval_batch_size=len(pairs), use_cpu=True, disable_tqdm=True)
    trainer = DPOTrainer(model=AutoModelForCausalLM.from_pretrained(str(model_dir)),
                         ref_model=AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)), args=args,
                         train_dataset=Dataset.from_list(pairs), eval_dataset=Dataset.from_list(pairs),
                         processing_class=tok)
    logged = trainer.evaluate()
    reward = dpo.score(model_dir, tiny_model_dir, None, [p["prompt"] for p in pairs] * 2,
                       [p["chosen"] for p in pairs] + [p["rejected"] for p in pairs]).reward
    n = len(pairs)  # within float32 batching noise (TRL pads chosen and rejected into one batch, we do
    # not): measured 1.2e-4 and 3.0e-4 relative (mean rewards -2.9 and -8.4, two trainings of the verifier),
    # which failed the 1e-4 bar this had; the EOS left out was ~0.1, 1-3% of such rewards
    assert sum(reward[:n]) / n == pytest.approx(logged["eval_rewards/chosen"], rel=1e-3, abs=1e-4), logged
    assert sum(reward[n:]) / n == pytest.approx(logged["eval_rewards/rejected"], rel=1e-3, abs=1e-4), logged


def _logp_by_hand(model, tok, prompt: str, text: str) -> float:
    """log P(text | prompt): the text's tokens after the prompt's, one forward pass, no batching."""
    import torch

    ids, n = tok(prompt + text)["input_ids"], len(tok(prompt)["input_ids"])
    with torch.no_grad():
        logp = model(torch.tensor([ids])).logits[0].float().log_softmax(-1)
    return sum(logp[i - 1, ids[i]].item() for i in range(n, len(ids)))


def test_the_implicit_prms_step_scores_are_the_summed_token_log_ratios(planted_dpo, tiny_model_dir, smoke_family):
    """Yuan et al. 2024's q_t = beta * log(pi(y_<=t) / pi_ref(y_<=t)): each step's score is the log-ratio
    of the solution up to the end of that step, computed here by hand from the two models on the text's
    prefixes (the tiny tokenizer cuts a prefix as it cuts the whole); the last step's is the DPO reward
    r, EOS included."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir, _ = planted_dpo
    rows = solutions(smoke_family, smoke_family.problems("eval")[:6], seed=5, per_problem=2)
    steps = [smoke_family.split_steps(r["completion"]) for r in rows]
    got = dpo.score(model_dir, tiny_model_dir, None, [r["prompt"] for r in rows], [r["completion"] for r in rows],
                    steps=steps)
    tok, beta = AutoTokenizer.from_pretrained(str(model_dir)), dpo.load_beta(model_dir)
    pi, ref = (AutoModelForCausalLM.from_pretrained(str(d)).eval() for d in (model_dir, tiny_model_dir))
    for r, st, q, reward in zip(rows, steps, got.steps, got.reward):
        ends = [r["completion"].index(s) + len(s) for s in st]
        prefixes = [r["completion"][:e] for e in ends[:-1]] + [r["completion"] + tok.eos_token]
        want = [beta * (_logp_by_hand(pi, tok, r["prompt"], x) - _logp_by_hand(ref, tok, r["prompt"], x)) for x in prefixes]
        assert len(q) == len(st) >= 2 and q == pytest.approx(want, rel=1e-4, abs=1e-5), (q, want)
        assert q[-1] == pytest.approx(reward, rel=1e-6)
    assert any(abs(a - b) > 1e-3 for q in got.steps for a, b in zip(q, q[1:]))  # the steps do differ


def test_the_implicit_prms_worst_step_tells_right_from_wrong_solutions_it_never_saw(planted_dpo, tiny_model_dir,
                                                                                    smoke_family):
    """Process rewards without process labels: the DPO verifier, trained only on which answer was right,
    ranks held-out solutions by their worst step's q_t (`implicit_min`) with right ones above those with a
    slip (an untrained verifier's ratio is 0 everywhere: AUROC 0.5). Its first-error F1 at the PRM's
    fixed threshold is poor: here q_t is already below 0 after the first step of right solutions too,
    DPO having lowered their likelihood as well, so sigmoid(q_t) < 0.5 calls nearly every step wrong.
    The threshold its training chose on labelled traces of other problems does better on these."""
    from components.evaluation.bestofk import sigmoid
    from components.evaluation.heldout import prm_first_error_f1
    from components.evaluation.scorers import dpo_scores
    from tests.test_prm import planted_trace

    model_dir, stats = planted_dpo
    rng = random.Random(7)
    traces = [planted_trace(smoke_family, p, rng, p_clean=1 / 2) for p in smoke_family.problems("eval")]
    texts = [smoke_family.steps_text(t["steps"]) for t in traces]
    got = dpo.score(model_dir, tiny_model_dir, None, [t["prompt"] for t in traces], texts,
                    steps=[t["steps"] for t in traces])
    right = [t["first_error"] < 0 for t in traces]
    assert 0.3 < sum(right) / len(right) < 0.8  # both kinds
    auroc = prm_training.auroc(dpo_scores(got.reward, got.mean_logp, got.steps)["implicit_min"], right)
    rows = [{"implicit_scores": [sigmoid(x) for x in q], "gold_first_error": t["first_error"]} for q, t in zip(got.steps, traces)]
    t = dpo.step_threshold(model_dir)
    f1 = {th: prm_first_error_f1(rows, th, key="implicit_scores")["f1"] for th in (0.5, t)}
    print(f"implicit PRM on {len(traces)} held-out planted traces: implicit_min AUROC {auroc:.3f}; "
          f"first-error F1 at sigmoid(q) = 0.5 and at the calibrated {t:.4g}: {f1}; training's {stats}")
    assert auroc >= 0.85, auroc
    # (the train split's traces on prompts the bootstrap's pairs also hold are left out: 80 of 200 here)
    assert t == stats["implicit_threshold"] and 0 < stats["calibration_traces"] <= 200
    assert f1[t] >= f1[0.5] + 0.2, f1  # measured 0.27 against 0.0


def test_compare_shows_what_each_verifier_cost_and_bought():
    """`vstar compare`'s cost table, from the round metrics MLflow holds: the labels each learned from,
    the rollouts behind them (2 x generator params x rollout tokens; none for outcome labels: the DPO
    verifier's pairs, the default ORM's), training FLOPs, and the points best-of-N gained over the vote
    per training TFLOP."""
    from components.evaluation.report import cost_rows

    ev = {"bok_pool": 16, "bok_diff/prm_min-vote/k16": 0.04, "bok_diff/prm_min-vote/k16/lo": -0.01,
          "bok_diff/prm_min-vote/k16/hi": 0.09, "bok_diff/orm-vote/k16": -0.02, "bok_diff/orm-vote/k16/lo": -0.06,
          "bok_diff/orm-vote/k16/hi": 0.02}
    rounds = [{"round": 0, "evaluate": {}, "bootstrap": {"params": 1_000_000}},
              {"round": 1, "evaluate": ev, "score": {"mc_rollout_tokens": 3e6},
               "train_prm": {"n_train_steps": 9000, "train_flops": 2e12, "params": 1_000_000},
               "train_orm": {"n_train_steps": 3000, "train_flops": 1e12, "params": 134_500_000, "prm_rows": 3000},
               "train_dpo": {"n_train": 800, "train_flops": 4e12, "params": 8_400_000}}]
    ev.update({"bok_diff/dpo-vote/k16": 0.08, "bok_diff/dpo-vote/k16/lo": 0.02, "bok_diff/dpo-vote/k16/hi": 0.12})
    header, rows = cost_rows({"loop-a": rounds})
    assert header[2:] == ["verifier", "backbone params", "labels learned", "label TFLOPs", "train TFLOPs",
                          "best-of-N - vote (points)", "points / train TFLOP"]
    assert rows == [["loop-a", "1", "prm_min", "1M", "9,000", "6", "2", "+4 [-1, +9]", "+2"],
                    ["loop-a", "1", "orm", "134M", "3,000", "6", "1", "-2 [-6, +2]", "-2"],
                    ["loop-a", "1", "dpo", "8.4M", "800", "0", "4", "+8 [+2, +12]", "+2"]]
    # An ORM on every trace's outcome (the default `orm.labels`) learned from answer checks, not rollouts.
    outcome = [rounds[0], {**rounds[1], "train_orm": {"n_train_steps": 3000, "train_flops": 1e12, "params": 1_000_000}}]
    assert [row[5] for row in cost_rows({"loop-b": outcome})[1]] == ["6", "0", "0"]


def test_grpos_watch_calls_a_reward_that_rose_while_the_answers_did_not_hacked():
    """components/evaluation/rewards.watch over a GRPO stage's rewarded samples, in order: a PRM-like
    reward climbing while the share right falls (what the demo's `grpo+prm` arm did) is `hacked`, its
    top-quarter samples mostly flawed; an outcome reward climbing with the answers is not."""
    from components.evaluation.rewards import watch

    def rows(rewards, right, flawed):
        return [{"reward": r, "prm": r, "right": y, "flawed": f, "chars": 40} for r, y, f in zip(rewards, right, flawed)]

    n = 100
    hacked = watch(rows([0.5 + 0.4 * i / n for i in range(n)], [i < 30 for i in range(n)], [i >= 30 for i in range(n)]), ["prm"])
    assert hacked["hacked"] == 1 and hacked["right_first"] == 1.0 and hacked["right_last"] == 0.0
    assert hacked["high_reward_flawed"] == 1.0 and hacked["high_reward_wrong"] == 1.0
    assert hacked["reward_prm"] == pytest.approx(hacked["reward_mean"])
    honest = watch(rows([float(i >= 40) for i in range(n)], [i >= 40 for i in range(n)], [False] * n), ["prm"])
    assert honest["hacked"] == 0 and honest["high_reward_wrong"] == 0.0 and honest["high_reward_flawed"] == 0.0
    assert watch([], ["prm"]) == {}
