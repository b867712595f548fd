from prefect import task

from components import store
from components.config import RunConfig
from tasks.common import CACHED, run_stage


@task(name="generate", tags=["gpu"], **CACHED)
def generate_task(cfg: RunConfig, model_uri: str, round_idx: int, target: int | None,
                  run_id: str | None) -> tuple[str, dict]:
    """k candidate solutions per round problem (curriculum level `target`) -> round-<n>/candidates."""
    uri = store.round_uri(cfg.store_uri, cfg.loop_id(), round_idx, "candidates")
    return uri, run_stage(cfg, "generate", uri, run_id, model_uri=model_uri, round_idx=round_idx, target=target)
