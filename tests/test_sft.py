"""SFT with TRL on the real tiny generator (tests/conftest.py): masking, special tokens, loss, LoRA via vLLM."""
import json

import pytest

from components.models.generation import Sampling, VLLMBackend
from components.models.sft import ADAPTER_BASE, make_trainer, sft, vllm_lora_request
from components.config_training import LoraConfig
from components.models.causal_lm import collate, encode_examples

LORA = LoraConfig(r=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])


def gold_pairs(family, split, n=None):
    return [(p.prompt, family.gold_solution(p)) for p in family.problems(split)[:n]]


def masked_loss(model_dir, tokenizer, pairs) -> float:
    """Mean NLL per completion token (EOS included), prompt masked: the quantity SFT minimises."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    input_ids, attn, labels = collate(encode_examples(tokenizer, pairs), tokenizer.pad_token_id)
    with torch.no_grad():
        return model(input_ids=input_ids, attention_mask=attn, labels=labels).loss.item()


def test_trl_tokenizes_like_our_tokenizer(tiny_model_dir, smoke_family, tmp_path):
    """BOS once (from our post-processor, not doubled by TRL), EOS once at the end, prompt labels -100."""
    import torch

    pairs = gold_pairs(smoke_family, "train", 8)
    trainer = make_trainer(tiny_model_dir, tmp_path, pairs, 1, 1e-3, len(pairs), 0)  # one batch
    tok = trainer.processing_class
    expected = encode_examples(tok, pairs)  # what the bootstrap trained on
    ds = trainer.train_dataset
    assert len(ds) == len(pairs)
    for row, (ids, n_prompt) in zip(ds, expected):
        assert row["input_ids"] == ids
        assert row["input_ids"][0] == tok.bos_token_id and row["input_ids"].count(tok.bos_token_id) == 1
        assert row["input_ids"][-1] == tok.eos_token_id and row["input_ids"].count(tok.eos_token_id) == 1
        assert row["labels"][:n_prompt] == [-100] * n_prompt
        assert row["labels"][n_prompt:] == row["input_ids"][n_prompt:]  # completion and EOS are trained
    # the collated batch keeps it: padding is masked too, and nothing else is
    batch = next(iter(trainer.get_train_dataloader()))
    pad = batch["attention_mask"] == 0
    assert pad.any() and (batch["labels"][pad] == -100).all()
    trained = batch["labels"] != -100
    assert (batch["labels"][trained] == batch["input_ids"][trained]).all()
    # and TRL's loss on it is ours: mean NLL over completion tokens + EOS
    trainer.model.eval()
    with torch.no_grad():
        trl_loss = trainer.compute_loss(trainer.model, batch).item()
    assert trl_loss == pytest.approx(masked_loss(tiny_model_dir, tok, pairs), rel=1e-5)


def test_full_sft_lowers_masked_loss(tiny_model_dir, smoke_family, tmp_path):
    from transformers import AutoTokenizer

    pairs = gold_pairs(smoke_family, "train")  # 2-3 ops: harder than the 1-2 op bootstrap
    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    before = masked_loss(tiny_model_dir, tok, pairs)
    logged = []
    # lr: a fresh Adam's first updates are ~lr per weight; 1e-3+ knocks this 200k-parameter model off first
    res = sft(tiny_model_dir, tmp_path / "ft", pairs, epochs=4, lr=3e-4, batch_size=8, seed=0,
              log=lambda step, m: logged.append((step, m)))
    after = masked_loss(tmp_path / "ft", tok, pairs)
    assert after < before * 0.9, (before, after)
    assert res["steps"] == 4 * -(-len(pairs) // 8) and res["seconds"] > 0
    assert res["log_history"] and res["loss_first"] == res["log_history"][0]["loss"]
    assert res["loss_last"] == res["log_history"][-1]["loss"]
    assert [s for s, _ in logged] == [h["step"] for h in res["log_history"]]
    assert all(set(m) == {"train_loss", "lr"} for _, m in logged)
    files = {p.name for p in (tmp_path / "ft").iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json"} <= files and ADAPTER_BASE not in files
    # same architecture and settings as the base (transformers' Trainer turns use_cache off while training)
    config = lambda d: json.loads((d / "config.json").read_text())  # noqa: E731
    assert config(tmp_path / "ft") == config(tiny_model_dir)


def test_a_round_that_kept_a_handful_of_traces_still_trains(tiny_model_dir, smoke_family, tmp_path):
    """Three kept examples, one optimizer step: the step is taken at the learning rate, not spent
    warming up from 0 (transformers rounds a warmup ratio up to a whole step), so the adapter moves."""
    from safetensors import safe_open

    res = sft(tiny_model_dir, tmp_path / "lora", gold_pairs(smoke_family, "train", 3), epochs=1, lr=1e-3,
              batch_size=8, seed=0, lora=LORA)
    assert res["steps"] == 1 and res["log_history"][0]["lr"] > 0
    with safe_open(str(tmp_path / "lora" / "adapter_model.safetensors"), "pt") as f:
        assert any(f.get_tensor(k).abs().sum() > 0 for k in f.keys() if "lora_B" in k)


def test_lora_adapter_generates_through_vllm_like_peft(tiny_model_dir, smoke_cfg, smoke_family, tmp_path):
    import torch
    from peft import PeftModel
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM, AutoTokenizer

    adapter = tmp_path / "lora"
    gold = gold_pairs(smoke_family, "train")
    pairs = (gold * -(-200 // len(gold)))[:200]
    res = sft(tiny_model_dir, adapter, pairs, epochs=2, lr=5e-3, batch_size=16, seed=0, lora=LORA)
    assert res["loss_last"] < res["loss_first"]

    # only the adapter: no full weights, every tensor a LoRA factor; the base is recorded
    files = {p.name for p in adapter.iterdir()}
    assert "adapter_model.safetensors" in files and "adapter_config.json" in files
    assert not files & {"model.safetensors", "pytorch_model.bin", "config.json"}
    with safe_open(str(adapter / "adapter_model.safetensors"), "pt") as f:
        assert all("lora_A" in k or "lora_B" in k for k in f.keys())
    assert json.loads((adapter / ADAPTER_BASE).read_text()) == {"base_uri": str(tiny_model_dir)}

    prompts = [p.prompt for p in smoke_family.problems("eval")[-16:]]  # the 3-op level
    greedy = Sampling(n=1, temperature=0.0, max_tokens=48)
    engine = VLLMBackend(tiny_model_dir, smoke_cfg.generation, 128, enable_lora=True,
                         max_lora_rank=LORA.r)
    base_out = [o[0].text for o in engine.generate(prompts, greedy)]
    lora_out = [o[0].text for o in engine.generate(prompts, greedy, lora_request=vllm_lora_request(adapter))]
    del engine
    # the adapter is really applied (a no-op adapter would pass the comparison below trivially)
    assert lora_out != base_out

    tok = AutoTokenizer.from_pretrained(str(adapter))
    model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32), str(adapter)).eval()
    ref = []
    with torch.no_grad():
        for p in prompts:  # one at a time: no padding to differ from vLLM
            ids = tok(p, return_tensors="pt")["input_ids"]
            out = model.generate(input_ids=ids, max_new_tokens=48, do_sample=False, pad_token_id=tok.pad_token_id)
            ref.append(tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True))
    assert lora_out == ref
    # the transformers fallback serves the same adapter the same way
    from components.models.generation import TransformersBackend

    fallback = TransformersBackend(tiny_model_dir, smoke_cfg.generation, 128)
    assert [o[0].text for o in fallback.generate(prompts, greedy, lora_request=vllm_lora_request(adapter))] == ref
    assert [o[0].text for o in fallback.generate(prompts, greedy)] == base_out

    # sft.init previous with LoRA: the next round's adapter trains on from this one, on the same base
    more = sft(tiny_model_dir, tmp_path / "lora2", pairs, epochs=1, lr=5e-3, batch_size=16, seed=1,
               lora=LORA, adapter_dir=adapter)
    assert more["loss_first"] < res["loss_first"] * 0.8  # it starts where the first adapter ended
    assert json.loads((tmp_path / "lora2" / ADAPTER_BASE).read_text()) == {"base_uri": str(tiny_model_dir)}


def test_sft_cap_keeps_the_newest_rounds():
    """Issue #12: `sft.max_examples` cut the newest rows (rounds were read oldest first), so a long
    history stopped new rounds from contributing."""
    from components.models.sft import training_pairs

    rounds = [[{"prompt": f"p{r}-{i}", "completion": "c"} for i in range(3)] for r in (1, 2, 3)]
    rounds[2].append(dict(rounds[0][0]))  # a trace kept again later counts once, as the newest
    pairs = training_pairs(rounds, cap=5)
    assert [p for p, _ in pairs] == ["p3-0", "p3-1", "p3-2", "p1-0", "p2-0"]


def adapted_modules(model) -> set[str]:
    """The names (last part) of the modules of a PEFT model that carry a LoRA adapter."""
    from peft.tuners.lora import LoraLayer

    return {name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, LoraLayer)}


def test_lora_target_modules_set_in_the_config_get_the_adapters(tiny_model_dir, smoke_family, tmp_path):
    """`sft.lora.target_modules` reaches PEFT: only the modules it names get an adapter, at its rank and
    alpha (2 r, not given); left out, the attention projections, as before it could be set."""
    from components.checks import load_config

    pairs = gold_pairs(smoke_family, "train", 8)
    lora = load_config(None, ["sft.lora={r: 4, target_modules: [v_proj, q_proj, up_proj]}"]).sft.lora
    trainer = make_trainer(tiny_model_dir, tmp_path / "a", pairs, 1, 1e-3, 8, 0, lora=lora)
    assert adapted_modules(trainer.model) == {"q_proj", "v_proj", "up_proj"}
    peft_cfg = trainer.model.peft_config["default"]
    assert (peft_cfg.r, peft_cfg.lora_alpha) == (4, 8)
    default = make_trainer(tiny_model_dir, tmp_path / "b", pairs, 1, 1e-3, 8, 0,
                           lora=load_config(None, ["sft.lora={r: 8}"]).sft.lora)
    assert adapted_modules(default.model) == {"q_proj", "k_proj", "v_proj", "o_proj"}


def test_serving_sizes_the_engine_by_the_adapter_it_serves(tiny_model_uri, tiny_model_dir, smoke_cfg, smoke_family,
                                                           tmp_path, monkeypatch):
    """A rank-16 adapter served by a run whose config has no `sft.lora` (or another rank): the engine is
    started for rank 16, read from the adapter, not for a default of 8 (vLLM refuses the adapter then)."""
    from components.artifacts import store
    from components.models import generation, serving
    from components.models.sft import adapter_lora

    lora = LoraConfig(r=16, target_modules=["q_proj", "v_proj"])
    sft(tiny_model_dir, tmp_path / "lora", gold_pairs(smoke_family, "train", 3), epochs=1, lr=1e-3, batch_size=8,
        seed=0, lora=lora, base_uri=tiny_model_uri)
    assert adapter_lora(tmp_path / "lora") == lora and adapter_lora(tiny_model_dir) is None
    uri = str(tmp_path / "store" / "model")
    store.publish_folder(tmp_path / "lora", uri, {"kind": "lora"})
    started = {}
    monkeypatch.setattr(generation, "load_backend", lambda name, model_dir, *a, **kw: started.update(kw, dir=model_dir))
    for cfg in (smoke_cfg, smoke_cfg.model_copy(update={"sft": smoke_cfg.sft.model_copy(update={"lora": LoraConfig()})})):
        serving.Generator(cfg, uri, smoke_family)
        assert started == {"enable_lora": True, "max_lora_rank": 16, "dir": str(tiny_model_dir)}


def test_vllm_is_started_for_a_rank_it_takes(tiny_model_dir, smoke_cfg, monkeypatch):
    """vLLM's max_lora_rank is one of a few sizes: a rank-4 adapter (`sft.lora.r: 4`, `vstar sft --lora-r 4`)
    starts the engine at 8, the least size that holds it, instead of failing its config check."""
    import vllm

    from components.models.generation import VLLMBackend, vllm_lora_rank

    started = {}
    monkeypatch.setattr(vllm, "LLM", lambda **kw: started.update(kw))
    for r, size in ((1, 1), (4, 8), (8, 8), (12, 16), (64, 64)):
        VLLMBackend(tiny_model_dir, smoke_cfg.generation, 128, enable_lora=True, max_lora_rank=r)
        assert started["max_lora_rank"] == size == vllm_lora_rank(r)
    from vllm.config.lora import LoRAConfig

    LoRAConfig(max_lora_rank=vllm_lora_rank(4))  # what vLLM checks
    with pytest.raises(ValueError, match="max_lora_rank"):
        LoRAConfig(max_lora_rank=4)
