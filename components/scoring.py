"""Step label sources behind one registry and one signature: `fn(batch, cfg, engines) -> (labels, stats)`.

A source gets a batch of traces (problem, completion, steps) and returns, per trace, step scores
(P(step good), None where it says nothing), hard labels and the first error it sees. Sources:

    gold        the family's own step check (exact for `arith`; partial rules for gsm8k; none elsewhere)
    mc          Monte Carlo rollouts from every step (Math-Shepherd)
    mc_binary   binary search for the first step no rollout recovers from (OmegaPRM)
    judge       an LLM judge names the first wrong step (ProcessBench protocol), local or remote
    consensus   MC and the judge, a step label kept only where both agree (Zhang et al. 2025)
    prm         the previous round's PRM; `labels` is the same with a PRM trained on imported labels

Engines (generator for rollouts, judge, PRM) start on first use, once per stage.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Callable

from components import store
from components.config import RunConfig
from components.families import Family, Problem
from components.metrics import first_error_f1


@dataclass
class StepLabels:
    scores: list[float | None]
    labels: list[int | None]
    first_error: int | None  # None: the source could not say (unparseable verdict, no rule applied)


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
    `prm`/`labels` the PRM. Handed in by the score stage, which knows the URIs."""

    def __init__(self, make_generator: Callable, make_judge: Callable, make_prm: Callable, seed: int):
        self._make = {"generator": make_generator, "judge": make_judge, "prm": make_prm}
        self._made: dict = {}
        self.seed = seed

    def get(self, name: str):
        if name not in self._made:
            self._made[name] = self._make[name]()
        return self._made[name]


SOURCES: dict[str, Callable[[Batch, RunConfig, Engines], tuple[list[StepLabels], dict]]] = {}


def source(name: str):
    def deco(fn):
        SOURCES[name] = fn
        return fn
    return deco


def from_first_error(n_steps: int, first_error: int | None) -> StepLabels:
    """Labels implied by a first-error index: good before it, bad from it on (-1: all good)."""
    if first_error is None:
        return StepLabels([None] * n_steps, [None] * n_steps, None)
    labels = [int(first_error < 0 or i < first_error) for i in range(n_steps)]
    return StepLabels([float(y) for y in labels], labels, first_error)


def first_error_of(labels: list[int | None]) -> int:
    return next((i for i, y in enumerate(labels) if y == 0), -1)


@source("gold")
def gold(batch: Batch, cfg: RunConfig, engines: Engines):
    out = []
    for p, c, steps in zip(batch.problems, batch.completions, batch.steps):
        labels = batch.family.step_labels(p, c)
        known = batch.family.first_error(p, c)
        fe = known if known is not None else (first_error_of(labels) if any(y is not None for y in labels) else None)
        out.append(StepLabels([None if y is None else float(y) for y in labels], labels, fe))
    return out, {}


def _mc(estimator):
    def run(batch: Batch, cfg: RunConfig, engines: Engines):
        results, stats = estimator(batch.family, engines.get("generator"), list(zip(batch.problems, batch.completions)),
                                   cfg.scoring.mc, cfg.generation.max_tokens, engines.seed)
        return [StepLabels(list(r.scores), list(r.hard), r.first_error) for r in results], stats
    return run


def _register_mc():
    from components import montecarlo

    source("mc")(_mc(montecarlo.estimate))
    source("mc_binary")(_mc(montecarlo.estimate_binary))


_register_mc()


@source("judge")
def judge(batch: Batch, cfg: RunConfig, engines: Engines):
    from components.judge import judge_traces

    results, stats = judge_traces(cfg.scoring.judge, engines.get("judge"),
                                  [p.prompt for p in batch.problems], batch.steps)
    return [StepLabels(list(r.scores), list(r.labels), r.first_error) for r in results], stats


@source("consensus")
def consensus(batch: Batch, cfg: RunConfig, engines: Engines):
    """MC's hard labels and the judge's, step by step: where they agree the label stands, elsewhere
    the step is left unlabelled (None) and the PRM does not train on it."""
    mc, mc_stats = SOURCES["mc"](batch, cfg, engines)
    jd, jd_stats = SOURCES["judge"](batch, cfg, engines)
    out, agree, compared = [], 0, 0
    for a, b in zip(mc, jd):
        labels = []
        for x, y in zip(a.labels, b.labels):
            if x is not None and y is not None:
                compared += 1
                agree += x == y
            labels.append(x if x is not None and x == y else None)
        fe = a.first_error if a.first_error == b.first_error else None
        out.append(StepLabels([None if y is None else float(y) for y in labels], labels, fe))
    kept = sum(y is not None for s in out for y in s.labels)
    total = sum(len(s.labels) for s in out)
    return out, {**mc_stats, **jd_stats, "consensus_step_agreement": agree / compared if compared else 0.0,
                 "consensus_steps_kept": kept, "consensus_steps_total": total,
                 "consensus_traces_agree": sum(s.first_error is not None for s in out)}


@source("prm")
def prm(batch: Batch, cfg: RunConfig, engines: Engines):
    from components.prm import first_error_from_scores

    scores = engines.get("prm").score([p.prompt for p in batch.problems], batch.steps)
    return [StepLabels(list(s), [int(x >= 0.5) for x in s], first_error_from_scores(s)) for s in scores], {}


SOURCES["labels"] = prm  # a PRM trained on imported human labels scores the traces


def run_source(name: str, batch: Batch, cfg: RunConfig, engines: Engines) -> tuple[list[StepLabels], dict]:
    if name not in SOURCES:
        raise ValueError(f"scoring.label_source: unknown source {name!r}; known: {', '.join(sorted(SOURCES))}")
    return SOURCES[name](batch, cfg, engines)


# ------------------------------------------------------------------------------ label-quality report

def quality(by_source: dict[str, list[StepLabels]], gold_first_errors: list[int | None]) -> dict[str, float]:
    """Per source: first-error F1 vs gold on traces where gold is known (and the source answered);
    per pair of sources: how often they name the same first error, and agree step by step."""
    out: dict[str, float] = {}
    by_source = {k.replace("+", "_"): v for k, v in by_source.items()}  # MLflow metric names: no "+"
    for name, labels in by_source.items():
        pairs = [(s.first_error, g) for s, g in zip(labels, gold_first_errors) if g is not None]
        answered = [(p, g) for p, g in pairs if p is not None]
        out[f"{name}/unlabelled_traces"] = float(sum(s.first_error is None for s in labels))
        if pairs:
            # An unanswered trace counts against the source: "no verdict" is not "no error".
            q = first_error_f1([p for p, _ in pairs], [g for _, g in pairs])
            out.update({f"{name}/f1": q["f1"], f"{name}/acc_erroneous": q["acc_erroneous"],
                        f"{name}/acc_correct": q["acc_correct"], f"{name}/answered": len(answered) / len(pairs)})
    for a, b in itertools.combinations(sorted(by_source), 2):
        both = [(x, y) for x, y in zip(by_source[a], by_source[b]) if x.first_error is not None and y.first_error is not None]
        steps = [(u, v) for x, y in zip(by_source[a], by_source[b]) for u, v in zip(x.labels, y.labels)
                 if u is not None and v is not None]
        if both:
            out[f"agree/{a}_vs_{b}/first_error"] = sum(x.first_error == y.first_error for x, y in both) / len(both)
        if steps:
            out[f"agree/{a}_vs_{b}/steps"] = sum(u == v for u, v in steps) / len(steps)
    return out
