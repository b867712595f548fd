"""Operating the loop as its users do, through a real Prefect server + process worker, an S3 store and
an MLflow server: prefect.yaml deployed; two triggers of one loop (one runs, one is refused, no
half-written artifact is ever visible); per-round artifacts and trace report; re-evaluation of a
published round; the cron deployment's schedule. Crashes and resumes: tests/test_faults.py."""
import os
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest

from components.artifacts import catalog, store
from components.artifacts.layout import Layout
from components.checks import load_config
from tests.procs import PublishedWatcher

ROOT = Path(__file__).resolve().parent.parent
PREFECT = str(Path(sys.executable).parent / "prefect")
CONFIG = "configs/smoke.yaml"


def prefect(*args, timeout=600):
    return subprocess.run([PREFECT, "--no-prompt", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ})


def client():
    from prefect import get_client

    return get_client(sync_client=True)


def trigger(name: str, **params):
    from prefect.deployments import run_deployment

    return run_deployment(name, parameters=params, timeout=0).id


def wait_final(run_id, timeout=600):
    deadline = time.time() + timeout
    with client() as c:
        while time.time() < deadline:
            fr = c.read_flow_run(run_id)
            if fr.state and fr.state.is_final():
                return fr
            time.sleep(1)
    raise AssertionError(f"flow run {run_id} not finished after {timeout} s")


def task_runs(run_id) -> dict:
    """Stage name -> task run, through the flow run's subflows (start, round): task run names are
    `<task name>-<suffix>`."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, FlowRunFilterParentTaskRunId

    out, frontier = {}, [run_id]
    with client() as c:
        while frontier:
            tasks = c.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=frontier)))
            out.update({t.name.rsplit("-", 1)[0]: t for t in tasks})
            frontier = [fr.id for fr in c.read_flow_runs(flow_run_filter=FlowRunFilter(
                parent_task_run_id=FlowRunFilterParentTaskRunId(any_=[t.id for t in tasks])))] if tasks else []
    return out


def logs(run_id) -> str:
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    with client() as c:
        return "\n".join(x.message for x in c.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id]))))


@pytest.fixture(scope="module")
def deployed(s3, mlflow_server, prefect_worker, smoke_cfg, tiny_model_dir):
    out = prefect("deploy", "--all")
    assert out.returncode == 0, out.stdout + out.stderr
    return prefect_worker


def test_cron_deployment_advances_a_loop(deployed):
    with client() as c:
        d = c.read_deployment_by_name("vstar-next-round/scheduled")
    assert d.entrypoint == "flows/self_improve.py:next_round"
    assert [s.schedule.cron for s in d.schedules] == ["0 */6 * * *"]
    assert d.work_pool_name == "vstar"


def test_one_writer_and_what_a_round_leaves(deployed, s3, mlflow_server, smoke_cfg, tiny_model_dir):
    """Two triggers of one loop through the worker: one runs, the other is refused; the round that ran
    leaves a Prefect artifact, its trace report in MLflow, a catalog entry, and can be evaluated again.
    (Killing a flow run mid-stage and resuming it: tests/test_faults.py, every stage.)"""
    # The transformers backend: the worker and the deployments are tested here, not vLLM (test_round_e2e).
    over = [f"store_uri={s3.uri('ops-a')}", "generation.k=2", "generation.backend=transformers",
            "family.eval.per_level=5", "eval.sampled_per_level=2", "curriculum.problems=24",  # a short round
            "eval.beam.enabled=false"]
    cfg = load_config(ROOT / CONFIG, over)
    store.publish_folder(tiny_model_dir, Layout(cfg.store_uri, bootstrap_hash=cfg.bootstrap_hash()).bootstrap(),
                         {"kind": "model"})

    with PublishedWatcher(cfg.store_uri) as watcher:
        first, second = (trigger("vstar-next-round/manual", config_path=CONFIG, overrides=over) for _ in range(2))
        done = {rid: wait_final(rid, timeout=900) for rid in (first, second)}
    refused = [rid for rid, fr in done.items() if fr.state.is_failed()]
    ran = [rid for rid, fr in done.items() if fr.state.is_completed()]
    assert len(refused) == 1 and len(ran) == 1, {rid: fr.state.name for rid, fr in done.items()}
    assert "is already running" in logs(refused[0]) + str(done[refused[0]].state.message)
    assert watcher.checks > 10 and not watcher.violations, watcher.violations
    assert {"generate", "score", "filter", "sft", "evaluate"} <= set(task_runs(ran[0]))

    # What a user sees: a Prefect artifact for the round, the trace report in MLflow, a catalog entry.
    with client() as c:
        art = c.read_latest_artifacts()
    keys = {a.key for a in art}
    assert f"{cfg.loop_id().lower()}-round-1" in keys
    mc = mlflow.MlflowClient(mlflow_server)
    run = mc.search_runs([mc.get_experiment_by_name(cfg.experiment).experiment_id],
                         f"tags.`vstar.loop_id` = '{cfg.loop_id()}' and tags.`vstar.round` = '1'")[0]
    assert "report/report.html" in {a.path for a in mc.list_artifacts(run.info.run_id, "report")}
    assert any(e["loop_id"] == cfg.loop_id() and e["round"] == 1 for e in catalog.list_entries(cfg.store_uri))

    # Re-evaluate the published round with other eval settings, through the evaluate deployment.
    ev = trigger("vstar-evaluate/evaluate", config_path=CONFIG, overrides=over, round=1, eval_overrides=["eval.k=3"])
    fr = wait_final(ev, timeout=400)
    assert fr.state.is_completed(), logs(ev)[-3000:]
    metrics = mc.get_run(run.info.run_id).data.metrics
    reeval = [k for k in metrics if k.startswith("eval-") and k.endswith("/pass1_all")]
    assert len(reeval) == 1 and "evaluate/pass1_all" in metrics
