"""LLM-as-judge step labels (ProcessBench protocol: Zheng et al. 2024, arXiv 2412.06559).

A judge reads the problem and the numbered steps and names the first wrong one (`first_error` mode),
or says yes/no for each step given the earlier ones (`per_step` mode). Verdicts are parsed strictly:
one the parser cannot read is counted and leaves the trace unlabelled (None), never read as correct.

Judges sit behind one call, `complete(prompts, max_tokens, temperature) -> list[str | None]` (None: the
prompt did not fit the judge's context): `LocalJudge` runs a checkpoint with our generation backends,
`RemoteJudge` asks an OpenAI-compatible /v1/completions endpoint (what `vllm serve` exposes; the
judge is a base model, so no chat template). With no instruct model on CPU, the loop trains a tiny
judge of its own on gold solutions with planted errors (`judge_examples`, `train_judge`).
"""
from __future__ import annotations

import logging
import os
import random
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from components.config import GenerationConfig, JudgeConfig, RemoteJudgeConfig, TrainConfig

log = logging.getLogger(__name__)

# A template the char-level tiny model can read: every character is in its vocabulary (digits, spaces,
# newlines, `+-*%^=` and the word `Answer:`), and prompts stay far below its 128 positions. Use with
# step_line=TINY_STEP_LINE and none_verdict="-1".
TINY_FIRST_ERROR_TEMPLATE = "{problem}\n{steps}\n=="
TINY_STEP_LINE = "{index} {step}"
TINY_JUDGE = {"first_error_template": TINY_FIRST_ERROR_TEMPLATE, "step_line": TINY_STEP_LINE, "none_verdict": "-1"}


class JudgeError(RuntimeError):
    """The judge could not be asked at all (endpoint down, refused, misconfigured)."""


class _Aborted(JudgeError):
    """A request given up because another one failed (that one's error is the one to report)."""


# ------------------------------------------------------------------------------------------ prompts

def numbered_steps(cfg: JudgeConfig, steps: list[str]) -> str:
    return "\n".join(cfg.step_line.format(index=i + 1, step=s) for i, s in enumerate(steps))


def judge_prompt(cfg: JudgeConfig, problem_text: str, steps: list[str]) -> str:
    """`first_error` mode: one prompt per trace, steps numbered from 1."""
    return cfg.first_error_template.format(problem=problem_text.strip(), steps=numbered_steps(cfg, steps))


def per_step_prompts(cfg: JudgeConfig, problem_text: str, steps: list[str]) -> list[str]:
    """`per_step` mode: one prompt per step, with the steps before it as context."""
    return [cfg.per_step_template.format(problem=problem_text.strip(), steps=numbered_steps(cfg, steps[:i]),
                                         index=i + 1, step=s) for i, s in enumerate(steps)]


# ------------------------------------------------------------------------------------------ parsing

_NONE = r"none|no\s+errors?|no\s+incorrect\s+steps?|all\s+(?:the\s+)?(?:steps\s+are\s+)?correct"
# The verdict must open the first line (after markdown and a short lead-in) and be followed by the end
# of the line, punctuation or "is": "57+5=62" or "1 57+5=62" (a base model babbling the task's own
# format) must not read as "step 57" or "step 1".
_FIRST_ERROR = re.compile(
    r"^[\s*_`#>]*(?:verdict\s*:\s*)?"
    r"(?:the\s+)?(?:first\s+)?(?:(?:incorrect|wrong|erroneous)\s+step\s+is\s*:?\s*)?"
    r"(?:(?:step|paragraph)\s*#?\s*)?"
    rf"(?P<v>-?\d+|{_NONE})[*_`]*\s*(?:$|[.,;:!)\]]|is\b|was\b)", re.I)
_BOXED = re.compile(rf"\\boxed\{{\s*(?P<v>-?\d+|{_NONE})\s*\}}", re.I)
_STEP_VERDICT = re.compile(
    r"^[\s*_`#>]*(?:verdict\s*:\s*)?(?:(?P<yes>yes|correct|right|true)|(?P<no>no|incorrect|wrong|false))\b"
    r"|^\s*(?:(?P<plus>\+)|(?P<minus>-))\s*$", re.I)  # Math-Shepherd's +/- step tags


def _first_line(text: str | None) -> str:
    return next((line for line in (text or "").splitlines() if line.strip()), "")


