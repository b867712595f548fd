"""Padding-free packed batches, batches sized in tokens and the fused loss (issue #33): what a packed
row computes is what the padded batch computes, without the pads."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from components.config_sections import HardwareConfig, TrainConfig
from components.models import packing, prm, prm_training
from components.models.causal_lm import completion_labels, encode_examples, ensure_pad_token, fit, train_causal_lm
from components.models.hardware import CPU, resolve
from components.models.tiny import build_qwen2_checkpoint

PACKED = resolve(HardwareConfig(packing="on"), cuda=False)
FUSED = resolve(HardwareConfig(fused_loss="on"), cuda=False)


def gsm8k_pairs(n: int) -> list[tuple[str, str]]:
    """(question, reference solution) of GSM8K's first `n` training problems: real lengths, which vary."""
    root = Path(__file__).resolve().parents[2] / "shared/data/gsm8k/train.jsonl"
    path = root if root.is_file() else Path("/work/shared/data/gsm8k/train.jsonl")
    rows = [json.loads(line) for line in path.read_text().splitlines()[:n]]
    return [(f"Question: {r['question']}\nAnswer:\n", r["answer"]) for r in rows]


@pytest.fixture(scope="module")
def qwen(tmp_path_factory):
    """A pretrained-shaped causal LM (Qwen2: byte-level BPE, grouped-query attention, RoPE)."""
    pairs = gsm8k_pairs(400)
    return build_qwen2_checkpoint(tmp_path_factory.mktemp("qwen"), [p + c for p, c in pairs], hidden_size=64,
                                  layers=2, heads=2, kv_heads=1, vocab_size=600, max_positions=1024)


def causal_lm(folder):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = ensure_pad_token(AutoTokenizer.from_pretrained(str(folder)))
    return AutoModelForCausalLM.from_pretrained(str(folder), **CPU.train_load_args()), tok


def loss_and_grads(model, inputs: dict, loss_fn=None):
    model.zero_grad()
    if loss_fn is None:
        loss = model(**inputs).loss
    else:  # a loss of our own (the PRM's at its tags), the model's own left out
        loss = loss_fn(model(**{k: v for k, v in inputs.items() if k != "labels"}).logits, inputs["labels"])
    loss.backward()
    return float(loss), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def assert_same(a, b, tol=1e-5):
    (loss_a, grads_a), (loss_b, grads_b) = a, b
    assert abs(loss_a - loss_b) <= tol * max(1.0, abs(loss_a))
    assert grads_a.keys() == grads_b.keys()
    worst = max(float((grads_a[n] - grads_b[n]).abs().max() / grads_a[n].abs().max().clamp(min=1e-12)) for n in grads_a)
    assert worst <= tol, f"gradients differ by {worst:.2e} (relative to each tensor's largest)"


def test_a_packed_sft_batch_gives_the_padded_batchs_loss_and_gradients(qwen):
    model, tok = causal_lm(qwen)
    items = encode_examples(tok, gsm8k_pairs(12))
    seqs, labels = [ids for ids, _ in items], [completion_labels(*it) for it in items]
    padded = packing.layout(seqs, labels, tok.pad_token_id, -100, packed=False)
    packed = packing.layout(seqs, labels, tok.pad_token_id, -100, packed=True, shifted=True)
    assert packed["input_ids"].shape == (1, sum(map(len, seqs))) and "attention_mask" not in packed
    assert padded["input_ids"].numel() > 1.3 * packed["input_ids"].numel()  # GSM8K's lengths vary
    assert_same(loss_and_grads(model, padded), loss_and_grads(model, packed))


def test_trls_padding_free_sft_batches_give_the_padded_loss_and_gradients(qwen, tmp_path):
    """The SFT stage's path: TRL's SFTTrainer as make_trainer sets it up, packed vs padded."""
    from components.models.sft import make_trainer

    pairs = gsm8k_pairs(8)
    runs = []
    for placement in (CPU, PACKED):
        trainer = make_trainer(qwen, tmp_path / str(placement.packing), pairs, epochs=1, lr=1e-3, batch_size=8,
                               seed=0, placement=placement)
        batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(pairs))])
        assert ("attention_mask" in batch) != placement.packing
        inputs = {k: batch[k] for k in ("input_ids", "labels", "attention_mask", "position_ids") if k in batch}
        runs.append(loss_and_grads(trainer.model, inputs))
    assert_same(*runs)


def test_a_packed_prm_batch_gives_the_padded_batchs_loss_and_gradients(qwen, tmp_path):
    model, tok, fmt = prm_training._init_model(Path(qwen))
    items = []
    for i, (q, a) in enumerate(gsm8k_pairs(10)):
        steps = a.split("\n")
        ids, pos = prm._encode(tok, fmt, q, steps)
        items.append((ids, [(p, (0.3 if (i + k) % 3 == 0 else 1.0)) for k, p in enumerate(pos)]))
    runs = [loss_and_grads(model, prm_training.training_batch(items, packed, tok.pad_token_id),
                           lambda logits, labels: prm_training.tag_loss(logits, labels, w_bad=2.0)) for packed in (False, True)]
    assert_same(*runs)


