"""A stage child's side of components/runtime/isolation.py: it reads the stage's config and arguments
(JSON), validates the config again, calls `module:function` with what it publishes stamped with its
code version and inputs (components/artifacts/code_version.py), and writes its JSON-able result for
the parent. Under torchrun only rank 0 reports progress, publishes and answers.

Apart from the parent's side because both ways of starting a child run it: a new Python
(`python -m components.runtime.child`) and a fork of the warm-start helper (components/runtime/warm.py,
which therefore imports this and not the parent's module).
"""
from __future__ import annotations

import importlib
import json
import os
import sys
from pathlib import Path

from components.artifacts import code_version
from components.config import RunConfig
from components.redact import redact
from components.runtime import orphans, progress


def _main(target: str, args_path: str, result_path: str) -> None:
    module, fn = target.split(":")
    args = json.loads(Path(args_path).read_text())
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:  # a rank under torchrun: it goes when torchrun goes (killed with the stage's parent)
        orphans.die_with_parent()
    if rank > 0:  # every rank trains; rank 0 alone reports progress, publishes and answers
        os.environ.pop(progress.ENV, None)
        from components.artifacts import store

        store.replica()
    first = [RunConfig.model_validate(args["config"])] if args["config"] is not None else []
    with code_version.stamped(module, args.get("inputs")):  # what it publishes says which code made it, from what
        out = getattr(importlib.import_module(module), fn)(*first, **args["kwargs"])
    if isinstance(out, dict):  # a stage's metrics: with this child's own peak memory
        from components.models.hardware import peak_memory

        out = {**out, **peak_memory(), **({"train_processes": world} if world > 1 else {})}
    if rank > 0:
        return
    tmp = result_path + ".tmp"
    Path(tmp).write_text(json.dumps(out))
    os.replace(tmp, result_path)


def main(argv: list[str]) -> None:
    """The child's entry (`python -m components.runtime.child TARGET ARGS RESULT`, or forked by the
    warm-start helper): runs the target and ends the process."""
    try:
        _main(*argv[:3])
    except Exception:  # the traceback goes to the stage's log file: a URI in it may carry credentials
        import traceback

        sys.stdout.flush()
        sys.stderr.write(redact(traceback.format_exc()))
        sys.stderr.flush()
        os._exit(1)
    sys.stdout.flush()
    # vLLM's in-process engine can hang interpreter shutdown on its background threads.
    os._exit(0)


if __name__ == "__main__":
    orphans.from_env()  # first: a stage must not outlive the flow process that started it
    main(sys.argv[1:4])
