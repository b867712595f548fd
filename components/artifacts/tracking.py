"""MLflow tracking: a parent run per loop, a child run per round, through MlflowClient only.

Runs are found again by tags (loop id, round), so a resumed loop keeps logging to the same runs
instead of starting duplicates. No global "active run" state: tasks in threads log safely.
"""
from __future__ import annotations

import math
import os
import warnings
from contextlib import contextmanager
from pathlib import Path

from components.config import RunConfig, dump_yaml
from components.redact import redact

LOOP_TAG, ROUND_TAG, KIND_TAG = "vstar.loop_id", "vstar.round", "vstar.kind"
# The local default (no tracking URI given): a database and its artifacts under .vstar/, with the store,
# not MLflow's ./mlruns in whatever folder `vstar` was started from.
LOCAL_DB, LOCAL_ARTIFACTS = Path(".vstar/mlflow.db"), Path(".vstar/mlartifacts")


def tracking_uri(cfg: RunConfig | None = None) -> str:
    if cfg is not None and cfg.tracking_uri:
        return cfg.tracking_uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    LOCAL_DB.resolve().parent.mkdir(parents=True, exist_ok=True)
    return local_uri()


def local_uri() -> str:
    return f"sqlite:///{LOCAL_DB.resolve()}"


def client(cfg: RunConfig | None = None):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri(cfg))


def experiment_id(c, name: str) -> str:
    exp = c.get_experiment_by_name(name)
    if exp:
        return exp.experiment_id
    local = c.tracking_uri == local_uri()
    return c.create_experiment(name, artifact_location=LOCAL_ARTIFACTS.resolve().as_uri() if local else None)


def _find(c, exp_id: str, tags: dict[str, str]) -> str | None:
    flt = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
    runs = c.search_runs([exp_id], filter_string=flt, max_results=1, order_by=["attributes.start_time ASC"])
    return runs[0].info.run_id if runs else None


def loop_run(cfg: RunConfig) -> str:
    """The loop's parent run (created on first use, with the resolved config as params; both
    flat_params and dump_yaml mask credentials in URIs)."""
    c = client(cfg)
    exp = experiment_id(c, cfg.experiment)
    loop_id = cfg.loop_id()
    run_id = _find(c, exp, {LOOP_TAG: loop_id, KIND_TAG: "loop"})
    if run_id:
        return run_id
    run = c.create_run(exp, run_name=loop_id, tags={LOOP_TAG: loop_id, KIND_TAG: "loop",
                                                      "vstar.config_hash": cfg.config_hash()})
    from mlflow.entities import Param

    params = [Param(k, v[:6000]) for k, v in cfg.flat_params().items()]
    for i in range(0, len(params), 100):
        c.log_batch(run.info.run_id, params=params[i : i + 100])
    c.log_text(run.info.run_id, dump_yaml(cfg), "config.yaml")
    return run.info.run_id


def round_run(cfg: RunConfig, parent_id: str, round_idx: int) -> str:
    c = client(cfg)
    exp = experiment_id(c, cfg.experiment)
    loop_id = cfg.loop_id()
    tags = {LOOP_TAG: loop_id, KIND_TAG: "round", ROUND_TAG: str(round_idx)}
    run_id = _find(c, exp, tags)
    if run_id:
        return run_id
    run = c.create_run(exp, run_name=f"{loop_id}/round-{round_idx}",
                       tags={**tags, "mlflow.parentRunId": parent_id})
    return run.info.run_id


def log_metrics(cfg: RunConfig, run_id: str, metrics: dict, prefix: str = "", step: int = 0) -> None:
    from mlflow.entities import Metric
    import time

    now = int(time.time() * 1000)
    ms = [Metric(f"{prefix}{k}", float(v), now, step) for k, v in metrics.items()
          if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))]
    # Curves ([(step, value), ...], e.g. loss_curve) become step-wise metrics: MLflow plots them.
    ms += [Metric(f"{prefix}{k[:-len('_curve')]}", float(y), now, int(x)) for k, v in metrics.items()
           if k.endswith("_curve") and isinstance(v, list) for x, y in v]
    c = client(cfg)
    for i in range(0, len(ms), 500):
        c.log_batch(run_id, metrics=ms[i : i + 500])


def set_tag(cfg: RunConfig, run_id: str, key: str, value: str) -> None:
    client(cfg).set_tag(run_id, key, redact(value))


def log_dataset(cfg: RunConfig, run_id: str, uri: str, name: str, context: str) -> None:
    """Record a published dataset as the run's input, with its store URI as the source."""
    import mlflow
    from mlflow.entities import InputTag

    from components.artifacts.store import read_dataset

    with warnings.catch_warnings():  # MLflow's notes on ambiguous local sources and int columns: noise here
        warnings.simplefilter("ignore", UserWarning)
        ds = mlflow.data.from_pandas(read_dataset(uri).to_pandas(), source=redact(uri), name=name)
    client(cfg).log_inputs(run_id, datasets=[_dataset_input(ds, context, InputTag)])


def _dataset_input(ds, context: str, InputTag):
    from mlflow.entities import DatasetInput

    return DatasetInput(dataset=ds._to_mlflow_entity(), tags=[InputTag("mlflow.data.context", context)])


@contextmanager
def running(cfg: RunConfig, run_id: str):
    """The run says RUNNING while the block works on it, then FINISHED, or FAILED / KILLED when the block
    raises or is interrupted: a loop's parent and round runs tell the truth in the MLflow UI, and a loop
    that goes on later reopens them (a process killed outright cannot say so: its run stays RUNNING
    until the loop goes on)."""
    c = client(cfg)
    c.update_run(run_id, status="RUNNING")
    try:
        yield run_id
    except Exception:
        c.set_terminated(run_id, "FAILED")
        raise
    except BaseException:  # not an error but an interruption: Ctrl-C, a cancellation, a termination signal
        c.set_terminated(run_id, "KILLED")
        raise
    c.set_terminated(run_id, "FINISHED")


def loop_runs(c, experiment: str, loop_id: str):
    """(parent run, child runs) of a loop, found by tags; raises with the loop id if there is none."""
    exp = c.get_experiment_by_name(experiment)
    if exp is None:
        raise ValueError(f"no MLflow experiment {experiment!r} at {redact(c.tracking_uri)}")
    parents = c.search_runs([exp.experiment_id], f"tags.`{LOOP_TAG}` = '{loop_id}' and tags.`{KIND_TAG}` = 'loop'")
    if not parents:
        raise ValueError(f"no loop {loop_id!r} in experiment {experiment!r} at {redact(c.tracking_uri)}")
    parent = parents[0]
    children = c.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    return parent, children
