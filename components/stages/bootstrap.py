"""G_0: a tokenizer and a small Llama trained from scratch on gold solutions of the bootstrap split,
or a given pretrained model (`model.init_uri`) copied into the store and published the same way."""
from __future__ import annotations

import math
import os
import tempfile
import time
from pathlib import Path

from components.config import RunConfig
from components.config_sections import ModelConfig, TrainConfig
from components.config_training import BackboneConfig
from components.data.decontam import against_eval, bootstrap_split
from components.data.prompting import family_of
from components.artifacts import store
from components.artifacts.layout import Layout
from components.runtime.log import get_logger
from components.redact import redact
from components.models import checkpoint
from components.models.serving import placement
from components.stages import Stage

log = get_logger(__name__)
STAGE = Stage.of(__name__, accelerator=True, data_parallel=True, isolated=True,
              summary=("{params:,} params", "{examples:,} examples", "{steps:,} steps", "loss {loss_first:.3f} -> {loss_last:.3f}"))


def run(cfg: RunConfig, out_uri: str) -> dict:
    if cfg.model.init_uri:
        return import_model(cfg, cfg.model.init_uri, out_uri)
    return from_scratch(cfg, cfg.model, cfg.bootstrap, out_uri, {"kind": "model", "bootstrap_hash": cfg.bootstrap_hash()})


def from_scratch(cfg: RunConfig, size: ModelConfig, training: TrainConfig | None, out_uri: str, manifest: dict,
                 max_examples: int | None = None) -> dict:
    """A tokenizer and a Llama of `size` made here, trained as a language model on the bootstrap split's
    gold solutions (at most `max_examples`; `training` None: left at its random initialisation), published
    at `out_uri`: G_0, or a verifier's backbone made here (`backbone`)."""
    import torch
    from components.models.hardware import cpu_threads

    from components.models.causal_lm import train_causal_lm
    from components.models.tiny import build_model, n_params, train_tokenizer

    torch.set_num_threads(cpu_threads())
    fam = family_of(cfg)
    t0 = time.perf_counter()
    problems, dropped = bootstrap_split(fam, cfg.decontam)
    pairs = [(p.prompt, fam.gold_solution(p)) for p in problems]
    # The tokenizer sees the train split's prompts too (its vocabulary must cover harder problems), never
    # an evaluation problem's: what it cannot spell there is what a model trained here has not seen.
    train, _ = against_eval(fam.problems("train"), fam, cfg.decontam)
    corpus = [p + c for p, c in pairs] + [p.prompt for p in train]
    pairs = pairs[:max_examples]
    with tempfile.TemporaryDirectory() as tmp:
        tok = train_tokenizer(corpus, tmp)
        model = build_model(size, tok, cfg.seed)
        losses: list[tuple[int, float]] = []

        def progress(step: int, m: dict) -> None:
            losses.append((step, m["train_loss"]))
            log.info("step %d loss %.4f lr %.2e %.0fs", step, m["train_loss"], m["lr"], time.perf_counter() - t0)

        metrics = {"params": n_params(model), "examples": len(pairs) if training else 0, **dropped}
        if training is not None:
            stats = train_causal_lm(model, tok, pairs, training, cfg.seed, log=progress, placement=placement(cfg))
            metrics.update({"train_seconds": stats["seconds"], "loss_first": stats["loss_first"], "loss_last": stats["loss_last"],
                            **{k: stats[k] for k in ("steps", "examples_per_step", "padding_share", "packed")}})
        model.to("cpu").save_pretrained(tmp)
        metrics["seconds"] = time.perf_counter() - t0
        store.publish_folder(tmp, out_uri, {**manifest, "metrics": metrics, "loss_curve": losses})
    return metrics


