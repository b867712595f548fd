"""Causal-LM training with the loss on the completion only (the prompt is masked out).

Used by the bootstrap, where a plain loop over short fixed-format examples is the fastest thing on
two cores (no padding waste beyond the batch, no framework start-up).
"""
from __future__ import annotations

import math
import random
import time
from typing import Any, Callable

from components.config_sections import TrainConfig
from components.models.hardware import CPU, Placement


def ensure_pad_token(tokenizer):
    """Many pretrained tokenizers ship without a pad token: pad with EOS. Padded positions are masked
    out of attention and loss everywhere here, so which id pads never changes a result."""
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def encode_examples(tokenizer, pairs: list[tuple[str, str]]) -> list[tuple[list[int], int]]:
    """(prompt, completion) -> (ids of BOS + prompt + completion + EOS, number of prompt ids)."""
    prompts = tokenizer([p for p, _ in pairs], add_special_tokens=True)["input_ids"]
    fulls = tokenizer([p + c for p, c in pairs], add_special_tokens=True)["input_ids"]
    eos = tokenizer.eos_token_id
    return [(full + [eos], len(pr)) for pr, full in zip(prompts, fulls)]


def collate(batch: list[tuple[list[int], int]], pad_id: int):
    import torch

    width = max(len(ids) for ids, _ in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), -100, dtype=torch.long)
    attn = torch.zeros((len(batch), width), dtype=torch.long)
    for i, (ids, n_prompt) in enumerate(batch):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        labels[i, n_prompt : len(ids)] = torch.tensor(ids[n_prompt:])
        attn[i, : len(ids)] = 1
    return input_ids, attn, labels


def fit(model, n_items: int, batch_loss: Callable[[list[int]], Any], epochs: float, lr: float,
        batch_size: int, seed: int, warmup_ratio: float = 0.05, log: Callable[[int, dict], None] | None = None,
        threads: int | None = None, placement: Placement = CPU) -> dict:
    """The training loop of the bootstrap LM and the PRM: AdamW, linear warmup then cosine, shuffled
    epochs, on `placement` (the model is moved there; `batch_loss(indices)` gets its batches onto
    `placement.device` and runs under its autocast). Returns {'loss_first', 'loss_last', 'steps', 'seconds'}.

    Hand-written rather than transformers' Trainer because it is faster on CPU, where the demo runs:
    benchmarks/training_loop.py measures both on the same model and data."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    model.to(placement.device)
    if placement.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    rng = random.Random(seed)
    torch.manual_seed(seed)
    steps = max(1, math.ceil(n_items * epochs / batch_size))
    warmup = int(steps * warmup_ratio)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / (warmup + 1) if s < warmup else 0.5 * (1 + math.cos(math.pi * (s - warmup) / max(1, steps - warmup))))
    model.train()
    order: list[int] = []
    losses: list[float] = []
    t0 = time.perf_counter()
    for step in range(steps):
        if len(order) < batch_size:
            more = list(range(n_items))
            rng.shuffle(more)
            order += more
        idx, order = order[:batch_size], order[batch_size:]
        with placement.autocast():
            loss = batch_loss(idx)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if log and (step % 50 == 0 or step == steps - 1):
            log(step, {"train_loss": sum(losses[-50:]) / len(losses[-50:]), "lr": sched.get_last_lr()[0]})
    model.eval()
    k = max(1, min(20, len(losses)))
    return {"loss_first": sum(losses[:k]) / k, "loss_last": sum(losses[-k:]) / k, "steps": steps,
            "seconds": time.perf_counter() - t0}


def train_causal_lm(model, tokenizer, pairs: list[tuple[str, str]], cfg: TrainConfig, seed: int,
                    log: Callable[[int, dict], None] | None = None, threads: int | None = None,
                    placement: Placement = CPU) -> dict:
    """Train in place on (prompt, completion) pairs, loss on the completion only."""
    ensure_pad_token(tokenizer)
    data = encode_examples(tokenizer, pairs)

    def batch_loss(idx: list[int]):
        batch = collate([data[i] for i in idx], tokenizer.pad_token_id)
        input_ids, attn, labels = (t.to(placement.device) for t in batch)
        return model(input_ids=input_ids, attention_mask=attn, labels=labels).loss

    return fit(model, len(data), batch_loss, cfg.epochs, cfg.lr, cfg.batch_size, seed, cfg.warmup_ratio, log, threads,
               placement)
