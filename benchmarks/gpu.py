#!/usr/bin/env python
"""Training and inference throughput on a GPU (and a tiny CPU smoke run), through the product's paths.

For random-init Qwen2 models (a byte-level BPE tokenizer trained on the data's text, up to a 32k vocab):
  tiny  hidden 128, 2 layers, 2 heads (head_dim 64), 1 KV head, MLP 384       (CPU smoke test)
  125m  hidden 768, 12 layers, 12 heads, 12 KV heads, MLP 3072                (GPT-2-small-sized Qwen2:
        113M non-embedding; 131M with GSM8K's BPE vocab of 23.6k, 138M with 32k)
  500m  hidden 896, 24 layers, 14 heads, 2 KV heads, MLP 4864                 (Qwen2.5-0.5B's dims: 358M
        non-embedding; Qwen2.5's 494M includes a 152k vocab, here 379M / 387M with 23.6k / 32k)
five measurements, each one after the other in this process, peak memory reset in between, each
training one (and prm-score) once per --layouts entry (padded | packed | packed+fused: hardware.packing
and hardware.fused_loss, LAYOUTS below):
  sft        TRL's SFTTrainer from components.models.sft.make_trainer(...).train(); the first --warmup
             steps are outside the timed window (a TrainerCallback syncs and clocks step boundaries;
             a forward pre-hook counts the real tokens of each batch inside the window: by the
             attention mask when padded, by where the position ids restart when packed).
  lm-train   components.models.causal_lm.train_causal_lm, the bootstrap's path (fit, the Trainer):
             where the fused loss applies (TRL's SFT always computes its loss in chunks).
  prm-train  components.models.prm_training.train_prm on (question, answer lines, random soft labels); timed
             from the end of fit's first step to the end of its last (fit's own log calls; tokens
             counted by wrapping packing.layout, which builds every training batch of fit).
  prm-score  components.models.prm_scoring.TransformersPRM(<trained PRM>).score; one untimed warm-up call.
  generate   components.models.generation.TransformersBackend(<base model>).generate with
             Sampling(n, temperature=0.8, max_tokens); one untimed warm-up call; generated ids counted.

MFU (PaLM, appendix B): FLOPs/token = 6N + 12 * layers * hidden * T for training, a third of that
(2N + 4 * layers * hidden * T) for a forward pass. N = non-embedding params plus the LM head matmul
(vocab x hidden; tied with the embedding here) for the causal LM; for the PRM the 2-way head is its
matmul and the embedding is a lookup. T = sum(len^2) / sum(len) over the sequences measured, which is
exactly what the per-sequence formula sums to. Tokens are non-pad tokens (what is learned from);
"MFU incl. pad" in the JSON counts padded positions too. Peak = dense bf16 FLOP/s of the card by
name (H100 SXM 989T, H100 PCIe 756T, H200 989T, A100 312T; else blank, or --peak-tflops). The
target is the issue's: training >= 35% MFU on an H100. On the CPU MFU is n/a.

Data: GSM8K train jsonl (--data; default ../shared/data/gsm8k/train.jsonl beside the repo); without it,
synthetic arithmetic word problems in the same shape, with pseudo-words so the BPE still reaches 32k.

    .venv/bin/python benchmarks/gpu.py                        # on a GPU: 125m and 500m (sized for < 6 min on an H100)
    .venv/bin/python benchmarks/gpu.py --size tiny            # CPU smoke run (the default on a CPU)
    .venv/bin/python benchmarks/gpu.py --size 500m --steps 10 --data /path/to/gsm8k/train.jsonl
    .venv/bin/python benchmarks/gpu.py --layouts packed+fused --max-tokens-per-batch 16384   # batches in tokens
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import gc
import json
import math
import os
import random
import socket
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: make `components` importable
    sys.path.insert(0, str(ROOT))

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "gsm8k" / "train.jsonl"
TARGET_MFU = 0.35  # the target for training on an H100

# Model dims and per-measurement workload. batch: SFT and PRM-training batch size; steps: timed
# training steps; warmup: SFT steps before the timed window; score: traces scored (score_batch at a
# time); gen: prompts x n samples x max_tokens.
SIZES = {
    "tiny": {"hidden": 128, "layers": 2, "heads": 2, "kv_heads": 1, "intermediate": 384, "vocab": 4096,
             "max_positions": 1024, "batch": 8, "steps": 6, "warmup": 2, "score": 64, "score_batch": 16,
             "gen_prompts": 4, "gen_n": 2, "max_tokens": 16},
    "125m": {"hidden": 768, "layers": 12, "heads": 12, "kv_heads": 12, "intermediate": 3072, "vocab": 32000,
             "max_positions": 1024, "batch": 32, "steps": 50, "warmup": 3, "score": 1024, "score_batch": 64,
             "gen_prompts": 32, "gen_n": 4, "max_tokens": 128},
    "500m": {"hidden": 896, "layers": 24, "heads": 14, "kv_heads": 2, "intermediate": 4864, "vocab": 32000,
             "max_positions": 1024, "batch": 32, "steps": 20, "warmup": 3, "score": 1024, "score_batch": 64,
             "gen_prompts": 32, "gen_n": 4, "max_tokens": 128},
}
GPU_SIZES = ("125m", "500m")
# How a training batch is laid out (hardware.packing, hardware.fused_loss): (packed, fused loss).
# TRL's SFTTrainer computes its loss through its chunked LM head whatever the layout; fit (lm-train,
# the bootstrap's path) only when fused; the PRM's 2-way head has no vocabulary to fuse over.
LAYOUTS = {"padded": (False, False), "packed": (True, False), "packed+fused": (True, True)}

# Dense bf16 peak FLOP/s by card (no sparsity). Matched on torch.cuda.get_device_name(), in order.
PEAKS = [  # (all substrings that must appear, peak, label)
    (("H100", "PCIE"), 756e12, "H100 PCIe"),
    (("H100", "NVL"), None, "H100 NVL: not in the table (pass --peak-tflops)"),
    (("H100",), 989e12, "H100 SXM"),
    (("H200", "NVL"), None, "H200 NVL: not in the table (pass --peak-tflops)"),
    (("H200",), 989e12, "H200"),
    (("A100",), 312e12, "A100"),
]


# --------------------------------------------------------------------------------------------- data

def synthetic_rows(n: int, seed: int) -> list[dict]:
    """GSM8K-shaped arithmetic word problems: {question, answer = solution lines + '#### N'}. Names,
    items and a filler sentence come from ~40k pseudo-words, so a BPE trained on them reaches a
    realistic vocab size (the LM head's cost grows with it)."""
    rng = random.Random(seed)
    syl = [c + v for c in "bdfgklmnprstvz" for v in ("a", "e", "i", "o", "u", "ai", "ou")]
    pool = sorted({"".join(rng.choice(syl) for _ in range(rng.randint(2, 4))) for _ in range(45000)})
    rng.shuffle(pool)

    def word(top: int = len(pool)) -> str:
        return pool[rng.randrange(top)]

    rows = []
    for _ in range(n):
        who, what = word(3000).capitalize(), word(3000) + "s"
        total = rng.randint(5, 60)
        q = [f"{who} has {total} {what}.", f"The {word()} {word()} is near the {word()} of {word().capitalize()}.",
             f"It is {word()}, {word()} and {word()}."]
        lines = []
        for _ in range(rng.randint(2, 5)):
            op = rng.choice(["buys", "gives away", "doubles", "finds"])
            if op == "doubles":
                new = total * 2
                q.append(f"Then {who} doubles the {what}.")
                lines.append(f"After doubling, {who} has {total}*2 = <<{total}*2={new}>>{new} {what}.")
            elif op == "gives away" and total > 1:
                k = rng.randint(1, total - 1)
                new = total - k
                q.append(f"{who} gives away {k} {what} to {word().capitalize()}.")
                lines.append(f"{who} gives away {k}, so {total}-{k} = <<{total}-{k}={new}>>{new} {what} are left.")
            else:
                k = rng.randint(1, 40)
                new = total + k
                verb = "buys" if op == "buys" else "finds"
                q.append(f"{who} {verb} {k} more {what} at the {word()}.")
                lines.append(f"{who} now has {total}+{k} = <<{total}+{k}={new}>>{new} {what}.")
            total = new
        q.append(f"How many {what} does {who} have at the end?")
        rows.append({"question": " ".join(q), "answer": "\n".join(lines + [f"#### {total}"])})
    return rows


def load_rows(path: str | None, seed: int) -> tuple[list[dict], str]:
    p = Path(path) if path else DEFAULT_DATA
    if p.is_file():
        rows = [json.loads(line) for line in p.read_text().splitlines() if line.strip()]
        rows = [r for r in rows if r.get("question") and r.get("answer")]
        if rows:
            return rows, str(p.resolve())
    if path:
        raise SystemExit(f"--data {path}: no such file, or no rows with question and answer")
    print(f"[note] {p} not found: using synthetic arithmetic word problems", flush=True)
    return synthetic_rows(8000, seed), "synthetic"


def need(rows: list[dict], n: int) -> list[dict]:
    """n rows, cycling through the data when it has fewer (throughput does not care)."""
    return [rows[i % len(rows)] for i in range(n)]


def prm_examples(rows: list[dict], seed: int) -> list[dict]:
    """(question, answer lines as steps, random soft labels): the labels' values do not change the work.
    A suffix keeps prompts distinct when rows repeat, so the held-out split stays 10%."""
    rng = random.Random(seed)
    out = []
    for i, r in enumerate(rows):
        steps = [s for s in r["answer"].split("\n") if s.strip()]
        out.append({"prompt": f"{r['question']} (#{i})\n", "steps": steps,
                    "labels": [round(rng.random(), 3) for _ in steps]})
    return out


# ------------------------------------------------------------------------------------------ helpers

def device_info() -> dict:
    import torch

    if not torch.cuda.is_available():
        return {"cuda": False}
    p = torch.cuda.get_device_properties(0)
    return {"cuda": True, "gpu": torch.cuda.get_device_name(0), "gpu_count": torch.cuda.device_count(),
            "capability": f"{p.major}.{p.minor}", "gpu_memory_gib": round(p.total_memory / 2**30, 1),
            "cuda_version": torch.version.cuda}


def peak_flops(placement, override_tflops: float | None) -> tuple[float | None, str]:
    """(dense bf16 peak FLOP/s, how it was chosen) or (None, why not)."""
    if not placement.cuda:
        return None, "n/a on the CPU"
    if override_tflops:
        return override_tflops * 1e12, f"--peak-tflops {override_tflops:g}"
    import torch

    name = torch.cuda.get_device_name(0)
    if placement.dtype != "bfloat16":
        return None, f"dtype {placement.dtype}: the peaks here are bf16"
    up = name.upper()
    for keys, peak, label in PEAKS:
        if all(k in up for k in keys):
            return peak, (f"{label} ({name}), {peak / 1e12:.0f} TFLOP/s bf16 dense" if peak else label)
    return None, f"{name}: no bf16 peak known (pass --peak-tflops)"


def model_shape(model_dir: Path) -> dict:
    """Dims and parameter counts from a saved config, without loading weights."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    conf = AutoConfig.from_pretrained(str(model_dir))
    with torch.device("meta"):
        m = AutoModelForCausalLM.from_config(conf)
    total = sum(p.numel() for p in m.parameters())  # tied embedding counted once
    emb = m.get_input_embeddings().weight.numel()
    return {"params": total, "embedding_params": emb, "non_embedding_params": total - emb,
            "tied": bool(conf.tie_word_embeddings), "vocab": conf.vocab_size, "hidden": conf.hidden_size,
            "layers": conf.num_hidden_layers, "heads": conf.num_attention_heads,
            "kv_heads": conf.num_key_value_heads, "intermediate": conf.intermediate_size,
            "max_positions": conf.max_position_embeddings}


def flops_per_token(n_matmul: int, layers: int, hidden: int, t_eff: float, train: bool) -> float:
    f = 6 * n_matmul + 12 * layers * hidden * t_eff
    return f if train else f / 3


def reset_memory(placement) -> None:
    gc.collect()
    if placement.cuda:
        import torch

        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def memory_mb(placement) -> dict:
    from components.models.hardware import peak_memory

    m = peak_memory()
    if placement.cuda:
        import torch

        return {"peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20, "peak_rss_mb": m["peak_rss_mb"]}
    return {"peak_rss_mb": m["peak_rss_mb"]}  # ru_maxrss: the process's peak so far (monotone)


def sync(placement) -> None:
    if placement.cuda:
        import torch

        torch.cuda.synchronize()


def sequence_lengths(inputs: dict):
    """The real sequences' lengths in a batch of model inputs: by the attention mask when padded, by
    where the position ids restart when packed (one row, components/models/packing.py), else rows."""
    import torch

    ids, mask, pos = inputs.get("input_ids"), inputs.get("attention_mask"), inputs.get("position_ids")
    if mask is not None:
        return mask.sum(dim=1)
    if pos is not None:
        starts = torch.nonzero(pos.reshape(-1) == 0).reshape(-1)
        ends = torch.cat([starts[1:], torch.tensor([pos.numel()], device=pos.device)])
        return ends - starts
    return torch.full((ids.shape[0],), ids.shape[1], device=ids.device)


def finish(row: dict, shape: dict, n_matmul: int, train: bool, peak: float | None) -> dict:
    """tokens/s, T_eff, FLOPs/token and MFU of a measured row (tokens, sq_tokens, padded, seconds)."""
    sec = max(row["seconds"], 1e-9)
    row["tokens_per_s"] = row["tokens"] / sec
    row["padded_tokens_per_s"] = row["padded_tokens"] / sec if row.get("padded_tokens") else None
    if row.get("sq_tokens"):
        row["t_eff"] = row["sq_tokens"] / max(1, row["tokens"])
        row["n_matmul_params"] = n_matmul
        row["flops_per_token"] = flops_per_token(n_matmul, shape["layers"], shape["hidden"], row["t_eff"], train)
        row["model_flops_per_s"] = row["flops_per_token"] * row["tokens_per_s"]
        row["mfu"] = row["model_flops_per_s"] / peak if peak else None
        row["mfu_incl_pad"] = (row["flops_per_token"] * row["padded_tokens_per_s"] / peak
                               if peak and row["padded_tokens_per_s"] else None)
    return row


# ------------------------------------------------------------------------------------- measurements

def measure_sft(base_dir: Path, work: Path, rows: list[dict], spec: dict, placement, seed: int,
                max_tokens: int | None = None) -> dict:
    import torch
    from transformers import TrainerCallback

    from components.models.sft import make_trainer

    batch, warmup, steps = spec["batch"], spec["warmup"], spec["steps"]
    pairs = [(r["question"] + "\n", r["answer"]) for r in need(rows, batch * (warmup + steps))]
    reset_memory(placement)
    t0 = time.perf_counter()
    trainer = make_trainer(base_dir, work / "sft-out", pairs, epochs=1.0, lr=1e-4, batch_size=batch, seed=seed,
                           placement=placement, max_tokens_per_batch=max_tokens)
    setup_s = time.perf_counter() - t0

    class Window(TrainerCallback):
        """Clocks steps warmup+1..end (syncing only at the two ends) and counts their non-pad tokens."""

        def __init__(self):
            self.active, self.t0, self.t1 = False, None, None
            self.tokens = self.sq = 0  # device tensors while active (no sync per step)
            self.padded, self.batches = 0, 0

        def on_step_begin(self, args, state, control, **kw):
            if state.global_step == warmup and self.t0 is None:
                sync(placement)
                self.active, self.t0 = True, time.perf_counter()

        def on_train_end(self, args, state, control, **kw):
            sync(placement)
            self.t1, self.active = time.perf_counter(), False

        def hook(self, module, args, kwargs):
            if not self.active:
                return
            lens, ids = sequence_lengths(kwargs), kwargs.get("input_ids")
            self.tokens = self.tokens + lens.sum()
            self.sq = self.sq + (lens.double() ** 2).sum()
            self.padded += ids.numel()
            self.batches += 1

    win = Window()
    trainer.add_callback(win)
    handle = trainer.model.register_forward_pre_hook(win.hook, with_kwargs=True)
    t0 = time.perf_counter()
    trainer.train()
    total_s = time.perf_counter() - t0
    handle.remove()
    ds = trainer.train_dataset
    dataset_tokens = sum(len(x) for x in ds["input_ids"]) if "input_ids" in ds.column_names else None
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    row = {"measure": "sft", "batch": batch, "warmup_steps": warmup, "steps": trainer.state.global_step,
           "timed_steps": win.batches, "tokens": int(win.tokens), "sq_tokens": float(win.sq),
           "padded_tokens": win.padded, "seconds": win.t1 - win.t0, "total_train_s": total_s,
           "setup_s": setup_s, "dataset_tokens": dataset_tokens, "loss_first": losses[0] if losses else None,
           "loss_last": losses[-1] if losses else None, **memory_mb(placement)}
    del trainer
    return row


def measure_prm_train(base_dir: Path, prm_dir: Path, rows: list[dict], spec: dict, placement, seed: int,
                      threads: int | None, max_tokens: int | None = None) -> dict:
    from components.models import prm_training

    batch, steps = spec["batch"], spec["steps"]
    # fit runs ceil(n_train / batch) steps for one epoch; n_train is ~90% of the examples (held-out 10%).
    n = math.ceil((steps + 1) * batch / 0.9) + 1
    examples = prm_examples(need(rows, n), seed)
    marks: list[tuple[int, float, dict]] = []  # (step, time, counts) at each of fit's log calls
    reset_memory(placement)
    with counted_batches() as counts:
        t0 = time.perf_counter()
        stats = prm_training.train_prm(base_dir, prm_dir, examples, epochs=1.0, lr=1e-4, batch_size=batch, seed=seed,
                                       soft=True, heldout_fraction=0.1, threads=threads, placement=placement,
                                       log=lambda step, m: marks.append((step, time.perf_counter(), dict(counts))),
                                       step_separator="\n", max_tokens_per_batch=max_tokens)
        total_s = time.perf_counter() - t0
    mem = memory_mb(placement)
    (s0, t_first, c0), (s1, t_last, c1) = marks[0], marks[-1]
    row = {"measure": "prm-train", "batch": batch, "steps": stats["steps"], "warmup_steps": 1,
           "timed_steps": s1 - s0, "seconds": t_last - t_first, "fit_seconds": stats["seconds"],
           "total_s": total_s, "n_train": stats.get("n_train"), "loss_first": stats.get("loss_first"),
           "loss_last": stats.get("loss_last"), **mem}
    row.update(tokens=c1["tokens"] - c0["tokens"], sq_tokens=c1["sq"] - c0["sq"],
               padded_tokens=c1["padded"] - c0["padded"], tokens_counted="exact (packing.layout)")
    return row


def measure_lm_train(base_dir: Path, rows: list[dict], spec: dict, placement, seed: int,
                     max_tokens: int | None = None) -> dict:
    """The bootstrap's path: components.models.causal_lm.train_causal_lm (fit, the model's own loss or
    the fused one), timed like prm-train from the end of its first step to the end of its last."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from components.config_sections import TrainConfig
    from components.models.causal_lm import train_causal_lm

    batch, steps = spec["batch"], spec["steps"]
    pairs = [(r["question"] + "\n", r["answer"]) for r in need(rows, batch * (steps + 1))]
    reset_memory(placement)
    model = AutoModelForCausalLM.from_pretrained(str(base_dir), **placement.train_load_args()).to(placement.device)
    tok = AutoTokenizer.from_pretrained(str(base_dir))
    marks: list[tuple[int, float, dict]] = []
    cfg = TrainConfig(epochs=1.0, lr=1e-4, batch_size=batch, max_tokens_per_batch=max_tokens)
    with counted_batches() as counts:
        stats = train_causal_lm(model, tok, pairs, cfg, seed, placement=placement,
                                log=lambda step, m: marks.append((step, time.perf_counter(), dict(counts))))
    (s0, t_first, c0), (s1, t_last, c1) = marks[0], marks[-1]
    row = {"measure": "lm-train", "batch": batch, "steps": stats["steps"], "warmup_steps": 1,
           "timed_steps": s1 - s0, "seconds": t_last - t_first, "fit_seconds": stats["seconds"],
           "loss_first": stats["loss_first"], "loss_last": stats["loss_last"], **memory_mb(placement),
           "tokens": c1["tokens"] - c0["tokens"], "sq_tokens": c1["sq"] - c0["sq"],
           "padded_tokens": c1["padded"] - c0["padded"], "tokens_counted": "exact (packing.layout)"}
    del model
    return row


