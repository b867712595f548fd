"""`vstar services up|status|down`: the full local stack (moto S3, MLflow, Prefect server + worker)
started by one command that returns while the services live on, used through its env.sh, refused a
second time, stopped by `down`. Real services, run as a user runs them (subprocesses, clean env)."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from components.localstack import local_stack
from components.localstack.groups import group_alive, start_time
from components.localstack.processes import http_json, http_status

VSTAR = str(Path(sys.executable).parent / "vstar")

# Run with env.sh sourced: MLflow and boto3 find the stack through the environment alone.
CHECK = r'''
import json, os, sys, tempfile, uuid
import boto3, mlflow
mlflow.set_experiment("services-cli-" + uuid.uuid4().hex[:8])
with tempfile.TemporaryDirectory() as d:
    path = os.path.join(d, "note.txt")
    with open(path, "w") as f:
        f.write("artifact body")
    with mlflow.start_run() as run:
        mlflow.log_metric("acc", 0.5)
        mlflow.log_artifact(path)
s3 = boto3.client("s3")
keys = [o["Key"] for o in s3.list_objects_v2(Bucket=sys.argv[1], Prefix="mlflow-artifacts/").get("Contents", [])]
ours = [k for k in keys if run.info.run_id in k and k.endswith("note.txt")]
body = s3.get_object(Bucket=sys.argv[1], Key=ours[0])["Body"].read().decode() if ours else None
acc = mlflow.get_run(run.info.run_id).data.metrics.get("acc")
print(json.dumps({"tracking_uri": mlflow.get_tracking_uri(), "acc": acc, "keys": keys, "body": body}))
'''


def _env() -> dict[str, str]:
    """A user's shell: nothing points at a server or an S3 yet (the test session's fixtures may have)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_", "AWS_"))}
    env["COLUMNS"] = "250"  # rich: no wrapped paths in the output checked below
    return env


