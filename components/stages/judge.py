"""The loop's own small judge (no instruct model on CPU): the bootstrap generator fine-tuned on the
family's gold traces with planted errors -> " <first wrong step>" or " none". Its first-error F1 on
held-out planted traces goes into the manifest: whatever it is, it is measured."""
from __future__ import annotations

import random
import tempfile
import time

from components.config import RunConfig
from components.data.prompting import family_of
from components.artifacts import store
from components.labeling import judge_training
from components.labeling.judge_clients import make_judge_client
from components.models import serving
from components.data.decontam import bootstrap_split
from components.stages import Stage

STAGE = Stage.of(__name__, accelerator=True, data_parallel=True,
              isolated=True, metrics="train_judge",
              summary=("{examples:,} examples", "{steps:,} steps", "loss {loss_first:.3f} -> {loss_last:.3f}"))


def run(cfg: RunConfig, out_uri: str, generator_uri: str) -> dict:
    fam = family_of(cfg)
    j = cfg.scoring.judge
    t0 = time.perf_counter()
    rng = random.Random(f"{cfg.seed}/judge")
    pool, dropped = bootstrap_split(fam, cfg.decontam)
    held_out = judge_training.planted_traces(fam, pool[:300], 300, rng)  # problems the judge never trains on
    examples = judge_training.judge_examples(fam, pool[300:], j.train_examples, rng, j)
    curve: list = []
    with tempfile.TemporaryDirectory() as tmp:
        stats = judge_training.train_judge(str(store.fetch_folder(generator_uri)), tmp, examples, j.train, cfg.seed,
                                           log=lambda step, m: curve.append((step, m["train_loss"])),
                                           placement=serving.placement(cfg))
        client = make_judge_client(j.model_copy(update={"backend": "local"}), model_dir=tmp, gen_cfg=cfg.generation,
                                   max_positions=cfg.model.max_positions, placement=serving.placement(cfg))
        quality = judge_training.judge_accuracy(j, client, fam, [p for p, _ in held_out], [c for _, c in held_out])
        metrics = {**{k: v for k, v in stats.items() if isinstance(v, (int, float))},
                   **{f"heldout_{k}": v for k, v in quality.items()}, "examples": len(examples), **dropped,
                   "seconds": time.perf_counter() - t0, "loss_curve": curve}
        store.publish_folder(tmp, out_uri, {"kind": "judge", "parent": generator_uri, "metrics": metrics})
    return metrics