@contextlib.contextmanager
def counted_batches():
    """Counts the real tokens, their squares and the positions computed of every training batch fit
    builds (they all go through components.models.packing.layout), while the block runs."""
    from components.models import packing

    counts = {"tokens": 0, "sq": 0, "padded": 0, "batches": 0}
    orig = packing.layout

    def counting(seqs, *a, **kw):
        out = orig(seqs, *a, **kw)
        counts["tokens"] += sum(map(len, seqs))
        counts["sq"] += sum(len(x) ** 2 for x in seqs)
        counts["padded"] += out["input_ids"].numel()
        counts["batches"] += 1
        return out

    packing.layout = counting
    try:
        yield counts
    finally:
        packing.layout = orig


def measure_prm_score(prm_dir: Path, rows: list[dict], spec: dict, placement, max_len: int, seed: int) -> dict:
    from components.models import prm, prm_scoring

    n, bs = spec["score"], spec["score_batch"]
    ex = prm_examples(need(rows, n + bs), seed + 1)
    warm, ex = ex[:bs], ex[bs:]
    reset_memory(placement)
    t0 = time.perf_counter()
    scorer = prm_scoring.TransformersPRM(prm_dir, max_model_len=max_len, batch_size=bs, placement=placement)
    load_s = time.perf_counter() - t0
    lens = [len(scorer.tok(prm.format_input(e["prompt"], e["steps"], scorer.fmt))["input_ids"]) for e in ex]
    keep = [e for e, n_tok in zip(ex, lens) if n_tok <= max_len]
    lens = [x for x in lens if x <= max_len]
    scorer.score([e["prompt"] for e in warm], [e["steps"] for e in warm])
    sync(placement)
    t0 = time.perf_counter()
    probs = scorer.score([e["prompt"] for e in keep], [e["steps"] for e in keep])
    sync(placement)
    sec = time.perf_counter() - t0
    row = {"measure": "prm-score", "batch": bs, "traces": len(keep), "steps_scored": sum(len(p) for p in probs),
           "tokens": sum(lens), "sq_tokens": float(sum(x * x for x in lens)), "padded_tokens": None,
           "seconds": sec, "load_s": load_s, **memory_mb(placement)}
    del scorer
    return row


