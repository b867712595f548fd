"""V-STaR's verifier (Hosseini et al. 2024, arXiv 2402.06457): the round's generator trained with DPO
(Rafailov et al. 2023) on preference pairs, a right and a wrong solution of the same problem, with the
generator itself as the reference policy. A solution's score is DPO's implicit reward

    r(x, y) = beta * (log pi_dpo(y | x) - log pi_ref(y | x))

the quantity the DPO loss ranks a pair by (Rafailov et al., eq. 5; V-STaR's full text could not be
read where this was written, so its own wording of the rule is unchecked), so no head is added and no label but "is the final answer right?" is needed. The verifier's plain
likelihood per token is also reported, so the two readings can be compared on the same pool
(components/evaluation/verifiers.py: `dpo`, `dpo_likelihood`).

Training is TRL's DPOTrainer (sigmoid loss). The reference log-probabilities are computed once before
training (`precompute_ref_log_probs`), so only one copy of the weights is held while it trains.
"""
from __future__ import annotations

import itertools
import json
import random
import shutil
from pathlib import Path
from typing import Callable

from components.models.causal_lm import progress_callback, warmup_steps
from components.models.hardware import CPU, Placement, data_parallel_size, per_process_batch
from components.models.prm import _heldout_prompts, auroc, within_auroc

FORMAT_FILE = "dpo_verifier.json"


def preference_pairs(rows: list[dict], per_problem: int, seed: int) -> list[dict]:
    """{prompt, chosen, rejected}: up to `per_problem` (right, wrong) pairs per problem, drawn from all
    the distinct pairings of its right and wrong solutions (a problem solved always, or never, gives none)."""
    by_prompt: dict[str, tuple[list[str], list[str]]] = {}
    for r in rows:
        right, wrong = by_prompt.setdefault(r["prompt"], ([], []))
        (right if r["correct"] else wrong).append(r["completion"])
    rng = random.Random(seed)
    pairs = []
    for prompt, (right, wrong) in by_prompt.items():
        combos = list(itertools.product(dict.fromkeys(right), dict.fromkeys(wrong)))
        rng.shuffle(combos)
        pairs += [{"prompt": prompt, "chosen": c, "rejected": w} for c, w in combos[:per_problem]]
    rng.shuffle(pairs)
    return pairs


def completion_logps(model, tok, prompts: list[str], completions: list[str], batch_size: int = 16,
                     counts: list[int] | None = None) -> list[float]:
    """Sum of log P(completion token | what precedes) per pair, the completion starting where the
    tokenized prompt and prompt + completion part, and ending with the tokenizer's EOS (TRL 1.16's
    DPOTrainer appends it to every chosen and rejected text: scored without it, a verifier's reward
    would lack the term that tells a finished solution from one cut off); each completion's number of
    tokens is appended to `counts` when given."""
    from components.models.causal_lm import token_logprobs

    eos = tok.eos_token or ""
    full = [tok(p + (c if c.endswith(eos) else c + eos))["input_ids"] for p, c in zip(prompts, completions)]
    cut = [max(1, _common_prefix(tok(p)["input_ids"], f)) for p, f in zip(prompts, full)]
    lps = token_logprobs(model, full, tok.pad_token_id or 0, batch_size)
    if counts is not None:
        counts += [len(f) - c for f, c in zip(full, cut)]
    return [sum(lp[c:]) for lp, c in zip(lps, cut)]


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def load_policy(init_dir: str | Path, base_dir: str | Path | None, load_args: dict):
    """The generator as one full model: a LoRA adapter is merged into its base (the verifier is trained
    whole, and its reference is the adapted generator)."""
    from transformers import AutoModelForCausalLM

    if base_dir is None:
        return AutoModelForCausalLM.from_pretrained(str(init_dir), **load_args)
    from peft import PeftModel

    base = AutoModelForCausalLM.from_pretrained(str(base_dir), **load_args)
    return PeftModel.from_pretrained(base, str(init_dir)).merge_and_unload()


def score(verifier_dir: str | Path, reference_dir: str | Path, reference_base_dir: str | Path | None,
          prompts: list[str], completions: list[str], placement: Placement = CPU) -> tuple[list[float], list[float]]:
    """(DPO's implicit reward beta * (log pi - log pi_ref), the verifier's mean token log-probability) per
    solution; the reference is the generator the verifier was trained from (a LoRA adapter on its base)."""
    from transformers import AutoTokenizer

    beta, tok = load_beta(verifier_dir), AutoTokenizer.from_pretrained(str(verifier_dir))
    counts: list[int] = []
    model = load_policy(verifier_dir, None, placement.load_args()).to(placement.device)
    logp = completion_logps(model, tok, prompts, completions, counts=counts)
    del model  # one model in memory at a time
    model = load_policy(reference_dir, reference_base_dir, placement.load_args()).to(placement.device)
    ref = completion_logps(model, tok, prompts, completions)
    return [beta * (a - b) for a, b in zip(logp, ref)], [x / max(1, n) for x, n in zip(logp, counts)]


