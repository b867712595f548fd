"""`vstar run` as a new user runs it: the embedded default (Prefect's ephemeral API, nothing else
running), a loop SIGKILLed mid-stage and rerun, two live runs of one loop, `vstar unlock`, and the
errors a user causes printed as one line."""
import datetime as dt
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from components.infra import store, tracking
from components.infra.layout import Layout
from components.config import load_config

ROOT = Path(__file__).resolve().parent.parent
VSTAR = str(Path(sys.executable).parent / "vstar")
# SFT long enough to be caught mid-way; the rest as short as a round gets (the test is about the lock
# and resuming, not about what the round learns).
OVERRIDES = ["sft.epochs=4", "prm.enabled=false", "scoring.label_source=gold", "family.eval.per_level=5",
             "eval.sampled_per_level=2"]


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


def stage_child(proc: subprocess.Popen, stage: str) -> psutil.Process | None:
    try:
        kids = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return None
    for k in kids:
        try:
            if f"components.stages.{stage}:run" in " ".join(k.cmdline()):
                return k
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            pass
    return None


def wait_for(cond, timeout: float, what: str):
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = cond()
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def one_line_error(out: str, needle: str) -> str:
    assert "Traceback" not in out, out[-3000:]
    hits = [line for line in out.splitlines() if needle in line]
    assert len(hits) == 1, out[-3000:]
    return hits[0]


