"""The fault matrix (#14; docs/reliability.md), against the real services: `vstar run` processes,
MLflow servers, a Prefect server, the session's tiny model.

- The MLflow server stopped mid-round (from inside `generate` until after the stage has ended and
  the round has tried to log its metrics, then started again on the same port and database): the
  round finishes and its metrics arrive (the client retries with backoff). This run is `vstar run` as
  a new user starts it (the embedded default: a temporary Prefect server) and, uninterrupted
  otherwise, the reference for the chain below, beside which it runs (a thread; stores and servers apart):
- the flow-run process SIGKILLed during each of generate, score, sft, train-prm and evaluate in turn
  (on a Prefect server), each time rerun with the same command: the rerun reclaims the dead run's lock
  at once and recomputes only the stage that was running (every stage published before it is skipped,
  its publication time unchanged), nothing half-published is ever visible (a watcher polls the store
  throughout), `vstar status` tells what happened, and the final artifacts equal the reference's.
  A second live run of the loop is refused in one line.
- Then, on that store: `--recompute` of a stage, a corrupt parquet file and a corrupt manifest (errors
  naming the file, nothing published).
"""
from __future__ import annotations

import itertools
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

import mlflow
import psutil
import pytest

from components.checks import load_config
from components.artifacts import store, tracking
from components.localstack import services
from components.artifacts.layout import Layout
from tests.procs import (PublishedWatcher, assert_live_progress, freeze, one_line_error, stage_child, stray_files,
                         wait_for, warm_helpers)

ROOT = Path(__file__).resolve().parent.parent
VSTAR = str(Path(sys.executable).parent / "vstar")
CONFIG = str(ROOT / "configs/smoke.yaml")
# A round with every stage (PRM on, Monte Carlo labels), as short as it gets on the tiny model (beam
# search, a part of evaluate, is off: tests/test_round_e2e.py, tests/test_sharding.py). On the
# transformers backend: what is tested is the orchestration, and vLLM's engine start (~8 s, in every
# generating stage of every run) is most of a stage's time here; vLLM has its own tests
# (test_generation, test_round_e2e, test_pretrained).
OVERRIDES = ["family.eval.per_level=5", "eval.sampled_per_level=2", "curriculum.problems=24",
             "eval.beam.enabled=false", "generation.backend=transformers"]
ARTIFACTS = ("candidates", "scored", "filtered", "model", "prm", "orm", "eval")  # round 1, in the order made
STAGE_OF = {"candidates": "generate", "scored": "score", "filtered": "filter", "model": "sft", "prm": "train-prm",
            "orm": "train-orm", "eval": "evaluate"}
KILLED = (("generate", "candidates"), ("score", "scored"), ("sft", "model"), ("prm", "prm"), ("evaluate", "eval"))


