from prefect import task

from components import store
from components.config import RunConfig
from tasks.common import CACHED, run_stage


@task(name="bootstrap", tags=["gpu"], **CACHED)
def bootstrap_task(cfg: RunConfig, run_id: str | None) -> tuple[str, dict]:
    """Train the tiny generator from scratch, unless an identical bootstrap is already published."""
    uri = store.bootstrap_uri(cfg.store_uri, cfg.bootstrap_hash())
    return uri, run_stage(cfg, "bootstrap", uri, run_id)
