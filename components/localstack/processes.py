"""Long-running child processes for local services: each in its own session/process group, logging
to a file, stopped by signalling the whole group; a module-level registry plus `atexit` stops what is
still running when the interpreter exits. Used by components/localstack/services.py. A service can be
detached (`vstar services up`: it outlives us) and its group stopped later from another process
(components/localstack/groups.py, `vstar services down`)."""
from __future__ import annotations

import atexit
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

STARTUP_TIMEOUT_S = 90.0
LOG_TAIL_LINES = 40

# Added to every service's environment.
QUIET_ENV = {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"}


class ServiceStartError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def log_tail(path: Path, n: int = LOG_TAIL_LINES) -> str:
    try:
        lines = Path(path).read_text(errors="replace").splitlines()
    except OSError as e:
        return f"<could not read {path}: {e}>"
    return "\n".join(lines[-n:])


def http_status(url: str, timeout: float = 2.0, data: bytes | None = None) -> int | None:
    """HTTP status of a GET (or POST when data is given); None when nothing answers."""
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except (urllib.error.URLError, OSError):
        return None


BUSY = (502, 503, 504)  # Prefect's server answers 503 while its SQLite database is busy (a loaded machine)


def http_json(url: str, body: object | None = None, timeout: float = 5.0, attempts: int = 6):
    """GET (or POST `body`) and decode the JSON answer. A busy answer (BUSY) is asked again, waiting
    0.5, 1, 2, 4, 8 s in between, and raised after `attempts`: callers send requests that may be
    repeated (reads, and upserts like a tag's concurrency limit)."""
    data = None if body is None else json.dumps(body).encode()
    for attempt in range(attempts):
        req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return json.loads(r.read() or b"null")
        except urllib.error.HTTPError as e:
            if e.code not in BUSY or attempt == attempts - 1:
                raise
        time.sleep(min(8.0, 0.5 * 2 ** attempt))


# --------------------------------------------------------------------------- processes

_RUNNING: list["Service"] = []
_RUNNING_LOCK = threading.Lock()


@dataclass(eq=False)  # identity semantics for the running-services registry
class Service:
    """One long-running process (and its process group)."""

    name: str
    cmd: list[str]
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path | None = None
    # (signal, seconds to wait for the group leader) tried in order; SIGKILL follows if needed.
    stop_signals: tuple[tuple[int, float], ...] = ((signal.SIGTERM, 10.0),)
    proc: subprocess.Popen | None = None
    startup_s: float | None = None
    stop_s: float | None = None
    _t0: float = 0.0
    _log_fh: object = None
    _detached: bool = False

    def start(self) -> "Service":
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log_fh = open(self.log_path, "ab", buffering=0)
        self._t0 = time.monotonic()
        self.proc = subprocess.Popen(
            self.cmd,
            env=self.env,
            cwd=str(self.cwd) if self.cwd else None,
            stdin=subprocess.DEVNULL,
            stdout=self._log_fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # own process group: stop() signals the whole group
        )
        with _RUNNING_LOCK:
            _RUNNING.append(self)
        return self

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def fail(self, why: str) -> ServiceStartError:
        """Stop the service and build an error carrying the end of its log."""
        self.stop()
        return ServiceStartError(
            f"{self.name} failed to start: {why}\n"
            f"command: {' '.join(self.cmd)}\n"
            f"--- last {LOG_TAIL_LINES} lines of {self.log_path} ---\n{log_tail(self.log_path)}"
        )

    def wait_until(self, check, what: str, timeout: float = STARTUP_TIMEOUT_S, every: float = 0.2):
        """Poll check() until truthy; fail early if the process exits, or after timeout."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                if check():
                    self.startup_s = time.monotonic() - self._t0
                    return
            except Exception:  # noqa: BLE001 - a half-started server may answer garbage
                pass
            if not self.alive():
                rc = self.proc.returncode if self.proc else None
                raise self.fail(f"process exited with code {rc} while waiting for {what}")
            if time.monotonic() > deadline:
                raise self.fail(f"no {what} after {timeout:.0f} s")
            time.sleep(every)

    def _group_exists(self) -> bool:
        try:
            os.killpg(self.proc.pid, 0)
            return True
        except (ProcessLookupError, PermissionError):
            return False

    def _signal_group(self, sig: int) -> None:
        try:
            os.killpg(self.proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def detach(self) -> None:
        """Let the process outlive this interpreter: out of the atexit registry, our log handle closed
        (the child keeps its own). stop() does nothing afterwards; groups.stop_group() stops it from anywhere."""
        self._detached = True
        self._forget()

    def _forget(self) -> None:
        """Close our log handle and leave the atexit registry."""
        if self._log_fh is not None:
            self._log_fh.close()
            self._log_fh = None
        with _RUNNING_LOCK:
            if self in _RUNNING:
                _RUNNING.remove(self)

    def stop(self) -> None:
        """Idempotent. Signal the group (per stop_signals), then SIGKILL whatever is left."""
        if self.proc is None or self.stop_s is not None or self._detached:
            return
        t0 = time.monotonic()
        try:
            for sig, wait_s in self.stop_signals:
                if not self.alive():
                    break
                self._signal_group(sig)
                try:
                    self.proc.wait(timeout=wait_s)
                except subprocess.TimeoutExpired:
                    pass
            if self.alive():
                self._signal_group(signal.SIGKILL)
                try:
                    self.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    pass
            # The leader is gone; give its children a moment to follow, then kill stragglers.
            deadline = time.monotonic() + 3
            while self._group_exists() and time.monotonic() < deadline:
                time.sleep(0.1)
            if self._group_exists():
                self._signal_group(signal.SIGKILL)
        finally:
            self.stop_s = time.monotonic() - t0
            self._forget()


def stop_all() -> None:
    """Stop every service still running, newest first (dependents before dependencies)."""
    with _RUNNING_LOCK:
        running = list(reversed(_RUNNING))
    for svc in running:
        try:
            svc.stop()
        except Exception as e:  # noqa: BLE001 - keep stopping the others
            print(f"[tests.services] stopping {svc.name} failed: {e!r}", file=sys.stderr)


atexit.register(stop_all)


def run_cli(cmd: list[str], env: dict, log_path: Path, cwd: Path | None = None, timeout: float = STARTUP_TIMEOUT_S):
    """Run a short command to completion (own process group), logging to log_path."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as fh:
        p = subprocess.Popen(cmd, env=env, cwd=str(cwd) if cwd else None, stdin=subprocess.DEVNULL,
                             stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = p.wait(timeout=timeout)
        except BaseException:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait()
            raise
    if rc != 0:
        raise ServiceStartError(
            f"command failed with code {rc}: {' '.join(cmd)}\n"
            f"--- last {LOG_TAIL_LINES} lines of {log_path} ---\n{log_tail(log_path)}"
        )


# --------------------------------------------------------------------------- environment

class EnvPatch:
    """Set os.environ variables and put the old values back on restore()."""

    _MISSING = object()

    def __init__(self):
        self._saved: dict[str, object] = {}

    def set(self, **values: str) -> None:
        for k, v in values.items():
            self._saved.setdefault(k, os.environ.get(k, self._MISSING))
            os.environ[k] = v

    def restore(self) -> None:
        for k, old in reversed(list(self._saved.items())):
            if old is self._MISSING:
                os.environ.pop(k, None)
            else:
                os.environ[k] = old  # type: ignore[assignment]
        self._saved.clear()


def service_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(QUIET_ENV)
    env.update(extra)
    return env