def parse_first_error(text: str | None, n_steps: int) -> int | None:
    """0-based index of the first wrong step from a 1-based verdict; -1 for none/no error/all correct
    (or -1, ProcessBench's convention); None when unreadable or out of range (0, > n_steps)."""
    m = _BOXED.search(text or "") or _FIRST_ERROR.match(_first_line(text))
    if not m:
        return None
    v = m.group("v")
    if not re.fullmatch(r"-?\d+", v) or int(v) == -1:
        return -1
    k = int(v)
    return k - 1 if 1 <= k <= n_steps else None


def parse_step_verdict(text: str | None) -> bool | None:
    """True for yes/correct/right/true/+, False for no/incorrect/wrong/false/-, None otherwise."""
    m = _STEP_VERDICT.match(_first_line(text))
    if not m:
        return None
    return bool(m.group("yes") or m.group("plus"))


# ------------------------------------------------------------------------------------------ judging

@dataclass
class JudgeResult:
    first_error: int | None  # 0-based; -1 = no wrong step; None = no usable verdict
    labels: list[int | None]  # 1 before the first error, 0 from it on; all None when unlabelled
    scores: list[float | None]
    raw: str  # the judge's answer (per_step: the answers joined by " | ")


def _result(first_error: int | None, n: int, raw: str) -> JudgeResult:
    if first_error is None:
        labels: list[int | None] = [None] * n
    else:
        labels = [1] * n if first_error < 0 else [1] * first_error + [0] * (n - first_error)
    return JudgeResult(first_error, labels, [None if x is None else float(x) for x in labels], raw)


def _per_step_first_error(verdicts: list[bool | None]) -> int | None:
    """The first step judged wrong; None if a verdict before it is unreadable (nothing is known past it)."""
    for i, v in enumerate(verdicts):
        if v is None:
            return None
        if not v:
            return i
    return -1


def judge_traces(cfg: JudgeConfig, client, problems_text: list[str], steps: list[list[str]]):
    """Judge each trace. Returns (results, stats) with stats judge_calls, judge_unparseable (verdicts
    that could not be read), judge_too_long (prompts over the judge's context), judge_unlabelled
    (traces left without labels) and judge_tokens (None when the client does not know)."""
    if len(problems_text) != len(steps):
        raise ValueError(f"{len(problems_text)} problems for {len(steps)} step lists")
    if cfg.mode == "first_error":
        groups = [[judge_prompt(cfg, p, s)] if s else [] for p, s in zip(problems_text, steps)]
    else:
        groups = [per_step_prompts(cfg, p, s) for p, s in zip(problems_text, steps)]
    flat = [q for g in groups for q in g]
    tokens0 = getattr(client, "tokens", None)
    answers = client.complete(flat, cfg.max_tokens, cfg.temperature) if flat else []
    tokens1 = getattr(client, "tokens", None)
    results, unparseable, too_long, at = [], [], 0, 0
    for g, s in zip(groups, steps):
        outs, at = answers[at : at + len(g)], at + len(g)
        too_long += sum(o is None for o in outs)
        if not s:  # nothing to label (an empty completion)
            results.append(_result(None, 0, ""))
            continue
        if cfg.mode == "first_error":
            fe = None if outs[0] is None else parse_first_error(outs[0], len(s))
            bad = [o for o in outs if o is not None and fe is None]
        else:
            verdicts = [None if o is None else parse_step_verdict(o) for o in outs]
            fe = _per_step_first_error(verdicts)
            bad = [o for o, v in zip(outs, verdicts) if o is not None and v is None]
        unparseable += bad
        results.append(_result(fe, len(s), " | ".join(o or "" for o in outs)))
    if unparseable:
        log.warning("judge: %d of %d verdicts unreadable (traces left unlabelled), e.g. %s",
                    len(unparseable), len(flat), [u[:60] for u in unparseable[:3]])
    stats = {"judge_calls": len(flat), "judge_unparseable": len(unparseable), "judge_too_long": too_long,
             "judge_unlabelled": sum(bool(r.labels) and r.labels[0] is None for r in results),
             "judge_tokens": None if tokens0 is None or tokens1 is None else tokens1 - tokens0}
    return results, stats


# ------------------------------------------------------------------------------------------ clients

JUDGE_CLIENTS: dict[str, Callable] = {}


def register(name: str):
    def deco(cls):
        JUDGE_CLIENTS[name] = cls
        return cls
    return deco


