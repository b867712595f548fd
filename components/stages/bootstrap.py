"""G_0: a tokenizer and a small Llama trained from scratch on gold solutions of the bootstrap split,
or a given pretrained model (`model.init_uri`) copied into the store and published the same way."""
from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from components.config import RunConfig
from components.data.prompting import family_of
from components.infra import store
from components.infra.log import get_logger
from components.models.serving import placement
from components.stages import Stage

log = get_logger(__name__)
STAGE = Stage("bootstrap", reads=(), publishes="bootstrap", accelerator=True, data_parallel=True, isolated=True,
              summary=("{params:,} params", "{examples:,} examples", "{steps:,} steps", "loss {loss_first:.3f} -> {loss_last:.3f}"))


def run(cfg: RunConfig, out_uri: str) -> dict:
    if cfg.model.init_uri:
        return import_model(cfg, cfg.model.init_uri, out_uri)
    import torch

    from components.models.causal_lm import train_causal_lm
    from components.models.tiny import build_model, n_params, train_tokenizer

    torch.set_num_threads(max(1, len(os.sched_getaffinity(0))))  # the default ignores the affinity mask
    fam = family_of(cfg)
    t0 = time.perf_counter()
    pairs = [(p.prompt, fam.gold_solution(p)) for p in fam.problems("bootstrap")]
    # The tokenizer sees every split's prompts: its vocabulary must cover harder problems too.
    corpus = [p + c for p, c in pairs] + [p.prompt for s in ("train", "eval") for p in fam.problems(s)]
    with tempfile.TemporaryDirectory() as tmp:
        tok = train_tokenizer(corpus, tmp)
        model = build_model(cfg.model, tok, cfg.seed)
        losses: list[tuple[int, float]] = []

        def progress(step: int, m: dict) -> None:
            losses.append((step, m["train_loss"]))
            log.info("step %d loss %.4f lr %.2e %.0fs", step, m["train_loss"], m["lr"], time.perf_counter() - t0)

        stats = train_causal_lm(model, tok, pairs, cfg.bootstrap, cfg.seed, log=progress, placement=placement(cfg))
        model.to("cpu").save_pretrained(tmp)
        metrics = {"params": n_params(model), "examples": len(pairs), "train_seconds": stats["seconds"],
                   "loss_first": stats["loss_first"], "loss_last": stats["loss_last"],
                   "seconds": time.perf_counter() - t0}
        store.publish_folder(tmp, out_uri, {"kind": "model", "bootstrap_hash": cfg.bootstrap_hash(),
                                            "metrics": metrics, "loss_curve": losses})
    return metrics


def import_model(cfg: RunConfig, src: str, out_uri: str) -> dict:
    """G_0 is a given pretrained model: copy its folder into the store, published like a bootstrap."""
    import fsspec

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        fs, path = fsspec.core.url_to_fs(src)
        if not fs.isdir(path):
            raise FileNotFoundError(f"model.init_uri: {src} is not a folder holding a model")
        fs.get(path.rstrip("/") + "/", tmp, recursive=True)
        if not Path(tmp, "config.json").exists():
            raise FileNotFoundError(f"model.init_uri: {src} has no config.json (expected a Hugging Face model folder)")
        metrics = {"imported": 1, "seconds": time.perf_counter() - t0}
        store.publish_folder(tmp, out_uri, {"kind": "model", "source": src, "bootstrap_hash": cfg.bootstrap_hash(),
                                            "metrics": metrics})
    return metrics
