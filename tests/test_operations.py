"""Operating the loop as its users do, through a real Prefect server + process worker, an S3 store and
an MLflow server: prefect.yaml deployed; two triggers of one loop (one runs, one is refused); the
running round SIGKILLed during SFT and rerun (finished stages are not recomputed, the result equals
an uninterrupted run's, no half-written dataset is ever visible); per-round artifacts and trace report;
re-evaluation of a published round; the cron deployment's schedule."""
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import mlflow
import psutil
import pytest

from components.infra import catalog, store
from components.infra.layout import Layout
from components.config import load_config

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


def flow_run_processes(run_id) -> list[psutil.Process]:
    """Every process (flow run and its stage children) that carries this flow run's id."""
    out = []
    for p in psutil.process_iter():
        try:
            if p.environ().get("PREFECT__FLOW_RUN_ID") == str(run_id):
                out.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            pass
    return out


class PublishedWatcher(threading.Thread):
    """Polls the store while rounds run: every published manifest must list files that all exist.
    A half-written dataset would show up as a manifest whose files are missing."""

    def __init__(self, uri: str):
        super().__init__(daemon=True)
        self.uri, self.stop, self.violations, self.checks = uri, threading.Event(), [], 0

    def run(self):
        fs, root = store.fs_for(self.uri)
        while not self.stop.is_set():
            try:
                manifests = fs.glob(f"{root}/**/manifest.json")
                for m in manifests:
                    folder = m.rsplit("/", 1)[0]
                    files = store.read_manifest(f"s3://{folder}")["files"]
                    missing = [f for f in files if not fs.exists(f"{folder}/{f}")]
                    if missing:
                        self.violations.append((folder, missing))
                self.checks += 1
                fs.invalidate_cache()
            except store.NotPublished:
                pass  # unpublished between glob and read: fine, that is the protocol
            time.sleep(0.5)


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


def test_one_writer_crash_resume_and_artifacts(deployed, s3, mlflow_server, smoke_cfg, tiny_model_dir):
    from flows.self_improve import next_round

    common = ["generation.k=2", "sft.epochs=3"]  # sft long enough to be caught mid-way
    store_a, store_b = s3.uri("ops-a"), s3.uri("ops-b")
    over_a, over_b = [f"store_uri={store_a}", *common], [f"store_uri={store_b}", "experiment=reference", *common]
    cfg = load_config(ROOT / CONFIG, over_a)
    assert cfg.loop_id() == load_config(ROOT / CONFIG, over_b).loop_id()  # the store is not the loop's identity
    for s in (store_a, store_b):
        store.publish_folder(tiny_model_dir, Layout(s, bootstrap_hash=cfg.bootstrap_hash()).bootstrap(), {"kind": "model"})

    # The reference: the same round, uninterrupted, in another store.
    ref = next_round(CONFIG, over_b)
    assert ref["round"] == 1

    watcher = PublishedWatcher(store_a)
    watcher.start()
    # Two triggers of the same loop at once: one runs, the other is refused and says why.
    first, second = (trigger("vstar-next-round/manual", config_path=CONFIG, overrides=over_a) for _ in range(2))
    deadline, running, refused = time.time() + 300, None, None
    while time.time() < deadline and not (running and refused):
        with client() as c:
            for rid in (first, second):
                fr = c.read_flow_run(rid)
                if fr.state.is_failed():
                    refused = rid
                elif "sft" in task_runs(rid) and task_runs(rid)["sft"].state.is_running():
                    running = rid
        time.sleep(0.5)
    assert running and refused, "expected one run to reach SFT and the other to be refused"
    assert "is already running" in logs(refused) + str(wait_final(refused).state.message)

    # SIGKILL the flow-run process during SFT: a crash, not a cancellation.
    candidates, scored = (Layout(store_a, cfg.loop_id()).round(1, s) for s in ("candidates", "scored"))
    before = {u: store.read_manifest(u)["published_at"] for u in (candidates, scored)}
    procs = flow_run_processes(running)
    top = [p for p in procs if p.parent() is None or p.parent().pid not in {q.pid for q in procs}]
    assert top, "flow-run process not found"
    for p in top:
        os.kill(p.pid, signal.SIGKILL)
    psutil.wait_procs(procs, timeout=30)
    assert not flow_run_processes(running), "stage child outlived the killed flow run"
    model = Layout(store_a, cfg.loop_id()).round(1, "model")
    assert not store.is_published(model)  # SFT never finished: nothing that looks complete

    # Rerun round 1 (waiting for the dead run's lease on the loop to expire).
    rerun = trigger("vstar-next-round/manual", config_path=CONFIG, overrides=over_a, round=1, wait_s=240)
    fr = wait_final(rerun, timeout=600)
    assert fr.state.is_completed(), logs(rerun)[-3000:]
    watcher.stop.set()
    watcher.join()
    assert watcher.checks > 10 and not watcher.violations

    # Generation and scoring were not executed again: same publication times, cached task states, no run logs.
    assert {u: store.read_manifest(u)["published_at"] for u in (candidates, scored)} == before
    states = task_runs(rerun)
    assert states["generate"].state.name == "Cached" and states["score"].state.name == "Cached"
    assert states["sft"].state.name == "Completed"  # what died is what runs again
    # The result equals the uninterrupted run's.
    for stage in ("candidates", "filtered", "model"):
        a, b = (store.read_manifest(Layout(s, cfg.loop_id()).round(1, stage))["sha256"] for s in (store_a, store_b))
        assert a == b, stage

    # What a user sees: a Prefect artifact for the round, the trace report in MLflow, a catalog entry.
    with client() as c:
        art = c.read_latest_artifacts()
    keys = {a.key for a in art}
    assert f"{cfg.loop_id().lower()}-round-1" in keys
    mc = mlflow.MlflowClient(mlflow_server)
    run = mc.search_runs([mc.get_experiment_by_name(cfg.experiment).experiment_id],
                         f"tags.`vstar.loop_id` = '{cfg.loop_id()}' and tags.`vstar.round` = '1'")[0]
    assert "report/report.html" in {a.path for a in mc.list_artifacts(run.info.run_id, "report")}
    assert any(e["loop_id"] == cfg.loop_id() and e["round"] == 1 for e in catalog.list_entries(store_a))

    # Re-evaluate the published round with other eval settings, through the evaluate deployment.
    ev = trigger("vstar-evaluate/evaluate", config_path=CONFIG, overrides=over_a, round=1, eval_overrides=["eval.k=3"])
    fr = wait_final(ev, timeout=400)
    assert fr.state.is_completed(), logs(ev)[-3000:]
    metrics = mc.get_run(run.info.run_id).data.metrics
    reeval = [k for k in metrics if k.startswith("eval-") and k.endswith("/pass1_all")]
    assert len(reeval) == 1 and "evaluate/pass1_all" in metrics
