"""The PRM on the real tiny generator (tests/conftest.py: tiny_model_dir): training, scoring, format.

Training runs with threads=1: on the 2 shared cores of these machines the tiny matmuls ran 5-10x
slower with 2 threads than with 1 while other jobs were busy (train_prm defaults to all cores).
"""
import json
import math
import random
import shutil

import pytest

from components.labeling.step_labels import first_error_from_scores
from components.models import prm, prm_scoring, prm_training
from components.data.families.arith import ANSWER, APPLY
from components.labeling.quality import first_error_f1

THREADS = 1


def planted_trace(fam, p, rng, p_clean=1 / 3) -> dict:
    """The gold steps, or one slip at a random step (the answer line included), carried forward by the
    later steps as a real slip would be. Labels come from the family's own first-error check.

    The slip writes a stray leading digit (r -> r + 100*d: a 3-digit value, outside the family's
    range). A wrong value inside the range (r +- 1..9, or any other 0..99) asks the PRM to redo the
    arithmetic, which the 133K-parameter smoke backbone did not learn in a test's budget (held-out step
    accuracy 0.64-0.72, near the base rate, after 57-1,350 steps at lr 3e-4..5e-3). This signal is
    learned in ~150 steps and still needs the labels on the right tags, and memory of earlier steps
    (after %10 a carried slip looks right again but is labelled wrong).
    """
    ops = p.meta["ops"]
    slip = -1 if rng.random() < p_clean else rng.randint(0, len(ops))
    lines, value = [], p.meta["start"]
    for k, (sym, c) in enumerate(ops):
        r = APPLY[sym](value, c) + (100 * rng.randint(1, 9) if k == slip else 0)
        lines.append(f"{value}{sym}{c}={r}")
        value = r
    lines.append(f"{ANSWER} {value + (100 * rng.randint(1, 9) if slip == len(ops) else 0)}")
    completion = fam.steps_text(lines)
    return {"prompt": p.prompt, "steps": fam.split_steps(completion),
            "labels": fam.step_labels(p, completion), "first_error": fam.first_error(p, completion)}


def gold_example(fam, p, label) -> dict:
    steps = fam.split_steps(fam.gold_solution(p))
    return {"prompt": p.prompt, "steps": steps, "labels": [label] * len(steps)}


def held_out_traces(fam, seed: int) -> list[dict]:
    """Traces on eval and train problems: their prompts never occur in the bootstrap split."""
    rng = random.Random(seed)
    return [planted_trace(fam, p, rng) for p in fam.problems("eval") + fam.problems("train")]


@pytest.fixture(scope="module")
def planted_prm(tiny_model_dir, smoke_family, tmp_path_factory):
    rng = random.Random(0)
    train = [planted_trace(smoke_family, p, rng) for p in smoke_family.problems("bootstrap")[:2400]]
    out = tmp_path_factory.mktemp("prm") / "planted"
    stats = prm_training.train_prm(tiny_model_dir, out, train, epochs=3, lr=2e-3, batch_size=32, seed=0, soft=False,
                                   threads=THREADS)
    return out, stats


def test_learns_planted_first_error(planted_prm, smoke_family):
    model_dir, stats = planted_prm
    assert stats["n_heldout"] > 0 and stats["n_train"] + stats["n_heldout"] == 2400
    assert stats["loss_last"] < 0.5 * stats["loss_first"], stats
    assert stats["heldout_step_accuracy"] >= 0.9 and stats["heldout_auroc"] >= 0.95, stats

    traces = held_out_traces(smoke_family, seed=1)
    scores = prm_scoring.load_scorer("transformers", model_dir).score([t["prompt"] for t in traces],
                                                              [t["steps"] for t in traces])
    assert [len(s) for s in scores] == [len(t["steps"]) for t in traces]
    hits = [(s >= 0.5) == bool(y) for t, row in zip(traces, scores) for s, y in zip(row, t["labels"])]
    assert sum(hits) / len(hits) >= 0.9
    q = first_error_f1([first_error_from_scores(s) for s in scores], [t["first_error"] for t in traces])
    assert q["n_erroneous"] > 0 and q["n_correct"] > 0  # both kinds present, so F1 means something
    assert q["f1"] >= 0.8, q


