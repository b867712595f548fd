"""Generation backends behind one interface: prompts and sampling settings in, n samples per prompt out.

`vllm` is the default (in-process engine on CPU, prefix caching on); `transformers` is the fallback.
Seeds are derived per prompt from (seed, prompt), so a prompt's samples do not depend on what else
is in the batch: a run is reproducible, and a rollout can be recomputed alone.
"""
from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass
from typing import Callable, Protocol

from components.config_sections import GenerationConfig
from components.runtime import progress
from components.models.hardware import CPU, Placement


@dataclass
class Sample:
    text: str
    token_ids: list[int]
    cumulative_logprob: float | None
    finish_reason: str  # "stop" (EOS) or "length"


@dataclass(frozen=True)
class Sampling:
    n: int = 1
    temperature: float = 0.0
    top_p: float = 1.0
    max_tokens: int = 96
    seed: int = 0
    stop: tuple[str, ...] = ()  # stop strings (not included in the text)


class Backend(Protocol):
    def generate(self, prompts: list[str], sampling: Sampling) -> list[list[Sample]]: ...

    def token_logprobs(self, sequences: list[list[int]], lora_request=None, top_k: int = 0) -> list[list[float | None]]:
        """log P(token_i | tokens before it) for every token of each sequence (None for the first):
        one prefill pass, the model's own (untempered) distribution. top_k > 0: DeepConf's token
        confidence instead, -mean of the k largest log-probabilities at each position."""
        ...


BACKENDS: dict[str, Callable[..., Backend]] = {}


def register(name: str):
    def deco(cls):
        BACKENDS[name] = cls
        return cls
    return deco


def load_backend(name: str, model_dir: str, cfg: GenerationConfig, max_model_len: int,
                 placement: Placement = CPU, **engine_kw) -> Backend:
    """`engine_kw`: backend-specific engine options (vLLM: enable_lora, max_lora_rank)."""
    if name not in BACKENDS:
        raise ValueError(f"generation.backend: unknown backend {name!r}; known: {sorted(BACKENDS)}")
    return BACKENDS[name](model_dir, cfg, max_model_len, placement=placement, **engine_kw)


def prompt_seed(seed: int, prompt: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}\x00{prompt}".encode()).digest()[:4], "little") & 0x7FFFFFFF


def configure_vllm_env() -> None:
    """vLLM on CPU, in-process: starts in ~2 s instead of 15-25 s for the multiprocess engine."""
    for k, v in {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_HOST_IP": "127.0.0.1",
                 "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1", "VLLM_LOGGING_LEVEL": "WARNING",
                 "TOKENIZERS_PARALLELISM": "false"}.items():
        os.environ.setdefault(k, v)


def vllm_lora_rank(r: int) -> int:
    """The engine's max_lora_rank for adapters of rank up to `r`: vLLM takes only some sizes (1, 8, 16,
    32, ...) and refuses any other (`sft.lora.r: 4`), so the least of them that holds `r`."""
    from typing import get_args

    from vllm.config.lora import MaxLoRARanks

    return min((size for size in get_args(MaxLoRARanks) if size >= r), default=r)


