from prefect import task

from components import catalog, store, tracking
from components.config import RunConfig
from tasks.common import CACHED, run_stage


@task(name="filter", **CACHED)
def filter_task(cfg: RunConfig, scored_uri: str, round_idx: int, run_id: str | None) -> tuple[str, dict]:
    """Keep correct traces whose aggregate step score clears the threshold -> round-<n>/filtered,
    recorded as the round's MLflow dataset input and in the store's dataset catalog (for reuse)."""
    uri = store.round_uri(cfg.store_uri, cfg.loop_id(), round_idx, "filtered")
    metrics = run_stage(cfg, "filter_traces", uri, run_id, scored_uri=scored_uri, round_idx=round_idx,
                        isolate=False)
    if run_id:
        tracking.log_dataset(cfg, run_id, uri, name=f"{cfg.loop_id()}/round-{round_idx}/filtered", context="filtered")
    entry = catalog.register(cfg.store_uri, uri, loop_id=cfg.loop_id(), round=round_idx,
                             filter=cfg.filter.model_dump(), label_source=cfg.scoring.label_source,
                             parent_run_id=tracking.loop_run(cfg), run_id=run_id,
                             rows=store.read_manifest(uri)["rows"])
    return uri, {**metrics, "catalog_id": entry["id"]}
