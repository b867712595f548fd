"""Processes that must not outlive the process that started them (Linux).

A stage child left running after its flow process was killed would publish behind the back of the
rerun; a temporary Prefect server left running after `vstar run` was killed holds a port and memory
for good. Two ways, both without `preexec_fn` (subprocess's docs: not safe in a process with
threads, which every flow process has: the child can deadlock between fork and exec on a lock another
thread held at the fork):

- `die_with_parent(parent)`, called by the child itself first thing: PR_SET_PDEATHSIG, so the kernel
  SIGKILLs it when the parent goes; it is kept across exec, so `python -m components.runtime.orphans
  exec PARENT -m MODULE ...` sets it and becomes that program (torchrun). A parent already gone by
  then (the child is an orphan) ends the child at once.
- `watch(...)`: a process we do not start ourselves (Prefect's temporary server) gets a small
  watcher beside it, a child of ours that polls whether its parent is still there and, once it is
  not, kills that process (checked by its start time: a recycled pid is someone else's).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

PARENT_ENV = "VSTAR_PARENT_PID"  # the pid a child checks its parent against


def die_with_parent(parent: int | None = None) -> None:
    """SIGKILL this process when its parent dies; exit now if `parent` is given and already gone."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:  # not glibc Linux: the child may outlive a killed parent
        return
    if parent is not None and os.getppid() != parent:
        os._exit(1)  # the parent died before the prctl: it would never fire


def from_env() -> None:
    """die_with_parent for a child started with PARENT_ENV (child_env): its first call."""
    parent = os.environ.pop(PARENT_ENV, None)
    if parent:
        die_with_parent(int(parent))


def exec_argv(argv: list[str]) -> list[str]:
    """`argv` (a `python -m MODULE ...` command line) run through the exec launcher below."""
    assert argv[0] == sys.executable and argv[1] == "-m", argv
    return [sys.executable, "-m", __name__, "exec", str(os.getpid()), *argv[1:]]


def watch(pid: int, started: float, parent: int | None = None, poll_s: float = 1.0) -> subprocess.Popen:
    """A watcher that kills process `pid` (started at `started`, psutil's create_time) once this
    process is gone."""
    parent = parent or os.getpid()
    return subprocess.Popen([sys.executable, "-m", __name__, "watch", str(parent), str(pid), repr(started), str(poll_s)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)  # a Ctrl-C to the terminal's group must not end it first


def _watch(parent: int, pid: int, started: float, poll_s: float) -> None:
    import psutil

    while os.getppid() == parent:
        try:
            if abs(psutil.Process(pid).create_time() - started) >= 1:
                return  # that process ended and its pid is someone else's
        except psutil.NoSuchProcess:
            return  # it ended on its own (the parent stopped it)
        time.sleep(poll_s)
    try:
        proc = psutil.Process(pid)
        if abs(proc.create_time() - started) < 1:
            proc.terminate()
            try:
                proc.wait(10)
            except psutil.TimeoutExpired:
                proc.kill()
    except psutil.NoSuchProcess:
        pass


if __name__ == "__main__":
    mode, parent, *rest = sys.argv[1:]
    if mode == "exec":  # exec PARENT -m MODULE ARGS...: become that program, dying with PARENT
        die_with_parent(int(parent))
        os.execv(sys.executable, [sys.executable, *rest])
    else:  # watch PARENT PID STARTED POLL_S
        _watch(int(parent), int(rest[0]), float(rest[1]), float(rest[2]))
