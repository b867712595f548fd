"""PRM_n: trained on the scored steps of every round so far (V-STaR keeps all iterations' data), plus
imported human labels when configured. Steps a PRM (or the implicit PRM) labelled are left out: a PRM
does not learn from a verifier's guesses."""
from __future__ import annotations

import random
import time

from components.config import RunConfig
from components.config_training import BackboneConfig
from components.data.decontam import against_eval
from components.data.prompting import family_of
from components.artifacts import store
from components.labeling.sources import GUESSES
from components.loop import labels_uri
from components.models import serving
from components.models.prm_training import train_prm
from components.stages import Stage
from components.stages.training import scalars, train_and_publish

STAGE = Stage.of(__name__, accelerator=True,
              data_parallel=True, isolated=True, metrics="train_prm",
              summary=("{examples:,} examples", "{steps:,} steps", "loss {loss_first:.3f} -> {loss_last:.3f}", "held-out AUROC {heldout_auroc:.2f}",
                       "first-error F1 {heldout_f1:.2f} at 0.5, {heldout_f1_calibrated:.2f} at {calibrated_threshold:.3g}"))


def run(cfg: RunConfig, out_uri: str, generator_uri: str, round_idx: int, scored_uris: list[str],
        previous_prm_uri: str | None = None) -> dict:
    t0 = time.perf_counter()
    rows, dropped = training_rows(cfg, round_idx, scored_uris)
    soft = cfg.prm.soft
    examples = [{"prompt": r["prompt"], "steps": r["steps"], "labels": step_labels(cfg, r),
                 **({"first_error": r["label_first_error"]} if "label_first_error" in r else {})} for r in rows]
    if not examples:
        raise ValueError(f"round {round_idx}: no labelled steps to train the PRM on in {scored_uris}")
    init_dir, init = _init(cfg, generator_uri, previous_prm_uri)
    return train_and_publish(
        out_uri, {"kind": "prm", "round": round_idx, "data": scored_uris, "init": init},
        lambda folder, log: train_prm(
            init_dir, folder, examples, epochs=cfg.prm.epochs, lr=cfg.prm.lr, batch_size=cfg.prm.batch_size,
            seed=cfg.seed + round_idx, soft=soft, log=log, placement=serving.placement(cfg),
            step_separator=cfg.family.prompt.step_separator, balance=cfg.prm.balance,
            max_tokens_per_batch=cfg.prm.max_tokens_per_batch, warmup_ratio=cfg.prm.warmup_ratio),
        t0, lambda stats: {**scalars(stats), **dropped, "examples": len(examples)})


def training_rows(cfg: RunConfig, round_idx: int, scored_uris: list[str]) -> tuple[list[dict], dict]:
    """The scored rows PRM_n trains on, in its order (at most prm.max_examples), and what decontamination
    dropped: the equal-budget ORM (`orm.labels: prm`) takes the same rows."""
    imported = labels_uri(cfg)
    if imported and not cfg.scoring.labels.with_generated:
        scored_uris = [u for u in scored_uris if u == imported]  # imported human labels only
    rows = [r for u in scored_uris for r in store.read_rows(u) if r.get("label_source", "mc") not in GUESSES and r["steps"]]
    rows, dropped = against_eval(rows, family_of(cfg), cfg.decontam)
    random.Random(f"{cfg.seed}/prm/{round_idx}").shuffle(rows)
    return rows[: cfg.prm.max_examples], dropped


def step_labels(cfg: RunConfig, row: dict) -> list[float | None]:
    """A row's labels as the PRM trains on them: soft scores (P(good)) or hard 0/1, None = unlabelled."""
    return [None if x is None else float(x) for x in (row["step_scores"] if cfg.prm.soft else row["step_labels"])]


def _init(cfg: RunConfig, generator_uri: str, previous_prm_uri: str | None) -> tuple[str, str]:
    """The folder the PRM starts from, and what it is (for the manifest): PRM_{n-1} (`init_from:
    previous`), else the configured backbone (`prm.backbone`), else the round's generator."""
    if cfg.prm.init_from == "previous" and previous_prm_uri:
        return str(store.fetch_folder(previous_prm_uri)), previous_prm_uri
    return backbone(cfg, cfg.prm.backbone, "prm.backbone.uri", generator_uri)


def backbone(cfg: RunConfig, b: BackboneConfig, field: str, generator_uri: str) -> tuple[str, str]:
    """The folder a verifier starts from and what it is: its own backbone `b` where on (published in the
    store: components/stages/bootstrap.py), else the round's generator (its full checkpoint, a LoRA's base)."""
    from components.stages.bootstrap import backbone as own_backbone

    uri, what = own_backbone(cfg, b, field) if b.enabled else (serving.base_of(generator_uri),) * 2
    return str(store.fetch_folder(uri)), what