def vstar(*args: str, timeout: float = 300) -> tuple[int, str]:
    p = subprocess.run([VSTAR, "services", *args], env=_env(), stdin=subprocess.DEVNULL, capture_output=True,
                       text=True, timeout=timeout)
    return p.returncode, p.stdout + p.stderr


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_services_up_status_down(tmp_path):
    d = tmp_path / "stack"
    recorded: list[dict] = []
    try:
        t0 = time.monotonic()
        rc, out = vstar("up", "--dir", str(d))
        up_s = time.monotonic() - t0
        assert rc == 0, out
        assert f"source {d / 'env.sh'}" in out, out
        state = json.loads((d / "state.json").read_text())
        recorded = state["services"]
        recs = {r["name"]: r for r in recorded}
        assert list(recs) == ["s3", "mlflow", "prefect-server", "prefect-worker"], out

        # `up` has returned; every service lives on, each in a process group of its own.
        for r in recorded:
            assert group_alive(r["pgid"], r["started"]), (r["name"], out)
            assert os.getpgid(r["pid"]) == r["pid"] != os.getpgid(0)
            assert r["name"] in out and str(r["pid"]) in out and Path(r["log"]).exists()

        rc, out = vstar("status", "--dir", str(d))
        assert rc == 0, out
        assert out.count("yes") == 8, out  # alive + healthy, 4 services

        # env.sh, sourced by bash, points MLflow and boto3 at the stack: a run's artifact lands in the local S3.
        env_sh = d / "env.sh"
        p = subprocess.run(["bash", "-c", 'set -e; source "$1"; env -0', "_", str(env_sh)], env=_env(),
                           capture_output=True, check=True)
        env = dict(kv.split("=", 1) for kv in p.stdout.decode().split("\0") if "=" in kv)
        assert env["MLFLOW_TRACKING_URI"] == recs["mlflow"]["url"]
        assert env["AWS_ENDPOINT_URL"] == env["MLFLOW_S3_ENDPOINT_URL"] == recs["s3"]["url"]
        assert env["AWS_ACCESS_KEY_ID"] == "testing" and env["AWS_DEFAULT_REGION"]
        assert env["VSTAR_HOME"] == str(local_stack.REPO_ROOT)
        p = subprocess.run(["bash", "-c", 'source "$1" && exec "$2" -c "$3" "$4"', "_", str(env_sh), sys.executable,
                           CHECK, state["bucket"]], env=_env(), capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, p.stderr[-3000:]
        got = json.loads(p.stdout.strip().splitlines()[-1])
        assert got["tracking_uri"] == recs["mlflow"]["url"] and got["acc"] == 0.5, got
        assert got["body"] == "artifact body", got  # read back from the bucket, under mlflow-artifacts/

        # Prefect: the API is healthy and the worker is ONLINE in pool "vstar" (the one prefect.yaml names).
        api = env["PREFECT_API_URL"]
        assert http_status(api + "/health") == 200
        workers = http_json(f"{api}/work_pools/vstar/workers/filter", {})
        assert any(w["status"] == "ONLINE" for w in workers), workers
        assert http_json(f"{api}/concurrency_limits/tag/gpu")["concurrency_limit"] == 1

        # A second `up` is refused, naming `down`, and leaves the running stack alone.
        rc, out = vstar("up", "--dir", str(d))
        assert rc != 0 and "vstar services down" in out, out
        assert json.loads((d / "state.json").read_text())["services"] == recorded
        assert all(group_alive(r["pgid"], r["started"]) for r in recorded)

        t1 = time.monotonic()
        rc, out = vstar("down", "--dir", str(d))
        down_s = time.monotonic() - t1
        assert rc == 0, out
        for r in recorded:
            assert f"stopped: {r['name']} (pid {r['pid']})" in out, out
            assert not group_alive(r["pgid"]), r["name"]
            if r.get("port"):
                assert not port_open(r["port"]), r["name"]
        assert not (d / "state.json").exists() and not env_sh.exists()
        assert (d / "logs" / "mlflow.log").exists()  # logs stay

        rc, out = vstar("status", "--dir", str(d))
        assert rc != 0 and "no stack recorded" in out, out
        rc, out = vstar("down", "--dir", str(d))  # idempotent
        assert rc == 0 and "nothing to stop" in out, out
        print(f"up {up_s:.1f} s, down {down_s:.1f} s")
    finally:
        if not recorded and (d / "state.json").exists():  # `up` failed or timed out part-way
            recorded = local_stack.read_state(d)["services"]
        subprocess.run([VSTAR, "services", "down", "--dir", str(d)], env=_env(), capture_output=True, timeout=120)
        for r in recorded:
            if group_alive(r["pgid"], r.get("started")):
                os.killpg(r["pgid"], signal.SIGKILL)


def _detached_sleep() -> int:
    """A `sleep` in a session of its own whose parent has exited: like a service after `up` returned."""
    out = subprocess.run(["bash", "-c", "setsid sleep 120 >/dev/null 2>&1 < /dev/null & echo $!"],
                         capture_output=True, text=True, check=True).stdout
    pid = int(out)
    deadline = time.monotonic() + 5
    while os.getpgid(pid) != pid and time.monotonic() < deadline:  # setsid has not run yet
        time.sleep(0.05)
    return pid


def test_stop_stack_stops_recorded_groups_and_spares_reused_pids(tmp_path):
    pid = _detached_sleep()
    other = _detached_sleep()
    try:
        state = {"dir": str(tmp_path), "services": [
            {"name": "s3", "pid": pid, "pgid": pid, "started": start_time(pid), "log": "-",
             "stop_signals": [[int(signal.SIGTERM), 5.0]]},
            # A record whose pid now names another process (its start time differs): not ours.
            {"name": "mlflow", "pid": other, "pgid": other, "started": start_time(other) - 100, "log": "-",
             "stop_signals": [[int(signal.SIGTERM), 5.0]]}]}
        (tmp_path / "state.json").write_text(json.dumps(state))
        (tmp_path / "env.sh").write_text("")
        rows = {r["name"]: r for r in local_stack.stack_status(tmp_path)}
        assert rows["s3"]["alive"] and not rows["s3"]["healthy"]  # no health URL recorded
        assert not rows["mlflow"]["alive"]

        stopped = local_stack.stop_stack(tmp_path)
        assert stopped == [{"name": "mlflow", "pid": other, "was_running": False},
                           {"name": "s3", "pid": pid, "was_running": True}]
        assert not group_alive(pid) and group_alive(other)
        assert not (tmp_path / "state.json").exists() and not (tmp_path / "env.sh").exists()
        assert local_stack.stop_stack(tmp_path) is None and local_stack.stack_status(tmp_path) is None
    finally:
        for p in (pid, other):
            try:
                os.killpg(p, signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_env_sh_without_s3_exports_no_aws_keys():
    text = local_stack.env_sh({"dir": "/x", "started_at": "now", "bucket": None, "env": {
        "PREFECT_API_URL": "http://127.0.0.1:1/api", "MLFLOW_TRACKING_URI": "http://127.0.0.1:2",
        "VSTAR_HOME": "/a b"}})
    assert "export PREFECT_API_URL=http://127.0.0.1:1/api" in text and "export VSTAR_HOME='/a b'" in text
    assert "AWS" not in text and "S3" not in text