def backbone(cfg: RunConfig, b: BackboneConfig, field: str) -> tuple[str, str]:
    """A verifier's own backbone `b`, published in the store (made or copied on first use, then found by
    every loop that names the same one), and what it is for manifests: a GGUF file converted
    (`converted`), a Hugging Face folder copied in by its digest, or a model made here at `b.size`."""
    if b.size is not None:
        settings = {"seed": cfg.seed, "family": cfg.family.model_dump(mode="json"), "size": b.size.model_dump(mode="json"),
                    "bootstrap": cfg.bootstrap.model_dump(mode="json"), "pretrain_epochs": b.pretrain_epochs,
                    "pretrain_examples": b.pretrain_examples}
        uri = Layout(cfg.store_uri).backbone(settings)
        if not store.is_published(uri):
            log.info("%s: making a %s-layer, %s-wide backbone here (%s epochs on the bootstrap gold)", field.rsplit(".", 1)[0],
                     b.size.layers, b.size.hidden_size, b.pretrain_epochs)
            training = cfg.bootstrap.model_copy(update={"epochs": b.pretrain_epochs}) if b.pretrain_epochs else None
            from_scratch(cfg, b.size, training, uri, {"kind": "backbone", "settings": settings}, b.pretrain_examples)
        return uri, uri
    import fsspec

    src = checkpoint.resolve(b.uri)
    if checkpoint.is_gguf(src):
        return converted(cfg.store_uri, src)[0], redact(b.uri)
    fs, path = fsspec.core.url_to_fs(src)
    if not fs.isfile(f"{path.rstrip('/')}/config.json"):
        raise FileNotFoundError(f"{field}: {redact(src)} is not a Hugging Face model folder (no config.json) "
                                f"nor a .gguf file")
    if store.is_published(src):
        return src, redact(b.uri)
    uri = Layout(cfg.store_uri).backbone({"folder_sha256": _folder_digest(fs, path)})
    if not store.is_published(uri):
        with tempfile.TemporaryDirectory() as tmp:
            fs.get(path.rstrip("/") + "/", tmp, recursive=True)
            store.publish_folder(tmp, uri, {"kind": "backbone", "source": redact(b.uri)})
    return uri, redact(b.uri)


def _folder_digest(fs, path: str) -> str:
    """sha256 over a folder's files, names and bytes: the same folder anywhere is one backbone."""
    import hashlib

    h = hashlib.sha256()
    for f in sorted(fs.find(path)):
        h.update(f[len(path.rstrip("/")):].encode())
        with fs.open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def import_model(cfg: RunConfig, src: str, out_uri: str) -> dict:
    """G_0 is a given pretrained model, published like a bootstrap: a Hugging Face folder copied into
    the store, or a GGUF file converted once (`converted`) and copied from there."""
    import fsspec

    t0 = time.perf_counter()
    source, params = {"source": redact(src)}, None
    folder = src = checkpoint.resolve(src)  # package:<dist>: the file that package installed here
    if checkpoint.is_gguf(src):
        uri, facts = converted(cfg.store_uri, src)
        source.update(source_sha256=facts["source_sha256"], converted_from="gguf", architecture=facts["architecture"],
                      quant_types=facts["quant_types"])
        folder, params = str(store.fetch_folder(uri)), facts["params"]
    with tempfile.TemporaryDirectory() as tmp:
        fs, path = fsspec.core.url_to_fs(folder)
        if not fs.isdir(path):
            raise FileNotFoundError(f"model.init_uri: {redact(src)} is not a folder holding a model (nor a .gguf file)")
        fs.get(path.rstrip("/") + "/", tmp, recursive=True)
        if not Path(tmp, "config.json").exists():
            raise FileNotFoundError(f"model.init_uri: {redact(src)} has no config.json (expected a Hugging Face "
                                    f"model folder or a .gguf file)")
        # Imported, not trained: no examples, no steps; `imported` says so wherever the bootstrap is shown.
        metrics = {"imported": 1, "params": params or _count_params(tmp), "seconds": time.perf_counter() - t0}
        store.publish_folder(tmp, out_uri, {"kind": "model", **source, "bootstrap_hash": cfg.bootstrap_hash(),
                                            "metrics": metrics})
    return metrics


def converted(store_uri: str, src: str) -> tuple[str, dict]:
    """The GGUF file at `src` as a Hugging Face folder in the store, and its manifest: converted on first
    use, then found by the file's digest by every loop that names the same file, wherever it lies."""
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp, os.path.basename(src.split("?", 1)[0]))
        sha = checkpoint.fetch(src, local)
        uri = Layout(store_uri).converted(sha)
        if not store.is_published(uri):
            log.info("model.init_uri: converting %s (sha256 %s) to a Hugging Face folder", redact(src), sha[:16])
            out = Path(tmp, "model")
            facts = checkpoint.convert_gguf(local, out, redact(src))
            store.publish_folder(out, uri, {"kind": "model", "source": redact(src), "source_sha256": sha, **facts,
                                            "seconds": time.perf_counter() - t0})
    return uri, store.read_manifest(uri)


def _count_params(folder: str) -> int:
    """Parameters of a Hugging Face folder, from its safetensors headers (no weights loaded)."""
    from safetensors import safe_open

    n = 0
    for f in sorted(Path(folder).glob("*.safetensors")):
        with safe_open(str(f), "pt") as st:
            n += sum(math.prod(st.get_slice(key).get_shape()) for key in st.keys())
    return n