class Runs:
    """`vstar` processes in `tmp`, on the session's Prefect server (or, `embedded`, on a temporary one
    of their own as on a new user's machine), with their logs kept."""

    def __init__(self, tmp: Path):
        self.tmp, self.procs, self.env = tmp, [], {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.ids = itertools.count()  # log names, unique across the threads that start runs
        self.embedded = {**{k: v for k, v in self.env.items() if not k.startswith(("PREFECT_", "MLFLOW_"))},
                         "PREFECT_HOME": str(tmp / "prefect-home"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}

    def start(self, store_uri: str, tracking_uri: str, *extra: str, command: str = "run",
              embedded: bool = False) -> subprocess.Popen:
        log = open(self.tmp / f"vstar-{next(self.ids)}.log", "w+")
        sets = [f"store_uri={store_uri}", f"tracking_uri={tracking_uri}", *OVERRIDES]
        sets = [x for s in sets for x in ("--set", s)]  # `vstar run CONFIG ...`, `vstar status [LOOP] --config CONFIG ...`
        args = ["run", CONFIG, *sets, *extra] if command == "run" else [command, *extra, "--config", CONFIG, *sets]
        p = subprocess.Popen([VSTAR, *args], cwd=self.tmp, env=self.embedded if embedded else self.env,
                             stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        p.log = log
        self.procs.append(p)
        return p

    @staticmethod
    def output(p: subprocess.Popen) -> str:
        p.log.flush()
        return Path(p.log.name).read_text(errors="replace")

    def finish(self, p: subprocess.Popen, timeout: float = 900) -> tuple[int, str]:
        p.wait(timeout=timeout)
        return p.returncode, self.output(p)

    def close(self):
        for p in self.procs:
            if p.poll() is None:
                p.kill()


@pytest.fixture(scope="module")
def setup(tmp_path_factory, prefect_server, mlflow_server, tiny_model_dir):
    tmp = tmp_path_factory.mktemp("faults")
    cfg = load_config(CONFIG, [f"store_uri={tmp}/x", *OVERRIDES])
    stores = {name: str(tmp / name) for name in ("reference", "killed")}
    for s in stores.values():
        store.publish_folder(tiny_model_dir, Layout(s, bootstrap_hash=cfg.bootstrap_hash()).bootstrap(), {"kind": "model"})
    runs = Runs(tmp)
    yield tmp, cfg, stores, runs
    runs.close()


def round_uri(store_uri: str, cfg, artifact: str, n: int = 1) -> str:
    return Layout(store_uri, cfg.loop_id()).round(n, artifact)


def published(store_uri: str, cfg) -> dict[str, dict]:
    return {a: store.read_manifest(round_uri(store_uri, cfg, a)) for a in ARTIFACTS
            if store.is_published(round_uri(store_uri, cfg, a))}


def skipped(out: str, store_uri: str, cfg, artifact: str) -> bool:
    """Whether the run's log says round 1's `artifact` was found published and skipped."""
    at = re.escape(round_uri(store_uri, cfg, artifact))
    return re.search(rf" - {STAGE_OF[artifact]} .*\(published at {at}: skipped\)", out) is not None


class Reference(threading.Thread):
    """The uninterrupted round, run beside the kill chain (their stores and MLflow servers are apart; the
    two overlap on the two cores instead of one waiting for the other), with its MLflow outage: the
    server is stopped from inside generate until after the round has logged generate's metrics, then
    started again on the same port and database. Its assertions are test_mlflow_server_stopped_mid_round's."""

    def __init__(self, tmp: Path, runs: Runs, store_uri: str, cfg):
        super().__init__(daemon=True, name="reference-round")
        self.tmp, self.runs, self.store_uri, self.cfg = tmp, runs, store_uri, cfg
        self.error: BaseException | None = None
        self.start()

    def run(self):
        try:
            self._run()
        except BaseException as e:  # re-raised by result()
            self.error = e

    def _run(self):
        stack = services.ServiceStack(self.tmp / "mlflow-outage")  # its own server: stopping it touches no other test
        try:
            # A port the server itself was started on, not one picked here and checked again: another
            # process of the suite could take a port in the moment between the pick and the check.
            server = stack.mlflow(None)
            port = urlparse(server.uri).port
            p = self.runs.start(self.store_uri, server.uri, embedded=True)
            child = wait_for(lambda: stage_child(p, "generate") or p.poll() is not None, 600, "round 1's generate")
            assert p.poll() is None, self.runs.output(p)[-3000:]
            stack.stop(server.service)  # the server goes away mid-stage...
            t0 = time.time()
            psutil.wait_procs([child], timeout=600)
            time.sleep(2)  # ...and stays away while the round logs generate's metrics (right after the child ends)
            server = stack.mlflow(None, port=port)  # the same port and database: the server is back
            self.outage = time.time() - t0
            self.rc, self.out = self.runs.finish(p)
            c = mlflow.MlflowClient(server.uri)
            exp = c.get_experiment_by_name(self.cfg.experiment)
            self.mlflow_runs = c.search_runs([exp.experiment_id], f"tags.`vstar.loop_id` = '{self.cfg.loop_id()}' "
                                                                  f"and tags.`vstar.round` = '1'")
        finally:
            stack.close()

    def result(self) -> "Reference":
        self.join(timeout=1200)
        assert not self.is_alive(), "the reference round did not finish in 20 minutes"
        if self.error:
            raise self.error
        return self


@pytest.fixture(scope="module")
def reference(setup):
    tmp, cfg, stores, runs = setup
    return Reference(tmp, runs, stores["reference"], cfg)


def test_sigkill_during_each_stage_then_rerun(setup, reference, mlflow_server):
    tmp, cfg, stores, runs = setup
    uri = stores["killed"]
    with PublishedWatcher(uri) as watcher:
        killed = []
        for module, artifact in KILLED:
            before = published(uri, cfg)
            p = runs.start(uri, mlflow_server)
            child = wait_for(lambda: stage_child(p, module) or p.poll() is not None, 600, f"{module} to start")
            assert p.poll() is None, (module, runs.output(p)[-3000:])
            # Let the stage work a moment, then freeze it (SIGSTOP) where it is: a warm-started stage on
            # this tiny round can end within a second or two, and the kill must land inside it.
            time.sleep(0.3)
            assert freeze(child) == psutil.STATUS_STOPPED, f"{module} finished before it could be killed"
            if killed:  # the dead run's lock was reclaimed at once, saying whose it was
                out = runs.output(p)
                assert "lock reclaimed" in out and f"process {killed[-1]} on this host is gone" in out, out[-3000:]
            else:  # a second live run of the loop is refused, in one line that says what to do
                second, helpers = runs.start(uri, mlflow_server), set()

                def refused() -> bool:  # refused after its wait: it never imports for stages it won't run
                    helpers.update(h.pid for h in warm_helpers(second.pid))
                    return second.poll() is not None

                wait_for(refused, 300, "the second run to be refused", every=0.1)
                rc, out = runs.finish(second)
                assert rc == 2 and not helpers, (rc, helpers)
                line = one_line_error(out, "is already running")
                assert cfg.loop_id() in line and f"pid {p.pid}" in line and "vstar unlock" in line
            # kill -9 the flow-run process: a crash, not a cancellation. Its stage child dies with it.
            p.send_signal(signal.SIGKILL)
            p.wait()
            gone, alive = psutil.wait_procs([child], timeout=30)
            assert not alive, f"{module}'s child outlived the killed flow run"
            out = runs.output(p)
            after = published(uri, cfg)
            assert artifact not in after, f"{artifact} published by a killed {module}"
            # What was published before this run was reused as it was: skipped, not made again.
            assert {a: m["published_at"] for a, m in before.items()} == \
                   {a: after[a]["published_at"] for a in before}, module
            assert all(skipped(out, uri, cfg, a) for a in before), (module, out[-4000:])
            killed.append(p.pid)
            if module == "prm":  # it ran SFT to the end first: live progress, then its figures
                assert_live_progress(out, "sft", "steps")
            if module == "sft":  # `vstar status` says what happened, from the store, MLflow and the lock
                rc, status = runs.finish(runs.start(uri, mlflow_server, cfg.loop_id(), command="status"), timeout=300)
                assert rc == 0, status[-3000:]
                rows = {tuple(c.strip() for c in line.split("│")[1:4]) for line in status.splitlines()
                        if line.count("│") >= 6}
                assert {("1", "generate", "published"), ("1", "score", "published"), ("1", "filter", "published"),
                        ("1", "sft", "interrupted")} <= rows, status[-3000:]
                assert f"process {p.pid} on this host is gone" in status, status[-3000:]
                assert f"store: {Layout(uri, cfg.loop_id()).loop()}" in status, status[-3000:]

        rc, out = runs.finish(runs.start(uri, mlflow_server))
        assert rc == 0, out[-4000:]
    assert watcher.checks > 20 and not watcher.violations, watcher.violations
    assert all(skipped(out, uri, cfg, a) for a in ARTIFACTS if a != "eval"), out[-4000:]
    assert not skipped(out, uri, cfg, "eval")  # what died last is what ran again
    # The killed runs' MLflow runs (left RUNNING) are finished now, and the loop is free.
    parent, rounds = tracking.loop_runs(mlflow.MlflowClient(mlflow_server), cfg.experiment, cfg.loop_id())
    assert {r.info.status for r in [parent, *rounds]} == {"FINISHED"}
    rc, status = runs.finish(runs.start(uri, mlflow_server, command="status"), timeout=300)
    assert rc == 0 and re.search(rf"{cfg.loop_id()} +│ 1 +│ [0-9T:-]+Z +│ 0 +│ not locked", status), status[-3000:]

    # The final artifacts equal those of the uninterrupted (reference) run.
    assert reference.result().rc == 0, reference.out[-4000:]
    ref, got = published(stores["reference"], cfg), published(uri, cfg)
    assert set(ref) == set(got) == set(ARTIFACTS)
    assert {a: got[a]["sha256"] for a in ARTIFACTS} == {a: ref[a]["sha256"] for a in ARTIFACTS}
    assert got["eval"]["metrics"]["pass1_all"] == ref["eval"]["metrics"]["pass1_all"]
    # Nothing else is left in either store: no half-written files, no workflow-engine results.
    assert stray_files(uri) == [] and stray_files(stores["reference"]) == []

    # `--recompute filter`: made again, identical, so what was made from it stays current.
    rc, out = runs.finish(runs.start(uri, mlflow_server, "--recompute", "filter"))
    assert rc == 0, out[-4000:]
    assert "filter: published at" in out and "asked to (recompute): recomputing" in out, out[-4000:]
    assert published(uri, cfg)["filtered"]["sha256"] == got["filtered"]["sha256"]
    assert all(skipped(out, uri, cfg, a) for a in ARTIFACTS if a != "filtered"), out[-4000:]

    # A parquet file corrupted in the store: the stage that reads it fails naming the file, and
    # publishes nothing over what was there.
    parquet = Path(round_uri(uri, cfg, "filtered")) / "data.parquet"
    body = bytearray(parquet.read_bytes())
    body[len(body) // 2] ^= 0xFF
    parquet.write_bytes(bytes(body))
    rc, out = runs.finish(runs.start(uri, mlflow_server, "--recompute", "sft"))
    assert rc != 0 and str(parquet) in out, out[-4000:]
    assert published(uri, cfg)["model"]["sha256"] == got["model"]["sha256"]

    # A corrupt manifest: the run stops naming it.
    manifest = Path(round_uri(uri, cfg, "scored")) / "manifest.json"
    manifest.write_text(manifest.read_text()[:40])
    rc, out = runs.finish(runs.start(uri, mlflow_server))
    assert rc != 0 and str(manifest) in out, out[-4000:]


def test_mlflow_server_stopped_mid_round(setup, reference):
    tmp, cfg, stores, runs = setup
    ref = reference.result()
    out = ref.out
    assert ref.rc == 0, out[-4000:]
    print(f"MLflow server down {ref.outage:.0f} s mid-round; the round finished")
    # While it ran, each stage showed where its log is, live progress at least every few seconds
    # (before the child's first report too) and, once done, one line of key figures; it ended by
    # saying where to look.
    assert_live_progress(out, "generate", "samples")
    assert re.search(r"generate +\d[\d,]* traces +\d+\.\d% correct", out), out[-3000:]
    assert re.search(r"sft +\d[\d,]* examples +\d+ steps +loss ", out), out[-3000:]
    assert f"vstar compare {cfg.loop_id()}" in out
    assert f"trace report  {round_uri(stores['reference'], cfg, 'report')}/report.html" in out
    # Every stage's metrics arrived, generate's included (logged while the server was down).
    assert len(ref.mlflow_runs) == 1 and ref.mlflow_runs[0].info.status == "FINISHED"
    prefixes = {k.split("/")[0] for k in ref.mlflow_runs[0].data.metrics}
    assert {"generate", "score", "filter_traces", "train_generator", "train_prm", "train_orm", "evaluate"} <= prefixes, \
        sorted(prefixes)
    assert set(published(stores["reference"], cfg)) == set(ARTIFACTS)
