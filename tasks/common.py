"""What every stage task does: skip if its output is published, else run the stage in a child
process, log its metrics to the round's MLflow run, and hand back the output URI."""
from __future__ import annotations

from prefect import get_run_logger
from prefect.cache_policies import INPUTS, TASK_SOURCE

from components import stages, store, tracking
from components.config import RunConfig
from components.isolation import run_isolated


def run_stage(cfg: RunConfig, stage: str, out_uri: str, run_id: str | None, isolate: bool = True,
              prefix: str | None = None, **kwargs) -> dict:
    """Metrics of the published stage output at `out_uri`, computing it first if needed.
    Light stages (isolate=False) run in this process: a child would cost more to start than to run."""
    log = get_run_logger()
    try:
        manifest = store.read_manifest(out_uri)
        log.info("%s: already published at %s, skipped", stage, out_uri)
        return manifest.get("metrics", {})
    except store.NotPublished:
        pass
    log.info("%s: running%s -> %s", stage, " in a child process" if isolate else "", out_uri)
    args = {"config": cfg.model_dump(mode="json"), "out_uri": out_uri, **kwargs}
    metrics = (run_isolated(f"components.stages:{stage}", args, name=stage) if isolate
               else getattr(stages, stage)(**args))
    if run_id:
        tracking.log_metrics(cfg, run_id, metrics, prefix=prefix or f"{stage}/")
    log.info("%s: %s", stage, {k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()})
    return metrics


# Stage tasks persist their results and cache on (inputs, task source): a rerun of a crashed flow
# returns finished stages' results without calling them. The store's manifests remain the ground
# truth (a cache miss still skips a published stage); results live in the object store beside them.
CACHED = {"cache_policy": INPUTS + TASK_SOURCE, "persist_result": True}


def result_storage(cfg: RunConfig):
    """Prefect result storage under the run's store: a local folder, or any fsspec URI (s3://).
    Prefect wants it saved as a block (a worker's flow run must find it again): one per store."""
    from pathlib import Path

    from prefect.filesystems import LocalFileSystem, RemoteFileSystem

    from components.config import stable_hash

    uri = store.join(cfg.store_uri, "prefect-results")
    block = (LocalFileSystem(basepath=str(Path(store.fs_for(uri)[1]).resolve())) if store.is_local(uri)
             else RemoteFileSystem(basepath=uri, settings=store.storage_options(uri)))
    block.save(f"vstar-results-{stable_hash(uri)[:12]}", overwrite=True)
    return block
