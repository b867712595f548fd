"""`vstar unlock` (on a Prefect server), and the errors a user causes printed as one line (as a new
user runs `vstar`, on the embedded default: Prefect's ephemeral API, nothing else running). (A loop SIGKILLed
mid-stage and rerun, two live runs of one loop, `vstar status` after a crash: tests/test_faults.py.)"""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.procs import descendants, left_behind, one_line_error, wait_for

ROOT = Path(__file__).resolve().parent.parent
VSTAR = str(Path(sys.executable).parent / "vstar")


@pytest.fixture
def user(tmp_path):
    """A fresh working directory and an environment with no Prefect server or MLflow server named:
    every `vstar` started in it uses its own temporary Prefect server on one SQLite database."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))}
    env.update(PREFECT_HOME=str(tmp_path / "prefect-home"), PREFECT_SERVER_ANALYTICS_ENABLED="false")
    procs: list[subprocess.Popen] = []

    def start(*args) -> subprocess.Popen:
        out = open(tmp_path / f"vstar-{len(procs)}.log", "w+")
        p = subprocess.Popen([VSTAR, *args], cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL, start_new_session=True)
        p.log = out
        procs.append(p)
        return p

    def run(*args, timeout=900) -> tuple[int, str]:
        p = start(*args)
        p.wait(timeout=timeout)
        p.log.seek(0)
        return p.returncode, p.log.read()

    yield tmp_path, start, run
    for p in procs:  # a killed `vstar` leaves its temporary server behind: end its whole session
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_unlock_refuses_a_live_holder_and_frees_it_when_forced(prefect_server, tmp_path):
    """On a Prefect server, as an operator runs it (each `vstar` on the embedded default would start a
    temporary server of its own: ~10 s each; the lock is the same)."""
    loop = "locktest-0123456789"

    def vstar(*args) -> tuple[int, str]:
        p = subprocess.run([VSTAR, *args], cwd=tmp_path, env={**os.environ}, capture_output=True, text=True, timeout=120)
        return p.returncode, p.stdout + p.stderr

    holder = subprocess.Popen(  # a process that holds a loop's lock, as a running `vstar run` does
        [sys.executable, "-c", "import sys, time\nfrom flows.lock import loop_lock\nwith loop_lock(sys.argv[1]):\n"
         "    print('held', flush=True)\n    time.sleep(600)\n", loop],
        cwd=ROOT, env={**os.environ}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        wait_for(lambda: holder.stdout.readline() == "held\n" or holder.poll() is not None, 120, "the lock")
        assert holder.poll() is None
        rc, out = vstar("unlock", loop)
        assert rc == 2
        line = one_line_error(out, "may be alive")
        assert f"pid {holder.pid}" in line and "--force" in line

        rc, out = vstar("unlock", loop, "--force")
        assert rc == 0 and f"loop {loop} unlocked" in out, out
        rc, out = vstar("unlock", loop)
        assert rc == 0 and f"loop {loop} is not locked" in out, out
    finally:
        os.killpg(holder.pid, signal.SIGKILL)


def test_user_errors_are_one_line(user, tmp_path):
    _, _, run = user
    rc, out = run("config", "--set", "family.name=gsm9k", timeout=120)
    assert rc == 2
    assert "family.name: unknown family 'gsm9k'; known: arith, custom, gsm8k, math" in out and "Traceback" not in out

    rc, out = run("labels", "export", str(tmp_path / "nowhere"), str(tmp_path / "out.jsonl"), timeout=120)
    assert rc == 2
    one_line_error(out, "no published manifest.json")
    assert not (tmp_path / "out.jsonl").exists()


def test_a_round_that_learns_nothing_says_so(user, tiny_model_uri, smoke_cfg):
    """Fewer kept traces than sft.min_kept: the CLI warns with what was generated, right and kept and
    what to try; the round's MLflow run is tagged; G_1's manifest and `vstar status` say G_1 = G_0. (A
    pretrained model that solves nothing met this silently: 0 kept, G_1 = G_0 published as trained.)"""
    import mlflow

    from components.artifacts import store

    tmp_path, _, run = user
    args = ["--set", f"store_uri={smoke_cfg.store_uri}", "--set", f"tracking_uri=sqlite:///{tmp_path}/mlflow.db",
            "--set", "name=nothing-learned", "--set", "sft.min_kept=100000", "--set", "prm.enabled=false",
            "--set", "orm.enabled=false", "--set", "eval.beam.enabled=false", "--set", "generation.backend=transformers"]
    rc, out = run("run", str(ROOT / "configs/smoke.yaml"), *args)
    assert rc == 0, out[-3000:]
    warning = [line for line in out.splitlines() if "round 1 learned nothing" in line]
    assert warning, out[-3000:]
    assert "right" in warning[0] and "kept" in warning[0] and "sft.min_kept 100000" in warning[0]
    assert "G_1 is G_0, unchanged. Try: rationalize.enabled=true" in warning[0]
    assert "round 1: G_1 = G_0, unchanged" in out  # again under the end table
    assert "bootstrap model: trained here: " in out
    from components.checks import load_config

    loop = load_config(ROOT / "configs/smoke.yaml", [a for a in args if a != "--set"]).loop_id()
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    rounds = mlflow.search_runs(experiment_names=["vstar"], filter_string="tags.`vstar.unchanged` LIKE '%learned nothing%'",
                                output_format="list")
    assert len(rounds) == 1
    g1 = store.read_manifest(f"{smoke_cfg.store_uri}/loops/{loop}/round-1/model")
    assert g1["unchanged"] is True and g1["unchanged_from"] == tiny_model_uri
    rc, out = run("status", loop, "--set", f"store_uri={smoke_cfg.store_uri}",
                  "--set", f"tracking_uri=sqlite:///{tmp_path}/mlflow.db", timeout=300)
    assert rc == 0 and "unchanged: G_1 = G_0" in out, out
    assert "G_0: trained here" in out


def test_a_killed_run_leaves_no_process_behind(user):
    """`vstar run` on the embedded default starts a temporary Prefect server of its own; SIGKILLed, it
    left that server running for good (ppid 1, found 4 minutes later). Now nothing it started outlives
    it: the server, the warm-start helper, a stage child."""
    import psutil

    tmp_path, start, _ = user
    p = start("run", str(ROOT / "configs/smoke.yaml"), "--set", f"store_uri={tmp_path}/store",
              "--set", f"tracking_uri=sqlite:///{tmp_path}/mlflow.db", "--set", "name=killed-run")

    def server_up() -> bool:
        for k in descendants(p.pid):
            try:
                if "uvicorn" in " ".join(k.cmdline()):
                    return True
            except psutil.Error:
                pass
        return p.poll() is not None

    wait_for(server_up, 300, "the temporary Prefect server")
    assert p.poll() is None, p.log.read()
    time.sleep(2)  # its helper and first stage under way
    kids = descendants(p.pid)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    assert left_behind(kids) == []
