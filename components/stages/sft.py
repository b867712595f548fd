"""G_n: SFT of the generator on the kept traces of this round (and earlier ones), plus replayed
bootstrap gold. LoRA: each round trains a fresh adapter on the same base, served by vLLM unmerged."""
from __future__ import annotations

import random
import tempfile
import time

from components.config import RunConfig
from components.data.decontam import against_eval
from components.data.families import get_family
from components.infra import store
from components.infra.log import get_logger
from components.models import serving
from components.models.sft import distinct_pairs, sft, with_replay
from components.stages import Stage

log = get_logger(__name__)
STAGE = Stage("sft", reads=("model", "filtered"), publishes="model", accelerator=True,
              isolated=True, metrics="train_generator")


def run(cfg: RunConfig, out_uri: str, model_uri: str, round_idx: int, kept_uris: list[str]) -> dict:
    fam = get_family(cfg.family, cfg.seed)
    t0 = time.perf_counter()
    uris = kept_uris if cfg.sft.keep_history else kept_uris[-1:]
    rows, dropped = against_eval([r for u in uris for r in store.read_rows(u)], fam, cfg.decontam)
    pairs = distinct_pairs(rows)
    if not pairs:  # nothing passed the filter (or decontamination): G_n = G_{n-1}, said loudly
        log.warning("round %d: no kept traces to train on in %s; the generator is unchanged", round_idx, kept_uris)
        metrics = {"examples": 0, "kept_examples": 0, "unchanged": 1, **dropped, "seconds": time.perf_counter() - t0}
        src = store.read_manifest(model_uri)
        store.publish_folder(store.fetch_folder(model_uri), out_uri, {
            "kind": src.get("kind", "model"), "round": round_idx, "parent": model_uri, "data": kept_uris,
            "unchanged": True, "metrics": metrics})
        return metrics
    pairs = pairs[: cfg.sft.max_examples]
    data, n_replay = with_replay(pairs, fam.problems("bootstrap"), cfg.sft.replay_gold,
                                 random.Random(f"{cfg.seed}/sft/{round_idx}"), lambda p: (p.prompt, fam.gold_solution(p)))
    base_uri = serving.base_of(model_uri)
    curve: list = []
    with tempfile.TemporaryDirectory() as tmp:
        lora = cfg.sft.lora.model_dump() if cfg.sft.lora else None
        stats = sft(str(store.fetch_folder(base_uri)), tmp, data, epochs=cfg.sft.epochs, lr=cfg.sft.lr,
                    batch_size=cfg.sft.batch_size, seed=cfg.seed + round_idx, lora=lora, base_uri=base_uri,
                    log=lambda step, m: curve.append((step, m["train_loss"])), warmup_ratio=cfg.sft.warmup_ratio)
        metrics = {"examples": len(data), "kept_examples": len(pairs), "replay_examples": n_replay, **dropped,
                   "loss_first": stats["loss_first"], "loss_last": stats["loss_last"], "steps": stats["steps"],
                   "seconds": time.perf_counter() - t0, "loss_curve": curve}
        store.publish_folder(tmp, out_uri, {"kind": "lora" if lora else "model", "round": round_idx,
                                            "parent": model_uri, "data": kept_uris, "metrics": metrics})
    return metrics
