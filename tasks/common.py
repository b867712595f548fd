"""What every stage task does: skip if its output is published, else run the stage (in a child
process when the stage declares it heavy), log its metrics to the round's MLflow run, and hand back
the output URI."""
from __future__ import annotations

from pathlib import Path
from types import ModuleType

from prefect import get_run_logger
from prefect.cache_policies import INPUTS, TASK_SOURCE

from components.config import RunConfig, stable_hash
from components.infra import store, tracking
from components.infra.isolation import run_isolated
from components.infra.layout import Layout
from components.models.hardware import peak_memory


def run_stage(cfg: RunConfig, stage: ModuleType, out_uri: str, run_id: str | None, prefix: str | None = None,
              **kwargs) -> dict:
    """Metrics of the published stage output at `out_uri`, computing it first if needed.
    Light stages run in this process: a child would cost more to start than to run."""
    log, name = get_run_logger(), stage.STAGE.name
    try:
        manifest = store.read_manifest(out_uri)
        log.info("%s: already published at %s, skipped", name, out_uri)
        return manifest.get("metrics", {})
    except store.NotPublished:
        pass
    isolated = stage.STAGE.isolated
    log.info("%s: running%s -> %s", name, " in a child process" if isolated else "", out_uri)
    if isolated:  # the child's metrics carry its own peak memory (components/infra/isolation.py)
        metrics = run_isolated(stage, cfg, {"out_uri": out_uri, **kwargs})
    else:  # a light stage in this process: the process's peak so far bounds it
        metrics = {**stage.run(cfg, out_uri=out_uri, **kwargs), **peak_memory()}
    if run_id:
        tracking.log_metrics(cfg, run_id, metrics, prefix=prefix or stage.STAGE.metrics_prefix)
    log.info("%s: %s", name, {k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()})
    return metrics


def stage_task(stage: ModuleType) -> dict:
    """@task options for a stage: its name, its tags ("gpu" when it wants an accelerator), and caching:
    stage tasks persist their results and cache on (inputs, task source), so a rerun of a crashed flow
    returns finished stages' results without calling them. The store's manifests remain the ground
    truth (a cache miss still skips a published stage); results live in the object store beside them."""
    return {"name": stage.STAGE.name, "tags": stage.STAGE.tags, "cache_policy": INPUTS + TASK_SOURCE,
            "persist_result": True}


def result_storage(cfg: RunConfig):
    """Prefect result storage under the run's store: a local folder, or any fsspec URI (s3://).
    Prefect wants it saved as a block (a worker's flow run must find it again): one per store."""
    from prefect.filesystems import LocalFileSystem, RemoteFileSystem

    uri = Layout.of(cfg).prefect_results()
    block = (LocalFileSystem(basepath=str(Path(store.fs_for(uri)[1]).resolve())) if store.is_local(uri)
             else RemoteFileSystem(basepath=uri, settings=store.storage_options(uri)))
    block.save(f"vstar-results-{stable_hash(uri)[:12]}", overwrite=True)
    return block