def test_a_threshold_is_calibrated_only_on_enough_labelled_traces():
    from components.labeling.quality import calibrate_threshold

    # Wrong steps score 0.6-0.7, right ones 0.8-0.95: at 0.5 no error is found (F1 0); between the two
    # bands every first error is.
    good, bad = [0.8, 0.9, 0.95], [0.6, 0.65, 0.7]
    scores = [[good[i % 3], bad[i % 3], 0.3] for i in range(6)] + [[good[i % 3], good[(i + 1) % 3]] for i in range(6)]
    gold = [1] * 6 + [-1] * 6
    cal = calibrate_threshold(scores, gold)
    assert cal["f1_default"] == 0.0 and cal["f1"] == 1.0 and cal["calibrated"] == 1.0
    assert 0.7 < cal["threshold"] <= 0.8
    # Four erroneous traces are too few to move it (min_each=5): the default stays, and says so.
    few = calibrate_threshold(scores[2:], gold[2:])
    assert few["threshold"] == 0.5 and few["calibrated"] == 0.0 and few["n_erroneous"] == 4


def test_the_threshold_chosen_on_held_back_traces_finds_first_errors_at_0_5_missed(tiny_model_dir, smoke_family, tmp_path):
    """Monte Carlo's soft labels from a weak generator: rollouts from a right step reach the answer
    a fraction of the time (here 30%), from a wrong one never. The PRM learns just that, so at the fixed
    0.5 it calls every trace wrong from its first step; the threshold its training chose on its own
    held-back traces (against their labels' first errors) names the first errors of traces it never saw."""
    rng = random.Random(3)
    train = [dict(t, labels=[0.3 * y for y in t["labels"]])
             for t in (planted_trace(smoke_family, p, rng) for p in smoke_family.problems("bootstrap")[:1200])]
    stats = prm_training.train_prm(tiny_model_dir, tmp_path / "mc", train, epochs=4, lr=2e-3, batch_size=32, seed=0,
                                   soft=True, threads=THREADS)
    t = prm.load_format(tmp_path / "mc")["threshold"]
    assert t == stats["calibrated_threshold"] < 0.3, stats
    assert stats["heldout_f1"] < 0.3 and stats["heldout_f1_calibrated"] >= 0.8, stats

    traces = held_out_traces(smoke_family, seed=1)
    scores = prm_scoring.load_scorer("transformers", tmp_path / "mc").score([x["prompt"] for x in traces],
                                                                            [x["steps"] for x in traces])
    gold = [x["first_error"] for x in traces]
    at = {th: first_error_f1([first_error_from_scores(s, th) for s in scores], gold)["f1"] for th in (0.5, t)}
    print(f"calibrated on held-back traces: {t:.4g}; F1 there {stats['heldout_f1']:.3f} -> "
          f"{stats['heldout_f1_calibrated']:.3f}; on {len(traces)} unseen traces {at}")
    assert at[0.5] < 0.3 and at[t] >= 0.8, at


