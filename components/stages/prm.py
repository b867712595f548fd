"""PRM_n: trained on the scored steps of every round so far (V-STaR keeps all iterations' data), plus
imported human labels when configured. Steps a PRM (or the implicit PRM) labelled are left out: a PRM
does not learn from a verifier's guesses."""
from __future__ import annotations

import random
import tempfile
import time

from components.config import RunConfig
from components.data.decontam import against_eval
from components.data.prompting import family_of
from components.infra import store
from components.labeling.sources import GUESSES
from components.loop import labels_uri
from components.models import prm, serving
from components.stages import Stage

STAGE = Stage("train-prm", reads=("scored", "labels", "model", "prm"), publishes="prm", accelerator=True,
              data_parallel=True, isolated=True, metrics="train_prm",
              summary=("{examples:,} examples", "{steps:,} steps", "loss {loss_first:.3f} -> {loss_last:.3f}", "held-out AUROC {heldout_auroc:.2f}",
                       "first-error F1 {heldout_f1:.2f} at 0.5, {heldout_f1_calibrated:.2f} at {calibrated_threshold:.3g}"))


def run(cfg: RunConfig, out_uri: str, generator_uri: str, round_idx: int, scored_uris: list[str],
        previous_prm_uri: str | None = None) -> dict:
    t0 = time.perf_counter()
    imported = labels_uri(cfg)
    if imported and not cfg.scoring.labels.with_generated:
        scored_uris = [u for u in scored_uris if u == imported]  # imported human labels only
    rows = [r for u in scored_uris for r in store.read_rows(u) if r.get("label_source", "mc") not in GUESSES and r["steps"]]
    rows, dropped = against_eval(rows, family_of(cfg), cfg.decontam)
    random.Random(f"{cfg.seed}/prm/{round_idx}").shuffle(rows)
    soft = cfg.prm.soft
    examples = [{"prompt": r["prompt"], "steps": r["steps"],
                 "labels": [None if x is None else float(x) for x in (r["step_scores"] if soft else r["step_labels"])],
                 **({"first_error": r["label_first_error"]} if "label_first_error" in r else {})}
                for r in rows[: cfg.prm.max_examples]]
    if not examples:
        raise ValueError(f"round {round_idx}: no labelled steps to train the PRM on in {scored_uris}")
    init_uri = previous_prm_uri if cfg.prm.init_from == "previous" and previous_prm_uri else serving.base_of(generator_uri)
    curve: list = []
    with tempfile.TemporaryDirectory() as tmp:
        stats = prm.train_prm(str(store.fetch_folder(init_uri)), tmp, examples, epochs=cfg.prm.epochs, lr=cfg.prm.lr,
                              batch_size=cfg.prm.batch_size, seed=cfg.seed + round_idx, soft=soft,
                              log=lambda step, m: curve.append((step, m["train_loss"])),
                              placement=serving.placement(cfg), step_separator=cfg.family.prompt.step_separator,
                              balance=cfg.prm.balance)
        metrics = {**{k: v for k, v in stats.items() if isinstance(v, (int, float))}, **dropped,
                   "examples": len(examples), "seconds": time.perf_counter() - t0, "loss_curve": curve}
        store.publish_folder(tmp, out_uri, {"kind": "prm", "round": round_idx, "data": scored_uris,
                                            "metrics": metrics})
    return metrics
