"""`vstar services up|down|status`: the local full stack of components/localstack/services.py (moto S3,
MLflow, Prefect server + work pool + worker), started detached so it outlives the command, recorded
in a state file (pids, process groups, URLs, logs) that `status` and `down` read, with an env.sh to
source. Tests and benchmarks start the same services through `ServiceStack`."""
from __future__ import annotations

import json
import os
import shlex
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

from components.localstack.groups import group_alive, start_time, stop_group
from components.localstack.processes import Service, ServiceStartError, http_json, http_status
from components.localstack.services import REPO_ROOT, WORK_POOL, ServiceStack

STACK_DIR = Path(".vstar/services")  # the default --dir: state.json, env.sh, logs/, the servers' databases
STACK_BUCKET = "vstar"
STATE_FILE, ENV_FILE = "state.json", "env.sh"
_ORDER = ("s3", "mlflow", "prefect-server", "prefect-worker")  # start order; `down` stops in reverse
_LOCAL_S3_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")


class StackRunning(RuntimeError):
    """`up` while a recorded stack still runs."""


def read_state(dir: str | os.PathLike = STACK_DIR) -> dict | None:
    """The recorded stack of `dir`, or None when nothing is recorded there."""
    path = Path(dir) / STATE_FILE
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except ValueError as e:
        raise RuntimeError(f"{path} is not a stack record ({e}): look for its processes with "
                           f"`ps -eo pid,pgid,cmd | grep -E 'moto|mlflow|prefect'`, stop them, delete it") from None


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _forget(dir: Path) -> None:
    for name in (STATE_FILE, ENV_FILE):
        (dir / name).unlink(missing_ok=True)


def service_alive(rec: dict) -> bool:
    """Whether a recorded service's process group still has a live process."""
    return group_alive(rec["pgid"], rec.get("started"))


def service_healthy(rec: dict) -> bool:
    """Its health check: HTTP 200 from the recorded URL, or for the worker, ONLINE in its pool."""
    if not rec.get("health"):
        return False  # recorded by an `up` that died before this service was ready
    if rec.get("check") == "worker":
        try:
            return any(w.get("status") == "ONLINE" for w in http_json(rec["health"], {}) or [])
        except Exception:  # noqa: BLE001 - no server, or a half-started one
            return False
    return http_status(rec["health"]) == 200


def env_sh(state: dict) -> str:
    """The shell lines that point `vstar`, `prefect`, `mlflow`, boto3 and s3fs at the stack."""
    env = state["env"]
    lines = [f"# `vstar services up --dir {state['dir']}`, {state['started_at']}: source this file to use",
             "# its stack (`vstar services status` checks it, `vstar services down` stops it)."]
    lines += [f"export {k}={shlex.quote(v)}" for k, v in env.items() if k not in _LOCAL_S3_KEYS
              and not k.endswith("ENDPOINT_URL")]
    if state.get("bucket"):
        lines += ["# The local S3 (moto; it keeps objects in memory: `down` drops them). These keys work only there.",
                  *(f"export {k}={shlex.quote(v)}" for k, v in env.items()
                    if k in _LOCAL_S3_KEYS or k.endswith("ENDPOINT_URL")),
                  f"# To keep the store there too: vstar run CONFIG --set store_uri=s3://{state['bucket']}/store",
                  f"# (and export VSTAR_STORE=s3://{state['bucket']}/store for `vstar datasets`)."]
    return "\n".join(lines) + "\n"