def test_a_threshold_measured_on_the_problems_that_chose_it_is_refused(tiny_model_dir, smoke_family, tmp_path):
    """evaluate reports F1 at the calibrated threshold only on problems it was not chosen on: plant one
    of the PRM's held-back problems among those evaluated and the stage refuses, naming the PRM."""
    from components.artifacts import store
    from components.stages.evaluate import calibrated_thresholds

    rng = random.Random(5)
    train = [planted_trace(smoke_family, p, rng) for p in smoke_family.problems("bootstrap")[:200]]
    prm_training.train_prm(tiny_model_dir, tmp_path / "prm", train, epochs=1, lr=2e-3, batch_size=32, seed=0, soft=True,
                           threads=THREADS)
    uri = str(tmp_path / "store" / "prm")
    store.publish_folder(tmp_path / "prm", uri, {"kind": "prm"})
    unseen = [x["prompt"] for x in held_out_traces(smoke_family, seed=1)]
    assert calibrated_thresholds(uri, None, unseen) == {"prm_scores": prm.load_format(tmp_path / "prm")["threshold"]}
    held = sorted(prm_training._heldout_prompts([t["prompt"] for t in train], 0.1, 0))
    with pytest.raises(ValueError, match=rf"{uri}: its step threshold was calibrated on 1 of the {len(unseen) + 1} problems"):
        calibrated_thresholds(uri, None, unseen + held[:1])


def test_auroc_by_ranks():
    assert prm_training.auroc([0.1, 0.4, 0.35, 0.8], [False, False, True, True]) == 0.75
    assert prm_training.auroc([0.5, 0.5, 0.5], [True, False, True]) == 0.5  # ties count half
    assert math.isnan(prm_training.auroc([0.2, 0.9], [True, True]))
    assert first_error_from_scores([0.9, 0.6, 0.4, 0.9]) == 2
    assert first_error_from_scores([0.9, 0.5]) == -1 and first_error_from_scores([]) == -1


def test_soft_labels_stay_floats(tiny_model_dir, smoke_family, tmp_path):
    """A constant 0.7 target: an int() cast would train towards 0 (and the loss towards 0)."""
    examples = [gold_example(smoke_family, p, 0.7) for p in smoke_family.problems("bootstrap")[:192]]
    with pytest.raises(ValueError, match="soft=False needs labels 0 or 1"):
        prm_training.train_prm(tiny_model_dir, tmp_path / "hard", examples, 1, 3e-3, 16, 0, soft=False, threads=THREADS)
    # 4 epochs (44 steps): converged on any backbone. Measured: loss_last (the mean of the last 20
    # steps) - entropy = 0.0001, scores 0.697-0.704; after 2 epochs it was still 0.015 (bar 0.02), scores
    # 0.676-0.687, so how close it came hung on how fast the session's backbone got there.
    stats = prm_training.train_prm(tiny_model_dir, tmp_path / "soft", examples, 4, 3e-3, 16, 0, soft=True,
                                   threads=THREADS)
    # Cross-entropy against [0.3, 0.7] can't go below its entropy; it should end close to it.
    entropy = -(0.7 * math.log(0.7) + 0.3 * math.log(0.3))
    assert entropy - 1e-4 <= stats["loss_last"] < entropy + 0.02, stats
    probs = [gold_example(smoke_family, p, None) for p in smoke_family.problems("eval")]
    scores = prm_scoring.load_scorer("transformers", tmp_path / "soft").score([e["prompt"] for e in probs],
                                                                      [e["steps"] for e in probs])
    flat = [s for row in scores for s in row]
    assert all(0.6 <= s <= 0.8 for s in flat), (min(flat), max(flat))
    assert abs(sum(flat) / len(flat) - 0.7) < 0.05


