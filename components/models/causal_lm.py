"""Causal-LM training with the loss on the completion only (the prompt is masked out).

Used by the bootstrap (the PRM trains through the same `fit`); batches are padded to their longest
example only, or packed without padding (`hardware.packing`, components/models/packing.py).
"""
from __future__ import annotations

import math
import time
from typing import Callable

from components.config_sections import TrainConfig
from components.models import packing
from components.models.hardware import CPU, Placement, data_parallel_size, per_process_batch


def ensure_pad_token(tokenizer):
    """Many pretrained tokenizers ship without a pad token: pad with EOS. Padded positions are masked
    out of attention and loss everywhere here, so which id pads never changes a result."""
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def token_logprobs(model, sequences: list[list[int]], pad_id: int, batch_size: int = 32,
                   top_k: int = 0) -> list[list[float | None]]:
    """Per sequence: None, then log P(token | the tokens before it) for each later token; right-padded
    batches of one forward pass each (causal attention leaves the real tokens alone). Reports progress.
    top_k > 0: instead of the token's own, DeepConf's token confidence at each position, -mean of the
    k largest log-probabilities there (all of them in a vocabulary smaller than k)."""
    import torch

    from components.runtime import progress

    device = next(model.parameters()).device
    result: list[list[float | None]] = []
    progress.report("sequences", 0, len(sequences))
    for start in range(0, len(sequences), batch_size):
        chunk = sequences[start : start + batch_size]
        input_ids = torch.full((len(chunk), max(map(len, chunk))), pad_id, dtype=torch.long)
        attn = torch.zeros_like(input_ids)
        for i, ids in enumerate(chunk):
            input_ids[i, : len(ids)], attn[i, : len(ids)] = torch.tensor(ids), 1
        with torch.no_grad():
            logits = model(input_ids=input_ids.to(device), attention_mask=attn.to(device)).logits
        logp = logits[:, :-1].float().log_softmax(-1)
        lp = (-logp.topk(min(top_k, logp.shape[-1]), dim=-1).values.mean(-1) if top_k
              else logp.gather(-1, input_ids[:, 1:, None].to(device))[..., 0]).cpu()
        result += [[None] + lp[i, : len(ids) - 1].tolist() for i, ids in enumerate(chunk)]
        progress.report("sequences", len(result), len(sequences))
    return result


def encode_examples(tokenizer, pairs: list[tuple[str, str]]) -> list[tuple[list[int], int]]:
    """(prompt, completion) -> (ids of BOS + prompt + completion + EOS, number of prompt ids)."""
    prompts = tokenizer([p for p, _ in pairs], add_special_tokens=True)["input_ids"]
    fulls = tokenizer([p + c for p, c in pairs], add_special_tokens=True)["input_ids"]
    eos = tokenizer.eos_token_id
    return [(full + [eos], len(pr)) for pr, full in zip(prompts, fulls)]


def completion_labels(ids: list[int], n_prompt: int) -> list[int]:
    """A causal LM's labels for one example: the completion's ids, -100 (ignored) on the prompt."""
    return [-100] * n_prompt + ids[n_prompt:]


def collate(batch: list[tuple[list[int], int]], pad_id: int):
    """A padded batch of (ids, number of prompt ids): input_ids, attention_mask, labels."""
    out = packing.pad([ids for ids, _ in batch], [completion_labels(*b) for b in batch], pad_id, -100)
    return out["input_ids"], out["attention_mask"], out["labels"]


def progress_callback():
    """A TrainerCallback that reports optimizer steps, examples/s and the last logged loss as live
    progress (components/runtime/progress.py): every step, the reporter throttles."""
    from transformers import TrainerCallback

    from components.runtime import progress

    class _Progress(TrainerCallback):
        loss, t0 = None, 0.0

        def on_train_begin(self, args, state, control, **kw):
            self.t0 = time.monotonic()
            progress.report("steps", 0, state.max_steps)

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                self.loss = float(logs["loss"])

        def on_step_end(self, args, state, control, **kw):
            per_step = args.per_device_train_batch_size * args.gradient_accumulation_steps * max(1, args.world_size)
            figures = {"ex/s": state.global_step * per_step / max(1e-9, time.monotonic() - self.t0)}
            if self.loss is not None:
                figures["loss"] = self.loss
            progress.report("steps", state.global_step, state.max_steps, **figures)

    return _Progress()


