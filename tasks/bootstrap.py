from prefect import task

from components.config import RunConfig
from components.artifacts import store, tracking
from components.artifacts.layout import Layout
from components.stages import bootstrap
from tasks.common import run_stage, stage_task


@task(**stage_task(bootstrap))
def bootstrap_task(cfg: RunConfig, run_id: str | None) -> tuple[str, dict]:
    """Train the tiny generator from scratch (or import model.init_uri), unless an identical bootstrap
    is already published. An imported G_0's source file and digest are tags of the loop's run."""
    uri = Layout.of(cfg).bootstrap()
    metrics = run_stage(cfg, bootstrap, uri, run_id)
    manifest = store.read_manifest(uri)
    if run_id and metrics.get("imported"):
        for key in ("source", "source_sha256", "architecture"):
            if manifest.get(key):
                tracking.set_tag(cfg, run_id, f"vstar.g0.{key}", str(manifest[key]))
    return uri, metrics
