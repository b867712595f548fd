"""The label-source registry and how a source runs: `SOURCES` (name -> Source), the `source`
decorator that registers one, the Batch it labels and the Engines it runs on, and `label` / `measure`
/ `decide`. The sources are in components/labeling/builtin_sources.py, what a source means for the
loop in components/labeling/sources.py (which imports both, so importing it registers every source)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from components.config import RunConfig
from components.data.families import Family, Problem
from components.labeling.step_labels import StepLabels


@dataclass
class Batch:
    family: Family
    problems: list[Problem]
    completions: list[str]
    steps: list[list[str]] = field(default_factory=list)

    def __post_init__(self):
        self.steps = self.steps or [self.family.split_steps(c) for c in self.completions]

    def subset(self, idx: list[int]) -> "Batch":
        return Batch(self.family, [self.problems[i] for i in idx], [self.completions[i] for i in idx],
                     [self.steps[i] for i in idx])


class Engines:
    """What sources run on, created lazily: rollouts need the generator, `judge` a judge model,
    `prm`/`labels` the PRM, `implicit` the DPO verifier. Handed in by the score stage, which knows the URIs."""

    def __init__(self, make_generator: Callable, make_judge: Callable, make_prm: Callable, seed: int,
                 make_dpo: Callable | None = None):
        self._make = {"generator": make_generator, "judge": make_judge, "prm": make_prm, "dpo": make_dpo}
        self._made: dict = {}
        self.seed = seed

    def get(self, name: str):
        if name not in self._made:
            self._made[name] = self._make[name]()
        return self._made[name]


LabelFn = Callable[[Batch, RunConfig, Engines], tuple[list[StepLabels], dict]]


@dataclass(frozen=True)
class Source:
    fn: LabelFn
    needs: frozenset[str]  # engines it runs on: generator, judge, prm, dpo
    # The learned verifier of the round before it scores with ("prm", or "dpo": the implicit PRM): round
    # 1 (none yet) falls back to `first_round_source`; its labels are that verifier's guesses.
    uses: str = ""
    imported: bool = False  # its PRM is trained on imported human labels first (PRM_0)
    # A source whose labels need the whole round (a quantile of its traces): `fn` measures trace by
    # trace (StepLabels with raw per-step values in `scores`, no labels), `pooled(raw, correct, cfg)`
    # decides once every trace is measured. So a stage split by problem labels as the whole one does.
    pooled: Callable[[list[StepLabels], list[bool], RunConfig], tuple[list[StepLabels], dict]] | None = None

    @property
    def origin(self) -> str:
        """What a row labelled by it records: a PRM's guesses say "prm", the implicit PRM's "implicit"
        (GUESSES: no verifier trains or calibrates on them)."""
        return {"prm": "prm", "dpo": "implicit"}.get(self.uses, "")


GUESSES = frozenset({"prm", "implicit"})  # rows' label_source when a learned verifier labelled them


SOURCES: dict[str, Source] = {}


def source(name: str, needs: tuple[str, ...] = (), uses: str = "", imported: bool = False,
           pooled: Callable | None = None):
    def deco(fn: LabelFn) -> LabelFn:
        SOURCES[name] = Source(fn, frozenset(needs), uses, imported, pooled)
        return fn
    return deco


def label(name: str, batch: Batch, cfg: RunConfig, engines: Engines) -> tuple[list[StepLabels], dict]:
    """Run a source on a batch that is the whole round; every StepLabels comes back with its origin set."""
    labels, stats = measure(name, batch, cfg, engines)
    if SOURCES[name].pooled:
        correct = [batch.family.is_correct(p, c) for p, c in zip(batch.problems, batch.completions)]
        labels, pooled_stats = decide(name, labels, correct, cfg)
        stats = {**stats, **pooled_stats}
    return labels, stats


def measure(name: str, batch: Batch, cfg: RunConfig, engines: Engines) -> tuple[list[StepLabels], dict]:
    """What a source finds trace by trace, on any part of the round: labels, or a pooled source's raw
    values (`decide` turns those into labels)."""
    labels, stats = SOURCES[name].fn(batch, cfg, engines)
    return _with_origin(name, labels), stats


def decide(name: str, raw: list[StepLabels], correct: list[bool], cfg: RunConfig) -> tuple[list[StepLabels], dict]:
    """A pooled source's labels from its raw values over the whole round (`correct`: each trace's outcome)."""
    labels, stats = SOURCES[name].pooled(raw, correct, cfg)
    return _with_origin(name, labels), stats


def _with_origin(name: str, labels: list[StepLabels]) -> list[StepLabels]:
    for lab in labels:
        lab.origin = lab.origin or SOURCES[name].origin or name
    return labels
