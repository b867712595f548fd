"""A GRPO round (train_generator.method: grpo) as a user runs it: `vstar run` on the smoke config against
the session's Prefect and MLflow servers, SIGKILLed inside the GRPO stage, then run again."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import time

import mlflow
import psutil
import pytest
from safetensors.torch import load_file

from components.artifacts import store, tracking
from components.artifacts.layout import Layout
from components.checks import load_config
from tests.procs import PublishedWatcher, freeze, stage_child, stray_files, wait_for
from tests.test_faults import CONFIG, OVERRIDES, VSTAR, Runs

# Calculator labels and no ORM: what is tested is the generator's stage, not the labelling.
GRPO = ["train_generator.method=grpo", "grpo.rewards={outcome: 1.0}", "scoring.label_source=calc", "orm.enabled=false"]
BEFORE = ("candidates", "scored", "filtered")  # round 1's artifacts made before G_1


@pytest.fixture
def runs(tmp_path):
    r = Runs(tmp_path)
    yield r
    r.close()


def test_a_grpo_round_publishes_its_generator_like_sft_and_resumes_after_sigkill(
        runs, tmp_path, prefect_server, mlflow_server, tiny_model_uri, tiny_model_dir):
    uri = str(tmp_path / "store")
    cfg = load_config(CONFIG, [f"store_uri={uri}", *OVERRIDES, *GRPO])
    at = Layout(uri, cfg.loop_id(), cfg.bootstrap_hash())
    assert "-grpo-outcome-" in cfg.loop_id()
    store.publish_folder(tiny_model_dir, at.bootstrap(),  # with its figures: compare counts FLOPs by G_0's size
                         {"kind": "model", "metrics": store.read_manifest(tiny_model_uri)["metrics"]})
    sets = [x for s in GRPO for x in ("--set", s)]
    with PublishedWatcher(uri) as watcher:
        p = runs.start(uri, mlflow_server, *sets)
        child = wait_for(lambda: stage_child(p, "grpo") or p.poll() is not None, 600, "the grpo stage to start")
        assert p.poll() is None, runs.output(p)[-3000:]
        time.sleep(0.3)
        assert freeze(child) == psutil.STATUS_STOPPED, "grpo finished before it could be killed"
        p.send_signal(signal.SIGKILL)
        p.wait()
        psutil.wait_procs([child], timeout=30)
        assert not store.is_published(at.round(1, "model")), "a killed GRPO stage published G_1"
        # `vstar status` names the stage that was killed by how this loop trains G_1, not `sft`.
        rc, status = runs.finish(runs.start(uri, mlflow_server, cfg.loop_id(), *sets, command="status"), timeout=300)
        rows = {tuple(c.strip() for c in x.split("│")[1:4]) for x in status.splitlines() if x.count("│") >= 6}
        assert rc == 0 and ("1", "grpo", "interrupted") in rows, status[-3000:]
        before = {a: store.read_manifest(at.round(1, a))["published_at"] for a in BEFORE}

        rc, out = runs.finish(runs.start(uri, mlflow_server, *sets))
        assert rc == 0, out[-4000:]
    assert watcher.checks > 5 and not watcher.violations, watcher.violations
    assert stray_files(uri) == []
    # Only the killed stage ran again: what was published before it was skipped, untouched.
    for artifact, stage in zip(BEFORE, ("generate", "score", "filter")):
        assert re.search(rf" - {stage} .*\(published at {re.escape(at.round(1, artifact))}: skipped\)", out), out[-4000:]
    assert {a: store.read_manifest(at.round(1, a))["published_at"] for a in BEFORE} == before
    line = next(x for x in out.splitlines() if re.search(r" - grpo +\d+ problems", x))
    assert re.search(r"reward \d\.\d\d -> \d\.\d\d .*right \d+% .*high-reward flawed \d+%", line), line

    # G_1 is published as SFT's is (a model on G_0, its manifest saying how), and it changed.
    m = store.read_manifest(at.round(1, "model"))
    assert (m["kind"], m["round"], m["parent"], m["method"], m["rewards"]) == \
           ("model", 1, at.bootstrap(), "grpo", {"outcome": 1.0})
    assert m["metrics"]["steps"] >= 1 and 0 <= m["metrics"]["high_reward_flawed"] <= 1
    g0 = load_file(str(store.fetch_folder(at.bootstrap()) / "model.safetensors"))
    g1 = load_file(str(store.fetch_folder(at.round(1, "model")) / "model.safetensors"))
    assert g0.keys() == g1.keys() and any(not (g0[k] == g1[k]).all() for k in g0)
    assert store.is_published(at.round(1, "eval"))  # and the round went on from it

    # MLflow: the round's run has the stage's figures under the generator's prefix, rounds comparable.
    parent, rounds = tracking.loop_runs(mlflow.MlflowClient(mlflow_server), cfg.experiment, cfg.loop_id())
    metrics = next(r for r in rounds if r.data.tags.get(tracking.ROUND_TAG) == "1").data.metrics
    assert {"train_generator/reward_mean", "train_generator/high_reward_flawed", "train_generator/train_flops"} <= set(metrics)
    assert parent.info.run_name == cfg.loop_id()

    rc, status = runs.finish(runs.start(uri, mlflow_server, cfg.loop_id(), *sets, command="status"), timeout=300)
    assert rc == 0, status[-3000:]
    rows = {tuple(c.strip() for c in x.split("│")[1:4]) for x in status.splitlines() if x.count("│") >= 6}
    assert ("1", "grpo", "published") in rows, status[-3000:]

    # `vstar compare` says how the round trained G_1, the reward against the truth, and what it cost.
    res = subprocess.run([VSTAR, "compare", cfg.loop_id(), "--tracking-uri", mlflow_server, "--out", str(tmp_path / "c.png")],
                         capture_output=True, text=True, timeout=300, cwd=tmp_path, env={**os.environ, "COLUMNS": "250"})
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "how each round trained its generator" in res.stdout, res.stdout[-3000:]
    g = m["metrics"]
    # ... and what sampling the round cost, by G_0's size (the loop's parent run holds the bootstrap's figures)
    assert re.search(rf"│ +grpo +│ +{g['problems']} +│ +{g['reward_first']:.2f} -> {g['reward_last']:.2f} +│.*│ +\d[\d.e+-]* +│ +"
                     rf"{g['train_flops'] / 1e12:.3g} +│ +\d+% +│", res.stdout), res.stdout[-3000:]