@register("vllm")
class VLLMBackend:
    def __init__(self, model_dir: str, cfg: GenerationConfig, max_model_len: int, placement: Placement = CPU,
                 **engine_kw):
        configure_vllm_env()
        from vllm import LLM

        if "max_lora_rank" in engine_kw:
            engine_kw = {**engine_kw, "max_lora_rank": vllm_lora_rank(engine_kw["max_lora_rank"])}
        self.llm = LLM(model=str(model_dir), tokenizer=str(model_dir), **placement.vllm_args(cfg.kv_cache_bytes),
                       enable_prefix_caching=cfg.prefix_caching,
                       max_model_len=max_model_len, seed=cfg.seed,
                       # A chunked prompt makes vLLM 0.32 rewind the request's seeded generator, which
                       # CPU generators cannot do ("CPU Generator does not use offset"): keep prompts whole.
                       enable_chunked_prefill=False, max_num_batched_tokens=max(8192, max_model_len), **engine_kw)
        self.max_model_len = max_model_len

    def generate(self, prompts: list[str], sampling: Sampling, lora_request=None) -> list[list[Sample]]:
        from vllm import SamplingParams

        params = [SamplingParams(n=sampling.n, temperature=sampling.temperature, top_p=sampling.top_p,
                                 max_tokens=sampling.max_tokens, seed=prompt_seed(sampling.seed, p),
                                 stop=list(sampling.stop) or None, logprobs=0) for p in prompts]
        outs = self.llm.generate(prompts, params, lora_request=lora_request,
                                 use_tqdm=progress.active() and progress.tqdm_class("samples", len(prompts) * sampling.n))
        eos = self.llm.get_tokenizer().eos_token_id
        return [[Sample(o.text, [t for t in o.token_ids if t != eos], o.cumulative_logprob,
                        _finish(o.finish_reason))
                 for o in out.outputs] for out in outs]

    def token_logprobs(self, sequences: list[list[int]], lora_request=None, top_k: int = 0) -> list[list[float | None]]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        # prompt_logprobs=0: the logprob of each prompt token itself (no alternatives); =k: the k most
        # likely tokens too, each with its rank (the prompt's own token is there whatever its rank).
        # One token is generated because a request must, and vLLM wants prompt + 1 within the context.
        limit = self.max_model_len - 1
        params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=top_k)
        outs = self.llm.generate([TokensPrompt(prompt_token_ids=ids[:limit]) for ids in sequences], params,
                                 use_tqdm=progress.active() and progress.tqdm_class("sequences", len(sequences)),
                                 lora_request=lora_request)
        result = []
        for out, ids in zip(outs, sequences):
            lps = [None] + [_top_k_confidence(d, top_k) if top_k else d[t].logprob
                            for d, t in zip(out.prompt_logprobs[1:], ids[1:limit])]
            result.append(lps + [None] * (len(ids) - len(lps)))  # past the context: unknown
        return result


def _top_k_confidence(position: dict, k: int) -> float:
    """-mean of the k largest log-probabilities among vLLM's ranked ones at a position."""
    top = [lp.logprob for lp in position.values() if lp.rank is not None and lp.rank <= k]
    return -sum(top) / len(top)


class _RowSampler:
    """Samples every row's next token with a generator of its own (temperature, then top-p), and
    leaves only that token for greedy decoding to pick; keeps each pick's log-probability under the
    tempered, truncated distribution (what transformers' own sampling reported)."""

    def __init__(self, seeds: list[int], temperature: float, top_p: float):
        import torch

        self.gens = [torch.Generator().manual_seed(s) for s in seeds]
        self.temperature, self.top_p, self.logps = temperature, top_p, []

    def __call__(self, input_ids, scores):
        import torch

        logits = scores.float() / self.temperature
        if self.top_p < 1.0:  # the smallest set of tokens whose probability reaches top_p
            sorted_logits, order = logits.sort(dim=-1, descending=True)
            cum = sorted_logits.softmax(-1).cumsum(-1)
            drop = cum - sorted_logits.softmax(-1) >= self.top_p
            logits = logits.scatter(-1, order, sorted_logits.masked_fill(drop, float("-inf")))
        logp = logits.log_softmax(-1)
        probs = logp.exp().cpu()
        picks = torch.tensor([torch.multinomial(probs[r], 1, generator=g).item() for r, g in enumerate(self.gens)],
                             device=scores.device)
        self.logps.append(logp.gather(-1, picks[:, None])[:, 0].cpu())
        out = torch.full_like(scores, float("-inf"))
        return out.scatter(-1, picks[:, None], 0.0)

    def chosen(self):
        import torch

        return torch.stack(self.logps, dim=1)


def _finish(reason: str | None) -> str:
    return "length" if reason == "length" else "stop"


def _stop_on(tok, stops: tuple[str, ...], prompt_len: int):
    """Stop each sequence once its new text holds a stop string. Not transformers' `stop_strings`: its
    StopStringCriteria cleans the vocabulary assuming a SentencePiece-like prefix, and raises on a
    character-level tokenizer (the demo's); decoding the new tokens works with any tokenizer."""
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    class _Stop(StoppingCriteria):
        def __call__(self, input_ids, scores, **kw):
            texts = tok.batch_decode(input_ids[:, prompt_len:], skip_special_tokens=True)
            return torch.tensor([any(s in t for s in stops) for t in texts], device=input_ids.device)

    return StoppingCriteriaList([_Stop()] if stops else [])


