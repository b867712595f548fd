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


# ------------------------------------------------ a stand-in for a pretrained Hugging Face checkpoint

# Qwen2's pre-tokenizer split (digits one by one), so the tokenizer transformers loads for a qwen2
# checkpoint (Qwen2Tokenizer) cuts text exactly as the one trained here.
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
               r"\s*[\r\n]+|\s+(?!\S)|\s+")
CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
          "'<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def build_qwen2_checkpoint(out_dir: str | Path, corpus: list[str], hidden_size: int = 64, layers: int = 2,
                           heads: int = 2, kv_heads: int = 1, intermediate_size: int = 128, vocab_size: int = 1024,
                           max_positions: int = 512, seed: int = 0) -> Path:
    """A Hugging Face folder shaped like a pretrained Qwen2 chat checkpoint, randomly initialised: a
    byte-level BPE tokenizer trained on `corpus`, ChatML template, EOS `<|im_end|>`, no BOS and *no
    pad token* (as many pretrained tokenizers ship). No hub is reachable here: tests and benchmarks
    stand it in for Qwen2.5 and friends. head_dim = hidden_size / heads must be >= 32 for vLLM's CPU
    attention."""
    import json

    import torch
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated"),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", clean_up_tokenization_spaces=False)
    fast.chat_template = CHATML
    fast.save_pretrained(str(out_dir))
    # Qwen2Tokenizer would otherwise make <|endoftext|> the pad token: say "none" explicitly.
    tc = out_dir / "tokenizer_config.json"
    tc.write_text(json.dumps({**json.loads(tc.read_text()), "tokenizer_class": "Qwen2Tokenizer", "pad_token": None},
                             indent=2))
    torch.manual_seed(seed)
    config = Qwen2Config(vocab_size=len(fast), hidden_size=hidden_size, intermediate_size=intermediate_size,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                         max_position_embeddings=max_positions, tie_word_embeddings=True,
                         eos_token_id=fast.eos_token_id, bos_token_id=None, pad_token_id=None)
    Qwen2ForCausalLM(config).save_pretrained(str(out_dir))
    return out_dir