def length_grouped(items: list, batch_size: int, seed: int) -> list:
    """`items` ((ids, ...) tuples) reordered so that each run of `batch_size` holds similar lengths, in
    random batch order: what transformers' LengthGroupedSampler does (mega-batches of 50 batches sorted
    by length), for items it cannot measure. Less padding per batch; fit then samples sequentially."""
    import random

    rng = random.Random(seed)
    order = list(range(len(items)))
    rng.shuffle(order)
    batches = []
    for start in range(0, len(order), 50 * batch_size):
        mega = sorted(order[start : start + 50 * batch_size], key=lambda i: -len(items[i][0]))
        batches += [mega[k : k + batch_size] for k in range(0, len(mega), batch_size)]
    # Shuffle whole batches; a short one goes last, or every later batch boundary would shift by it.
    full, short = [b for b in batches if len(b) == batch_size], [b for b in batches if len(b) < batch_size]
    rng.shuffle(full)
    return [items[i] for batch in full + short for i in batch]


class _Items:
    """A list as a torch Dataset (what Trainer's sampler and collator take)."""

    def __init__(self, items: list):
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        return self.items[i]


def warmup_steps(steps: int, ratio: float) -> int:
    """Warmup as a whole number of steps, rounded down. transformers rounds a ratio up, so a run of a
    few steps (a round that kept a handful of traces) spent all of them warming up from learning rate
    0 and left the model as it was (a LoRA adapter's B matrices stayed zero)."""
    return int(steps * ratio)