@register("transformers")
class TransformersBackend:
    """Fallback: batched `generate` with left padding; one seed per chunk of prompts."""

    def __init__(self, model_dir: str, cfg: GenerationConfig, max_model_len: int, placement: Placement = CPU,
                 batch_size: int = 32, enable_lora: bool = False, max_lora_rank: int = 8):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from components.models.causal_lm import ensure_pad_token

        self.tok = ensure_pad_token(AutoTokenizer.from_pretrained(str(model_dir)))
        self.tok.padding_side = "left"
        self.model = AutoModelForCausalLM.from_pretrained(str(model_dir), **placement.load_args())
        self.model.to(placement.device).eval()
        self.device = placement.device
        self.batch_size = batch_size
        self.max_model_len = max_model_len
        self.adapters: dict[str, str] = {}  # LoRA adapters loaded so far, by folder

    def _use_adapter(self, lora_request) -> None:
        """Serve a LoRA adapter (peft) on the base model, as vLLM does with a LoRARequest; None: the base."""
        if lora_request is None:
            if self.adapters:
                self.model.disable_adapters()
            return
        path = lora_request.lora_path
        if path not in self.adapters:
            self.adapters[path] = f"a{len(self.adapters)}"
            self.model.load_adapter(path, adapter_name=self.adapters[path])
        self.model.enable_adapters()
        self.model.set_adapter(self.adapters[path])

    def generate(self, prompts: list[str], sampling: Sampling, lora_request=None) -> list[list[Sample]]:
        import torch

        self._use_adapter(lora_request)
        results: list[list[Sample]] = []
        eos = self.tok.eos_token_id
        total, tokens, t0 = len(prompts) * sampling.n, 0, time.monotonic()
        progress.report("samples", 0, total)
        for start in range(0, len(prompts), self.batch_size):
            chunk = prompts[start : start + self.batch_size]
            enc = self.tok(chunk, return_tensors="pt", padding=True).to(self.device)
            # Each prompt's samples from its own seeds, as vLLM's per-request seed: the same samples
            # whichever prompts share its batch (one global seed per batch made them depend on it).
            sampler = None if sampling.temperature == 0 else _RowSampler(
                [prompt_seed(sampling.seed, p) * 1000 + j for p in chunk for j in range(sampling.n)],
                sampling.temperature, sampling.top_p)
            # n rows per prompt made here, since greedy decoding (which applies the picks) takes one
            enc = {k: v.repeat_interleave(sampling.n, dim=0) for k, v in enc.items()}
            with torch.no_grad():
                out = self.model.generate(
                    **enc, do_sample=False,
                    logits_processor=[sampler] if sampler else None, temperature=None, top_p=None, top_k=None,
                    max_new_tokens=min(sampling.max_tokens, self.max_model_len - enc["input_ids"].shape[1]),
                    output_scores=sampler is None, return_dict_in_generate=True, pad_token_id=self.tok.pad_token_id,
                    stopping_criteria=_stop_on(self.tok, sampling.stop, enc["input_ids"].shape[1]))
            new = out.sequences[:, enc["input_ids"].shape[1]:]
            logp = sampler.chosen() if sampler else \
                self.model.compute_transition_scores(out.sequences, out.scores, normalize_logits=True)
            for i in range(len(chunk)):
                samples = []
                for j in range(sampling.n):
                    row = new[i * sampling.n + j].tolist()
                    n_tok = row.index(eos) + 1 if eos in row else len(row)
                    ids = [t for t in row[:n_tok] if t != eos]
                    lp = float(logp[i * sampling.n + j, :n_tok].sum())
                    samples.append(Sample(self.tok.decode(ids, skip_special_tokens=True), ids, lp,
                                          "stop" if eos in row else "length"))
                    tokens += n_tok
                results.append(samples)
            progress.report("samples", len(results) * sampling.n, total,
                            **{"tok/s": tokens / max(1e-9, time.monotonic() - t0)})
        return results

    def token_logprobs(self, sequences: list[list[int]], lora_request=None, top_k: int = 0) -> list[list[float | None]]:
        from components.models.causal_lm import token_logprobs

        self._use_adapter(lora_request)
        known = token_logprobs(self.model, [ids[: self.max_model_len] for ids in sequences], self.tok.pad_token_id,
                               self.batch_size, top_k=top_k)
        return [row + [None] * (len(full) - len(row)) for row, full in zip(known, sequences)]  # past the context