@register("local")
class LocalJudge:
    """A judge checkpoint run in-process by a generation backend (vLLM by default)."""

    def __init__(self, model_dir: str | Path, gen_cfg: GenerationConfig, max_positions: int):
        from transformers import AutoTokenizer

        from components.generation import load_backend

        self.backend = load_backend(gen_cfg.backend, str(model_dir), gen_cfg, max_positions)
        self.tok = AutoTokenizer.from_pretrained(str(model_dir))
        self.max_positions, self.seed = max_positions, gen_cfg.seed
        self.tokens = 0

    def complete(self, prompts: list[str], max_tokens: int, temperature: float) -> list[str | None]:
        from components.generation import Sampling

        lengths = [len(ids) for ids in self.tok(prompts)["input_ids"]]
        # The engine rejects a whole batch for one prompt over its context: leave those out (None).
        fits = [i for i, n in enumerate(lengths) if n < self.max_positions]
        outs = self.backend.generate([prompts[i] for i in fits], Sampling(
            n=1, temperature=temperature, max_tokens=max_tokens, seed=self.seed)) if fits else []
        answers: list[str | None] = [None] * len(prompts)
        for i, o in zip(fits, outs):
            answers[i] = o[0].text
            self.tokens += lengths[i] + len(o[0].token_ids)
        return answers


def _retryable(e: Exception) -> bool:
    import openai

    return isinstance(e, openai.APIConnectionError) or (  # includes timeouts
        isinstance(e, openai.APIStatusError) and (e.status_code >= 500 or e.status_code in (408, 429)))


@register("remote")
class RemoteJudge:
    """An OpenAI-compatible /v1/completions endpoint, one request per prompt, `concurrency` at a time.
    Connection errors, timeouts, 429 and 5xx are retried with exponential backoff; other HTTP errors
    fail at once. A prompt over the model's context comes back as None (vLLM answers 400 for it)."""

    def __init__(self, cfg: RemoteJudgeConfig):
        import openai

        self.cfg = cfg
        # Our own retry loop (below) owns backoff and the final error: the client's is turned off.
        self.client = openai.OpenAI(base_url=cfg.base_url, api_key=os.environ.get(cfg.api_key_env) or "EMPTY",
                                    timeout=cfg.timeout_s, max_retries=0)
        self.tokens = 0
        self._lock = threading.Lock()

    def _one(self, prompt: str, max_tokens: int, temperature: float, failed: threading.Event) -> str | None:
        import openai

        attempts = self.cfg.retries + 1
        for attempt in range(attempts):
            if failed.is_set():  # another prompt already gave up: stop instead of retrying on
                raise _Aborted(f"judge endpoint {self.cfg.base_url}: aborted after another request failed")
            try:
                r = self.client.completions.create(model=self.cfg.model, prompt=prompt, max_tokens=max_tokens,
                                                   temperature=temperature)
            except openai.BadRequestError as e:
                if "context length" in str(e).lower():
                    return None
                failed.set()
                raise JudgeError(f"judge endpoint {self.cfg.base_url} (model {self.cfg.model!r}) refused the "
                                 f"request: {e}") from e
            except Exception as e:  # noqa: BLE001 - sorted into retryable or not just below
                if not _retryable(e):
                    failed.set()
                    raise JudgeError(f"judge endpoint {self.cfg.base_url} (model {self.cfg.model!r}): {e}") from e
                if attempt + 1 == attempts:
                    failed.set()
                    raise JudgeError(
                        f"judge endpoint {self.cfg.base_url} (model {self.cfg.model!r}) gave no answer after "
                        f"{attempts} attempts (timeout {self.cfg.timeout_s:g} s each): {type(e).__name__}: {e}") from e
                log.warning("judge endpoint %s: %s (attempt %d of %d)", self.cfg.base_url, e, attempt + 1, attempts)
                time.sleep(self.cfg.backoff_s * 2**attempt)
                continue
            if r.usage is not None:
                with self._lock:
                    self.tokens += r.usage.total_tokens
            return r.choices[0].text

    def complete(self, prompts: list[str], max_tokens: int, temperature: float) -> list[str | None]:
        failed = threading.Event()
        with ThreadPoolExecutor(self.cfg.concurrency) as pool:
            futures = [pool.submit(self._one, p, max_tokens, temperature, failed) for p in prompts]
            try:
                return [f.result() for f in futures]
            except BaseException:
                failed.set()
                pool.shutdown(wait=True, cancel_futures=True)
                errors = [f.exception() for f in futures if f.done() and not f.cancelled()]
                cause = next((e for e in errors if e is not None and not isinstance(e, _Aborted)), None)
                if cause is None:
                    raise
                raise cause from None


