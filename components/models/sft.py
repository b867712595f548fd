"""Supervised fine-tuning of the generator on (prompt, completion) pairs with TRL's SFTTrainer.

The V-STaR round's "train the generator on its own filtered solutions" step, through TRL: it starts
from a trained checkpoint and may train a LoRA adapter (PEFT, completion-only loss and logging come
with SFTTrainer); the bootstrap and the PRM train through components.models.causal_lm.fit.

What TRL 1.16 does with a prompt-completion dataset (read from trl/trainer/sft_trainer.py, checked
by tests/test_sft.py):
- `completion_only_loss=None` (the default) turns on completion-only loss when the data has
  "prompt" and "completion" columns; we pass True anyway so a TRL default change can't silently
  train on the prompts.
- it appends `tokenizer.eos_token` as *text* to each completion; our tokenizer maps "</s>" to the
  EOS id, so every sequence ends in exactly one EOS (the model learns to stop).
- it tokenizes with `tokenizer(text)` (add_special_tokens=True): our post-processor adds BOS once.
- the completion starts where tokenize(prompt) and tokenize(prompt + completion) diverge, so the
  mask is right as long as the prompt ends on a token boundary (ours end in "\n", a token).

vLLM with an adapter from `sft(..., lora=...)`: start the engine on the *base* model with
`enable_lora=True, max_lora_rank=<r>` (e.g. `VLLMBackend(base_dir, gen_cfg, max_len, enable_lora=True,
max_lora_rank=8)`) and pass `vllm_lora_request(out_dir)` to `generate(..., lora_request=...)`.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Callable

from components.config_training import LoraConfig
from components.models.causal_lm import progress_callback, warmup_steps
from components.models.hardware import CPU, Placement, data_parallel_size, per_process_batch

ADAPTER_BASE = "adapter_base.json"
ADAPTER_CONFIG = "adapter_config.json"  # PEFT's


def _peft_config(lora: LoraConfig):
    from peft import LoraConfig as PeftLoraConfig

    return PeftLoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                          target_modules=list(lora.target_modules), bias="none", task_type="CAUSAL_LM")


def adapter_lora(folder: str | Path) -> LoraConfig | None:
    """The LoraConfig an adapter folder saved by `sft` was trained with (PEFT's adapter_config.json), None
    for a full checkpoint: what serving sizes its engine by, whatever the config of the run reading it says."""
    saved = Path(folder) / ADAPTER_CONFIG
    if not saved.exists():
        return None
    c = json.loads(saved.read_text())
    return LoraConfig(r=c["r"], alpha=c["lora_alpha"], dropout=c.get("lora_dropout", 0.0),
                      target_modules=sorted(c["target_modules"]))


def load_trainable(base_dir: str | Path, lora: LoraConfig | None, adapter_dir: str | Path | None, placement: Placement):
    """The model a generator trainer (SFT, GRPO) trains, and the PEFT config of a new adapter (None for the
    whole model, or an adapter in `adapter_dir` whose training goes on)."""
    from transformers import AutoModelForCausalLM

    # Trained weights stay float32 (the Trainer autocasts to the placement's dtype); a LoRA adapter's
    # frozen base is loaded in that dtype, which halves its memory on a GPU.
    full = lora is None and adapter_dir is None
    model = AutoModelForCausalLM.from_pretrained(str(base_dir), **(placement.train_load_args() if full
                                                                   else placement.load_args()))
    if adapter_dir is not None:
        from peft import PeftModel

        return PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=True), None
    return model, _peft_config(lora) if lora is not None else None


def save_trained(trainer, out_dir: str | Path, adapter_base_uri: str | None) -> None:
    """Save a trained generator (model or adapter, and its tokenizer) as serving reads it back; an adapter
    names its base (`adapter_base_uri`) in adapter_base.json."""
    # transformers' Trainer sets config.use_cache = args.use_cache (False) for training; without this the saved
    # checkpoint would make transformers' generate run without its KV cache.
    trainer.model.config.use_cache = True
    # On a PeftModel, save_pretrained writes adapter_config.json + adapter_model.safetensors only.
    trainer.model.save_pretrained(str(out_dir))
    trainer.processing_class.save_pretrained(str(out_dir))
    if adapter_base_uri is not None:
        (Path(out_dir) / ADAPTER_BASE).write_text(json.dumps({"base_uri": adapter_base_uri}))


def make_trainer(base_dir: str | Path, out_dir: str | Path, pairs: list[tuple[str, str]], epochs: float, lr: float,
                 batch_size: int, seed: int, lora: LoraConfig | None = None, log: Callable[[int, dict], None] | None = None,
                 warmup_ratio: float = 0.05, placement: Placement = CPU, adapter_dir: str | Path | None = None,
                 max_tokens_per_batch: int | None = None):
    """An SFTTrainer ready to `.train()`; its `train_dataset` is already tokenized (tests inspect it).
    `adapter_dir`: a LoRA adapter (on `base_dir`) whose training goes on, instead of a new one.
    `placement.packing`: each batch flattened into one row (TRL's padding_free); `max_tokens_per_batch`:
    TRL's best-fit-decreasing packs of that many tokens, one per process and step."""
    from datasets import Dataset
    from transformers import AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    tok = AutoTokenizer.from_pretrained(str(base_dir))  # no pad token: TRL pads with EOS (and says so in the config)
    model, peft_config = load_trainable(base_dir, lora, adapter_dir, placement)
    if max_tokens_per_batch:
        budget = max_tokens_per_batch // data_parallel_size()
        _refuse_longer_than(tok, pairs, budget)
        # Packs are what a step takes; their number is known once TRL has packed (warmup is set then).
        per_device, steps, sizing = 1, 1, {"packing": True, "packing_strategy": "bfd", "max_length": budget}
    else:
        per_device, steps = per_process_batch(batch_size), max(1, math.ceil(len(pairs) * epochs / batch_size))
        # Longer sequences than the model's positions can't be trained on; TRL truncates (keep_start).
        # A padding-free batch is one row whose positions restart at each sequence: nothing to truncate
        # (and TRL refuses a max_length there); the loop's traces are far shorter than the positions.
        sizing = ({"padding_free": True, "max_length": None} if placement.packing
                  else {"max_length": model.config.max_position_embeddings})
    args = SFTConfig(
        output_dir=str(out_dir), num_train_epochs=epochs, learning_rate=lr, per_device_train_batch_size=per_device,
        seed=seed, data_seed=seed, lr_scheduler_type="cosine", warmup_steps=warmup_steps(steps, warmup_ratio),
        **placement.trainer_args(), report_to=[], save_strategy="no", dataloader_num_workers=0,
        # ~50 points per curve however long the run; a loss point costs nothing beyond the step itself.
        logging_steps=max(1, steps // 50), logging_first_step=True, disable_tqdm=True,
        completion_only_loss=True, include_num_input_tokens_seen="non_padding",
        train_sampling_strategy="group_by_length" if placement.group_by_length and not max_tokens_per_batch else "random",
        **sizing,
    )
    callbacks = [progress_callback()]
    if log is not None:
        class _Stream(TrainerCallback):
            """Forwards each logged training loss (e.g. to MLflow) while training runs."""

            def on_log(self, args, state, control, logs=None, **kw):
                if logs and "loss" in logs:  # not the end-of-training summary, which has "train_loss"
                    log(state.global_step, {"train_loss": float(logs["loss"]),
                                            "lr": float(logs.get("learning_rate", 0.0))})

        callbacks.append(_Stream())
    data = Dataset.from_list([{"prompt": p, "completion": c} for p, c in pairs])
    trainer = SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tok,
                         peft_config=peft_config, callbacks=callbacks)
    if max_tokens_per_batch:
        steps = max(1, math.ceil(len(trainer.train_dataset) * epochs / data_parallel_size()))
        trainer.args.warmup_steps, trainer.args.logging_steps = warmup_steps(steps, warmup_ratio), max(1, steps // 50)
    return trainer


def _refuse_longer_than(tok, pairs: list[tuple[str, str]], budget: int) -> None:
    """TRL's packing would cut a sequence longer than a pack and train on the rest: refuse instead."""
    lengths = [len(ids) + 1 for ids in tok([p + c for p, c in pairs])["input_ids"]]  # + the EOS TRL appends
    longest = max(range(len(lengths)), key=lengths.__getitem__)
    if lengths[longest] > budget:
        raise ValueError(f"max_tokens_per_batch {budget} (per process) is shorter than training pair {longest} "
                         f"({lengths[longest]} tokens): raise it")


def adapter_base(folder: str | Path) -> str | None:
    """The base model URI of a LoRA adapter folder saved by `sft`, None for a full checkpoint."""
    marker = Path(folder) / ADAPTER_BASE
    return json.loads(marker.read_text())["base_uri"] if marker.exists() else None


def sft(base_dir: str | Path, out_dir: str | Path, pairs: list[tuple[str, str]], epochs: float, lr: float,
        batch_size: int, seed: int, lora: LoraConfig | None = None, log: Callable[[int, dict], None] | None = None,
        warmup_ratio: float = 0.05, base_uri: str | None = None, placement: Placement = CPU,
        adapter_dir: str | Path | None = None, max_tokens_per_batch: int | None = None) -> dict:
    """Fine-tune the model in `base_dir` on `pairs` and save the result to `out_dir`.

    Full fine-tuning saves model + tokenizer. With `lora` (its target modules get an adapter) only the
    adapter is saved (not merged: vLLM serves it on top of the base) with the tokenizer and `adapter_base.json`
    naming the base (`base_uri`: where a reader finds it again, e.g. its store URI; default `base_dir`).
    Returns {'loss_first', 'loss_last', 'steps', 'seconds', 'train_tokens', 'train_flops' (~6 x params x
    tokens seen), 'log_history': [{'step', 'loss', 'lr'}, ...]}.
    """
    out_dir = Path(out_dir)
    trainer = make_trainer(base_dir, out_dir, pairs, epochs, lr, batch_size, seed, lora, log, warmup_ratio, placement,
                           adapter_dir, max_tokens_per_batch)
    t0 = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - t0
    save_trained(trainer, out_dir, base_uri or str(base_dir) if lora is not None or adapter_dir is not None else None)
    history = [{"step": h["step"], "loss": h["loss"], "lr": h.get("learning_rate")}
               for h in trainer.state.log_history if "loss" in h]
    params, tokens = trainer.model.num_parameters(), int(trainer.state.num_input_tokens_seen)
    return {"loss_first": history[0]["loss"] if history else None,
            "loss_last": history[-1]["loss"] if history else None,
            "steps": trainer.state.global_step, "seconds": seconds, "log_history": history,
            "train_tokens": tokens, "train_flops": 6.0 * params * tokens}  # ~6 x params x tokens seen


def vllm_lora_request(adapter_dir: str | Path, name: str | None = None, lora_id: int = 1):
    """A LoRARequest for an adapter saved by `sft(..., lora=...)`. The engine must have been started on the base
    model with `enable_lora=True, max_lora_rank >= r`. vLLM caches adapters by `lora_id`: give each adapter
    served by one engine its own id."""
    from vllm.lora.request import LoRARequest

    adapter_dir = Path(adapter_dir)
    return LoRARequest(name or adapter_dir.name, lora_id, str(adapter_dir.resolve()))


def training_pairs(rows_by_round: list[list[dict]], cap: int) -> list[tuple[str, str]]:
    """Distinct (prompt, completion) pairs of the kept rows, newest round first, at most `cap`: once
    the history outgrows the cap, the oldest rounds' traces are the ones left out."""
    newest_first = [r for rows in reversed(rows_by_round) for r in rows]
    return list(dict.fromkeys((r["prompt"], r["completion"]) for r in newest_first))[:cap]


def with_replay(pairs: list[tuple[str, str]], pool: list, share: float, rng, solve: Callable) -> tuple[list, int]:
    """Kept pairs mixed with `share` x as many replayed reference solutions (`solve(problem) -> pair`)
    from `pool`, shuffled: replay keeps the generator from forgetting what it learned before."""
    replay = rng.sample(pool, min(int(len(pairs) * share), len(pool)))
    data = pairs + [solve(p) for p in replay]
    rng.shuffle(data)
    return data, len(replay)
