"""`vstar sft`: fine-tune a model on a catalogued filtered dataset (components/artifacts/catalog.py) and
publish it with its lineage: the dataset (id, URI, digest), the base model (as given, and its digest
when published), the settings and the MLflow run that logs it (tasks/finetune.py opens that run).

Not a stage of the loop: nothing in a round reads what it publishes, so `recompute` cannot name it.
`source` reads and checks what it trains on and from before anything is started; `run` trains with
`cfg.sft` (epochs, lr, batch_size, lora) and `cfg.seed`, and publishes. It trains where sft() does by
default (the CPU), as `vstar sft` always has."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from components.config import RunConfig
from components.config_training import LoraConfig
from components.artifacts import catalog, store
from components.artifacts.layout import Layout
from components.models.sft import sft
from components.stages import Stage
from components.stages.training import train_and_publish

# Outside the loop (`vstar sft` on a catalogued dataset), so no row of the round table: named here.
STAGE = Stage("finetune", "sft",
              summary=("{examples:,} examples", "{steps:,} steps", "loss {loss_first:.3f} -> {loss_last:.3f}"))


class Refused(ValueError):
    """Nothing to fine-tune on, or no model to fine-tune: what is wrong, in the user's terms."""


@dataclass(frozen=True)
class Source:
    entry: dict  # the catalog entry of the training data
    pairs: list[tuple[str, str]]  # its (prompt, completion) rows
    model: str  # the base model as given: a local folder or a published store URI
    base_dir: Path  # where it is on this machine
    base_sha256: str | None  # its published digest; None for a plain local folder


def source(store_uri: str, entry: dict, model: str) -> Source:
    rows = catalog.load_filtered(entry["id"], store_uri)
    missing = {"prompt", "completion"} - set(rows.column_names)
    if missing or len(rows) == 0:
        raise Refused(f"{entry['uri']}: {len(rows)} rows, missing field(s) {sorted(missing)}: nothing to fine-tune on")
    local = store.is_local(model) and Path(model).is_dir() and not (Path(model) / store.MANIFEST).exists()
    try:  # a plain local folder is used as is; anything else must be a published model
        base_dir, base_sha = (Path(model), None) if local else (store.fetch_folder(model),
                                                                store.read_manifest(model)["sha256"])
    except store.NotPublished as e:
        raise Refused(f"--model {model}: {e}") from None
    return Source(entry, list(zip(rows["prompt"], rows["completion"])), model, base_dir, base_sha)


def hparams(cfg: RunConfig) -> dict:
    """The settings it trained with, as the manifest and MLflow record them (and the default URI hashes):
    LoRA by its rank (0: full fine-tuning), in full only when set otherwise than LoraConfig's defaults."""
    lora = cfg.sft.lora
    hp = {"epochs": cfg.sft.epochs, "lr": cfg.sft.lr, "batch_size": cfg.sft.batch_size, "seed": cfg.seed,
          "lora_r": lora.r if lora else 0}
    return {**hp, "lora": lora.model_dump(mode="json")} if lora and lora != LoraConfig(r=lora.r) else hp


def default_out(cfg: RunConfig, src: Source) -> str:
    return Layout(cfg.store_uri).sft(src.entry["id"], {"base": src.base_sha256 or src.model, **hparams(cfg)})


def run(cfg: RunConfig, out_uri: str, src: Source, run_id: str | None = None) -> dict:
    entry = src.entry
    return train_and_publish(
        out_uri, {"kind": "lora" if cfg.sft.lora else "model", "data_id": entry["id"], "data_uri": entry["uri"],
                  "data_sha256": entry["sha256"], "base_model": src.model, "base_sha256": src.base_sha256,
                  "hparams": hparams(cfg), "mlflow_run_id": run_id},
        lambda folder, log: sft(str(src.base_dir), folder, src.pairs, epochs=cfg.sft.epochs, lr=cfg.sft.lr,
                                batch_size=cfg.sft.batch_size, seed=cfg.seed, lora=cfg.sft.lora, base_uri=src.model,
                                log=log),
        time.perf_counter(), lambda stats: {"examples": len(src.pairs), "loss_first": stats["loss_first"],
                                            "loss_last": stats["loss_last"], "steps": stats["steps"]})
