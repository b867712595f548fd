"""Published models loaded for use: the generator (a full checkpoint, or a LoRA adapter served on its
base, never merged), its tokenizer, the PRM scorer and the judge client. Stages ask here rather than
opening store folders themselves."""
from __future__ import annotations

from components.config import RunConfig
from components.infra import store
from components.models.sft import adapter_base

PRM_EXTRA_POSITIONS = 64  # a PRM input is the trace plus one step tag per step


def base_of(model_uri: str) -> str:
    """The full checkpoint behind a published model: its LoRA base, or itself."""
    return adapter_base(store.fetch_folder(model_uri)) or model_uri


class Generator:
    """The round's generator, ready to sample."""

    def __init__(self, cfg: RunConfig, model_uri: str):
        from components.models.generation import load_backend

        folder = store.fetch_folder(model_uri)
        base_uri = adapter_base(folder)
        self.lora = None
        if base_uri:
            from components.models.sft import vllm_lora_request

            self.backend = load_backend(cfg.generation.backend, str(store.fetch_folder(base_uri)), cfg.generation,
                                        cfg.model.max_positions, enable_lora=True,
                                        max_lora_rank=cfg.sft.lora.r if cfg.sft.lora else 8)
            self.lora = vllm_lora_request(str(folder))
        else:
            self.backend = load_backend(cfg.generation.backend, str(folder), cfg.generation, cfg.model.max_positions)

    def generate(self, prompts, sampling):
        if self.lora is None:
            return self.backend.generate(prompts, sampling)
        return self.backend.generate(prompts, sampling, lora_request=self.lora)


def tokenizer(model_uri: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(store.fetch_folder(base_of(model_uri))))


def prm_scorer(cfg: RunConfig, prm_uri: str):
    from components.models.prm import load_scorer

    return load_scorer(cfg.prm.scorer, str(store.fetch_folder(prm_uri)), cfg.model.max_positions + PRM_EXTRA_POSITIONS)


def judge_client(cfg: RunConfig, judge_uri: str | None):
    """The configured judge: a local model (given, or the one the loop trained) or a remote endpoint."""
    from components.labeling.judge import make_judge_client

    j = cfg.scoring.judge
    uri = j.model_uri or judge_uri
    if j.backend == "local" and not uri:
        raise ValueError("scoring.judge: a local judge needs judge.model_uri or a judge trained by the loop")
    return make_judge_client(j, model_dir=str(store.fetch_folder(uri)) if j.backend == "local" else None,
                             gen_cfg=cfg.generation, max_positions=cfg.model.max_positions)
