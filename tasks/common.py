"""What every stage task does: skip if its output is published, else run the stage (in a child
process when the stage declares it heavy), log its metrics to the round's MLflow run, and hand back
the output URI."""
from __future__ import annotations

import re
import time
from pathlib import Path
from types import ModuleType

from prefect import get_run_logger
from prefect.cache_policies import INPUTS, TASK_SOURCE

from components.config import RunConfig, stable_hash
from components.infra import code_version, progress, store, tracking
from components.infra.isolation import run_isolated
from components.infra.layout import Layout
from components.infra.redact import redact
from components.models.hardware import peak_memory
from tasks.results import SafeJSON, SafeLocalResults, SafeRemoteResults


def run_stage(cfg: RunConfig, stage: ModuleType, out_uri: str, run_id: str | None, prefix: str | None = None,
              **kwargs) -> dict:
    """Metrics of the published stage output at `out_uri`, computing it first if needed.
    Light stages run in this process: a child would cost more to start than to run."""
    log, name, fields = get_run_logger(), stage.STAGE.name, stage.STAGE.summary
    try:
        manifest = store.read_manifest(out_uri)
        metrics = manifest.get("metrics", {})
        log.info("%s  (published at %s: skipped)", progress.summary(name, metrics, fields, metrics.get("seconds", 0)),
                 redact(out_uri))
        if code_version.is_stale(manifest, stage.__name__):  # reused, but never silently
            log.warning("%s: published by other code (%s; this checkout: %s): reused; `vstar status` lists "
                        "every stale stage", name, manifest["code"]["hash"], code_version.code_version(stage.__name__)["hash"])
        return metrics
    except store.NotPublished:
        pass
    t0 = time.monotonic()
    if stage.STAGE.isolated:  # the child's metrics carry its own peak memory (components/infra/isolation.py)
        log.info("%s: running in a child process -> %s", name, redact(out_uri))
        show = progress.watcher(name, log.info)
        try:
            metrics = run_isolated(stage, cfg, {"out_uri": out_uri, **kwargs},
                                   on_start=lambda path: log.info("%s: log %s", name, path),
                                   on_progress=_both(show, PrefectProgress(name, _artifact_key(cfg, out_uri))))
        finally:
            show.close()
    else:  # a light stage in this process: the process's peak so far bounds it
        log.info("%s: running -> %s", name, redact(out_uri))  # a store URI may carry credentials
        with code_version.stamped(stage.__name__):
            metrics = {**stage.run(cfg, out_uri=out_uri, **kwargs), **peak_memory()}
    if run_id:
        tracking.log_metrics(cfg, run_id, metrics, prefix=prefix or stage.STAGE.metrics_prefix)
    log.info(progress.summary(name, metrics, fields, time.monotonic() - t0))
    return metrics


def _both(*watchers):
    def call(event: progress.Event | None) -> None:
        for watch in watchers:
            watch(event)
    return call


def _artifact_key(cfg: RunConfig, out_uri: str) -> str:
    """What the stage publishes, as a Prefect artifact key: `loops-demo-f03bfe2bb7-round-1-candidates`."""
    rel = out_uri[len(cfg.store_uri):] if out_uri.startswith(cfg.store_uri) else redact(out_uri)
    return re.sub(r"[^a-z0-9]+", "-", rel.lower()).strip("-")


class PrefectProgress:
    """The stage's current bar as a progress artifact of its task run, keyed by what it publishes (the
    Prefect UI's Artifacts page and the task run's tab), updated every few seconds at most: each update
    is an API call."""

    EVERY_S = 3.0

    def __init__(self, stage: str, key: str):
        self.stage, self.key, self.id, self.last = stage, key, None, 0.0

    def __call__(self, event: progress.Event | None) -> None:
        from prefect.artifacts import create_progress_artifact, update_progress_artifact

        now = time.monotonic()
        if event is None or not event.total or (now - self.last < self.EVERY_S and not event.finished):
            return
        self.last = now
        pct, text = 100.0 * event.done / event.total, f"{self.stage}: {event.text()}"
        if self.id is None:
            self.id = create_progress_artifact(pct, key=self.key, description=text)
        else:
            update_progress_artifact(self.id, pct, description=text)


def stage_task(stage: ModuleType) -> dict:
    """@task options for a stage: its name, its tags ("gpu" when it wants an accelerator), and caching:
    stage tasks persist their results and cache on (inputs, task source), so a rerun of a crashed flow
    returns finished stages' results without calling them. The store's manifests remain the ground
    truth (a cache miss still skips a published stage); results live in the object store beside them,
    as JSON only (tasks/results.py): a shared bucket must never feed a worker a pickle."""
    return {"name": stage.STAGE.name, "tags": stage.STAGE.tags, "cache_policy": INPUTS + TASK_SOURCE,
            "persist_result": True, "result_serializer": SafeJSON()}


def result_storage(cfg: RunConfig):
    """Prefect result storage under the run's store: a local folder, or any fsspec URI (s3://).
    Prefect wants it saved as a block (a worker's flow run must find it again): one per store."""
    uri = Layout.of(cfg).prefect_results()
    block = (SafeLocalResults(basepath=str(Path(store.fs_for(uri)[1]).resolve())) if store.is_local(uri)
             else SafeRemoteResults(basepath=uri, settings=store.storage_options(uri)))
    block.save(f"vstar-results-{stable_hash(uri)[:12]}", overwrite=True)
    return block
