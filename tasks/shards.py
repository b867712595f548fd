"""A shardable stage (components/stages: STAGE.shardable) run as `execution.shards` Prefect tasks, one
per block of its problems, then put together by the stage's `merge`.

`execution.engine: ray` submits the shard tasks to a Ray cluster through prefect-ray's RayTaskRunner
(each with `cpus_per_shard` and `gpus_per_shard` of Ray's resources, so Ray places one engine per
device); `local` runs them one after another here. Either way each shard runs its stage in a child
process (components/runtime/isolation.py) and publishes its part on its own: a failed shard runs again
alone (Prefect task retries), a rerun after a crash skips the parts already published, and the
stage's artifact is published once, by `merge`, after every shard finished.
"""
from __future__ import annotations

import contextlib
import importlib
import os
import time

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import ThreadPoolTaskRunner

from components.config import RunConfig
from components.artifacts import code_version, shards, store
from components.runtime.isolation import run_isolated
from components.artifacts.layout import Layout
from components.redact import redact
from components.stages import ShardableStage, refusal

# What a shard's child needs from this process's environment on a Ray worker, which does not inherit
# it: the store's credentials and endpoint, and vstar's own switches. Sent only to a cluster on this
# machine or one the worker lists in $VSTAR_RAY_ADDRESSES (comma-separated): never to wherever a
# config names.
FORWARDED_ENV = ("AWS_", "VSTAR_", "HF_", "FSSPEC_")
RAY_ADDRESSES_ENV = "VSTAR_RAY_ADDRESSES"
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")


def ray_env(address: str | None, environ: dict[str, str]) -> dict[str, str] | None:
    """The variables forwarded to the Ray cluster at `address`; None where it is not allowed them."""
    allowed = [a.strip() for a in environ.get(RAY_ADDRESSES_ENV, "").split(",") if a.strip()]
    host = (address or "").split("://", 1)[-1].rsplit(":", 1)[0]
    if address not in (None, "auto", "local") and host not in LOCAL_HOSTS and address not in allowed:
        return None
    return {k: v for k, v in environ.items() if k.startswith(FORWARDED_ENV)}


@task(name="shard", cache_policy=NO_CACHE, persist_result=False)
def shard_task(cfg: RunConfig, stage_module: str, part_uri: str, shard: list[int], kwargs: dict,
               inputs: dict) -> dict:
    """Shard `shard` = (i, n) of the stage, published at `part_uri` (skipped when a crashed run left it
    published from the same inputs by the same code, and the stage is not to be recomputed)."""
    stage = importlib.import_module(stage_module)
    if (left := reusable_part(cfg, stage, part_uri, inputs)) is not None:
        get_run_logger().info("shard %d of %d: published at %s: skipped", shard[0] + 1, shard[1], redact(part_uri))
        return left.get("metrics", {})
    return run_isolated(stage, cfg, {"out_uri": part_uri, "shard": shard, **kwargs}, inputs=inputs,
                        on_start=lambda path: get_run_logger().info("shard %d of %d: log %s", shard[0] + 1,
                                                                     shard[1], path))


def reusable_part(cfg: RunConfig, stage: ShardableStage, part_uri: str, inputs: dict) -> dict | None:
    """The manifest of a part left by an earlier run if it is what this run would make, else None:
    parts are found again only after a crash (a finished stage removes them), and the inputs may have
    changed since; one made by other code is never reused."""
    try:
        manifest = store.read_manifest(part_uri)
    except store.NotPublished:
        return None
    return None if refusal(cfg, stage, manifest, inputs, stale_reused=False) else manifest


@flow(name="vstar-shards", persist_result=False)  # the parts' manifests record what is done
def shards_flow(cfg: RunConfig, stage_module: str, out_uri: str, kwargs: dict, inputs: dict) -> list[str]:
    ex = cfg.execution
    n = ex.shards
    parts = [Layout.shard(out_uri, i, n) for i in range(n)]
    one = shard_task.with_options(name=f"{stage_module.rsplit('.', 1)[-1]}-shard", retries=ex.retries)
    with _ray_resources(cfg):
        futures = [one.submit(cfg, stage_module, uri, [i, n], kwargs, inputs) for i, uri in enumerate(parts)]
    for f in futures:
        f.result()  # raises the first shard that failed for good
    return parts


def run_sharded(cfg: RunConfig, stage: ShardableStage, out_uri: str, kwargs: dict, inputs: dict) -> dict:
    """The stage's metrics, its artifact published at `out_uri` from `execution.shards` shards."""
    t0 = time.monotonic()
    runner = _task_runner(cfg)
    parts = shards_flow.with_options(task_runner=runner)(cfg, stage.__name__, out_uri, kwargs, inputs)
    with code_version.stamped(stage.__name__, inputs):  # the artifact records its code and inputs as usual
        metrics = stage.merge(cfg, out_uri, parts, **kwargs, seconds=time.monotonic() - t0)
    shards.remove(parts)
    return metrics


def _task_runner(cfg: RunConfig):
    ex = cfg.execution
    if ex.engine == "local":
        return ThreadPoolTaskRunner(max_workers=1)
    try:
        from prefect_ray import RayTaskRunner
    except ImportError:
        raise RuntimeError("execution.engine=ray needs Ray and prefect-ray: pip install -e '.[ray]' "
                           "(make install does)") from None

    # Ray's own workers start without this process's environment.
    env = ray_env(ex.address, dict(os.environ))
    if env is None:
        get_run_logger().warning("execution.address %s is not in $%s: the worker's credentials (AWS_*, HF_*) "
                                 "are not sent to it", redact(ex.address), RAY_ADDRESSES_ENV)
    return RayTaskRunner(address=ex.address, init_kwargs={"runtime_env": {"env_vars": env}} if env else None)


def _ray_resources(cfg: RunConfig):
    if cfg.execution.engine != "ray":
        return contextlib.nullcontext()
    from prefect_ray.context import remote_options

    return remote_options(num_cpus=cfg.execution.cpus_per_shard, num_gpus=cfg.execution.gpus_per_shard)
