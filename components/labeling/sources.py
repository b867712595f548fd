"""Step label sources behind one registry and one signature: `fn(batch, cfg, engines) -> (labels, stats)`,
and everything a source *means* beside it: what it needs, what a row labelled by it records as its
origin, what round 1 uses when it needs a PRM that does not exist yet, and combinations.

    gold        the family's own step check (exact for `arith`; partial rules for gsm8k; none elsewhere)
    mc          Monte Carlo rollouts from every step (Math-Shepherd)
    mc_binary   binary search for the first step no rollout recovers from (OmegaPRM)
    confidence  the generator's own lowest windowed token confidence inside each step (DeepConf)
    judge       an LLM judge names the first wrong step (ProcessBench protocol), local or remote
    consensus   MC and the judge, a trace's labels kept only where both name the same first error
                (Zhang et al. 2025); elsewhere it is unlabelled: never kept, never trained on
    prm         the previous round's PRM
    labels      a PRM trained on imported human labels (PRM_0; later rounds add the loop's own)
    prm+mc      the PRM, and Monte Carlo where the PRM is unsure (`scoring.prm_unsure`)
    implicit    the previous round's DPO verifier as an implicit PRM (Yuan et al. 2024), at the step
                threshold its training calibrated: process labels from outcome labels alone
    calc        the family's calculator: the arithmetic each step states, recomputed from the trace
                alone (`scoring.calculator` applies the same check on top of any source: `overrule`)

The registry and how a source runs are in components/labeling/source_registry.py; the sources themselves
in components/labeling/builtin_sources.py, registered when this module is imported. Engines (generator for rollouts, judge, PRM, DPO verifier) start on first use,
once per stage.
"""
from __future__ import annotations

from components.config import RunConfig
from components.labeling import builtin_sources  # noqa: F401  (registers the sources)
from components.labeling.source_registry import (GUESSES, SOURCES, Batch, Engines, Source, decide,  # noqa: F401
                                                 label, measure, source)
from components.labeling.step_labels import StepLabels, first_error_of


# How a source's stats add up over the parts of a round (a stage split by problem): counts add (the
# default), these do not. A ratio is recomputed from its counts; None (e.g. judge_tokens of a remote
# judge that does not count) stays None.
MAX_STATS = frozenset({"mc_levels", "prm_threshold", "implicit_threshold"})  # the same in every part, or a maximum
RATIO_STATS = {"consensus_step_agreement": ("consensus_steps_agreeing", "consensus_steps_compared")}


def add_stats(parts: list[dict]) -> dict:
    """The stats of a round labelled in parts (keys may carry a prefix, e.g. `audit_` or `mc/`)."""
    out: dict = {}
    ratios = []
    for key in dict.fromkeys(k for p in parts for k in p):
        base = key.rsplit("/", 1)[-1].removeprefix("audit_")
        if base in RATIO_STATS:
            ratios.append((key, base))
            continue
        values = [p[key] for p in parts if key in p]
        out[key] = (None if any(v is None for v in values) else
                    max(values) if base in MAX_STATS else sum(values))
    for key, base in ratios:  # from the counts added up above, under the same prefix
        num, den = (key[: len(key) - len(base)] + c for c in RATIO_STATS[base])
        out[key] = out[num] / out[den] if out.get(den) else 0.0
    return out


# --------------------------------------------------------------------------------------- policy

def check_name(name: str, standalone: bool = False) -> str:
    """Config validation: a registered source; `standalone` ones run without a PRM (round 1, `also`)."""
    if name not in SOURCES:
        raise ValueError(f"unknown label source {name!r}; known: {', '.join(sorted(SOURCES))}")
    if standalone and SOURCES[name].uses:
        ok = sorted(k for k, s in SOURCES.items() if not s.uses)
        raise ValueError(f"{name!r} needs a verifier trained in an earlier round; use one of {', '.join(ok)}")
    return name


def in_use(cfg: RunConfig) -> list[str]:
    return [cfg.scoring.label_source, *cfg.scoring.also]


def needs_judge(cfg: RunConfig) -> bool:
    return any("judge" in SOURCES[s].needs for s in in_use(cfg))


def prm0_from_imports(cfg: RunConfig) -> bool:
    """Round 0 trains a PRM on the imported human labels alone (the `labels` source)."""
    return SOURCES[cfg.scoring.label_source].imported


def for_round(cfg: RunConfig, verifiers: set[str]) -> str:
    """The source a round actually labels with: one that needs a verifier of an earlier round falls
    back while none exists (`verifiers`: those published, "prm", "dpo")."""
    name = cfg.scoring.label_source
    uses = SOURCES[name].uses
    return cfg.scoring.first_round_source if uses and uses not in verifiers else name


def overrule(lab: StepLabels, calc_labels: list[int | None]) -> StepLabels:
    """A source's labels with the calculator's verdict on top: from the first step whose arithmetic
    is wrong on, every step is wrong (score 0), whatever the source said; before it, the source's
    labels stand (a calculator that finds nothing wrong vouches for nothing else)."""
    err = first_error_of(calc_labels)
    if err < 0:
        return lab
    n = len(lab.labels)
    fe = err if lab.first_error is None or lab.first_error < 0 else min(lab.first_error, err)
    return StepLabels([s if i < err else 0.0 for i, s in enumerate(lab.scores[:n])],
                      [y if i < err else 0 for i, y in enumerate(lab.labels)], fe, lab.origin)

