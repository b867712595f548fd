"""Judge clients: what components/labeling/judge.py asks for verdicts, behind one call,
`complete(prompts, max_tokens, temperature) -> list[str | None]` (None: the prompt did not fit the
judge's context). `LocalJudge` runs a checkpoint with our generation backends, `RemoteJudge` asks an
OpenAI-compatible /v1/completions endpoint (what `vllm serve` exposes; the judge is a base model, so
no chat template); `make_judge_client` makes the one `scoring.judge.backend` names.
"""
from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

from components.config_scoring import JudgeConfig, RemoteJudgeConfig
from components.config_sections import GenerationConfig
from components.runtime.log import get_logger
from components.redact import protect_loggers, redact

log = get_logger(__name__)


class JudgeError(RuntimeError):
    """The judge could not be asked at all (endpoint down, refused, misconfigured)."""


class _Aborted(JudgeError):
    """A request given up because another one failed (that one's error is the one to report)."""


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
