"""Published models loaded for use: the generator (a full checkpoint, or a LoRA adapter served on its
base, never merged), its tokenizer, the PRM scorer and the judge client. Stages ask here rather than
opening store folders themselves."""
from __future__ import annotations

from components.config import RunConfig
from components.artifacts import store
from components.runtime.log import get_logger
from components.models.sft import adapter_base, adapter_lora

log = get_logger(__name__)
PRM_EXTRA_POSITIONS = 64  # a PRM input is the trace plus one step tag per step


def base_of(model_uri: str) -> str:
    """The full checkpoint behind a published model: its LoRA base, or itself."""
    return adapter_base(store.fetch_folder(model_uri)) or model_uri


def placement(cfg: RunConfig):
    """Where this run's stages compute (hardware: in the config, resolved on this machine)."""
    from components.models.hardware import resolve

    where = resolve(cfg.hardware)
    log.info("hardware %s/%s resolved to %s, %s", cfg.hardware.device, cfg.hardware.dtype, where.device, where.dtype)
    return where


class Generator:
    """The round's generator, ready to sample: a full checkpoint, or a LoRA adapter served on its
    base model by the engine (vLLM's LoRARequest; peft in the transformers fallback), never merged.
    Given the family, a completion ends with its answer line (family.prompt.stop_after_answer) and
    at the prompt's stop strings, whichever backend generated it."""

    def __init__(self, cfg: RunConfig, model_uri: str, family=None):
        from components.models.generation import load_backend

        folder = store.fetch_folder(model_uri)
        base_uri = adapter_base(folder)
        self.lora, self.family, self.prompt = None, family, cfg.family.prompt
        where = placement(cfg)
        if base_uri:
            from components.models.sft import vllm_lora_request

            # sized by the adapter it serves (its rank), not by a config that may not have made it
            self.backend = load_backend(cfg.generation.backend, str(store.fetch_folder(base_uri)), cfg.generation,
                                        cfg.model.max_positions, where, enable_lora=True,
                                        max_lora_rank=adapter_lora(folder).r)
            self.lora = vllm_lora_request(str(folder))
        else:
            self.backend = load_backend(cfg.generation.backend, str(folder), cfg.generation, cfg.model.max_positions,
                                        where)
        self.backend_dir, self._tok = folder, None
        # What a token costs: the weights it passes through (an adapter's ride on its base's).
        self.params = param_count(folder) + (param_count(store.fetch_folder(base_uri)) if base_uri else 0)

    def generate(self, prompts, sampling):
        from dataclasses import replace

        if self.prompt.stop:  # the prompt's stop strings, and the caller's (a step search stops at each step)
            sampling = replace(sampling, stop=tuple(dict.fromkeys((*sampling.stop, *self.prompt.stop))))
        outs = (self.backend.generate(prompts, sampling) if self.lora is None
                else self.backend.generate(prompts, sampling, lora_request=self.lora))
        return [[self._finish(s, sampling.stop) for s in samples] for samples in outs]

    def token_logprobs(self, prompts: list[str], completions: list[str],
                       top_k: int = 0) -> list[list[tuple[int, int, float]]]:
        """Per completion: (start, end, log P) of each of its tokens, character offsets into the
        completion, from one prefill pass of prompt + completion (tokenized as the engine would a text
        prompt). A token straddling the prompt's end belongs to the prompt and is left out.
        top_k > 0: (start, end, DeepConf's token confidence) instead (Backend.token_logprobs)."""
        tok = self._tokenizer()
        enc = tok([p + c for p, c in zip(prompts, completions)], return_offsets_mapping=True)
        lps = (self.backend.token_logprobs(enc["input_ids"], top_k=top_k) if self.lora is None
               else self.backend.token_logprobs(enc["input_ids"], lora_request=self.lora, top_k=top_k))
        out = []
        for p, offsets, lp in zip(prompts, enc["offset_mapping"], lps):
            out.append([(a - len(p), b - len(p), x) for (a, b), x in zip(offsets, lp)
                        if a >= len(p) and b > a and x is not None])
        return out

    def _tokenizer(self):
        if self._tok is None:
            from transformers import AutoTokenizer

            self._tok = AutoTokenizer.from_pretrained(str(self.backend_dir))
        return self._tok

    def _finish(self, s, stop: tuple[str, ...]):
        """The sample cut at its first stop string and after its answer line. A cut sample's token ids
        are its kept text's, and its log-probability is unknown (None)."""
        from dataclasses import replace

        end = min([i for i in (s.text.find(x) for x in stop) if i >= 0], default=len(s.text))
        if self.family is not None and self.prompt.stop_after_answer:
            end = min(end, self.family.answer_end(s.text[:end]) or end)
        if end == len(s.text):
            return s
        text = s.text[:end]
        return replace(s, text=text, token_ids=self._tokenizer()(text, add_special_tokens=False).input_ids,
                       cumulative_logprob=None, finish_reason="stop")