def assert_live_progress(out: str, stage: str, unit: str) -> None:
    """`stage: log PATH` (an existing file), then progress lines no more than 15 s apart (they come every
    5 s; the slack is for a loaded machine) ending in a finished bar of `unit`."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if f"- {stage}: log " in line)
    assert Path(lines[start].split(f"- {stage}: log ", 1)[1].strip()).is_file(), lines[start]
    ticks = [line for line in lines[start:] if re.search(rf"- {stage} (\d+m )?\d+s?[ s]*: ", line)]
    assert ticks and any(re.search(rf"(\d+)/\1 {unit} 100%", t) for t in ticks), (stage, out[-4000:])
    clock = [dt.datetime.strptime(t.split(" | ")[0].strip(), "%H:%M:%S.%f") for t in ticks]
    assert max((b - a).total_seconds() for a, b in zip(clock, clock[1:] or clock)) <= 15, ticks


def test_killed_run_resumes_at_once_and_live_runs_exclude_each_other(user, smoke_cfg, tiny_model_dir):
    tmp, start, run = user
    store_uri = str(tmp / "store")
    args = ["run", str(ROOT / "configs/smoke.yaml"), "--set", f"store_uri={store_uri}",
            *[x for o in OVERRIDES for x in ("--set", o)]]
    cfg = load_config(ROOT / "configs/smoke.yaml", [f"store_uri={store_uri}", *OVERRIDES])
    store.publish_folder(tiny_model_dir, Layout(store_uri, bootstrap_hash=cfg.bootstrap_hash()).bootstrap(), {"kind": "model"})

    first = start(*args)
    wait_for(lambda: stage_child(first, "generate") or first.poll() is not None, 300, "the first run's generate stage")
    assert first.poll() is None, open(first.log.name).read()[-3000:]

    # A second live run of the same loop is refused, in one line that says what to do.
    rc, out = run(*args, timeout=300)
    assert rc == 2
    line = one_line_error(out, "is already running")
    assert cfg.loop_id() in line and f"pid {first.pid}" in line and "vstar unlock" in line

    # SIGKILL the first run during SFT; its stage child dies with it, and nothing is half-published.
    sft = wait_for(lambda: stage_child(first, "sft") or first.poll() is not None, 600, "SFT to start")
    assert first.poll() is None, "the first run finished before SFT could be caught"
    first.send_signal(signal.SIGKILL)
    first.wait()
    psutil.wait_procs([sft], timeout=30)
    assert not sft.is_running()
    uri = {s: Layout(store_uri, cfg.loop_id()).round(1, s) for s in ("candidates", "scored", "model")}
    assert not store.is_published(uri["model"])
    before = {s: store.read_manifest(uri[s])["published_at"] for s in ("candidates", "scored")}

    # While it ran, each stage showed where its log is, live progress at least every few seconds
    # (before the child's first report too) and, once done, one line of key figures.
    first_out = open(first.log.name).read()
    assert_live_progress(first_out, "generate", "samples")
    assert re.search(r"generate +\d[\d,]* traces +\d+\.\d% correct", first_out), first_out[-3000:]

    # `vstar status` says what happened: round 1's first stages published with their figures, SFT
    # interrupted (its MLflow run still says RUNNING, and no live process holds the loop).
    settings = ["--config", str(ROOT / "configs/smoke.yaml"), *args[2:]]
    rc, out = run("status", cfg.loop_id(), *settings, timeout=300)
    assert rc == 0, out[-3000:]
    rows = {tuple(c.strip() for c in line.split("│")[1:4]) for line in out.splitlines() if line.count("│") >= 6}
    assert {("1", "generate", "published"), ("1", "score", "published"), ("1", "filter", "published"),
            ("1", "sft", "interrupted")} <= rows, out[-3000:]
    assert re.search(r"│ generate +│ published +│ [0-9T:-]+Z +│ [\d,]+ traces +[\d.]+% correct", out), out[-3000:]
    assert f"process {first.pid} on this host is gone" in out, out[-3000:]
    assert f"store: {Layout(store_uri, cfg.loop_id()).loop()}" in out, out[-3000:]

    # The same command again: the dead holder is recognised, the lock reclaimed, the round resumed.
    t0 = time.time()
    rc, out = run(*args)
    assert rc == 0, out[-4000:]
    assert "lock reclaimed" in out and f"process {first.pid} on this host is gone" in out
    assert "is already running" not in out
    for task in ("generate", "score", "filter"):  # finished stages come back from the cache
        assert any(f"Task run '{task}-" in line and "Cached" in line for line in out.splitlines()), (task, out[-4000:])
    assert {s: store.read_manifest(uri[s])["published_at"] for s in ("candidates", "scored")} == before
    assert store.is_published(uri["model"])
    assert_live_progress(out, "sft", "steps")
    assert re.search(r"sft +\d[\d,]* examples +\d+ steps +loss ", out), out[-4000:]
    print(f"rerun after SIGKILL: {time.time() - t0:.0f} s to finish the round")

    # It ends by saying where to look, and the killed run's MLflow runs (left RUNNING) are finished now.
    db = tmp / ".vstar/mlflow.db"
    assert f"mlflow ui --backend-store-uri sqlite:///{db}" in out and f"vstar compare {cfg.loop_id()}" in out
    assert f"trace report  {Layout(store_uri, cfg.loop_id()).round(1, 'report')}/report.html" in out
    import mlflow

    parent, rounds = tracking.loop_runs(mlflow.MlflowClient(f"sqlite:///{db}"), cfg.experiment, cfg.loop_id())
    assert {r.info.status for r in [parent, *rounds]} == {"FINISHED"}
    rc, out = run("status", *settings, timeout=300)  # every loop of the store: this one, evaluated, free
    assert rc == 0 and re.search(rf"{cfg.loop_id()} +│ 1 +│ [0-9T:-]+Z +│ 0 +│ not locked", out), out[-3000:]


def test_unlock_refuses_a_live_holder_and_frees_it_when_forced(user):
    tmp, start, run = user
    loop = "locktest-0123456789"
    holder = subprocess.Popen(  # a process that holds a loop's lock, as a running `vstar run` does
        [sys.executable, "-c", "import sys, time\nfrom flows.lock import loop_lock\nwith loop_lock(sys.argv[1]):\n"
         "    print('held', flush=True)\n    time.sleep(600)\n", loop],
        cwd=ROOT, env={**{k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")},
                       "PREFECT_HOME": str(tmp / "prefect-home"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        wait_for(lambda: holder.stdout.readline() == "held\n" or holder.poll() is not None, 120, "the lock")
        assert holder.poll() is None
        rc, out = run("unlock", loop, timeout=120)
        assert rc == 2
        line = one_line_error(out, "may be alive")
        assert f"pid {holder.pid}" in line and "--force" in line

        rc, out = run("unlock", loop, "--force", timeout=120)
        assert rc == 0 and f"loop {loop} unlocked" in out, out
        rc, out = run("unlock", loop, timeout=120)
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
