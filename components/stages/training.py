"""What every training stage does around its trainer (the SFT of G_n, the PRM, the ORM, the DPO
verifier): train into a scratch folder, logging the loss curve; publish that folder with its manifest
(its metrics last, so a crash mid-training publishes nothing); give back the metrics."""
from __future__ import annotations

import tempfile
import time
from typing import Callable

from components.artifacts import store

Log = Callable[[int, dict], None]  # what a trainer calls each logging step: (step, {"train_loss": ...})


def scalars(stats: dict) -> dict:
    """A trainer's figures that are metrics (numbers; the rest stays out of MLflow)."""
    return {k: v for k, v in stats.items() if isinstance(v, (int, float))}


def train_and_publish(out_uri: str, manifest: dict, train: Callable[[str, Log], dict], t0: float,
                      metrics: Callable[[dict], dict] = scalars) -> dict:
    """`train(folder, log)` trains into `folder` and returns its figures; `metrics(figures)` the stage's
    metrics from them (each stage adds what it counted before training). The folder is published at
    `out_uri` with `manifest` (kind, round, data, ...) and the metrics, `seconds` since `t0` (the
    stage's start) and the loss curve among them."""
    curve: list = []
    with tempfile.TemporaryDirectory() as tmp:
        stats = train(tmp, lambda step, m: curve.append((step, m["train_loss"])))
        out = {**metrics(stats), "seconds": time.perf_counter() - t0, "loss_curve": curve}
        store.publish_folder(tmp, out_uri, {**manifest, "metrics": out})
    return out