@pytest.mark.parametrize("attention", ["sdpa", "flex_attention"])
def test_a_sequences_logits_do_not_change_with_another_packed_beside_it(qwen, attention):
    """sdpa (what a CPU trains with) and flex_attention (the packed path on a GPU without
    FlashAttention; compiled, ~15 s here) read the pack alike."""
    import torch

    model, tok = causal_lm(qwen)
    model.set_attn_implementation(attention)
    (a, _), (b, _) = encode_examples(tok, gsm8k_pairs(2))
    with torch.no_grad():
        alone = model(input_ids=torch.tensor([a])).logits[0]
        pack = packing.pack([b, a], [[0] * len(b), [0] * len(a)], 0, shifted=False)
        del pack["labels"]
        beside = model(**pack).logits[0, len(b):]
        # the same row under a plain causal mask: `a` attends to `b`, and its logits move
        leaky = model(**pack, attention_mask=torch.ones_like(pack["input_ids"])).logits[0, len(b):]
    assert torch.allclose(alone, beside, atol=1e-5)
    assert not torch.allclose(alone, leaky, atol=1e-3)


def test_packed_training_spends_almost_nothing_on_padding_and_learns_the_same(qwen):
    """fit's own count of the positions it computed, on GSM8K reference solutions: padded batches
    spend a third or more on pads, packed ones none; the first losses agree (the same batches)."""
    pairs, cfg = gsm8k_pairs(64), TrainConfig(epochs=1, lr=1e-3, batch_size=16)
    runs = {}
    for placement in (CPU, PACKED):
        model, tok = causal_lm(qwen)
        runs[placement.packing] = train_causal_lm(model, tok, pairs, cfg, seed=0, placement=placement)
    assert runs[False]["padding_share"] > 0.3
    assert runs[True]["padding_share"] <= 0.05 and runs[True]["packed"] == 1.0
    assert runs[True]["steps"] == runs[False]["steps"] == 4
    assert runs[True]["loss_first"] == pytest.approx(runs[False]["loss_first"], rel=1e-4)
    assert runs[True]["train_tokens"] == runs[False]["train_tokens"]  # every real token, counted once


def test_batches_sized_in_tokens_hold_at_most_the_budget_and_refuse_a_longer_sequence(qwen):
    model, tok = causal_lm(qwen)
    pairs = gsm8k_pairs(64)
    lengths = [len(ids) for ids, _ in encode_examples(tok, pairs)]
    groups = packing.token_batches(lengths, 1200, seed=0)
    assert sorted(i for g in groups for i in g) == list(range(64))  # every example, once
    assert all(sum(lengths[i] for i in g) <= 1200 for g in groups)
    assert sum(sum(lengths[i] for i in g) for g in groups) / (1200 * len(groups)) > 0.8  # batches are full
    stats = train_causal_lm(model, tok, pairs, TrainConfig(epochs=1, lr=1e-3, max_tokens_per_batch=1200), seed=0,
                            placement=PACKED)
    assert stats["steps"] == len(groups) and stats["examples_per_step"] == pytest.approx(64 / len(groups))
    with pytest.raises(ValueError, match=rf"\d+ of 64 examples are longer than max_tokens_per_batch 100 \(the longest, example \d+, has {max(lengths)} tokens"):
        train_causal_lm(model, tok, pairs, TrainConfig(max_tokens_per_batch=100), seed=0, placement=PACKED)


def test_the_fused_loss_trains_the_model_the_unfused_loss_does(qwen, monkeypatch):
    """TRL's chunked LM head in fit (hardware.fused_loss): the same updates, and the model's own
    forward afterwards."""
    import torch
    from trl.trainer import utils as trl_utils

    chunked = trl_utils._ChunkedLogProbFunction.apply
    calls = []
    monkeypatch.setattr(trl_utils._ChunkedLogProbFunction, "apply", lambda *a: calls.append(1) or chunked(*a))

    pairs, cfg = gsm8k_pairs(16), TrainConfig(epochs=1, lr=1e-3, batch_size=8)
    weights = []
    for placement in (CPU, FUSED):
        model, tok = causal_lm(qwen)
        stats = train_causal_lm(model, tok, pairs, cfg, seed=0, placement=placement)
        assert "forward" not in vars(model)
        weights.append((stats["loss_first"], {n: p.detach().clone() for n, p in model.named_parameters()}))
        assert len(calls) == (stats["steps"] if placement.fused_loss else 0)  # the loss came through the chunks
    (loss_a, a), (loss_b, b) = weights
    assert loss_b == pytest.approx(loss_a, rel=1e-5)
    assert all(torch.allclose(a[n], b[n], atol=1e-5) for n in a)


