from prefect import task

from components.config import RunConfig
from components.infra.layout import Layout
from components.stages import bootstrap
from tasks.common import run_stage, stage_task


@task(**stage_task(bootstrap))
def bootstrap_task(cfg: RunConfig, run_id: str | None) -> tuple[str, dict]:
    """Train the tiny generator from scratch (or import model.init_uri), unless an identical bootstrap
    is already published."""
    uri = Layout.of(cfg).bootstrap()
    return uri, run_stage(cfg, bootstrap, uri, run_id)
