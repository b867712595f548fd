"""Scoring with a trained PRM (components/models/prm.py trains it): P(good) per step, from transformers
or from vLLM's STEP pooler, both reading the model's `prm_format.json`."""
from __future__ import annotations

import json
from pathlib import Path

from components.runtime import progress
from components.runtime.log import get_logger
from components.models.causal_lm import ensure_pad_token
from components.models.hardware import CPU, Placement
from components.models.prm import check_separator, check_tag, format_input, load_format, step_probs

log = get_logger(__name__)


class TransformersPRM:
    """Batched forward with right padding; softmax over the two classes at each tag.
    kv_cache_bytes is accepted for the shared interface and unused (no cache in one forward pass)."""

    def __init__(self, model_dir: str | Path, max_model_len: int = 256, kv_cache_bytes: int = 0,
                 batch_size: int = 32, placement: Placement = CPU):
        from transformers import AutoModelForTokenClassification, AutoTokenizer

        self.fmt = load_format(model_dir)
        self.tok = ensure_pad_token(AutoTokenizer.from_pretrained(str(model_dir)))
        check_tag(self.tok, self.fmt, str(model_dir))
        self.model = AutoModelForTokenClassification.from_pretrained(str(model_dir), **placement.load_args())
        self.model.to(placement.device).eval()
        self.max_model_len, self.batch_size, self.placement = max_model_len, batch_size, placement

    def score(self, prompts: list[str], steps: list[list[str]]) -> list[list[float]]:
        return step_probs(self.model, self.tok, self.fmt, prompts, steps, self.batch_size, self.max_model_len,
                           self.placement)


class VLLMPRM:
    """vLLM's STEP pooler: returns the head's output at every token equal to the format's tag id."""

    def __init__(self, model_dir: str | Path, max_model_len: int = 256, kv_cache_bytes: int = 64 << 20,
                 placement: Placement = CPU):
        from components.models.generation import configure_vllm_env

        self.fmt = load_format(model_dir)  # before starting an engine: a bad checkpoint fails fast
        # At least one longest trace's keys and values: a GSM8K-length context on a 135M model needs
        # ~97 MB in float32, and vLLM refuses to start with less (on a GPU it sizes the cache itself).
        kv_cache_bytes = max(kv_cache_bytes, int(1.25 * sequence_kv_bytes(model_dir, max_model_len, placement.dtype)) + (16 << 20))
        configure_vllm_env()
        from vllm import LLM
        from vllm.config import PoolerConfig

        self.llm = LLM(
            model=str(model_dir), tokenizer=str(model_dir), runner="pooling",
            # use_activation=False: raw logits, softmaxed below exactly as in TransformersPRM. vLLM 0.32's
            # default would softmax too (PoolerClassify, 2 labels), but picks sigmoid or identity if the
            # config ever carries a problem_type; explicit is the same on every checkpoint.
            pooler_config=PoolerConfig(pooling_type="STEP", step_tag_id=self.fmt["step_tag_id"],
                                       use_activation=False),
            **placement.vllm_args(kv_cache_bytes),
            # Whole prompts: the token-wise pooler then sees every tag of a trace in one pass.
            enable_chunked_prefill=False, max_num_batched_tokens=max(8192, max_model_len),
            max_model_len=max_model_len)
        check_tag(self.llm.get_tokenizer(), self.fmt, str(model_dir))

    def score(self, prompts: list[str], steps: list[list[str]]) -> list[list[float]]:
        texts = [format_input(p, s, self.fmt) for p, s in zip(prompts, steps)]
        outs = self.llm.encode(texts, pooling_task="token_classify",
                               use_tqdm=progress.active() and progress.tqdm_class("traces", len(texts)))
        result = []
        for out, s, text in zip(outs, steps, texts):
            logits = out.outputs.data.float().reshape(-1, 2)  # one row per tag
            if logits.shape[0] != len(s):
                raise ValueError(f"{len(s)} steps gave {logits.shape[0]} step tags: {text!r}")
            result.append(logits.softmax(-1)[:, self.fmt["positive_class"]].tolist())
        return result


SCORERS = {"transformers": TransformersPRM, "vllm": VLLMPRM}


def sequence_kv_bytes(model_dir: str | Path, tokens: int, dtype: str) -> int:
    """Bytes of KV cache one sequence of `tokens` takes: keys and values at every layer, from config.json."""
    c = json.loads((Path(model_dir) / "config.json").read_text())
    heads = c["num_attention_heads"]
    head_dim = c.get("head_dim") or c["hidden_size"] // heads
    return 2 * c["num_hidden_layers"] * (c.get("num_key_value_heads") or heads) * head_dim * tokens * (4 if dtype == "float32" else 2)


def vllm_can_pool(model_dir: str | Path) -> bool:
    """vLLM serves `XForTokenClassification` by converting its own `XForCausalLM`: it can pool a PRM
    exactly when it can generate with the architecture underneath (checked on Llama and Qwen2)."""
    from vllm import ModelRegistry

    archs = json.loads((Path(model_dir) / "config.json").read_text()).get("architectures") or []
    known = set(ModelRegistry.get_supported_archs())
    return bool(archs) and all(a in known or a.replace("ForTokenClassification", "ForCausalLM") in known for a in archs)


def load_scorer(name: str, model_dir: str | Path, max_model_len: int = 256, kv_cache_bytes: int = 64 << 20,
                placement: Placement = CPU, step_separator: str | None = None):
    """`step_separator`: how the traces to score are laid out; refused if the PRM trained on another."""
    if name not in SCORERS:
        raise ValueError(f"unknown PRM scorer {name!r}; known: {sorted(SCORERS)}")
    check_separator(load_format(model_dir), step_separator, str(model_dir))
    if name == "vllm" and not vllm_can_pool(model_dir):
        log.warning("%s: vLLM 0.32 has no implementation of this architecture to pool a PRM with; "
                    "scoring with transformers instead (prm.scorer: transformers)", model_dir)
        name = "transformers"
    return SCORERS[name](model_dir, max_model_len=max_model_len, kv_cache_bytes=kv_cache_bytes, placement=placement)
