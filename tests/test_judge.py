"""LLM-as-judge: strict verdict parsing, a tiny judge trained on planted errors, and a real `vllm serve`."""
import random
import socket

import pytest

from components.config_scoring import JudgeConfig, RemoteJudgeConfig
from components.config_sections import TrainConfig
from components.labeling.judge import (TINY_JUDGE, judge_prompt, judge_traces, parse_first_error, parse_step_verdict,
                                       per_step_prompts)
from components.labeling.judge_clients import JudgeError, make_judge_client
from components.labeling.judge_training import (judge_accuracy, judge_examples, planted_traces, train_judge,
                                                unknown_text)

TINY = JudgeConfig(**TINY_JUDGE, per_step_template="{problem}\n{steps}\n{index} {step}\n==")
KEY = "test-key"


# ------------------------------------------------------------------------------------------ parsing

@pytest.mark.parametrize("text, expected", [
    (" 3\n", 2), ("Step 2", 1), ("step 3: the sum is wrong", 2), ("The first incorrect step is step 2.", 1),
    ("**2**", 1), ("3 is wrong", 2), (" 3\n12+1=13", 2), (r"so the answer is \boxed{4}", 3),
    (" none\n", -1), ("None.", -1), ("No error", -1), ("All steps are correct.", -1), ("-1", -1),
    (r"\boxed{-1}", -1),
    # out of range for a 4-step trace: 1-based, so 0 is no step either
    ("0", None), (" 9", None), ("-3", None),
    # babble, including the task's own format, which must not read as "step 57" or "step 1"
    ("57+5=62", None), ("1 57+5=62", None), ("Answer: 2", None), ("hello", None), ("none of them", None),
    ("", None), ("\n\n", None), (None, None),
])
def test_parse_first_error(text, expected):
    assert parse_first_error(text, 4) == expected


@pytest.mark.parametrize("text, expected", [
    ("Yes", True), (" correct, because 5+7=12", True), ("Verdict: right", True), ("+", True),
    ("no.", False), ("Incorrect", False), ("wrong", False), ("-", False),
    ("not correct", None), ("none", None), ("maybe", None), ("yes1", None), ("-5", None), ("", None), (None, None),
])
def test_parse_step_verdict(text, expected):
    assert parse_step_verdict(text) is expected


def test_prompts_number_steps_from_one():
    cfg = JudgeConfig()
    steps = ["57+5=62", "62%10=2", "Answer: 2"]
    q = judge_prompt(cfg, "57 +5 %10\n", steps)
    assert q.startswith("Problem:\n57 +5 %10\nSolution steps:\nStep 1: 57+5=62\nStep 2: 62%10=2\nStep 3: Answer: 2\n")
    first, last = per_step_prompts(cfg, "57 +5 %10\n", steps)[::2]
    assert "Earlier steps:\n\nStep 1: 57+5=62\nIs this step" in first
    assert "Earlier steps:\nStep 1: 57+5=62\nStep 2: 62%10=2\nStep 3: Answer: 2\nIs this step" in last


# ------------------------------------------------------------------------------ the tiny trained judge

def test_planted_examples_have_exact_targets(smoke_family, tiny_model_dir):
    fam, problems = smoke_family, smoke_family.problems("bootstrap")
    traces = planted_traces(fam, problems, 400, random.Random(0))
    examples = judge_examples(fam, problems, 400, random.Random(0), TINY)  # same draws as the traces
    gold = [fam.first_error(p, c) for p, c in traces]
    for (p, c), (prompt, target), g in zip(traces, examples, gold):
        steps = fam.split_steps(c)
        assert prompt == judge_prompt(TINY, p.prompt, steps)
        assert parse_first_error(target, len(steps)) == g  # the judge is trained on what the parser reads
    wrong = [g for g in gold if g >= 0]
    assert 0.4 < len(wrong) / len(gold) < 0.6
    assert {0, 1, 2} <= set(wrong)  # first step, a later step, the answer line of a 2-op trace
    # a slip that a later %10 or ^c forgets: right answer, wrong step (what outcome filtering keeps)
    assert any(fam.is_correct(p, c) for (p, c), g in zip(traces, gold) if g >= 0)
    # the tiny template is made of characters the char-level tokenizer knows; the default one is not
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    assert unknown_text(tok, [p + t for p, t in examples]) == set()
    default = judge_examples(fam, problems, 20, random.Random(0))
    assert {"P", "r", "o"} <= unknown_text(tok, [p + t for p, t in default])
    with pytest.raises(ValueError, match="does not know"):
        train_judge(tiny_model_dir, "/nonexistent", default, TrainConfig(), 0)


def test_tiny_judge_trained_on_planted_errors(smoke_cfg, smoke_family, tiny_model_dir, tmp_path):
    """A minute of training teaches the verdict format, not yet the arithmetic check: at this budget the
    judge answers "none" for almost everything (F1 ~0, like always-"none"). Asserted: every verdict is
    readable and in range, so each trace gets labels; the F1 is printed for the record."""
    fam = smoke_family
    examples = judge_examples(fam, fam.problems("bootstrap"), 2000, random.Random(0), TINY)
    stats = train_judge(tiny_model_dir, tmp_path / "judge", examples, TrainConfig(epochs=1, lr=3e-3, batch_size=32), 0)
    assert stats["loss_last"] < stats["loss_first"] / 4
    judge = make_judge_client(TINY, tmp_path / "judge", smoke_cfg.generation, smoke_cfg.model.max_positions)
    held = planted_traces(fam, fam.problems("eval"), 200, random.Random(1))  # problems it never saw
    acc = judge_accuracy(TINY, judge, fam, [p for p, _ in held], [c for _, c in held])
    print(f"tiny judge on held-out planted traces: {acc}")
    assert acc["judge_calls"] == 200 and acc["judge_too_long"] == 0
    assert acc["judge_unparseable"] <= 4 and acc["judge_unlabelled"] == acc["judge_unparseable"]
    assert acc["n_erroneous"] > 50 and acc["n_correct"] > 50


