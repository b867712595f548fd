from prefect import task

from components import store
from components.config import RunConfig, stable_hash
from tasks.common import CACHED, run_stage


@task(name="prepare-data", **CACHED)
def data_task(cfg: RunConfig, run_id: str | None) -> tuple[str, dict]:
    """A file-backed family's problems -> <store>/data/<hash>/<split>, bad rows quarantined beside them."""
    uri = store.join(cfg.store_uri, "data", stable_hash(cfg.family.model_dump(mode="json"))[:12], "ready")
    return uri, run_stage(cfg, "prepare_data", uri, run_id, isolate=False)
