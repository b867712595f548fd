"""What the crash tests share: finding a run's stage child, waiting for a condition, and watching a
store for anything half-published while runs are killed under it."""
from __future__ import annotations

import datetime as dt
import re
import subprocess
import threading
import time
from pathlib import Path

import psutil

from components.artifacts import store


def stage_child(proc: subprocess.Popen | int, stage: str) -> psutil.Process | None:
    """The child process running `stage` (its module name: generate, score, sft, prm, evaluate) under `proc`."""
    try:
        kids = psutil.Process(proc if isinstance(proc, int) else proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return None
    found = []
    for k in kids:  # a new Python names the stage in its command line; a warm-started one in its name
        try:
            if f"components.stages.{stage}:run" in " ".join(k.cmdline()) or k.name() == f"vstar-{stage}"[:15]:
                found.append((k, k.ppid()))
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            pass
    pids = {k.pid for k, _ in found}  # the stage's own process, not a process it forked (named alike)
    return next((k for k, parent in found if parent not in pids), None)


def warm_helpers(pid: int) -> list[psutil.Process]:
    """The warm-start helpers (components/runtime/warm.py) that process `pid` started, still running."""
    out = []
    try:
        kids = psutil.Process(pid).children()
    except psutil.NoSuchProcess:
        return out
    for k in kids:
        try:
            if k.status() != psutil.STATUS_ZOMBIE and "components.runtime.warm" in " ".join(k.cmdline()):
                out.append(k)
        except psutil.Error:
            pass
    return out


def descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def left_behind(procs: list[psutil.Process], timeout: float = 30) -> list[str]:
    """Of `procs`, those still running after `timeout` seconds (zombies count as gone), as command lines."""
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    out = []
    for p in alive:
        try:
            if p.status() != psutil.STATUS_ZOMBIE:
                out.append(f"{p.pid}: {' '.join(p.cmdline())[:160]}")
        except psutil.NoSuchProcess:
            pass
    return out


def wait_for(cond, timeout: float, what: str, every: float = 0.2):
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = cond()
        if found:
            return found
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")


def freeze(proc: psutil.Process) -> str:
    """SIGSTOP `proc` and return its state once the signal has landed (it is delivered asynchronously):
    "stopped", or what it was instead ("zombie", "gone": it ended first)."""
    proc.suspend()
    state = "gone"
    for _ in range(50):
        try:
            state = proc.status()
        except psutil.NoSuchProcess:
            return "gone"
        if state in (psutil.STATUS_STOPPED, psutil.STATUS_ZOMBIE):
            break
        time.sleep(0.1)
    return state


class PublishedWatcher(threading.Thread):
    """Polls a store (local or S3) while runs work on it: every published manifest must list files that
    all exist. A half-written artifact would show up as a manifest whose files are missing."""

    def __init__(self, uri: str):
        super().__init__(daemon=True)
        self.uri, self.stop, self.violations, self.checks = uri, threading.Event(), [], 0

    def run(self):
        fs, root = store.fs_for(self.uri)
        while not self.stop.is_set():
            try:
                for m in fs.glob(f"{root}/**/manifest.json"):
                    folder = m.rsplit("/", 1)[0]
                    files = store.read_manifest(_uri(self.uri, folder))["files"]
                    missing = [f for f in files if not fs.exists(f"{folder}/{f}")]
                    if missing:
                        self.violations.append((folder, missing))
                self.checks += 1
                fs.invalidate_cache()
            except (store.NotPublished, FileNotFoundError):
                pass  # unpublished between glob and read: fine, that is the protocol
            time.sleep(0.5)

    def __enter__(self) -> "PublishedWatcher":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.join()


def stray_files(uri: str) -> list[str]:
    """Files in a store that no published manifest lists (catalog entries aside): what a half-written
    artifact, or a foreign writer such as a workflow engine's result store, would leave behind."""
    fs, root = store.fs_for(uri)
    files = [f for f in fs.find(root) if not f.endswith("/manifest.json")]
    listed = set()
    for m in fs.glob(f"{root}/**/manifest.json"):
        folder = m.rsplit("/", 1)[0]
        listed |= {f"{folder}/{name}" for name in store.read_manifest(_uri(uri, folder))["files"]}
    return sorted(f for f in files if f not in listed and not f.startswith(f"{root.rstrip('/')}/catalog/"))


def _uri(like: str, path: str) -> str:
    return path if store.is_local(like) else f"{like.split('://', 1)[0]}://{path}"


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


def sleep(seconds: float) -> dict:
    """A stand-in stage for call_isolated (`tests.procs:sleep`): a child that only waits."""
    time.sleep(seconds)
    return {"slept": seconds}