def train_dpo(init_dir: str | Path, out_dir: str | Path, pairs: list[dict], beta: float, epochs: float, lr: float,
              batch_size: int, seed: int, base_dir: str | Path | None = None, heldout_fraction: float = 0.1,
              log: Callable[[int, dict], None] | None = None, placement: Placement = CPU,
              threads: int | None = None) -> dict:
    """Train the verifier from the generator in `init_dir` (a LoRA adapter on `base_dir`) on `pairs`
    and save it with its tokenizer and FORMAT_FILE. A tenth of the problems is held out: the implicit
    reward's pair accuracy and AUROC (right vs wrong solutions) there are measured on pairs it never saw."""
    import torch
    from components.models.hardware import cpu_threads
    from datasets import Dataset
    from transformers import AutoTokenizer, PrinterCallback, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    torch.set_num_threads(threads or cpu_threads())
    torch.manual_seed(seed)
    tok = AutoTokenizer.from_pretrained(str(init_dir))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = load_policy(init_dir, base_dir, placement.train_load_args()).to(placement.device)
    held = _heldout_prompts([p["prompt"] for p in pairs], heldout_fraction, seed)
    train = [p for p in pairs if p["prompt"] not in held]
    test = [p for p in pairs if p["prompt"] in held]
    if not train:
        raise ValueError(f"no preference pairs to train the DPO verifier on ({len(pairs)} pairs, all held out)")

    def logps(m) -> list[float]:  # chosen then rejected, for the held-out pairs
        m.eval()
        return completion_logps(m, tok, [p["prompt"] for p in test] * 2,
                                [p["chosen"] for p in test] + [p["rejected"] for p in test])

    ref = logps(model) if test else []
    steps = max(1, int(len(train) * epochs / batch_size + 0.999))
    points: list[tuple[int, float]] = []

    class _Losses(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                points.append((state.global_step, float(logs["loss"])))
                if log:
                    log(state.global_step, {"train_loss": points[-1][1]})

    args = DPOConfig(
        output_dir=str(Path(out_dir) / "_trainer"), num_train_epochs=epochs, learning_rate=lr,
        per_device_train_batch_size=per_process_batch(batch_size), seed=seed, data_seed=seed, lr_scheduler_type="cosine",
        warmup_steps=warmup_steps(steps, 0.05), beta=beta, **placement.trainer_args(),
        # The reference's log-probabilities once, before training; not when data-parallel: TRL 1.16 caches
        # them in a file under the in-memory dataset's temporary folder, which is each process's own, so
        # the other ranks never find rank 0's file. Then the reference scores every batch as it trains.
        precompute_ref_log_probs=data_parallel_size() == 1,
        report_to=[], save_strategy="no", dataloader_num_workers=0, logging_steps=max(1, steps // 50), logging_first_step=True,
        disable_tqdm=True, max_length=model.config.max_position_embeddings,
        include_num_input_tokens_seen="non_padding")
    trainer = DPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(train), processing_class=tok,
                         callbacks=[_Losses(), progress_callback()])
    trainer.remove_callback(PrinterCallback)
    trainer.train()
    model = trainer.model
    model.config.use_cache = True  # the Trainer turned the KV cache off for training
    rewards = [beta * (a - b) for a, b in zip(logps(model), ref)]
    n = len(test)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.to("cpu").save_pretrained(str(out_dir))
    tok.save_pretrained(str(out_dir))
    (out_dir / FORMAT_FILE).write_text(json.dumps({"kind": "dpo", "beta": beta, "score": "beta * (log pi - log pi_ref)"},
                                                  indent=2) + "\n")
    shutil.rmtree(out_dir / "_trainer", ignore_errors=True)
    params, tokens = model.num_parameters(), int(trainer.state.num_input_tokens_seen)
    losses = [loss for _, loss in points] or [float("nan")]
    k = max(1, min(20, len(losses) // 5))
    return {"loss_first": sum(losses[:k]) / k, "loss_last": sum(losses[-k:]) / k, "steps": trainer.state.global_step,
            "params": params, "train_tokens": tokens,
            # 6 x params x tokens to train, plus one reference forward pass (2 x) over the same tokens
            "train_flops": 8.0 * params * tokens, "loss_curve": points,
            "n_train": len(train), "n_heldout": n,
            "heldout_pair_accuracy": sum(c > r for c, r in zip(rewards[:n], rewards[n:])) / n if n else float("nan"),
            # Across problems too: DPO's reward is a ratio per problem, not a calibrated P(right).
            "heldout_auroc": auroc(rewards, [True] * n + [False] * n) if n else float("nan"),
            "heldout_within_auroc": within_auroc(rewards, [True] * n + [False] * n, [p["prompt"] for p in test] * 2)
            if n else float("nan")}


def load_beta(model_dir: str | Path) -> float:
    path = Path(model_dir) / FORMAT_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; a DPO verifier checkpoint carries {FORMAT_FILE} "
                                f"(written by components.models.dpo.train_dpo) with the beta it was trained at")
    return float(json.loads(path.read_text())["beta"])