def fit(model, items: list, collate: Callable[[list, bool], dict], epochs: float, lr: float, batch_size: int, seed: int,
        warmup_ratio: float = 0.05, log: Callable[[int, dict], None] | None = None, threads: int | None = None,
        placement: Placement = CPU, compute_loss: Callable | None = None, max_tokens_per_batch: int | None = None) -> dict:
    """Train `model` in place with transformers' Trainer (the bootstrap LM, the PRM): AdamW (weight
    decay 0.01 off biases and norms, betas 0.9/0.98), linear warmup then cosine, gradient clipping at
    1.0, ceil(len(items) x epochs / batch_size) steps over reshuffled epochs, on `placement` (mixed
    precision, gradient checkpointing, packed batches, the fused loss; DDP/FSDP come with the Trainer).
    `items` are tuples whose first element is the token ids; `collate(items, packed) -> dict` makes the
    model's inputs, one packed row when `packed` (packing.layout). `compute_loss(outputs, labels,
    num_items_in_batch)` replaces the model's own loss (the PRM's soft targets at step tags).
    `max_tokens_per_batch`: batches of up to that many tokens (global) instead of `batch_size` items.
    Returns {'loss_first', 'loss_last', 'steps', 'seconds', 'params', 'train_tokens' (non-padding
    tokens seen), 'train_flops' (~6 x params x tokens), 'examples_per_step', 'padding_share' (of the
    positions computed), 'packed'}.

    The Trainer rather than a loop of our own: benchmarks/training_loop.py measured the two at the same
    speed on CPU at the demo's size (fit/Trainer 0.96x median), and on a GPU the Trainer has the rest."""
    import tempfile

    import torch
    from transformers import PrinterCallback, Trainer, TrainerCallback, TrainingArguments

    if threads:
        torch.set_num_threads(threads)
    if getattr(model.config, "_attn_implementation", placement.attention) != placement.attention:
        model.set_attn_implementation(placement.attention)  # a model built from a config (the bootstrap's)
    points: list[tuple[int, float, float]] = []
    positions = {"real": 0, "computed": 0}

    class _Losses(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "loss" in logs:  # not the end-of-training summary ("train_loss")
                points.append((state.global_step, float(logs["loss"]), float(logs.get("learning_rate", 0.0))))
                if log:
                    log(state.global_step, {"train_loss": points[-1][1], "lr": points[-1][2]})

    if placement.group_by_length and not max_tokens_per_batch:
        items = length_grouped(items, batch_size, seed)
    if max_tokens_per_batch:  # each process takes its share of the budget, one batch of items at a time
        budget = max_tokens_per_batch // data_parallel_size()
        groups = packing.token_batches([len(it[0]) for it in items], budget, seed)
        dataset, per_device, flat = [[items[i] for i in g] for g in groups], 1, lambda bs: [it for b in bs for it in b]
        steps = max(1, math.ceil(len(groups) * epochs / data_parallel_size()))
    else:
        dataset, per_device, flat = items, per_process_batch(batch_size), lambda bs: bs
        steps = max(1, math.ceil(len(items) * epochs / batch_size))
    fused = placement.fused_loss and compute_loss is None
    if fused:  # TRL's chunked LM head: the loss without [batch, length, vocabulary] float32 logits
        from trl.trainer.utils import add_fused_lm_head

        add_fused_lm_head(model)

    def batch(bs: list) -> dict:
        out = collate(flat(bs), placement.packing)
        positions["computed"] += out["input_ids"].numel()
        positions["real"] += int(out["attention_mask"].sum()) if "attention_mask" in out else out["input_ids"].numel()
        return {**out, "fused_lm_head": True} if fused else out

    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(
            output_dir=tmp, max_steps=steps, learning_rate=lr, per_device_train_batch_size=per_device,
            weight_decay=0.01, adam_beta2=0.98, max_grad_norm=1.0, lr_scheduler_type="cosine",
            warmup_steps=warmup_steps(steps, warmup_ratio), seed=seed, data_seed=seed, report_to=[], save_strategy="no",
            dataloader_num_workers=0, remove_unused_columns=False, disable_tqdm=True,
            logging_steps=max(1, steps // 100), logging_first_step=True, **placement.trainer_args(),
            # the compute a verifier cost (issue #13); a packed row has no pads, and no mask to count by
            include_num_input_tokens_seen="all" if placement.packing else "non_padding",
            # Data-parallel: the Trainer scales each process's loss by the process count, assuming it was
            # divided by the items of the whole batch over every process; a `compute_loss` of our own
            # returns its process's own mean (the PRM's weighted mean over its tags), which DDP's
            # gradient averaging turns into the batch mean: no scaling then.
            average_tokens_across_devices=compute_loss is None,
            train_sampling_strategy="sequential" if placement.group_by_length and not max_tokens_per_batch else "random")
        use_cache = getattr(model.config, "use_cache", None)  # before the Trainer: it turns the cache off
        trainer = Trainer(model=model, args=args, train_dataset=_Items(dataset), data_collator=batch,
                          compute_loss_func=compute_loss, callbacks=[_Losses(), progress_callback()])
        trainer.remove_callback(PrinterCallback)  # losses go to `log`, not to stdout
        t0 = time.perf_counter()
        try:
            trainer.train()
        finally:
            if fused:  # the model's own forward again, for whoever uses it next
                del model.forward
        seconds = time.perf_counter() - t0
    if use_cache is not None:  # the Trainer turns the KV cache off for training; a saved model wants it back
        model.config.use_cache = use_cache
    model.eval()
    k = max(1, min(20, len(points) // 5))
    losses = [loss for _, loss, _ in points] or [math.nan]
    params, tokens = model.num_parameters(), int(trainer.state.num_input_tokens_seen)
    return {"loss_first": sum(losses[:k]) / k, "loss_last": sum(losses[-k:]) / k, "steps": steps, "seconds": seconds,
            "params": params, "train_tokens": tokens, "train_flops": 6.0 * params * tokens,
            "examples_per_step": len(items) * epochs / steps, "packed": float(placement.packing),
            "padding_share": 1 - positions["real"] / max(1, positions["computed"])}


def train_causal_lm(model, tokenizer, pairs: list[tuple[str, str]], cfg: TrainConfig, seed: int,
                    log: Callable[[int, dict], None] | None = None, threads: int | None = None,
                    placement: Placement = CPU) -> dict:
    """Train in place on (prompt, completion) pairs, loss on the completion only."""
    ensure_pad_token(tokenizer)

    def batch(items: list, packed: bool) -> dict:
        return packing.layout([ids for ids, _ in items], [completion_labels(*it) for it in items],
                              tokenizer.pad_token_id, -100, packed, shifted=True)

    return fit(model, encode_examples(tokenizer, pairs), batch, cfg.epochs, cfg.lr, cfg.batch_size, seed,
               cfg.warmup_ratio, log, threads, placement, max_tokens_per_batch=cfg.max_tokens_per_batch)
