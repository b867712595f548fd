"""A judge trained by the loop itself when no instruct model is at hand (CPU): the bootstrap generator
fine-tuned on the family's gold traces with planted errors, answering the 1-based first wrong step or
the none verdict. Its held-out first-error F1 is measured, whatever it is."""
from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Callable

from components.config_scoring import JudgeConfig
from components.config_sections import TrainConfig
from components.data.prompting import problem_text
from components.labeling.judge import judge_prompt, judge_traces
from components.models.hardware import CPU, Placement

_LINE = re.compile(r"(-?\d+)([+\-*%^])(\d+)=(-?\d+)")


def _wrong_number(rng: random.Random, right: int) -> int:
    """A slip a small model makes: off by a little, or a digit changed."""
    while True:
        v = right + rng.choice([-1, 1]) * rng.randint(1, 9) if rng.random() < 0.5 else int(
            "".join(rng.choice("0123456789") if rng.random() < 0.5 else d for d in str(abs(right))))
        if v != right:
            return v


def plant_error(steps: list[str], rng: random.Random) -> list[str]:
    """Gold `a<op>c=r` steps with one slip in a random step: a wrong result, a wrongly carried value
    (step 2 on) or a wrong answer line. Half the time later steps are recomputed from the wrong value,
    the way a model that made the slip would go on; otherwise they are left as they were."""
    from components.data.families.arith import ANSWER, APPLY

    lines = list(steps)
    parsed = [_LINE.fullmatch(s) for s in lines[:-1]]
    if not lines or not lines[-1].startswith(ANSWER) or not all(parsed):
        raise ValueError(f"plant_error: expects `a<op>c=r` lines and an answer line (the arith family), got {steps!r}")
    j = rng.randrange(len(lines))
    if j == len(lines) - 1:  # the answer line
        lines[j] = f"{ANSWER} {_wrong_number(rng, int(lines[j][len(ANSWER):]))}"
        return lines
    a, sym, c, r = parsed[j].groups()
    if j > 0 and rng.random() < 0.5:  # carried the previous result wrongly, then computed right from it
        a = str(_wrong_number(rng, int(a)))
        value = APPLY[sym](int(a), int(c))
    else:
        value = _wrong_number(rng, int(r))
    lines[j] = f"{a}{sym}{c}={value}"
    if rng.random() < 0.5:
        for k in range(j + 1, len(lines) - 1):
            _, sym_k, c_k, _ = parsed[k].groups()
            new = APPLY[sym_k](value, int(c_k))
            lines[k], value = f"{value}{sym_k}{c_k}={new}", new
        lines[-1] = f"{ANSWER} {value}"
    return lines


def planted_traces(family, problems: list, n: int, rng: random.Random, share: float = 0.5):
    """n (problem, completion) pairs from gold solutions, a `share` of them with one planted error."""
    out = []
    for _ in range(n):
        p = rng.choice(problems)
        steps = family.split_steps(family.gold_solution(p))
        if rng.random() < share:
            steps = plant_error(steps, rng)
        out.append((p, family.steps_text(steps)))
    return out


def verdict_text(cfg: JudgeConfig, first_error: int) -> str:
    """What a judge should answer: the 1-based first wrong step, or cfg.none_verdict."""
    return f" {cfg.none_verdict if first_error < 0 else first_error + 1}\n"


def judge_examples(family, problems: list, n: int, rng: random.Random, cfg: JudgeConfig = JudgeConfig(),
                   share: float = 0.5) -> list[tuple[str, str]]:
    """(prompt, target) pairs for training a first_error judge. The target comes from the family's own
    first_error, so it is exact whatever the planted slip did (e.g. a wrong step that forgot its input)."""
    pairs = []
    for p, completion in planted_traces(family, problems, n, rng, share):
        steps = family.split_steps(completion)
        pairs.append((judge_prompt(cfg, problem_text(p), steps), verdict_text(cfg, family.first_error(p, completion))))
    return pairs


def unknown_text(tokenizer, texts: list[str]) -> set[str]:
    """The pieces of `texts` the tokenizer reads as <unk>."""
    unk = tokenizer.unk_token_id
    enc = tokenizer(texts, return_offsets_mapping=True, add_special_tokens=False)
    return {t[a:b] for t, ids, offs in zip(texts, enc["input_ids"], enc["offset_mapping"])
            for i, (a, b) in zip(ids, offs) if i == unk}


def train_judge(base_model_dir: str | Path, out_dir: str | Path, examples: list[tuple[str, str]],
                train_cfg: TrainConfig, seed: int, log: Callable[[int, dict], None] | None = None,
                placement: Placement = CPU) -> dict:
    """Fine-tune `base_model_dir` (the bootstrap generator: it knows the format) into a judge with TRL SFT.
    Fails if the examples use text the tokenizer does not know: every such character would read as <unk>."""
    from transformers import AutoConfig, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(base_model_dir))
    sample = [p + c for p, c in examples[:2000]]
    missing = unknown_text(tok, sample)
    if missing:
        raise ValueError(f"train_judge: the tokenizer of {base_model_dir} does not know {sorted(missing)[:20]} "
                         f"(read as {tok.unk_token}); use a template made of the family's own characters, "
                         f"e.g. components.labeling.judge.TINY_JUDGE")
    max_len = AutoConfig.from_pretrained(str(base_model_dir)).max_position_embeddings
    too_long = sum(len(ids) + 1 > max_len for ids in tok(sample)["input_ids"])
    if too_long:
        raise ValueError(f"train_judge: {too_long} of the first {len(sample)} examples exceed the model's "
                         f"{max_len} positions; use a shorter template (e.g. components.labeling.judge.TINY_JUDGE)")
    from components.models.sft import sft  # TRL takes seconds to import: only once the examples are known good

    stats = sft(base_model_dir, out_dir, examples, epochs=train_cfg.epochs, lr=train_cfg.lr,
                batch_size=train_cfg.batch_size, seed=seed, log=log, warmup_ratio=train_cfg.warmup_ratio,
                placement=placement, max_tokens_per_batch=train_cfg.max_tokens_per_batch)
    return {**stats, "examples": len(examples), "examples_no_error": sum(not c.strip().isdigit() for _, c in examples)}


def judge_accuracy(cfg: JudgeConfig, client, family, problems: list, completions: list[str]) -> dict:
    """First-error F1 of the judge against the family's gold first errors (ProcessBench's metric),
    with the judge's stats. An unreadable verdict counts as a wrong answer on either side."""
    from components.labeling.quality import first_error_f1

    steps = [family.split_steps(c) for c in completions]
    results, stats = judge_traces(cfg, client, [problem_text(p) for p in problems], steps)
    gold = [family.first_error(p, c) for p, c in zip(problems, completions)]
    # Gold may be len(steps) (a trace that stops early): no step the judge can name, so it counts as missed.
    pred = [10**9 if r.first_error is None else r.first_error for r in results]
    return {**first_error_f1(pred, gold), **stats}
