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

import os
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from components.config_scoring import JudgeConfig, RemoteJudgeConfig
from components.config_sections import GenerationConfig
from components.runtime.log import get_logger
from components.redact import protect_loggers, redact
from components.labeling.step_labels import from_first_error

log = get_logger(__name__)

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
    s = from_first_error(n, first_error)
    return JudgeResult(first_error, s.labels, s.scores, raw)


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

    def __init__(self, model_dir: str | Path, gen_cfg: GenerationConfig, max_positions: int, placement=None):
        from transformers import AutoTokenizer

        from components.models.generation import load_backend
        from components.models.hardware import CPU

        self.backend = load_backend(gen_cfg.backend, str(model_dir), gen_cfg, max_positions, placement or CPU)
        self.tok = AutoTokenizer.from_pretrained(str(model_dir))
        self.max_positions, self.seed = max_positions, gen_cfg.seed
        self.tokens = 0

    def complete(self, prompts: list[str], max_tokens: int, temperature: float) -> list[str | None]:
        from components.models.generation import Sampling

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
        key = os.environ.get(cfg.api_key_env)
        # Messages and logs name the endpoint without credentials, and never hold the key (a server
        # may echo it in an error body); httpx logs each request's URL, user-info password included.
        self.where = redact(cfg.base_url, [key])
        self._secrets = [key]
        protect_loggers(("httpx", "httpx2", "openai"), [key])
        # Our own retry loop (below) owns backoff and the final error: the client's is turned off.
        self.client = openai.OpenAI(base_url=cfg.base_url, api_key=key or "EMPTY",
                                    timeout=cfg.timeout_s, max_retries=0)
        self.tokens = 0
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"RemoteJudge({self.where}, model={self.cfg.model!r})"

    def _safe(self, e: BaseException) -> str:
        return redact(str(e), self._secrets)

    def _one(self, prompt: str, max_tokens: int, temperature: float, failed: threading.Event) -> str | None:
        import openai

        attempts = self.cfg.retries + 1
        for attempt in range(attempts):
            if failed.is_set():  # another prompt already gave up: stop instead of retrying on
                raise _Aborted(f"judge endpoint {self.where}: aborted after another request failed")
            try:
                r = self.client.completions.create(model=self.cfg.model, prompt=prompt, max_tokens=max_tokens,
                                                   temperature=temperature)
            except openai.BadRequestError as e:
                if "context length" in str(e).lower():
                    return None
                failed.set()
                # from None: the cause's own text (printed in tracebacks) is not redacted; ours says it
                raise JudgeError(f"judge endpoint {self.where} (model {self.cfg.model!r}) refused the "
                                 f"request: {self._safe(e)}") from None
            except Exception as e:  # noqa: BLE001 - sorted into retryable or not just below
                if not _retryable(e):
                    failed.set()
                    raise JudgeError(f"judge endpoint {self.where} (model {self.cfg.model!r}): "
                                     f"{type(e).__name__}: {self._safe(e)}") from None
                if attempt + 1 == attempts:
                    failed.set()
                    raise JudgeError(
                        f"judge endpoint {self.where} (model {self.cfg.model!r}) gave no answer after "
                        f"{attempts} attempts (timeout {self.cfg.timeout_s:g} s each): {type(e).__name__}: "
                        f"{self._safe(e)}") from None
                log.warning("judge endpoint %s: %s (attempt %d of %d)", self.where, self._safe(e), attempt + 1, attempts)
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
                      max_positions: int | None = None, placement=None):
    """The judge `cfg.backend` names: `local` needs the judge checkpoint's folder, a GenerationConfig
    (backend, kv cache, seed) and its context length; `remote` needs only cfg.remote."""
    if cfg.backend not in JUDGE_CLIENTS:
        raise ValueError(f"scoring.judge.backend: unknown backend {cfg.backend!r}; known: {sorted(JUDGE_CLIENTS)}")
    if cfg.backend == "remote":
        return RemoteJudge(cfg.remote)
    if model_dir is None or gen_cfg is None or max_positions is None:
        raise ValueError("a local judge needs model_dir, gen_cfg and max_positions")
    return LocalJudge(model_dir, gen_cfg, max_positions, placement)