def test_prm_step_scores_are_the_same_packed_or_padded(qwen, tmp_path):
    examples = [{"prompt": q, "steps": a.split("\n"), "labels": [1.0] * len(a.split("\n"))} for q, a in gsm8k_pairs(40)]
    prm_training.train_prm(qwen, tmp_path / "prm", examples, epochs=1, lr=1e-3, batch_size=16, seed=0, soft=True)
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    model = AutoModelForTokenClassification.from_pretrained(str(tmp_path / "prm"))
    tok, fmt = AutoTokenizer.from_pretrained(str(tmp_path / "prm")), prm.load_format(tmp_path / "prm")
    prompts, steps = [e["prompt"] for e in examples], [e["steps"] for e in examples]
    padded = prm.step_probs(model, tok, fmt, prompts, steps, batch_size=8)
    packed = prm.step_probs(model, tok, fmt, prompts, steps, batch_size=8, placement=PACKED)
    assert [len(s) for s in packed] == [len(s) for s in steps]
    assert max(abs(x - y) for p, q in zip(padded, packed) for x, y in zip(p, q)) <= 1e-5


def test_a_token_budget_left_unset_keeps_every_loop_id():
    from components.checks import load_config

    demo = load_config(Path(__file__).resolve().parents[1] / "configs/demo.yaml")
    budgeted = load_config(Path(__file__).resolve().parents[1] / "configs/demo.yaml",
                           ["prm.max_tokens_per_batch=4096"])
    assert demo.loop_id() == "demo-b72a45f165" != budgeted.loop_id()
    assert load_config(None, ["bootstrap.max_tokens_per_batch=4096"]).bootstrap_hash() != load_config(None).bootstrap_hash()


def test_sft_in_packs_of_a_token_budget_keeps_every_token_and_refuses_a_longer_pair(qwen, tmp_path):
    from components.models.sft import make_trainer, sft

    pairs = gsm8k_pairs(64)
    padded = make_trainer(qwen, tmp_path / "a", pairs, epochs=1, lr=1e-3, batch_size=16, seed=0, placement=CPU)
    packs = make_trainer(qwen, tmp_path / "b", pairs, epochs=1, lr=1e-3, batch_size=16, seed=0, placement=PACKED,
                         max_tokens_per_batch=3000).train_dataset
    lengths = [len(x) for x in packs["input_ids"]]
    assert max(lengths) <= 3000 and len(packs) < 64
    assert sum(lengths) == sum(len(x) for x in padded.train_dataset["input_ids"])  # nothing cut
    stats = sft(qwen, tmp_path / "c", pairs, epochs=1, lr=1e-3, batch_size=16, seed=0, placement=PACKED,
                max_tokens_per_batch=3000)
    assert stats["steps"] == len(packs)
    with pytest.raises(ValueError, match=r"max_tokens_per_batch 200 \(per process\) is shorter than training pair"):
        make_trainer(qwen, tmp_path / "d", pairs, epochs=1, lr=1e-3, batch_size=16, seed=0, placement=PACKED,
                     max_tokens_per_batch=200)


def test_packing_switched_on_as_yaml_writes_it():
    """`hardware.packing: on` in a YAML file (or --set hardware.packing=on) is YAML's true."""
    from components.checks import load_config

    assert load_config(None, ["hardware.packing=on", "hardware.fused_loss=off"]).hardware.packing == "on"
    assert load_config(None, ["hardware.fused_loss=off"]).hardware.fused_loss == "off"


def test_packing_follows_an_attention_that_reads_packed_rows():
    """auto packs where the attention skips what the pack's mask removes (FlashAttention's varlen
    kernels, flex_attention's block mask), not where sdpa would mask a dense square."""
    gpu = lambda **kw: resolve(HardwareConfig(**kw), cuda=True)  # noqa: E731
    assert gpu(attention="flex_attention").packing and gpu(attention="flash_attention_2").packing
    assert not gpu(attention="sdpa").packing and gpu(attention="sdpa", packing="on").packing
    assert gpu(attention="flex_attention").load_args()["attn_implementation"] == "flex_attention"


def test_fit_trains_through_the_placements_attention(qwen):
    """A model built from a config (the bootstrap's) trains through the attention the placement chose,
    as one loaded by from_pretrained (load_args) does."""
    model, tok = causal_lm(qwen)
    assert model.config._attn_implementation == "sdpa"
    eager = resolve(HardwareConfig(attention="eager", packing="on"), cuda=False)
    train_causal_lm(model, tok, gsm8k_pairs(8), TrainConfig(epochs=1, lr=1e-3, batch_size=8), seed=0, placement=eager)
    assert model.config._attn_implementation == "eager"
