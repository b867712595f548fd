"""V-STaR's verifier (Hosseini et al. 2024, arXiv 2402.06457): the round's generator trained with DPO
(Rafailov et al. 2023) on preference pairs, a right and a wrong solution of the same problem, with the
generator itself as the reference policy. A solution's score is DPO's implicit reward

    r(x, y) = beta * (log pi_dpo(y | x) - log pi_ref(y | x))

the quantity the DPO loss ranks a pair by (Rafailov et al., eq. 5; V-STaR's full text could not be
read where this was written, so its own wording of the rule is unchecked), so no head is added and no label but "is the final answer right?" is needed. The verifier's plain
likelihood per token is also reported, so the two readings can be compared on the same pool
(components/evaluation/scorers.py: `dpo`, `dpo_likelihood`).

The same model is an implicit PRM (Yuan et al. 2024, "Free Process Rewards without Process Labels",
arXiv 2412.01981, eq. 2-3): with r parameterised as that log-ratio, the Q-value of a prefix y_<=t is

    q_t = sum_{i <= t} beta * log(pi_dpo(y_i | x, y_<i) / pi_ref(y_i | x, y_<i))

so each step's score is q at the step's last token, cumulative from the solution's start (the last
step's is r itself: it takes the tokens after its text too, the EOS among them), and sigmoid(q_t) reads
as P(the solution is right | its first t steps). Thresholded at 0.5 it names almost every step wrong
(q_t < 0 from the first steps on, right solutions included: tests/test_verifiers.py), so training also
chooses the threshold on sigmoid(q_t) that names the first errors of labelled traces of problems it
never trained on best (`calibration`; components/labeling/quality.py), saved with the verifier.

Training is TRL's DPOTrainer (sigmoid loss). The reference log-probabilities are computed once before
training (`precompute_ref_log_probs`), so only one copy of the weights is held while it trains.
"""
from __future__ import annotations

import itertools
import json
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from components.evaluation.bestofk import sigmoid
from components.labeling.quality import calibrate_threshold, fingerprints
from components.models.causal_lm import progress_callback, warmup_steps
from components.models.hardware import CPU, Placement, data_parallel_size, per_process_batch
from components.models.prm_training import _heldout_prompts, auroc, within_auroc

FORMAT_FILE = "dpo_verifier.json"
CALIBRATION_TRACES = 512  # labelled traces that choose the implicit PRM's threshold, at most


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


def encode(tok, prompts: list[str], completions: list[str]) -> list[tuple[list[int], int, list[tuple[int, int]]]]:
    """Per pair: (ids of prompt + completion + EOS, where the completion's tokens start: where the
    tokenized prompt and prompt + completion part, each completion token's character span in the
    completion). The EOS is TRL 1.16's: its DPOTrainer appends it to every chosen and rejected text;
    scored without it, a verifier's reward would lack the term that tells a finished solution from one
    cut off."""
    eos = tok.eos_token or ""
    out = []
    for p, c in zip(prompts, completions):
        enc = tok(p + (c if c.endswith(eos) else c + eos), return_offsets_mapping=True)
        ids = enc["input_ids"]
        cut = max(1, _common_prefix(tok(p)["input_ids"], ids))
        out.append((ids, cut, [(a - len(p), b - len(p)) for a, b in enc["offset_mapping"][cut:]]))
    return out


def token_logps(model, tok, encoded: list[tuple[list[int], int, list]], batch_size: int = 16) -> list[list[float]]:
    """log P(token | what precedes) for each completion token of each `encode`d pair."""
    from components.models.causal_lm import token_logprobs

    lps = token_logprobs(model, [ids for ids, _, _ in encoded], tok.pad_token_id or 0, batch_size)
    return [lp[cut:] for lp, (_, cut, _) in zip(lps, encoded)]


def completion_logps(model, tok, prompts: list[str], completions: list[str], batch_size: int = 16) -> list[float]:
    """Sum of log P(completion token | what precedes) per pair, EOS included (`encode`)."""
    return [sum(lp) for lp in token_logps(model, tok, encode(tok, prompts, completions), batch_size)]


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


@dataclass
class Scores:
    reward: list[float]  # r = beta * (log pi - log pi_ref) per solution, over its tokens and the EOS
    mean_logp: list[float]  # the verifier's mean token log-probability per solution
    steps: list[list[float]]  # the implicit PRM's q_t per step (module docstring); [] without `steps`


def score(verifier_dir: str | Path, reference_dir: str | Path, reference_base_dir: str | Path | None,
          prompts: list[str], completions: list[str], placement: Placement = CPU,
          steps: list[list[str]] | None = None) -> Scores:
    """The DPO verifier's scores of each solution; the reference is the generator it was trained from
    (a LoRA adapter on its base). `steps`: each solution's steps (stripped pieces of its text, in
    order), for the implicit PRM's step scores."""
    from transformers import AutoTokenizer

    beta, tok = load_beta(verifier_dir), AutoTokenizer.from_pretrained(str(verifier_dir))
    encoded = encode(tok, prompts, completions)
    model = load_policy(verifier_dir, None, placement.load_args()).to(placement.device)
    logp = token_logps(model, tok, encoded)
    del model  # one model in memory at a time
    model = load_policy(reference_dir, reference_base_dir, placement.load_args()).to(placement.device)
    ratios = log_ratios(logp, token_logps(model, tok, encoded), beta)
    q = [] if steps is None else implicit_q(completions, steps, encoded, ratios)
    return Scores([sum(r) for r in ratios], [sum(lp) / max(1, len(lp)) for lp in logp], q)