def test_unlabeled_steps_are_not_trained_on(tiny_model_dir, smoke_family, tmp_path):
    rng = random.Random(5)
    traces = [planted_trace(smoke_family, p, rng) for p in smoke_family.problems("bootstrap")[:96]]

    unlabeled = [dict(t, labels=[None] * len(t["steps"])) for t in traces]
    with pytest.raises(ValueError, match="no labeled steps"):
        prm_training.train_prm(tiny_model_dir, tmp_path / "none", unlabeled, 1, 2e-3, 16, 0, soft=False, threads=THREADS)

    # Only the first step labeled (None and NaN both mean unlabeled) vs the traces cut after that step:
    # a tag's logits depend only on the tokens before it, so if unlabeled tags add nothing to the loss,
    # the two runs are the same run.
    first_only = [dict(t, labels=[t["labels"][0]] + [None] * (len(t["steps"]) - 2) + [float("nan")])
                  for t in traces]
    cut = [dict(t, steps=t["steps"][:1], labels=t["labels"][:1]) for t in traces]
    a = prm_training.train_prm(tiny_model_dir, tmp_path / "a", first_only, 1, 2e-3, 16, 0, soft=False, threads=THREADS)
    b = prm_training.train_prm(tiny_model_dir, tmp_path / "b", cut, 1, 2e-3, 16, 0, soft=False, threads=THREADS)
    assert a["n_train_steps"] == b["n_train_steps"] == a["n_train"]
    assert a["loss_first"] == pytest.approx(b["loss_first"], abs=1e-5)
    assert a["loss_last"] == pytest.approx(b["loss_last"], abs=1e-5)
    prompts, steps = [t["prompt"] for t in cut], [t["steps"] for t in cut]
    sa = prm_scoring.load_scorer("transformers", tmp_path / "a").score(prompts, steps)
    sb = prm_scoring.load_scorer("transformers", tmp_path / "b").score(prompts, steps)
    assert max(abs(x[0] - y[0]) for x, y in zip(sa, sb)) < 1e-5


def test_format_file_is_the_source_of_truth(planted_prm, tmp_path):
    from transformers import AutoTokenizer

    model_dir, stats = planted_prm
    fmt = json.loads((model_dir / prm.FORMAT_FILE).read_text())
    tag_id = AutoTokenizer.from_pretrained(str(model_dir)).convert_tokens_to_ids("<step>")
    calibrated = {k: fmt.pop(k) for k in ("threshold", "threshold_heldout_f1", "calibrated_on")}
    assert fmt == {"step_tag": "<step>", "step_tag_id": tag_id, "template": "{step}<step>\n", "step_separator": "\n",
                   "label_convention": "class 1 = good; soft labels = P(good)", "positive_class": 1}
    chosen_on = calibrated.pop("calibrated_on")  # the held-back problems, hashed: one per problem
    assert calibrated == {"threshold": stats["calibrated_threshold"], "threshold_heldout_f1": stats["heldout_f1_calibrated"]}
    assert len(chosen_on) == len(set(chosen_on)) > 0 and all(len(h) == 16 for h in chosen_on)
    calibrated["calibrated_on"] = chosen_on
    fmt.update(calibrated)
    assert prm.load_format(model_dir) == fmt == prm_scoring.load_scorer("transformers", model_dir).fmt
    assert prm.format_input("1 +1\n", ["1+1=2", "Answer: 2"]) == "1 +1\n1+1=2<step>\nAnswer: 2<step>\n"

    missing = tmp_path / "no-format"
    shutil.copytree(model_dir, missing)
    (missing / prm.FORMAT_FILE).unlink()
    for backend in ("transformers", "vllm"):  # vllm fails before it starts an engine
        with pytest.raises(FileNotFoundError, match="prm_format.json"):
            prm_scoring.load_scorer(backend, missing)

    wrong = tmp_path / "wrong-id"
    shutil.copytree(model_dir, wrong)
    (wrong / prm.FORMAT_FILE).write_text(json.dumps(dict(fmt, step_tag_id=tag_id - 1)))
    with pytest.raises(ValueError, match="prm_format.json"):
        prm_scoring.load_scorer("transformers", wrong)

    # A PRM dir as init: trained on as is, no second tag, same format.
    again = tmp_path / "again"
    prm_training.train_prm(model_dir, again, [{"prompt": "1 +1\n", "steps": ["1+1=2", "Answer: 2"], "labels": [1, 1]}],
                           1, 1e-4, 4, 0, soft=False, heldout_fraction=0, threads=THREADS)
    # nothing held back: nothing to calibrate on, so the fixed 0.5
    assert prm.load_format(again) == {**fmt, "threshold": 0.5, "threshold_heldout_f1": None, "calibrated_on": []}
    assert len(AutoTokenizer.from_pretrained(str(again))) == len(AutoTokenizer.from_pretrained(str(model_dir)))


