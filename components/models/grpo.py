"""The generator trained by reinforcement learning: TRL's GRPOTrainer (Group Relative Policy
Optimization, Shao et al. 2024, DeepSeekMath) on prompts and a reward function.

Per optimizer step it samples `num_generations` completions of each of `batch_size / num_generations`
prompts from the policy (transformers' generate at `temperature`), rewards each, and pushes up the
log-probability of every token of a completion by its advantage, (r - mean of its group) / std of its
group; `beta` > 0 adds a KL penalty to the starting model (loaded as the reference). What TRL 1.16 does
that matters here (read from trl/trainer/grpo_trainer.py): a reward is one float per completion, so the
advantage is a sequence's and every one of its tokens gets it (no per-step credit); a group whose
rewards are all equal has advantage 0 and teaches nothing (`frac_reward_zero_std` in its log).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from components.config_training import LoraConfig
from components.models.causal_lm import progress_callback, warmup_steps
from components.models.hardware import CPU, Placement
from components.models.sft import load_trainable, save_trained

LOGGED = ("reward", "reward_std", "frac_reward_zero_std", "completions/mean_length", "kl", "entropy")


def grpo(base_dir: str | Path, out_dir: str | Path, prompts: list[str], reward: Callable, *, num_generations: int,
         batch_size: int, epochs: float, lr: float, beta: float, max_completion_length: int, temperature: float,
         seed: int, lora: LoraConfig | None = None, adapter_dir: str | Path | None = None, base_uri: str | None = None,
         placement: Placement = CPU, warmup_ratio: float = 0.05, log: Callable[[int, dict], None] | None = None) -> dict:
    """Train the model in `base_dir` (or the LoRA adapter in `adapter_dir` on it; `lora`: a new one) by GRPO
    on `prompts`, each completion scored by `reward(prompts, completions) -> list[float]`, and save it to
    `out_dir` as `sft` saves (an adapter names `base_uri`). Returns {'steps', 'seconds', 'tokens' (prompt
    and completion tokens the policy generated), 'loss_first', 'loss_last', 'log_history': [{step, reward,
    ...}]}."""
    import math

    from datasets import Dataset
    from transformers import AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    tok = AutoTokenizer.from_pretrained(str(base_dir))
    model, peft_config = load_trainable(base_dir, lora, adapter_dir, placement)
    steps = max(1, math.ceil(len(prompts) * num_generations * epochs / batch_size))
    args = GRPOConfig(
        output_dir=str(out_dir), num_train_epochs=epochs, learning_rate=lr, per_device_train_batch_size=batch_size,
        num_generations=num_generations, max_completion_length=max_completion_length, temperature=temperature,
        beta=beta, seed=seed, data_seed=seed, lr_scheduler_type="cosine", warmup_steps=warmup_steps(steps, warmup_ratio),
        **placement.trainer_args(), report_to=[], save_strategy="no", dataloader_num_workers=0,
        logging_steps=max(1, steps // 50), logging_first_step=True, disable_tqdm=True)
    callbacks = [progress_callback()]
    if log is not None:
        class _Stream(TrainerCallback):
            """Forwards each logged step's loss and reward (e.g. to MLflow) while training runs."""

            def on_log(self, args, state, control, logs=None, **kw):
                if logs and "loss" in logs:
                    log(state.global_step, {"train_loss": float(logs["loss"]), "reward": float(logs.get("reward", 0.0))})

        callbacks.append(_Stream())
    trainer = GRPOTrainer(model=model, reward_funcs=[reward], args=args, processing_class=tok, peft_config=peft_config,
                          train_dataset=Dataset.from_list([{"prompt": p} for p in prompts]), callbacks=callbacks)
    t0 = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - t0
    save_trained(trainer, out_dir, base_uri or str(base_dir) if lora is not None or adapter_dir is not None else None)
    history = [{"step": h["step"], "loss": h["loss"], **{k: h[k] for k in LOGGED if k in h}}
               for h in trainer.state.log_history if "loss" in h]
    return {"steps": trainer.state.global_step, "seconds": seconds, "tokens": trainer.state.num_input_tokens_seen,
            "loss_first": history[0]["loss"] if history else None, "loss_last": history[-1]["loss"] if history else None,
            "log_history": history}