def measure_generate(base_dir: Path, rows: list[dict], spec: dict, placement, max_len: int, seed: int) -> dict:
    from components.config_sections import GenerationConfig
    from components.models.generation import Sampling, TransformersBackend

    n_p, k, max_tokens = spec["gen_prompts"], spec["gen_n"], spec["max_tokens"]
    picked = need(rows, n_p + 2)
    prompts, warm = [r["question"] + "\n" for r in picked[2:]], [r["question"] + "\n" for r in picked[:2]]
    reset_memory(placement)
    t0 = time.perf_counter()
    engine = TransformersBackend(str(base_dir), GenerationConfig(backend="transformers"), max_len,
                                 placement=placement)
    load_s = time.perf_counter() - t0
    engine.generate(warm, Sampling(n=k, temperature=0.8, max_tokens=min(16, max_tokens), seed=seed))
    sync(placement)
    t0 = time.perf_counter()
    outs = engine.generate(prompts, Sampling(n=k, temperature=0.8, max_tokens=max_tokens, seed=seed))
    sync(placement)
    sec = time.perf_counter() - t0
    samples = [s for row in outs for s in row]
    tokens = sum(len(s.token_ids) for s in samples)
    row = {"measure": "generate", "prompts": len(prompts), "n": k, "max_tokens": max_tokens,
           "sequences": len(samples), "finished_by_length": sum(s.finish_reason == "length" for s in samples),
           "tokens": tokens, "padded_tokens": None, "seconds": sec, "load_s": load_s,
           "batch_prompts": engine.batch_size, **memory_mb(placement)}
    del engine
    return row


