"""Process groups that another process started: `vstar services up` leaves its services running when it
exits, and `status` and `down` (components/localstack/local_stack.py) find them again by the recorded
group leader (pgid == pid: each service starts a new session). They are no longer our children (no
Popen to wait on), so liveness comes from psutil: a zombie (exited, not reaped yet) counts as gone,
and a leader pid now held by another process (reused: its start time differs) is not ours.

Apart from processes.py, whose Service stops a group it started itself; stop_group stops one as
Service.stop does, from anywhere.
"""
from __future__ import annotations

import os
import signal
import time

import psutil


def start_time(pid: int) -> float | None:
    """When the process started (seconds since the epoch); None when there is no such process."""
    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def _ours(pgid: int, started: float | None) -> bool:
    """False when the leader's pid now names a different process. (While any member of the group
    lives, its id cannot be reused, so a gone leader with live members is still ours.)"""
    now = start_time(pgid)
    return now is None or started is None or abs(now - started) < 1.0


def group_alive(pgid: int, started: float | None = None) -> bool:
    """Whether any live (non-zombie) process is in process group `pgid` (and it is still ours)."""
    if not _ours(pgid, started):
        return False
    for p in psutil.process_iter():
        try:
            if os.getpgid(p.pid) == pgid and p.status() != psutil.STATUS_ZOMBIE:
                return True
        except (ProcessLookupError, psutil.NoSuchProcess, psutil.AccessDenied, PermissionError):
            continue
    return False


def _wait_for(cond, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def stop_group(pgid: int, stop_signals=((signal.SIGTERM, 10.0),), started: float | None = None) -> bool:
    """Stop a process group started elsewhere, as Service.stop() does: each (signal, seconds to wait for
    the leader) in turn, then SIGKILL what is left. Returns whether anything of it was running."""
    if not group_alive(pgid, started):
        return False

    def signal_group(sig: int) -> None:
        try:
            os.killpg(pgid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    for sig, wait_s in stop_signals:
        if not _running(pgid):
            break
        signal_group(sig)
        _wait_for(lambda: not _running(pgid), wait_s)
    if _running(pgid):
        signal_group(signal.SIGKILL)
        _wait_for(lambda: not _running(pgid), 10)
    # The leader is gone; give its children a moment to follow, then kill stragglers.
    if not _wait_for(lambda: not group_alive(pgid), 3):
        signal_group(signal.SIGKILL)
        _wait_for(lambda: not group_alive(pgid), 5)
    return True