# ------------------------------------------------------------------------------ a real `vllm serve`

@pytest.fixture(scope="module")
def judge_server(service_stack, tiny_model_dir):
    """The untrained tiny generator behind `vllm serve`: it babbles numbers, not verdicts."""
    server = service_stack.vllm_serve(tiny_model_dir, model="judge", api_key=KEY)
    try:
        yield server
    finally:
        service_stack.stop(server.service)


def remote_cfg(server, model: str | None = None) -> JudgeConfig:
    remote = RemoteJudgeConfig(base_url=server.base_url, model=model or server.model, timeout_s=60, retries=2,
                               backoff_s=0.1, concurrency=4)
    return TINY.model_copy(update={"backend": "remote", "remote": remote})


@pytest.mark.parametrize("mode", ["first_error", "per_step"])
def test_remote_judge_counts_babble_as_unparseable(judge_server, smoke_family, monkeypatch, mode):
    monkeypatch.setenv("VSTAR_JUDGE_API_KEY", KEY)
    cfg = remote_cfg(judge_server).model_copy(update={"mode": mode})
    traces = planted_traces(smoke_family, smoke_family.problems("eval"), 12, random.Random(3))
    problems = [p.prompt for p, _ in traces] + ["1" + " +1" * 70 + "\n"]  # over the 128-token context
    steps = [smoke_family.split_steps(c) for _, c in traces] + [["1+1=2", "2+1=3"]]
    results, stats = judge_traces(cfg, make_judge_client(cfg), problems, steps)

    assert len(results) == len(steps)
    calls = len(steps) if mode == "first_error" else sum(map(len, steps))
    assert stats["judge_calls"] == calls and stats["judge_tokens"] > 0
    assert stats["judge_too_long"] == (1 if mode == "first_error" else len(steps[-1]))
    assert results[-1].labels == [None, None]  # not judged at all: unlabelled
    unread = 0
    for r, s in zip(results[:-1], steps):
        answers = r.raw.split(" | ")
        assert len(r.labels) == len(r.scores) == len(s)
        if mode == "first_error":
            readable = parse_first_error(answers[0], len(s)) is not None
            unread += not readable
        else:
            verdicts = [parse_step_verdict(a) for a in answers]
            unread += verdicts.count(None)
            readable = all(v is not None for v in verdicts[: (verdicts + [False]).index(False) + 1])
        if readable:
            assert r.labels[0] is not None and r.labels == sorted(r.labels, reverse=True)  # 1s, then 0s
        else:  # never read as correct
            assert r.first_error is None and r.labels == [None] * len(s) and r.scores == [None] * len(s)
    assert stats["judge_unparseable"] == unread > 0
    assert stats["judge_unlabelled"] == sum(r.first_error is None for r in results)


def test_remote_judge_refusals_fail_at_once(judge_server, monkeypatch):
    monkeypatch.setenv("VSTAR_JUDGE_API_KEY", "wrong-key")
    with pytest.raises(JudgeError, match="401"):
        make_judge_client(remote_cfg(judge_server)).complete(["1 +1\n1 1+1=2\n=="], 4, 0.0)
    monkeypatch.setenv("VSTAR_JUDGE_API_KEY", KEY)
    with pytest.raises(JudgeError, match="no-such-model"):
        make_judge_client(remote_cfg(judge_server, model="no-such-model")).complete(["1 +1\n1 1+1=2\n=="], 4, 0.0)


def test_remote_judge_times_out_on_a_silent_endpoint(monkeypatch):
    """A socket that accepts connections and never answers: each attempt times out, then a clear error."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(16)
        cfg = RemoteJudgeConfig(base_url=f"http://127.0.0.1:{s.getsockname()[1]}/v1", timeout_s=1, retries=1,
                                backoff_s=0.1, concurrency=2)
        with pytest.raises(JudgeError, match=r"no answer after 2 attempts \(timeout 1 s each\).*Timeout"):
            make_judge_client(JudgeConfig(backend="remote", remote=cfg)).complete(["1 +1\n=="] * 3, 4, 0.0)


def test_remote_judge_fails_clearly_when_the_server_is_gone(judge_server, service_stack, monkeypatch):
    """Runs last in this file: it stops the module's server."""
    monkeypatch.setenv("VSTAR_JUDGE_API_KEY", KEY)
    client = make_judge_client(remote_cfg(judge_server))
    assert len(client.complete(["1 +1\n1 1+1=2\n=="], 4, 0.0)) == 1  # up
    service_stack.stop(judge_server.service)
    with pytest.raises(JudgeError, match=rf"{judge_server.base_url}.*no answer after 3 attempts.*Connection"):
        client.complete(["1 +1\n1 1+1=2\n=="] * 5, 4, 0.0)