def run_size(name: str, spec: dict, rows: list[dict], corpus: list[str], work: Path, placement, peak, args) -> dict:
    from components.models.tiny import build_qwen2_checkpoint

    base_dir, prm_dir = work / f"{name}-base", work / f"{name}-prm"
    t0 = time.perf_counter()
    build_qwen2_checkpoint(base_dir, corpus, hidden_size=spec["hidden"], layers=spec["layers"],
                           heads=spec["heads"], kv_heads=spec["kv_heads"], intermediate_size=spec["intermediate"],
                           vocab_size=spec["vocab"], max_positions=spec["max_positions"], seed=args.seed)
    build_s = time.perf_counter() - t0
    shape = model_shape(base_dir)
    shape["vocab_asked"] = spec["vocab"]
    print(f"[{name}] built in {build_s:.1f} s: {shape['params'] / 1e6:.1f}M params "
          f"({shape['non_embedding_params'] / 1e6:.1f}M non-embedding), vocab {shape['vocab']:,} "
          f"(asked {spec['vocab']:,})", flush=True)
    lm_matmul = shape["non_embedding_params"] + shape["vocab"] * shape["hidden"]  # + tied LM head
    prm_matmul = shape["non_embedding_params"] + 2 * shape["hidden"]  # + the 2-way head; embedding = lookup
    max_len = spec["max_positions"]
    res = {"size": name, "spec": spec, "model": shape, "build_s": build_s, "rows": []}
    for n_layout, layout in enumerate(args.layouts):
        pl = dataclasses.replace(placement, packing=LAYOUTS[layout][0], fused_loss=LAYOUTS[layout][1])
        budget = args.max_tokens_per_batch
        steps = [("sft", lambda: finish(measure_sft(base_dir, work, rows, spec, pl, args.seed, budget),
                                        shape, lm_matmul, True, peak)),
                 ("lm-train", lambda: finish(measure_lm_train(base_dir, rows, spec, pl, args.seed, budget),
                                             shape, lm_matmul, True, peak)),
                 ("prm-train", lambda: finish(measure_prm_train(base_dir, prm_dir, rows, spec, pl, args.seed,
                                                                args.threads, budget), shape, prm_matmul, True, peak)),
                 ("prm-score", lambda: finish(measure_prm_score(prm_dir, rows, spec, pl, max_len, args.seed),
                                              shape, prm_matmul, False, peak)),
                 ("generate", lambda: finish(measure_generate(base_dir, rows, spec, pl, max_len, args.seed),
                                             shape, lm_matmul, False, None))]
        for what, fn in steps:
            if what not in args.measure or (what == "generate" and n_layout):  # generation has no layout
                continue
            if what == "prm-score" and not (prm_dir / "config.json").is_file():
                print(f"[{name}] prm-score skipped: needs the PRM that prm-train writes", flush=True)
                continue
            try:
                row = {"layout": layout, **fn()}
            except Exception as e:  # noqa: BLE001 - one broken measurement must not lose the others
                if args.fail_fast:
                    raise
                import traceback

                traceback.print_exc()
                row = {"layout": layout, "measure": what, "error": f"{type(e).__name__}: {e}"}
            res["rows"].append(row)
            if "error" not in row:
                mfu = f", MFU {row['mfu']:.1%}" if row.get("mfu") is not None else ""
                print(f"[{name}] {what} {layout}: {row['tokens']:,} tokens in {row['seconds']:.2f} s = "
                      f"{row['tokens_per_s']:,.0f} tokens/s{mfu}", flush=True)
            reset_memory(placement)
    return res


