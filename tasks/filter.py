from prefect import task

from components import store, tracking
from components.config import RunConfig
from tasks.common import run_stage


@task(name="filter")
def filter_task(cfg: RunConfig, scored_uri: str, round_idx: int, run_id: str | None) -> tuple[str, dict]:
    """Keep correct traces whose aggregate step score clears the threshold -> round-<n>/filtered."""
    uri = store.round_uri(cfg.store_uri, cfg.loop_id(), round_idx, "filtered")
    metrics = run_stage(cfg, "filter_traces", uri, run_id, scored_uri=scored_uri, round_idx=round_idx,
                        isolate=False)
    if run_id:
        tracking.log_dataset(cfg, run_id, uri, name=f"{cfg.loop_id()}/round-{round_idx}/filtered", context="filtered")
    return uri, metrics
