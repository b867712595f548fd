"""Warm starts for stage children: one helper Python per flow process imports the heavy libraries once
(torch, transformers, vLLM: 5-15 s on a CPU, which every stage child would otherwise pay) and forks a
fresh process for each stage.

Each stage still runs in its own process (components/runtime/isolation.py says why): it gets its own
log, environment and working directory, its memory goes back to the OS when it exits, and whatever
vLLM changes in it stays there. Forking after torch is imported, but before it has run anything or
touched CUDA, is what PyTorch's DataLoader workers do. Where an NVIDIA device is present the plain
way is kept (a new Python per stage): a library that touches CUDA at import would break every forked
child, and beside minutes-long GPU stages the seconds saved do not matter. A helper that fails to
start or dies is replaced by the plain way too; `VSTAR_WARM_START=0` asks for it.

Protocol (JSON lines): the helper prints {"ready": true} once it has imported; each request
{"id", "argv", "log", "env", "cwd", "name"} is answered {"id", "pid"}; each child's end {"pid", "exit"}.
"""
from __future__ import annotations

import importlib
import json
import os
import select
import subprocess
import sys
import threading
from pathlib import Path

# What the stage children import, as "module" or "module:name,...". transformers is lazy: `import
# transformers` alone loads almost nothing, and each child then spent ~3-4 s of CPU importing the auto
# classes, the Trainer and the model code its stage names (py-spy on a smoke round: 35 s of a round's
# 44 s in stage children were imports). Only third-party code is here: the project's own modules are
# imported by each child from the code on disk.
PRELOAD = ("torch",
           "transformers:AutoConfig,AutoModelForCausalLM,AutoModelForTokenClassification,AutoTokenizer,"
           "PreTrainedTokenizerFast,Trainer,TrainingArguments,LlamaForCausalLM,Qwen2ForCausalLM",
           "trl:SFTTrainer,DPOTrainer", "peft:PeftModel,LoraConfig", "datasets", "pyarrow.parquet", "fsspec",
           "math_verify", "vllm", "vllm.entrypoints.llm")
# "0": the run uses no vLLM engine (its generation backend and scorers are transformers), and the helper
# leaves vLLM out: ~9 s of CPU per flow process for an import no stage would use (set by warm_up).
VLLM_ENV = "VSTAR_WARM_VLLM"
# Set in the flow process by libraries as they import (scikit-learn, threadpoolctl, MLflow): not a
# different environment for the helper's imports (each child gets the exact one anyway), so they do not
# cost a second helper (~10 s, ~1 GB) halfway through a round.
SET_BY_LIBRARIES = ("KMP_DUPLICATE_LIB_OK", "_MLFLOW_TELEMETRY_SESSION_ID")
# Where the services are and how to reach them: read at run time by the clients a stage imports itself
# (MLflow, boto/s3fs, Prefect, the remote judge's), never by the preloaded libraries at import. A flow
# process that starts or is pointed at a service later (a test session does, service by service) keeps
# its helper instead of importing everything again (~15 s of CPU, ~1 GB each time).
READ_AT_RUN_TIME = ("MLFLOW_", "AWS_", "PREFECT_", "VSTAR_JUDGE_")
ROOT = Path(__file__).resolve().parents[2]


class Helper:
    """The parent's side: start children through the helper, learn when they end."""

    def __init__(self, env: dict[str, str]):
        self.env, self.lock, self.ended = env, threading.Lock(), threading.Condition()
        self.exits: dict[int, int] = {}
        self.started: dict[int, int] = {}
        self.next_id = self.children = 0
        ready = threading.Event()
        # PR_SET_PDEATHSIG fires when the *thread* that started the helper ends: a thread that lives as
        # long as this process starts it, so the helper (and its children) die with the process only.
        threading.Thread(target=self._keep, args=(ready,), daemon=True, name="vstar-warm-start").start()
        ready.wait()
        if self.error:
            raise RuntimeError(self.error)

    def _keep(self, ready: threading.Event) -> None:
        from components.runtime import orphans

        self.error = None
        try:  # the helper sets its own PDEATHSIG (orphans: no preexec_fn in a threaded process)
            self.proc = subprocess.Popen([sys.executable, "-m", __name__], stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                         env={**self.env, orphans.PARENT_ENV: str(os.getpid())}, cwd=ROOT)
            first = self.proc.stdout.readline()
            if not first or not json.loads(first).get("ready"):
                raise RuntimeError(f"warm-start helper did not start (exit {self.proc.poll()})")
        except Exception as e:
            self.error = str(e)
            ready.set()
            return
        ready.set()
        for line in self.proc.stdout:  # until the helper ends
            msg = json.loads(line)
            with self.ended:
                if "exit" in msg:
                    self.exits[msg["pid"]] = msg["exit"]
                else:
                    self.started[msg["id"]] = msg["pid"]
                self.ended.notify_all()
        with self.ended:
            self.dead = True
            self.ended.notify_all()
        threading.Event().wait()  # keep this thread (the helper's parent, for PDEATHSIG) alive

    dead = False

    def alive(self) -> bool:
        return not self.dead and self.proc.poll() is None

    def running(self) -> int:
        """Children started and not yet waited for."""
        return self.children

    def stop(self) -> None:
        try:
            self.proc.kill()
            self.proc.wait(timeout=10)  # reaped: no zombie left behind
        except (OSError, subprocess.TimeoutExpired):
            pass

    def start(self, argv: list[str], log: str, env: dict[str, str], cwd: str, name: str) -> "Child":
        with self.lock:
            self.next_id += 1
            rid = self.next_id
            self.proc.stdin.write((json.dumps({"id": rid, "argv": argv, "log": log, "env": env, "cwd": cwd,
                                               "name": name}) + "\n").encode())
            self.proc.stdin.flush()
        with self.ended:
            if not self.ended.wait_for(lambda: rid in self.started or self.dead, timeout=60):
                raise RuntimeError("warm-start helper did not answer")
            if rid not in self.started:
                raise RuntimeError("warm-start helper died")
            self.children += 1
            return Child(self, self.started.pop(rid))