# ---------------------------------------------------------------------------------------------- table

def print_table(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    s = report["settings"]
    dev = report["device"]
    where = f"{dev['gpu']}, {s['dtype']}" if dev.get("cuda") else f"CPU, {s['dtype']}"
    t = Table(title=f"Training / inference throughput through the product's paths ({where}; data: {s['data_name']})",
              caption=(f"tokens = non-pad tokens; pad% = padded positions that are not tokens; MFU = PaLM FLOPs "
                       f"(6N + 12*L*d*T training, a third for a forward) / peak; peak: {s['peak_note']}. "
                       f"Target: training >= {TARGET_MFU:.0%} MFU on an H100. Memory: "
                       + ("torch.cuda.max_memory_allocated per measurement." if dev.get("cuda") else
                          "peak RSS of the process so far (monotone, not per measurement).")),
              caption_justify="left")
    for col in ["size", "params", "vocab", "measure", "layout", "batch", "timed", "tokens", "pad%", "T_eff", "seconds",
                "tokens/s", "MFU", "target", "peak MiB", "loss"]:
        t.add_column(col, justify="left" if col in ("size", "measure") else "right")
    for r in report["results"]:
        m = r["model"]
        first = True
        for row in r["rows"]:
            lead = ([r["size"], f"{m['params'] / 1e6:.1f}M", f"{m['vocab']:,}"] if first else ["", "", ""])
            first = False
            if "error" in row:
                t.add_row(*lead, row["measure"], row["layout"], *[""] * 10, "[red]" + row["error"][:60])
                continue
            timed = {"sft": f"{row.get('timed_steps')} st", "prm-train": f"{row.get('timed_steps')} st",
                     "lm-train": f"{row.get('timed_steps')} st",
                     "prm-score": f"{row.get('traces')} tr",
                     "generate": f"{row.get('sequences')} seq"}[row["measure"]]
            batch = (f"{row['prompts']}x{row['n']}" if row["measure"] == "generate" else str(row.get("batch")))
            pad = (f"{1 - row['tokens'] / row['padded_tokens']:.0%}" if row.get("padded_tokens") else "")
            mfu = ("n/a" if not dev.get("cuda") or row["measure"] == "generate"
                   else (f"{row['mfu']:.1%}" if row.get("mfu") is not None else "?"))
            target = f">= {TARGET_MFU:.0%}" if row["measure"] in ("sft", "lm-train", "prm-train") else ""
            mem = row.get("peak_gpu_mb", row.get("peak_rss_mb"))
            loss = (f"{row['loss_first']:.2f}->{row['loss_last']:.2f}"
                    if row.get("loss_first") is not None and row.get("loss_last") is not None else "")
            t.add_row(*lead, row["measure"], row["layout"], batch, timed, f"{row['tokens']:,}", pad,
                      f"{row['t_eff']:.0f}" if row.get("t_eff") else "", f"{row['seconds']:.2f}",
                      f"{row['tokens_per_s']:,.0f}", mfu, target, f"{mem:,.0f}" if mem else "", loss)
        t.add_section()
    Console(width=180).print(t)


# ----------------------------------------------------------------------------------------------- main

def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--size", choices=[*SIZES, "all"], help="model size; default: all (125m, 500m) on a GPU, "
                    "tiny on the CPU")
    ap.add_argument("--data", help=f"GSM8K-style jsonl (question, answer); default {DEFAULT_DATA} if present, "
                    "else synthetic problems")
    ap.add_argument("--steps", type=int, help="timed training steps (SFT and PRM); default per size")
    ap.add_argument("--warmup", type=int, help="SFT steps before the timed window; default per size")
    ap.add_argument("--batch-size", type=int, help="SFT and PRM training batch size; default per size")
    ap.add_argument("--examples", type=int, help="traces the PRM scores (timed); default per size")
    ap.add_argument("--gen-prompts", type=int, help="prompts generated for; default per size")
    ap.add_argument("--gen-n", type=int, help="samples per prompt; default per size")
    ap.add_argument("--max-tokens", type=int, help="generated tokens per sample at most; default per size")
    ap.add_argument("--vocab", type=int, help="BPE vocab asked for (reached if the corpus allows); default per size")
    ap.add_argument("--measure", default="sft,lm-train,prm-train,prm-score,generate",
                    help="measurements, comma-separated")
    ap.add_argument("--layouts", default="padded,packed,packed+fused",
                    help=f"training batch layouts, comma-separated, of {', '.join(LAYOUTS)}")
    ap.add_argument("--max-tokens-per-batch", type=int,
                    help="training batches sized in tokens (the configs' max_tokens_per_batch) instead of --batch-size")
    ap.add_argument("--peak-tflops", type=float, help="the card's dense bf16 peak, for a card not in the table")
    ap.add_argument("--threads", type=int, help="torch threads for the PRM training (train_prm's threads)")
    ap.add_argument("--work-dir", help="where model folders go (kept); default a temporary folder (removed)")
    ap.add_argument("--fail-fast", action="store_true", help="stop at the first failing measurement")
    ap.add_argument("--group-by-length", action="store_true",
                    help="training batches of similar lengths (hardware.group_by_length): less padding")
    ap.add_argument("--attention", default="auto", help="hardware.attention: auto, sdpa, eager, flex_attention, "
                    "flash_attention_2, flash_attention_4 (what a packed row runs through)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", help="JSON results; default benchmarks/results/gpu-<host>.json")
    args = ap.parse_args(argv)
    args.measure = [m.strip() for m in args.measure.split(",") if m.strip()]
    bad = set(args.measure) - {"sft", "lm-train", "prm-train", "prm-score", "generate"}
    if bad:
        ap.error(f"--measure: unknown {sorted(bad)}")
    args.layouts = [x.strip() for x in args.layouts.split(",") if x.strip()]
    if set(args.layouts) - set(LAYOUTS) or not args.layouts:
        ap.error(f"--layouts: of {', '.join(LAYOUTS)}")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    t_start = time.perf_counter()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    from benchmarks.generation import machine_info
    from components.config_sections import HardwareConfig
    from components.models.hardware import resolve

    placement = resolve(HardwareConfig(group_by_length=args.group_by_length, attention=args.attention))
    dev = device_info()
    size = args.size or ("all" if placement.cuda else "tiny")
    names = list(GPU_SIZES) if size == "all" else [size]
    if not placement.cuda and any(n != "tiny" for n in names):
        print(f"[note] no CUDA device: {', '.join(names)} on the CPU in {placement.dtype} will be slow", flush=True)
    peak, peak_note = peak_flops(placement, args.peak_tflops)
    rows, data_name = load_rows(args.data, args.seed)
    random.Random(args.seed).shuffle(rows)
    corpus = [r["question"] + "\n" + r["answer"] for r in rows]
    print(f"[note] {placement.device} {placement.dtype}; {dev.get('gpu', 'no GPU')}; peak: {peak_note}; "
          f"data: {data_name} ({len(rows):,} rows); torch threads {torch.get_num_threads()}", flush=True)

    overrides = {"steps": args.steps, "warmup": args.warmup, "batch": args.batch_size, "score": args.examples,
                 "gen_prompts": args.gen_prompts, "gen_n": args.gen_n, "max_tokens": args.max_tokens,
                 "vocab": args.vocab}
    ctx = (contextlib.nullcontext(args.work_dir) if args.work_dir
           else tempfile.TemporaryDirectory(prefix="vstar-gpu-bench-"))
    results = []
    with ctx as work:
        work = Path(work)
        work.mkdir(parents=True, exist_ok=True)
        for name in names:
            spec = {**SIZES[name], **{k: v for k, v in overrides.items() if v is not None}}
            results.append(run_size(name, spec, rows, corpus, work, placement, peak, args))
    report = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
              "machine": {**machine_info(), "load_average_end": list(os.getloadavg())}, "device": dev,
              "settings": {"sizes": names, "device": placement.device, "dtype": placement.dtype,
                           "peak_flops": peak, "peak_note": peak_note, "target_mfu": TARGET_MFU,
                           "data": data_name, "data_name": Path(data_name).parent.name if data_name != "synthetic"
                           else "synthetic", "rows": len(rows), "measure": args.measure, "seed": args.seed,
                           "threads_prm": args.threads, "group_by_length": args.group_by_length,
                           "layouts": args.layouts, "attention": placement.attention,
                           "max_tokens_per_batch": args.max_tokens_per_batch},
              "total_s": time.perf_counter() - t_start, "results": results}
    out = Path(args.out or f"benchmarks/results/gpu-{socket.gethostname()}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    print_table(report)
    print(f"total {report['total_s']:.0f} s; results: {out}")
    return report


if __name__ == "__main__":
    main()