def make_judge_client(cfg: JudgeConfig, model_dir: str | Path | None = None, gen_cfg: GenerationConfig | None = None,
                      max_positions: int | None = None):
    """The judge `cfg.backend` names: `local` needs the judge checkpoint's folder, a GenerationConfig
    (backend, kv cache, seed) and its context length; `remote` needs only cfg.remote."""
    if cfg.backend not in JUDGE_CLIENTS:
        raise ValueError(f"scoring.judge.backend: unknown backend {cfg.backend!r}; known: {sorted(JUDGE_CLIENTS)}")
    if cfg.backend == "remote":
        return RemoteJudge(cfg.remote)
    if model_dir is None or gen_cfg is None or max_positions is None:
        raise ValueError("a local judge needs model_dir, gen_cfg and max_positions")
    return LocalJudge(model_dir, gen_cfg, max_positions)


# --------------------------------------------------------------------------- a tiny trained judge

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
    from components.families.arith import ANSWER, APPLY

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
        pairs.append((judge_prompt(cfg, p.prompt, steps), verdict_text(cfg, family.first_error(p, completion))))
    return pairs


def unknown_text(tokenizer, texts: list[str]) -> set[str]:
    """The pieces of `texts` the tokenizer reads as <unk>."""
    unk = tokenizer.unk_token_id
    enc = tokenizer(texts, return_offsets_mapping=True, add_special_tokens=False)
    return {t[a:b] for t, ids, offs in zip(texts, enc["input_ids"], enc["offset_mapping"])
            for i, (a, b) in zip(ids, offs) if i == unk}


def train_judge(base_model_dir: str | Path, out_dir: str | Path, examples: list[tuple[str, str]],
                train_cfg: TrainConfig, seed: int, log: Callable[[int, dict], None] | None = None) -> dict:
    """Fine-tune `base_model_dir` (the bootstrap generator: it knows the format) into a judge with TRL SFT.
    Fails if the examples use text the tokenizer does not know: every such character would read as <unk>."""
    from transformers import AutoConfig, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(base_model_dir))
    sample = [p + c for p, c in examples[:2000]]
    missing = unknown_text(tok, sample)
    if missing:
        raise ValueError(f"train_judge: the tokenizer of {base_model_dir} does not know {sorted(missing)[:20]} "
                         f"(read as {tok.unk_token}); use a template made of the family's own characters, "
                         f"e.g. components.judge.TINY_JUDGE")
    max_len = AutoConfig.from_pretrained(str(base_model_dir)).max_position_embeddings
    too_long = sum(len(ids) + 1 > max_len for ids in tok(sample)["input_ids"])
    if too_long:
        raise ValueError(f"train_judge: {too_long} of the first {len(sample)} examples exceed the model's "
                         f"{max_len} positions; use a shorter template (e.g. components.judge.TINY_JUDGE)")
    from components.sft import sft  # TRL takes seconds to import: only once the examples are known good

    stats = sft(base_model_dir, out_dir, examples, epochs=train_cfg.epochs, lr=train_cfg.lr,
                batch_size=train_cfg.batch_size, seed=seed, log=log, warmup_ratio=train_cfg.warmup_ratio)
    return {**stats, "examples": len(examples), "examples_no_error": sum(not c.strip().isdigit() for _, c in examples)}


def judge_accuracy(cfg: JudgeConfig, client, family, problems: list, completions: list[str]) -> dict:
    """First-error F1 of the judge against the family's gold first errors (ProcessBench's metric),
    with the judge's stats. An unreadable verdict counts as a wrong answer on either side."""
    from components.metrics import first_error_f1

    steps = [family.split_steps(c) for c in completions]
    results, stats = judge_traces(cfg, client, [p.prompt for p in problems], steps)
    gold = [family.first_error(p, c) for p, c in zip(problems, completions)]
    # Gold may be len(steps) (a trace that stops early): no step the judge can name, so it counts as missed.
    pred = [10**9 if r.first_error is None else r.first_error for r in results]
    return {**first_error_f1(pred, gold), **stats}