class Child:
    """A forked stage child, with what isolation needs of a Popen: pid, wait(timeout), kill(), returncode."""

    def __init__(self, helper: Helper, pid: int):
        self.helper, self.pid, self.returncode = helper, pid, None

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is not None:
            return self.returncode
        h = self.helper
        with h.ended:
            if not h.ended.wait_for(lambda: self.pid in h.exits or h.dead, timeout):
                raise subprocess.TimeoutExpired(f"pid {self.pid}", timeout)
            self.returncode = h.exits.pop(self.pid, -9)  # a dead helper took its children with it
            h.children -= 1
        return self.returncode

    def kill(self) -> None:
        try:
            os.kill(self.pid, 9)
        except ProcessLookupError:
            pass


def enabled() -> bool:
    """Warm starts are for CPU machines (the module's docstring says why), on Linux (fork, prctl)."""
    return (os.environ.get("VSTAR_WARM_START", "1") != "0" and sys.platform.startswith("linux")
            and not os.path.exists("/dev/nvidiactl"))


_HELPERS: dict[str, Helper] = {}
_GUARD = threading.Lock()


def helper(env: dict[str, str]) -> Helper | None:
    """This process's helper for `env` (one per environment: the libraries it imported read it), or None
    when warm starts are off or the helper cannot start. A helper for another environment with no child
    running is stopped: each holds the imported libraries' memory (~1 GB)."""
    if not enabled():
        return None
    # A helper that preloaded vLLM serves a run that needs none as well: only a run that needs vLLM
    # replaces one that left it out (a process running flows of both kinds keeps one helper).
    wants_vllm = env.get(VLLM_ENV) != "0"
    key = json.dumps(sorted((k, v) for k, v in env.items()
                            if k not in (*SET_BY_LIBRARIES, VLLM_ENV) and not k.startswith(READ_AT_RUN_TIME)))
    with _GUARD:
        h = _HELPERS.get(key)
        if h is not None and h.alive() and (h.vllm or not wants_vllm):
            return h
        for other, old in list(_HELPERS.items()):
            if not old.alive() or not old.running():
                old.stop()
                del _HELPERS[other]
        try:
            _HELPERS[key] = h = Helper(env)
        except RuntimeError:
            return None
        h.vllm = wants_vllm
        return h


def prestart(env: dict[str, str]) -> None:
    """Start the helper for `env` in the background, so its imports overlap the flow's own start
    (Prefect, the lock, MLflow runs) instead of delaying the first stage."""
    threading.Thread(target=helper, args=(env,), daemon=True, name="vstar-warm-prestart").start()


# ------------------------------------------------------------------------------ the helper's side

def _serve() -> None:
    skip = ("vllm",) if os.environ.get(VLLM_ENV) == "0" else ()
    for entry in [e for e in PRELOAD if e.split(".")[0].split(":")[0] not in skip]:
        module, _, names = entry.partition(":")
        try:  # an optimisation only: a child imports whatever is missing
            loaded = importlib.import_module(module)
            for name in filter(None, names.split(",")):
                getattr(loaded, name)  # a lazy module imports the name's code now
        except Exception:
            pass
    out = sys.stdout.buffer

    def say(msg: dict) -> None:
        out.write((json.dumps(msg) + "\n").encode())
        out.flush()  # before any fork: a child must not inherit unwritten lines

    say({"ready": True})
    stdin = sys.stdin.buffer
    while True:
        while True:  # reap ended children
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            say({"pid": pid, "exit": os.waitstatus_to_exitcode(status)})
        if not select.select([stdin], [], [], 0.2)[0]:
            continue
        line = stdin.readline()
        if not line:  # the parent is gone
            os._exit(0)
        req = json.loads(line)
        pid = os.fork()
        if pid == 0:
            _child(req)
        say({"id": req["id"], "pid": pid})


def _child(req: dict) -> None:
    try:
        import ctypes

        from components.runtime.orphans import die_with_parent

        die_with_parent()  # with the helper, which dies with the flow process
        ctypes.CDLL("libc.so.6").prctl(15, f"vstar-{req['name']}"[:15].encode())  # PR_SET_NAME: `ps -o comm`
        log = os.open(req["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(log, 1)
        os.dup2(log, 2)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        sys.stdout.reconfigure(line_buffering=True)
        sys.stderr.reconfigure(line_buffering=True)
        os.chdir(req["cwd"])
        os.environ.clear()
        os.environ.update(req["env"])
        sys.argv = req["argv"]
        from components.runtime import child

        child.main(req["argv"][-3:])  # TARGET ARGS RESULT; exits the process
    except BaseException:
        import traceback

        traceback.print_exc()
    os._exit(1)


if __name__ == "__main__":
    from components.runtime import orphans

    orphans.from_env()
    _serve()
