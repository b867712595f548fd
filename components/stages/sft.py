"""G_n: SFT of the generator on the kept traces of this round (and earlier ones), plus replayed
bootstrap gold, starting from G_{n-1} or G_0 (sft.init). LoRA: an adapter on G_0, served by vLLM
unmerged; under `init: previous` the round's adapter goes on from G_{n-1}'s."""
from __future__ import annotations

import random
from collections import Counter
import time

from components.config import RunConfig
from components.data.decontam import against_eval, bootstrap_split
from components.data.prompting import family_of
from components.artifacts import store
from components.artifacts.layout import Layout
from components.runtime.log import get_logger
from components.models import serving
from components.models.sft import sft, training_pairs, with_replay
from components.stages import Stage
from components.stages.training import train_and_publish

log = get_logger(__name__)
STAGE = Stage.of(__name__, accelerator=True, data_parallel=True,
              isolated=True, metrics="train_generator", summary=("{examples:,} examples", "{steps:,} steps", "loss {loss_first:.3f} -> {loss_last:.3f}"))


def run(cfg: RunConfig, out_uri: str, model_uri: str, round_idx: int, kept_uris: list[str]) -> dict:
    fam = family_of(cfg)
    t0 = time.perf_counter()
    uris = kept_uris if cfg.sft.keep_history else kept_uris[-1:]
    by_round, dropped = [], Counter()
    for u in uris:
        rows, d = against_eval(store.read_rows(u), fam, cfg.decontam)
        by_round.append(rows)
        dropped.update(d)
    pairs = training_pairs(by_round, cfg.sft.max_examples)
    if len(pairs) < cfg.sft.min_kept:  # too little passed the filter (or decontamination): G_n = G_{n-1}
        log.warning("round %d: %d kept traces to train on (sft.min_kept %d) in %s; the generator is unchanged",
                    round_idx, len(pairs), cfg.sft.min_kept, kept_uris)
        metrics = {"examples": 0, "kept_examples": len(pairs), "unchanged": 1, **dict(dropped),
                   "seconds": time.perf_counter() - t0}
        src = store.read_manifest(model_uri)
        store.publish_folder(store.fetch_folder(model_uri), out_uri, {
            "kind": src.get("kind", "model"), "round": round_idx, "parent": model_uri, "data": kept_uris,
            "unchanged": True, "unchanged_from": model_uri, "metrics": metrics})
        return metrics
    gold, _ = bootstrap_split(fam, cfg.decontam)  # replayed gold: never an evaluation problem either
    data, n_replay = with_replay(pairs, gold, cfg.sft.replay_gold,
                                 random.Random(f"{cfg.seed}/sft/{round_idx}"), lambda p: (p.prompt, fam.gold_solution(p)))
    # G_n starts from G_{n-1} or from G_0 (sft.init); a LoRA G_{n-1}'s adapter trains on, on its base.
    start_uri = Layout.of(cfg).bootstrap() if cfg.sft.init == "base" else model_uri
    base_uri = serving.base_of(start_uri)
    adapter = store.fetch_folder(start_uri) if cfg.sft.lora and start_uri != base_uri else None
    return train_and_publish(
        out_uri, {"kind": "lora" if cfg.sft.lora else "model", "round": round_idx, "parent": model_uri, "data": kept_uris},
        lambda folder, log: sft(str(store.fetch_folder(base_uri)), folder, data, epochs=cfg.sft.epochs, lr=cfg.sft.lr,
                                batch_size=cfg.sft.batch_size, seed=cfg.seed + round_idx, lora=cfg.sft.lora, base_uri=base_uri,
                                log=log, warmup_ratio=cfg.sft.warmup_ratio, placement=serving.placement(cfg),
                                adapter_dir=adapter, max_tokens_per_batch=cfg.sft.max_tokens_per_batch),
        t0, lambda stats: {"examples": len(data), "kept_examples": len(pairs), "replay_examples": n_replay, **dict(dropped),
                           "started_from": 0 if start_uri == Layout.of(cfg).bootstrap() else round_idx - 1,
                           "loss_first": stats["loss_first"], "loss_last": stats["loss_last"], "steps": stats["steps"],
                           "train_tokens": stats["train_tokens"], "train_flops": stats["train_flops"],
                           "examples_per_step": len(data) * cfg.sft.epochs / max(1, stats["steps"])})
