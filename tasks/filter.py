from prefect import task

from components.config import RunConfig
from components.artifacts import catalog, store, tracking
from components.artifacts.layout import Layout
from components.stages import filter as filter_stage
from tasks.common import run_stage, stage_task


@task(**stage_task(filter_stage))
def filter_task(cfg: RunConfig, scored_uri: str, round_idx: int, run_id: str | None) -> tuple[str, dict]:
    """Keep correct traces whose aggregate step score clears the threshold -> round-<n>/filtered,
    recorded as the round's MLflow dataset input and in the store's dataset catalog (for reuse)."""
    uri = Layout.of(cfg).round(round_idx, "filtered")
    metrics = run_stage(cfg, filter_stage, uri, run_id, scored_uri=scored_uri, round_idx=round_idx)
    if run_id:
        tracking.log_dataset(cfg, run_id, uri, name=f"{cfg.loop_id()}/round-{round_idx}/filtered", context="filtered")
    manifest = store.read_manifest(uri)
    entry = catalog.register(cfg.store_uri, uri, loop_id=cfg.loop_id(), round=round_idx,
                             filter=cfg.filter.model_dump(), label_source=manifest["label_source"],
                             parent_run_id=tracking.loop_run(cfg), run_id=run_id, rows=manifest["rows"])
    return uri, {**metrics, "catalog_id": entry["id"]}
