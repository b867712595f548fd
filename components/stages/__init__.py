"""The stages of the loop, one module each, read top to bottom like a recipe over components.

Every stage module has a typed entry point `run(cfg: RunConfig, out_uri: str, ...) -> dict` (metrics)
that publishes one artifact at `out_uri` (manifest last), and a `STAGE` declaring what it reads, what
it publishes (names in components/artifacts/layout.py), whether it wants an accelerator and whether it
runs isolated in a child process (components/runtime/isolation.py). Prefect tasks import the module of
the stage they run (tasks/common.py: run_stage); tests call `run` directly.
"""
from __future__ import annotations

from dataclasses import dataclass

# Every stage's name (its STAGE.name), in the order a loop first runs them: what `recompute` may name.
NAMES = ("prepare-data", "bootstrap", "train-judge", "import-labels", "generate", "score", "filter", "sft",
         "train-prm", "train-orm", "train-dpo", "evaluate", "trace-report")


@dataclass(frozen=True)
class Stage:
    name: str  # the Prefect task's name
    reads: tuple[str, ...]  # store artifacts (layout names) it reads
    publishes: str  # the artifact it publishes
    accelerator: bool = False  # generation, scoring, training: one at a time per GPU ("gpu" tag)
    isolated: bool = False  # heavy: runs in its own child process
    # splits its work by problem (`run(..., shard=(i, n))`) and puts the parts together (`merge`)
    # when `execution.shards` > 1 (components/artifacts/shards.py, tasks/shards.py)
    shardable: bool = False
    # trains through transformers' Trainer / TRL: runs data-parallel in `execution.train_processes`
    # processes (torchrun) when that is > 1 (components/runtime/isolation.py)
    data_parallel: bool = False
    metrics: str = ""  # prefix of its MLflow metrics (default: name); kept stable so rounds stay comparable
    summary: tuple[str, ...] = ()  # its one console line: format strings over its metrics (progress.summary)

    @property
    def metrics_prefix(self) -> str:
        return f"{self.metrics or self.name}/"

    @property
    def tags(self) -> list[str]:
        return ["gpu"] if self.accelerator else []