def start_stack(dir: str | os.PathLike = STACK_DIR, *, s3: bool = True, s3_port: int | None = None,
                mlflow_port: int | None = None, prefect_port: int | None = None, say=lambda msg: None) -> dict:
    """Start S3 (unless s3=False), MLflow, a Prefect server, work pool `vstar` and one worker, detached:
    they outlive this process. Writes <dir>/state.json (each service as soon as its process exists, so
    `stop_stack` finds it even if this dies mid-way) and <dir>/env.sh; returns the state. Raises
    StackRunning while a recorded stack lives, ServiceStartError (with the log's tail) if a service
    fails; on any failure what was started is stopped again."""
    dir = Path(dir).resolve()
    old = read_state(dir)
    if old is not None:
        alive = [r["name"] for r in old["services"] if service_alive(r)]
        if alive:
            raise StackRunning(f"a stack is already running from {dir / STATE_FILE} ({', '.join(alive)}): "
                               f"use it (source {dir / ENV_FILE}), or stop it first: vstar services down --dir {dir}")
        _forget(dir)  # a stale record: its processes are gone
    dir.mkdir(parents=True, exist_ok=True)
    say(f"starting the local stack in {dir} (logs in {dir / 'logs'}) ...")
    state = {"dir": str(dir), "started_at": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "complete": False,
             "bucket": STACK_BUCKET if s3 else None, "pool": WORK_POOL, "services": [], "env": {}}
    lock, aborted = threading.Lock(), threading.Event()

    def save() -> None:
        with lock:
            state["services"].sort(key=lambda r: _ORDER.index(r["name"]) if r["name"] in _ORDER else len(_ORDER))
            _write_atomic(dir / STATE_FILE, json.dumps(state, indent=2) + "\n")

    def spawned(svc: Service) -> None:
        with lock:
            state["services"].append({"name": svc.name, "pid": svc.pid, "pgid": svc.pid, "started": start_time(svc.pid),
                                      "log": str(svc.log_path), "cmd": svc.cmd,
                                      "stop_signals": [[int(sig), wait] for sig, wait in svc.stop_signals]})
        save()
        if aborted.is_set():  # `up` is failing: _launch stops this one again
            raise ServiceStartError(f"{svc.name}: start abandoned")

    def ready(svc: Service, url: str, health: str, check: str = "http", port: int | None = None) -> None:
        with lock:
            rec = next(r for r in state["services"] if r["pid"] == svc.pid)
            rec.update(url=url, health=health, check=check, port=port)
        save()
        say(f"  {svc.name} up in {svc.startup_s:.1f} s: {url}")

    stack = ServiceStack(dir, on_start=spawned)
    # prefect.yaml's pull step runs flows from $VSTAR_HOME: the worker (and env.sh) get this checkout.
    os.environ.setdefault("VSTAR_HOME", str(REPO_ROOT))
    server_start = ThreadPoolExecutor(1, thread_name_prefix="prefect-server")
    try:
        # The Prefect server, the slowest to start, comes up beside S3 and MLflow.
        server_f = server_start.submit(stack.prefect_server, prefect_port, True)
        bucket = stack.s3(STACK_BUCKET, s3_port) if s3 else None
        if bucket is not None:
            ready(bucket.service, bucket.endpoint, bucket.endpoint + "/", port=urlsplit(bucket.endpoint).port)
        ml = stack.mlflow(bucket, mlflow_port)
        ready(ml.service, ml.uri, ml.uri + "/health", port=urlsplit(ml.uri).port)
        server = server_f.result()
        ui = server.api_url.removesuffix("/api")
        ready(server.service, ui, server.api_url + "/health", port=urlsplit(ui).port)
        # The tag limit of prefect.yaml's GPU-heavy tasks (`prefect concurrency-limit create gpu 1`).
        http_json(server.api_url + "/concurrency_limits/", {"tag": "gpu", "concurrency_limit": 1})
        worker = stack.prefect_worker(server)
        ready(worker.service, f"{ui}/work-pools/work-pool/{worker.pool}",
              f"{server.api_url}/work_pools/{worker.pool}/workers/filter", check="worker")
        state["env"] = {"PREFECT_API_URL": server.api_url, "MLFLOW_TRACKING_URI": ml.uri,
                        "VSTAR_HOME": os.environ["VSTAR_HOME"], **(bucket.env if bucket else {})}
        state["complete"] = True
        save()
        _write_atomic(dir / ENV_FILE, env_sh(state))
    except BaseException:
        aborted.set()
        stack.close()
        server_start.shutdown(wait=True)  # a server still starting notices it was stopped, or is stopped on spawn
        stack.close()
        _forget(dir)
        raise
    server_start.shutdown(wait=True)
    stack.detach()
    return state


def stack_status(dir: str | os.PathLike = STACK_DIR) -> list[dict] | None:
    """Per recorded service: name, url, pid, log, alive (its process group), healthy (its health check);
    None when nothing is recorded in dir."""
    state = read_state(dir)
    if state is None:
        return None
    rows = []
    for rec in state["services"]:
        alive = service_alive(rec)
        rows.append({**rec, "alive": alive, "healthy": alive and service_healthy(rec)})
    return rows


def stop_stack(dir: str | os.PathLike = STACK_DIR) -> list[dict] | None:
    """Stop every recorded service (its whole process group: each recorded stop signal, then SIGKILL),
    newest first, and forget the stack (state.json, env.sh; logs and databases stay). Per service:
    name, pid, was_running. None when nothing is recorded (so calling it twice is harmless)."""
    dir = Path(dir)
    state = read_state(dir)
    if state is None:
        return None
    stopped = []
    for rec in reversed(state["services"]):
        was = stop_group(rec["pgid"], tuple((signal.Signals(s), w) for s, w in rec["stop_signals"]), rec.get("started"))
        stopped.append({"name": rec["name"], "pid": rec["pid"], "was_running": was})
    _forget(dir)
    return stopped