def tokenizer(model_uri: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(store.fetch_folder(base_of(model_uri))))


def param_count(model_dir) -> int:
    """A checkpoint's parameters, from its safetensors headers (no weights loaded)."""
    import math
    from pathlib import Path

    from safetensors import safe_open

    n = 0
    for f in sorted(Path(model_dir).glob("*.safetensors")):
        with safe_open(str(f), "pt") as sf:
            n += sum(math.prod(sf.get_slice(k).get_shape()) for k in sf.keys())
    return n


def context_limit(model_dir) -> int | None:
    """The longest input a checkpoint takes: its position embeddings, stretched by linear RoPE scaling."""
    import json
    from pathlib import Path

    config = json.loads((Path(model_dir) / "config.json").read_text())
    n = config.get("max_position_embeddings")
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    factor = rope.get("factor", 1.0) if rope.get("rope_type", rope.get("type")) == "linear" else 1.0
    return int(n * factor) if n else None


def prm_scorer(cfg: RunConfig, prm_uri: str, scorer: str | None = None):
    """A step scorer for the PRM (or the ORM: the same model and format) at `prm_uri`; `scorer`:
    transformers or vllm, the PRM's setting by default."""
    from components.models.prm_scoring import load_scorer

    folder = store.fetch_folder(prm_uri)
    # A trace plus its step tags, up to what the checkpoint takes.
    limit = min(cfg.model.max_positions + PRM_EXTRA_POSITIONS, context_limit(folder) or 1 << 30)
    return load_scorer(scorer or cfg.prm.scorer, str(folder), limit,
                       placement=placement(cfg), step_separator=cfg.family.prompt.step_separator)


def dpo_verifier_scores(cfg: RunConfig, dpo_uri: str, prompts: list[str], completions: list[str],
                        steps: list[list[str]] | None = None):
    """The DPO verifier at `dpo_uri` scored against the generator it was trained from (its manifest's
    `reference`, a LoRA adapter on its base where it is one): components/models/dpo.py's Scores."""
    from components.models import dpo

    ref_dir = store.fetch_folder(store.read_manifest(dpo_uri)["reference"])
    base = adapter_base(ref_dir)
    return dpo.score(store.fetch_folder(dpo_uri), ref_dir, store.fetch_folder(base) if base else None,
                     prompts, completions, placement(cfg), steps=steps)


class ImplicitPRM:
    """The DPO verifier as a step scorer (the `implicit` label source): q_t per step, and the
    threshold on sigmoid(q_t) its training calibrated."""

    def __init__(self, cfg: RunConfig, dpo_uri: str):
        from components.models import dpo

        self.cfg, self.uri = cfg, dpo_uri
        self.threshold = dpo.step_threshold(store.fetch_folder(dpo_uri))

    def step_q(self, prompts: list[str], completions: list[str], steps: list[list[str]]) -> list[list[float]]:
        return dpo_verifier_scores(self.cfg, self.uri, prompts, completions, steps).steps


def judge_client(cfg: RunConfig, judge_uri: str | None):
    """The configured judge: a local model (given, or the one the loop trained) or a remote endpoint."""
    from components.labeling.judge_clients import make_judge_client

    j = cfg.scoring.judge
    uri = j.model_uri or judge_uri
    if j.backend == "local" and not uri:
        raise ValueError("scoring.judge: a local judge needs judge.model_uri or a judge trained by the loop")
    return make_judge_client(j, model_dir=str(store.fetch_folder(uri)) if j.backend == "local" else None,
                             gen_cfg=cfg.generation, max_positions=cfg.model.max_positions, placement=placement(cfg))
