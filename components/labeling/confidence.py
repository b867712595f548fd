"""Step labels from the generator's own confidence: no rollouts, no judge, no labels (DeepConf, Fu et
al. 2025, arXiv 2508.15260, scores a trace by its lowest sliding-window token confidence; here the
window slides inside each step).

    token confidence   log P(token | everything before it) under the generator, one prefill pass
    step confidence    exp(lowest mean log-probability over `window` consecutive tokens of the step)
    threshold          the `quantile` of the round's own trace confidences (a trace's = its least
                       confident step's), over the traces with a right answer: the share of them a
                       step filter rejects is set, whatever the model's absolute calibration
    label              a step is good when its confidence clears the threshold; its score maps
                       [0, threshold, 1] piecewise-linearly onto [0, 0.5, 1], so filters and
                       aggregates read it like any other source's P(good)
"""
from __future__ import annotations

import math
from bisect import bisect_left

import numpy

from components.labeling.step_labels import StepLabels


def step_spans(completion: str, steps: list[str]) -> list[tuple[int, int] | None]:
    """Where each step lies in the completion (steps are stripped pieces of it, in order); None for a
    step not found verbatim."""
    spans, pos = [], 0
    for s in steps:
        at = completion.find(s, pos)
        if at < 0:
            spans.append(None)
            continue
        spans.append((at, at + len(s)))
        pos = at + len(s)
    return spans


def step_confidence(tokens: list[tuple[int, int, float]], spans: list[tuple[int, int] | None],
                    window: int) -> list[float | None]:
    """Per step: exp of the lowest `window`-token mean log-probability among the tokens that start
    inside it (all of them when the step is shorter); None for a step with no token or no span."""
    starts = [a for a, _, _ in tokens]  # in text order: a step's tokens are one slice, found by bisection
    out: list[float | None] = []
    for span in spans:
        inside = [] if span is None else tokens[bisect_left(starts, span[0]):bisect_left(starts, span[1])]
        lps = [lp for _, _, lp in inside]
        if not lps:
            out.append(None)
            continue
        w = min(window, len(lps))
        out.append(math.exp(min(sum(lps[i : i + w]) / w for i in range(len(lps) - w + 1))))
    return out


def threshold(confidences: list[list[float | None]], correct: list[bool], q: float) -> float:
    """The q-quantile of trace confidence (min over known steps) among right-answer traces (all
    traces when none is right)."""
    per_trace = [(min(k), ok) for c, ok in zip(confidences, correct) if (k := [x for x in c if x is not None])]
    pool = [t for t, ok in per_trace if ok] or [t for t, _ in per_trace]
    return float(numpy.quantile(pool, q)) if pool else 0.0


def labels(conf: list[float | None], tau: float) -> StepLabels:
    """Good where the step's confidence clears tau; unknown steps stay unlabelled."""
    def score(c: float) -> float:
        if c >= tau:
            return 0.5 + 0.5 * (c - tau) / (1 - tau) if tau < 1 else 1.0
        return 0.5 * c / tau

    scores = [None if c is None else score(c) for c in conf]
    hard = [None if c is None else int(c >= tau) for c in conf]
    first = next((i for i, y in enumerate(hard) if y == 0), -1)
    return StepLabels(scores, hard, first if any(y is not None for y in hard) else None)
