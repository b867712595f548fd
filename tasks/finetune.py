"""`vstar sft` as a plain call: the finetune stage inside an MLflow run of its own that records the
lineage (catalogued dataset -> model). No Prefect task: it is one stage with nothing to orchestrate,
and the command has never needed a Prefect server (the loop's stages go through tasks/common.run_stage)."""
from __future__ import annotations

from components.config import RunConfig
from components.artifacts import tracking
from components.redact import redact
from components.stages import finetune


def finetune_tracked(cfg: RunConfig, out_uri: str, src: finetune.Source) -> tuple[dict, str]:
    """The stage's metrics and its MLflow run: FINISHED, or FAILED / KILLED with what went wrong. The
    run is tagged with the dataset, its loop and round run and both models; the dataset is its input."""
    from mlflow.entities import Param

    entry, model = src.entry, src.model
    c = tracking.client(cfg)
    run_id = c.create_run(tracking.experiment_id(c, cfg.experiment), run_name=f"sft/{entry['id']}", tags={
        tracking.KIND_TAG: "sft", "vstar.data_id": entry["id"], "vstar.data_loop_id": entry.get("loop_id", ""),
        "vstar.data_run_id": entry.get("run_id") or "", "vstar.base_model": redact(model),
        "vstar.model_uri": redact(out_uri),
        "mlflow.note.content": redact(f"Fine-tuned {model} on catalog dataset {entry['id']} ({entry['uri']}) -> {out_uri}"),
    }).info.run_id
    with tracking.running(cfg, run_id):
        tracking.log_dataset(cfg, run_id, entry["uri"], entry["id"], context="training")
        metrics = finetune.run(cfg, out_uri, src, run_id)
        c.log_batch(run_id, params=[Param(k, redact(str(v))) for k, v in {
            "data_id": entry["id"], "data_uri": entry["uri"], "base_model": model, "model_uri": out_uri,
            "examples": len(src.pairs), **finetune.hparams(cfg)}.items()])
        tracking.log_metrics(cfg, run_id, metrics)
    return metrics, run_id
