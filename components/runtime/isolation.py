"""Run a heavy stage (generation, scoring, training) in its own child process.

Why: memory goes back to the OS when the child exits (vLLM does not release it in-process), and
vLLM's changes to its host process (LD_PRELOAD, thread binding that turns torch.set_num_threads into
a no-op) stay in the child instead of leaking into the flow or into a later training stage.

This is the one place where a stage's arguments cross a process boundary: the config and keyword
arguments go to the child as JSON, the child (components/runtime/child.py) validates the config again
and calls the stage module's `run(cfg, **kwargs)`, and its JSON-able result comes back. The child
writes to a log file; on failure the parent raises with the log's tail. While it runs, its progress
reports (components/runtime/progress.py) reach the parent's `on_progress`.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Callable

from components.config import RunConfig
from components.redact import redact
from components.runtime import child, orphans, progress


class StageFailed(RuntimeError):
    pass


# vLLM sets these in its host process; a child must start from a clean slate.
_LEAKY = ("LD_PRELOAD",)
ROOT = Path(__file__).resolve().parents[2]  # the checkout: children import components/ from it


def run_isolated(stage: ModuleType, cfg: RunConfig, kwargs: dict, log_dir: str | Path = ".vstar/logs",
                 on_start: Callable[[Path], None] | None = None,
                 on_progress: Callable[[progress.Event | None], None] | None = None,
                 inputs: dict[str, str | None] | None = None):
    """`stage.run(cfg, **kwargs)` in a child Python; returns its result. What it publishes records
    `inputs` (code_version.input_digests) beside its code version. A training stage runs in
    `execution.train_processes` data-parallel processes when that is more than one."""
    processes = cfg.execution.train_processes if stage.STAGE.data_parallel else 1
    return call_isolated(f"{stage.__name__}:run", kwargs, stage.__name__.rsplit(".", 1)[-1], log_dir, cfg,
                         on_start, on_progress, inputs, processes)


def call_isolated(target: str, kwargs: dict, name: str, log_dir: str | Path = ".vstar/logs",
                  cfg: RunConfig | None = None, on_start: Callable[[Path], None] | None = None,
                  on_progress: Callable[[progress.Event | None], None] | None = None,
                  inputs: dict[str, str | None] | None = None, processes: int = 1):
    """`module:function(**kwargs)` (with `cfg` first when given) in a child Python; returns its result.
    `on_start(log_path)` is called once the child runs; `on_progress(event)` for each progress report
    and with None 4 times a second. `processes` > 1: that many children under torchrun, one per rank
    (DDP); rank 0's result comes back, and only rank 0 publishes (`_main`)."""
    log_dir = Path(log_dir).absolute()  # printed: openable from any directory
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{time.strftime('%Y%m%d-%H%M%S')}-{name}-{os.getpid()}.log"
    env = child_env()
    with tempfile.TemporaryDirectory() as tmp:
        args, result = Path(tmp) / "args.json", Path(tmp) / "result.json"
        args.write_text(json.dumps({"config": cfg and cfg.model_dump(mode="json"), "kwargs": kwargs, "inputs": inputs}))
        env[progress.ENV] = events = str(Path(tmp) / "progress.jsonl")
        with open(log_path, "w") as log:
            argv = [sys.executable, "-m", child.__name__, target, str(args), str(result)]
            if processes > 1:  # torchrun sets each rank's RANK, WORLD_SIZE, LOCAL_RANK and rendezvous
                argv[1:2] = ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}", "-m"]
            proc = _warm_start(argv, log_path, env, name) if processes == 1 else None
            if proc is None:  # a new Python: it imports torch (and vLLM) itself, and dies with this process
                argv, plain = ((argv, {**env, orphans.PARENT_ENV: str(os.getpid())}) if processes == 1 else
                               (orphans.exec_argv(argv), env))  # torchrun: through the launcher
                proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=plain)
            if on_start:
                on_start(log_path)
            _wait(proc, events, on_progress)
        if proc.returncode != 0 or not result.exists():
            tail = "".join(log_path.read_text(errors="replace").splitlines(keepends=True)[-40:])
            # The tail holds the child's traceback, which may quote a URI with credentials.
            raise StageFailed(f"stage {name} failed (exit {proc.returncode}); log: {log_path}\n{redact(tail)}")
        return json.loads(result.read_text())


def child_env() -> dict[str, str]:
    """The environment a stage child starts with (before its own progress file)."""
    env = {k: v for k, v in os.environ.items() if k not in _LEAKY}
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def warm_up(cfg=None) -> None:
    """Get stage children ready to start at once (components/runtime/warm.py), in the background; with
    the run's config at hand, vLLM is preloaded only if a stage of it uses a vLLM engine. A flow that
    takes its loop's lock calls it once it holds it: a trigger that is refused, or waits behind a
    running round, must not spend ~15 s of CPU and ~1 GB importing beside that round for stages it
    will never run."""
    from components.runtime import warm

    if cfg is not None:  # in this process's environment: every later child, and the helper's key, agree
        os.environ[warm.VLLM_ENV] = "1" if "vllm" in (cfg.generation.backend, cfg.prm.scorer, cfg.orm.scorer) else "0"
    if warm.enabled():
        warm.prestart(child_env())


def _warm_start(argv: list[str], log_path: Path, env: dict[str, str], name: str):
    """The child forked by this process's warm-start helper (components/runtime/warm.py), or None."""
    from components.runtime import warm

    helper = warm.helper({k: v for k, v in env.items() if k != progress.ENV})
    if helper is None:
        return None
    try:
        return helper.start(argv, str(log_path), env, os.getcwd(), name)
    except (RuntimeError, OSError):  # the helper died: the plain way
        return None


KILL_WAIT_S = 30.0


def _wait(proc: subprocess.Popen, events: str, on_progress) -> None:
    """Wait for the child, handing on its progress events as they come. If the wait itself ends
    (cancellation, Ctrl-C), the child goes too: nothing may publish behind the caller's back."""
    offset = 0
    try:
        while True:
            try:
                proc.wait(timeout=0.25)
                done = True
            except subprocess.TimeoutExpired:
                done = False
            if on_progress:
                new, offset = progress.follow(events, offset)
                try:
                    for event in [*new, None]:  # None: a tick, so a display can move between reports
                        on_progress(event)
                except Exception:  # a display must never fail the stage it shows
                    on_progress = None
            if done:
                return
    except BaseException:
        proc.kill()
        try:  # bounded: a child stuck in the kernel (a hung NFS read) must not hang the caller's exit too
            proc.wait(timeout=KILL_WAIT_S)
        except subprocess.TimeoutExpired:
            pass
        raise
