"""ORM_n, the outcome verifier: the PRM's model and input format with one label per trace, on its last
step tag (is the final answer right?), so its score of a trace is P(right) read there. Trained on every
generated trace of rounds 1..n, right and wrong alike (V-STaR keeps all iterations' data), from the
round's generator like the PRM, or from a backbone of its own (`orm.backbone`); what it costs and what
it buys against the PRM is measured on the same held-out pool by evaluate (components/evaluation/bestofk.py)."""
from __future__ import annotations

import random
import time

from components.config import RunConfig
from components.data.decontam import against_eval
from components.data.prompting import family_of
from components.artifacts import store
from components.loop import labels_uri
from components.models import serving
from components.models.prm_training import train_prm
from components.stages import Stage
from components.stages.training import scalars, train_and_publish
from components.stages import prm as train_prm_stage

STAGE = Stage.of(__name__, accelerator=True, data_parallel=True, isolated=True,
              metrics="train_orm",
              summary=("{examples:,} traces", "{right_share:.0%} right", "loss {loss_first:.3f} -> {loss_last:.3f}",
                       "held-out AUROC {heldout_auroc:.2f}"))


def outcome_examples(rows: list[dict]) -> list[dict]:
    """One label per trace, on its last step: 1.0 if its answer is right, else 0.0."""
    return [{"prompt": r["prompt"], "steps": r["steps"],
             "labels": [None] * (len(r["steps"]) - 1) + [1.0 if r["correct"] else 0.0]}
            for r in rows if r["steps"]]


def last_step_examples(cfg: RunConfig, rows: list[dict]) -> list[dict]:
    """PRM_n's rows with their last step's label alone (PRM vs ORM at one label budget); a row whose
    last step has no label gives the ORM nothing to learn."""
    out = []
    for r in rows:
        last = train_prm_stage.step_labels(cfg, r)[-1]
        if last is not None:
            out.append({"prompt": r["prompt"], "steps": r["steps"], "labels": [None] * (len(r["steps"]) - 1) + [last]})
    return out


def training_examples(cfg: RunConfig, round_idx: int, generated_uris: list[str]) -> tuple[list[dict], dict]:
    """What ORM_n trains on (`orm.labels`), and what decontamination dropped."""
    if cfg.orm.labels == "prm":
        imported = [labels_uri(cfg)] if labels_uri(cfg) else []  # the PRM's data: round_inputs' scored_uris
        rows, dropped = train_prm_stage.training_rows(cfg, round_idx, imported + list(generated_uris))
        return last_step_examples(cfg, rows), {**dropped, "prm_rows": len(rows)}
    rows = [r for u in generated_uris for r in store.read_rows(u)]
    rows, dropped = against_eval(rows, family_of(cfg), cfg.decontam)
    random.Random(f"{cfg.seed}/orm/{round_idx}").shuffle(rows)
    return outcome_examples(rows)[: cfg.orm.max_examples], dropped


def run(cfg: RunConfig, out_uri: str, generator_uri: str, round_idx: int, generated_uris: list[str]) -> dict:
    t0 = time.perf_counter()
    examples, dropped = training_examples(cfg, round_idx, generated_uris)
    if not examples:
        raise ValueError(f"round {round_idx}: no traces with a labelled last step to train the ORM on in "
                         f"{generated_uris} (orm.labels: {cfg.orm.labels})")
    o = cfg.orm
    init_dir, init = train_prm_stage.backbone(cfg, o.backbone, "orm.backbone.uri", generator_uri)
    return train_and_publish(
        out_uri, {"kind": "orm", "round": round_idx, "data": generated_uris, "init": init},
        lambda folder, log: train_prm(
            init_dir, folder, examples, epochs=o.epochs, lr=o.lr, batch_size=o.batch_size, seed=cfg.seed + round_idx,
            soft=cfg.prm.soft and o.labels == "prm", log=log, placement=serving.placement(cfg),
            step_separator=cfg.family.prompt.step_separator, balance=o.balance,
            max_tokens_per_batch=o.max_tokens_per_batch, warmup_ratio=o.warmup_ratio),
        t0, lambda stats: {**scalars(stats), **dropped, "examples": len(examples),
                           "right_share": sum(e["labels"][-1] >= 0.5 for e in examples) / len(examples)})
