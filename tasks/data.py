from prefect import task

from components.config import RunConfig
from components.artifacts.layout import Layout
from components.stages import data
from tasks.common import run_stage, stage_task


@task(**stage_task(data))
def data_task(cfg: RunConfig, run_id: str | None) -> tuple[str, dict]:
    """A file-backed family's problems -> <store>/data/<hash>/<split>, bad rows quarantined beside them."""
    uri = Layout.of(cfg).data(cfg.family.model_dump(mode="json"), "ready")
    return uri, run_stage(cfg, data, uri, run_id)
