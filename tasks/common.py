"""What every stage task does: skip if its output is published (and still valid), else run the stage
(in a child process when the stage declares it heavy), log its metrics to the round's MLflow run, and
hand back the output URI.

A published output is reused unless the config asks to recompute its stage (`recompute: [score]`,
`vstar run --recompute score`; `stale` names every stage made by other code), or one of its inputs
has changed since it was made (each manifest records its inputs' digests): recomputing `score`
therefore recomputes what was made from the old scores too, and nothing else."""
from __future__ import annotations

import re
import time

from prefect import get_run_logger
from prefect.cache_policies import NO_CACHE

from components.config import RunConfig
from components.artifacts import code_version, store, tracking
from components.runtime import progress
from components.runtime.isolation import run_isolated
from components.redact import redact
from components.models.hardware import peak_memory
from components.stages import StageModule, refusal
from tasks.shards import run_sharded


def run_stage(cfg: RunConfig, stage: StageModule, out_uri: str, run_id: str | None, prefix: str | None = None,
              **kwargs) -> dict:
    """Metrics of the published stage output at `out_uri`, computing it first if needed.
    Light stages run in this process: a child would cost more to start than to run."""
    log, name, fields = get_run_logger(), stage.STAGE.name, stage.STAGE.summary
    inputs = code_version.input_digests(kwargs)
    reused = _reuse(cfg, stage, out_uri, inputs, run_id, log)
    if reused is not None:
        # Its metrics on the round's run all the same: a loop copied to another store or tracked on a new
        # MLflow server, or a run that died between publishing and logging, would show a round without them.
        if run_id:
            tracking.log_metrics(cfg, run_id, reused, prefix=prefix or stage.STAGE.metrics_prefix)
        return reused
    t0 = time.monotonic()
    if stage.STAGE.shardable and cfg.execution.shards > 1:  # split by problem, maybe over a Ray cluster
        log.info("%s: %d shards on %s -> %s", name, cfg.execution.shards, cfg.execution.engine, redact(out_uri))
        metrics = run_sharded(cfg, stage, out_uri, kwargs, inputs)
    elif stage.STAGE.isolated:  # the child's metrics carry its own peak memory (components/runtime/isolation.py)
        log.info("%s: running in a child process -> %s", name, redact(out_uri))
        show = progress.watcher(name, log.info)
        try:
            metrics = run_isolated(stage, cfg, {"out_uri": out_uri, **kwargs}, inputs=inputs,
                                   on_start=lambda path: log.info("%s: log %s", name, path),
                                   on_progress=_both(show, PrefectProgress(name, _artifact_key(cfg, out_uri))))
        finally:
            show.close()
    else:  # a light stage in this process: the process's peak so far bounds it
        log.info("%s: running -> %s", name, redact(out_uri))  # a store URI may carry credentials
        with code_version.stamped(stage.__name__, inputs):
            metrics = {**stage.run(cfg, out_uri=out_uri, **kwargs), **peak_memory()}
    if run_id:
        tracking.log_metrics(cfg, run_id, metrics, prefix=prefix or stage.STAGE.metrics_prefix)
    log.info(progress.summary(name, metrics, fields, time.monotonic() - t0))
    return metrics


def _reuse(cfg: RunConfig, stage: StageModule, out_uri: str, inputs: dict, run_id: str | None, log) -> dict | None:
    """The published output's metrics if it may be reused, else None (and the log says why not)."""
    name = stage.STAGE.name
    try:
        manifest = store.read_manifest(out_uri)
    except store.NotPublished:
        return None
    why = refusal(cfg, stage, manifest, inputs, stale_reused=True)
    if why:
        log.info("%s: published at %s, but %s: recomputing", name, redact(out_uri), redact(why))
        return None
    metrics = manifest.get("metrics", {})
    log.info("%s  (published at %s: skipped)", progress.summary(name, metrics, stage.STAGE.summary,
                                                                metrics.get("seconds", 0)), redact(out_uri))
    if code_version.is_stale(manifest, stage.__name__):  # reused, but never silently: the log, `vstar status` and a tag say so
        made, here = (manifest.get("code") or {}).get("hash"), code_version.code_version(stage.__name__)["hash"]
        log.warning("%s: published by other code (%s; this checkout: %s): reused; `vstar status` lists every "
                    "stale stage, `--recompute %s` (or `stale`) makes it again", name, made, here, name)
        if run_id:
            tracking.set_tag(cfg, run_id, f"vstar.stale.{name}", f"{made} (this checkout: {here})")
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


def stage_task(stage: StageModule) -> dict:
    """@task options for a stage: its name, its tags ("gpu" when it wants an accelerator), and no Prefect
    cache or persisted result: the store's manifests are the one record of what is done (a rerun finds a
    published stage there and skips it), so no second cache can hand back old metrics after a stage is
    recomputed, and nothing Prefect would unpickle is ever written to (or read from) a shared bucket."""
    return {"name": stage.STAGE.name, "tags": stage.STAGE.tags, "cache_policy": NO_CACHE, "persist_result": False}
