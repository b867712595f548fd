"""The stages of the loop, one module each, read top to bottom like a recipe over components.

A stage module is a `StageModule`: a typed entry point `run(cfg: RunConfig, out_uri: str, ...) -> dict`
(metrics) that publishes one artifact at `out_uri` (manifest last), and a `STAGE` saying how it runs:
whether it wants an accelerator, runs isolated in a child process (components/runtime/isolation.py),
splits by problem (then it is a `ShardableStage`, with a `merge`) or trains data-parallel. Its name,
what it publishes and the URIs it reads are its row of the round table (components/round_table.py),
which `Stage.of` reads. Prefect tasks import the module of the stage they run (tasks/common.py:
run_stage); tests call `run` directly.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from components import round_table


@dataclass(frozen=True)
class Stage:
    name: str  # the Prefect task's name (round_table: Row.name)
    publishes: str  # the artifact it publishes (round_table: Row.artifact)
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

    @classmethod
    def of(cls, module: str, **how) -> Stage:
        """The STAGE of the stage module `module`: its name and artifact from its round-table row."""
        row = round_table.by_module(module)
        return cls(row.name, row.artifact, **how)

    @property
    def metrics_prefix(self) -> str:
        return f"{self.metrics or self.name}/"

    @property
    def tags(self) -> list[str]:
        return ["gpu"] if self.accelerator else []


@runtime_checkable
class StageModule(Protocol):
    """What tasks/common.run_stage runs: a module with these two names."""
    STAGE: Stage

    def run(self, cfg, out_uri: str, **inputs) -> dict: ...


@runtime_checkable
class ShardableStage(StageModule, Protocol):
    """A stage that splits by problem (STAGE.shardable): `run(..., shard=(i, n))` publishes a part,
    `merge` publishes the artifact from the parts (components/artifacts/shards.gathered reads them)."""

    def merge(self, cfg, out_uri: str, parts: list[str], seconds: float = 0.0, **inputs) -> dict: ...


def refusal(cfg, stage: StageModule, manifest: dict, inputs: dict, stale_reused: bool) -> str | None:
    """Why a published output (a whole stage's, or a shard's part) may not be reused, or None when it
    may: the config asks to recompute the stage; it was made by other code (reused only where
    `stale_reused`: a whole stage reuses stale output, warning, unless `recompute` names `stale`; a
    part left by a crashed run never does); or an input changed since (by digest, not by URI: a loop
    copied to another store is still current)."""
    from components.artifacts import code_version

    name, module = stage.STAGE.name, stage.__name__
    if name in cfg.recompute:
        return "asked to (recompute)"
    if code_version.is_stale(manifest, module) and not (stale_reused and "stale" not in cfg.recompute):
        made, here = (manifest.get("code") or {}).get("hash"), code_version.code_version(module)["hash"]
        return f"made by other code ({made}; this checkout: {here})" + (" and recompute names `stale`" if stale_reused else "")
    changed = changed_inputs(manifest.get("inputs"), inputs)
    return f"its inputs changed since ({', '.join(changed)})" if changed else None


def changed_inputs(recorded: dict | None, inputs: dict) -> list[str]:
    """The inputs whose content differs from what the output was made from (none when it does not say)."""
    if recorded is None:
        return []
    made_from = sorted(map(str, recorded.values()))
    if made_from == sorted(map(str, inputs.values())):
        return []
    return sorted(u for u, d in inputs.items() if str(d) not in made_from) or sorted(inputs) or ["(its inputs)"]
