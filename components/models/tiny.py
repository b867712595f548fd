"""The demo's own generator: a character-level tokenizer and a small Llama, both made from scratch.

No model hub is reachable, so the bootstrap trains these on gold solutions of easy problems.
"""
from __future__ import annotations

from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from components.config_sections import ModelConfig

PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"
# Digits one by one (so numbers of any length are built from 10 symbols), every other character alone,
# except the few words the task uses, which stay whole to keep sequences short.
_PIECES = r"Answer:|The answer is|\d|\s|[^\d\s]"


def train_tokenizer(corpus: list[str], out_dir: str | Path | None = None):
    """A WordLevel tokenizer trained on `corpus`, wrapped as PreTrainedTokenizerFast (what vLLM loads)."""
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(_PIECES), behavior="isolated")
    tok.decoder = decoders.Fuse()  # pieces concatenate back without spaces
    tok.train_from_iterator(corpus, trainers.WordLevelTrainer(special_tokens=[PAD, BOS, EOS, UNK]))
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", special_tokens=[(BOS, bos_id)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD,
                                   unk_token=UNK, clean_up_tokenization_spaces=False)
    if out_dir is not None:
        fast.save_pretrained(str(out_dir))
    return fast


def build_model(cfg: ModelConfig, tokenizer, seed: int):
    """A randomly initialised LlamaForCausalLM sized by `cfg`."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.layers, num_attention_heads=cfg.heads, num_key_value_heads=cfg.heads,
        max_position_embeddings=cfg.max_positions, tie_word_embeddings=True,
        # Rotations shrunk by `factor` are nearly position-free: measured here, that is what lets a
        # model trained on 1-3 steps extend to 5+ (standard RoPE never did).
        rope_parameters={"rope_type": "linear", "factor": cfg.rope_factor, "rope_theta": 10000.0},
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, torch_dtype="float32",
    )
    return LlamaForCausalLM(config)


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())