def log_ratios(logp: list[list[float]], ref: list[list[float]], beta: float) -> list[list[float]]:
    """beta * (log pi - log pi_ref) per completion token: DPO's reward is their sum, q_t a partial sum."""
    return [[beta * (a - b) for a, b in zip(lp, lr)] for lp, lr in zip(logp, ref)]


def implicit_q(completions: list[str], steps: list[list[str]], encoded: list[tuple], ratios: list[list[float]]) -> list[list[float]]:
    """The implicit PRM's q_t per step of each `encode`d solution (`step_q`)."""
    return [step_q(c, st, spans, r) for c, st, (_, _, spans), r in zip(completions, steps, encoded, ratios)]


def step_q(completion: str, steps: list[str], spans: list[tuple[int, int]], ratios: list[float]) -> list[float]:
    """The implicit PRM's q_t for each step: the summed token log-ratios (already times beta) of every
    token that starts before the step's text ends; the last step's takes every token. A step not found
    in the text gets the q of the one before it."""
    from components.labeling.confidence import step_spans

    out, i, q = [], 0, 0.0
    for t, span in enumerate(step_spans(completion, steps)):
        end = float("inf") if t == len(steps) - 1 else (span[1] if span else None)
        while end is not None and i < len(ratios) and spans[i][0] < end:
            q, i = q + ratios[i], i + 1
        out.append(q)
    return out


def train_dpo(init_dir: str | Path, out_dir: str | Path, pairs: list[dict], beta: float, epochs: float, lr: float,
              batch_size: int, seed: int, base_dir: str | Path | None = None, heldout_fraction: float = 0.1,
              log: Callable[[int, dict], None] | None = None, placement: Placement = CPU,
              threads: int | None = None, calibration: list[dict] | None = None, warmup_ratio: float = 0.05) -> dict:
    """Train the verifier from the generator in `init_dir` (a LoRA adapter on `base_dir`) on `pairs`
    and save it with its tokenizer and FORMAT_FILE. A tenth of the problems is held out: the implicit
    reward's pair accuracy and AUROC (right vs wrong solutions) there are measured on pairs it never saw.
    `calibration`: labelled traces {prompt, completion, steps, first_error}; those of problems it does
    not train on (up to CALIBRATION_TRACES) choose the implicit PRM's step threshold."""
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
    trained_on = {p["prompt"] for p in train}
    cal = [r for r in calibration or [] if r["prompt"] not in trained_on and r["steps"]][:CALIBRATION_TRACES]
    cal_enc = encode(tok, [r["prompt"] for r in cal], [r["completion"] for r in cal])
    cal_ref = token_logps(model.eval(), tok, cal_enc)
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
        warmup_steps=warmup_steps(steps, warmup_ratio), beta=beta, **placement.trainer_args(),
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
    q = implicit_q([r["completion"] for r in cal], [r["steps"] for r in cal], cal_enc,
                   log_ratios(token_logps(model.eval(), tok, cal_enc), cal_ref, beta))
    threshold = calibrate_threshold([[sigmoid(x) for x in qs] for qs in q], [r["first_error"] for r in cal])
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.to("cpu").save_pretrained(str(out_dir))
    tok.save_pretrained(str(out_dir))
    (out_dir / FORMAT_FILE).write_text(json.dumps({"kind": "dpo", "beta": beta, "score": "beta * (log pi - log pi_ref)",
                                                   "step_threshold": threshold["threshold"],
                                                   "calibrated_on": fingerprints(r["prompt"] for r in cal)}, indent=2) + "\n")
    shutil.rmtree(out_dir / "_trainer", ignore_errors=True)
    params, tokens = model.num_parameters(), int(trainer.state.num_input_tokens_seen)
    losses = [loss for _, loss in points] or [float("nan")]
    k = max(1, min(20, len(losses) // 5))
    return {"loss_first": sum(losses[:k]) / k, "loss_last": sum(losses[-k:]) / k, "steps": trainer.state.global_step,
            "params": params, "train_tokens": tokens,
            # 6 x params x tokens to train, plus one reference forward pass (2 x) over the same tokens
            "train_flops": 8.0 * params * tokens, "loss_curve": points,
            "n_train": len(train), "n_heldout": n, "calibration_traces": len(cal),
            # the implicit PRM's first-error F1 on those traces at sigmoid(q) 0.5 and at the chosen threshold
            "heldout_implicit_f1": threshold["f1_default"], "heldout_implicit_f1_calibrated": threshold["f1"],
            "implicit_threshold": threshold["threshold"],
            "heldout_pair_accuracy": sum(c > r for c, r in zip(rewards[:n], rewards[n:])) / n if n else float("nan"),
            # Across problems too: DPO's reward is a ratio per problem, not a calibrated P(right).
            "heldout_auroc": auroc(rewards, [True] * n + [False] * n) if n else float("nan"),
            "heldout_within_auroc": within_auroc(rewards, [True] * n + [False] * n, [p["prompt"] for p in test] * 2)
            if n else float("nan")}


def step_threshold(model_dir: str | Path) -> float:
    """The implicit PRM's calibrated threshold on sigmoid(q_t) (0.5 for a verifier saved without one)."""
    return float(json.loads((Path(model_dir) / FORMAT_FILE).read_text()).get("step_threshold", 0.5))


def calibrated_on(model_dir: str | Path) -> list[str]:
    """The fingerprints of the problems that threshold was chosen on (quality.fingerprints)."""
    return list(json.loads((Path(model_dir) / FORMAT_FILE).read_text()).get("calibrated_on", []))


def load_beta(model_dir: str | Path) -> float:
    path = Path(model_dir) / FORMAT_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; a DPO verifier checkpoint carries {FORMAT_FILE} "
                                f"(written by components.models.dpo.train_dpo) with the beta it was trained at")
    return float(json.loads(path.read_text())["beta"])