def test_grpo_rewards_equal_their_definitions_on_planted_traces(planted_prm, smoke_cfg, smoke_family, tmp_path):
    """GRPO's rewards (components/evaluation/rewards.py) on three planted traces of one problem: the gold
    one, a "lucky" one whose first step states a wrong result (a stray leading digit, the slip the planted
    PRM learned) while the next step goes on from the right value, so its answer is right, and one whose
    answer is wrong. Each reward equals its definition computed here from the same PRM's step scores,
    the answer check and the calculator; the flawed step lowers the `prm` reward and `outcome` ignores it."""
    from components.artifacts import store
    from components.evaluation.rewards import Rewarder

    model_dir, _ = planted_prm
    prm_uri = str(tmp_path / "prm")
    store.publish_folder(model_dir, prm_uri, {"kind": "prm"})
    cfg = smoke_cfg.model_copy(update={"grpo": smoke_cfg.grpo.model_copy(update={
        "rewards": {"outcome": 1.0, "prm": 0.5, "calc": 0.25}, "aggregate": "min"})})
    p = next(q for q in smoke_family.problems("eval") if len(q.meta["ops"]) >= 2)
    gold = smoke_family.split_steps(smoke_family.gold_solution(p))
    value, rest = gold[0].split("=")
    lucky = [f"{value}={int(rest) + 300}", *gold[1:]]
    wrong = [*gold[:-1], f"{ANSWER} {int(p.answer) + 1}"]
    completions = [smoke_family.steps_text(s) for s in (gold, lucky, wrong)]
    got = Rewarder(cfg, smoke_family, {p.prompt: p}, {"prm": prm_uri}).score([p] * 3, completions)

    steps = [smoke_family.split_steps(c) for c in completions]
    step_scores = prm_scoring.load_scorer("transformers", model_dir).score([p.prompt] * 3, steps)
    assert [r["outcome"] for r in got] == [1.0, 1.0, 0.0]  # the answer alone: the lucky slip is not seen
    assert [r["prm"] for r in got] == pytest.approx([min(s) for s in step_scores], abs=1e-6)
    assert [r["calc"] for r in got] == [1.0, 0.0, 0.0]
    assert [r["reward"] for r in got] == pytest.approx([r["outcome"] + 0.5 * r["prm"] + 0.25 * r["calc"] for r in got])
    assert got[1]["prm"] < 0.5 < got[0]["prm"]  # the flawed first step lowers the PRM's reward
    assert [r["right"] for r in got] == [True, True, False] and [r["flawed"] for r in got] == [False, True, True]


def test_vllm_matches_transformers(planted_prm, smoke_family):
    """Last in this module: an in-process vLLM engine changes its host process (see stack notes)."""
    model_dir, _ = planted_prm
    traces = held_out_traces(smoke_family, seed=2)[::5][:14]
    prompts = [t["prompt"] for t in traces] + ["40 -1\n", "12 +3 *2\n"]
    steps = [t["steps"] for t in traces] + [[], ["12+3=15"]]  # no step at all; a trace cut short
    assert len({len(s) for s in steps}) >= 4
    hf = prm_scoring.load_scorer("transformers", model_dir).score(prompts, steps)
    # A cache too small for one 256-token trace (~0.75 MB here): the scorer sizes it up rather than
    # let vLLM refuse to start (configs/gsm8k-pretrained.yaml's 2,112-token PRM engine did, at 64 MB).
    engine = prm_scoring.load_scorer("vllm", model_dir, max_model_len=256, kv_cache_bytes=1 << 16)
    try:
        vl = engine.score(prompts, steps)
    finally:
        del engine
    assert [len(r) for r in vl] == [len(s) for s in steps]
    assert max(abs(x - y) for a, b in zip(hf, vl) for x, y in zip(a, b)) < 1e-4
