"""Step labels from the generator's own confidence: no rollouts, no judge, no labels. DeepConf (Fu et
al. 2025, "Deep Think with Confidence", arXiv 2508.15260, §2; facebookresearch/deepconf) scores a
trace by its lowest group confidence; here the groups (windows) slide inside each step:

    token confidence   C_i = -(1/k) sum_{j<=k} log P_i(j), the k most likely tokens at position i
                       under the generator (k = scoring.confidence.top_k, 20 as DeepConf's code):
                       large where the model was sure of its next token, whichever it then sampled
    step confidence    the lowest mean of C_i over `window` consecutive tokens of the step (DeepConf's
                       group confidence, lowest group; all the step's tokens when it is shorter)
    threshold          the `quantile` of the round's own trace confidences (a trace's = its least
                       confident step's), over the traces with a right answer: the share of them a
                       step filter rejects is set, whatever the model's absolute calibration
    label              a step is good when its confidence clears the threshold; its score maps
                       [0, threshold, inf) monotonically onto [0, 0.5, 1), so filters and
                       aggregates read it like any other source's P(good)

One prefill pass with the top k log-probabilities of every position (vLLM's prompt_logprobs=k).
"""
from __future__ import annotations

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
    """Per step: the lowest `window`-token mean token confidence among the tokens that start inside it
    (all of them when the step is shorter); None for a step with no token or no span."""
    starts = [a for a, _, _ in tokens]  # in text order: a step's tokens are one slice, found by bisection
    out: list[float | None] = []
    for span in spans:
        inside = [] if span is None else tokens[bisect_left(starts, span[0]):bisect_left(starts, span[1])]
        cs = [c for _, _, c in inside]
        if not cs:
            out.append(None)
            continue
        w = min(window, len(cs))
        out.append(min(sum(cs[i : i + w]) / w for i in range(len(cs) - w + 1)))
    return out


def threshold(confidences: list[list[float | None]], correct: list[bool], q: float) -> float:
    """The q-quantile of trace confidence (min over known steps) among right-answer traces (all
    traces when none is right)."""
    per_trace = [(min(k), ok) for c, ok in zip(confidences, correct) if (k := [x for x in c if x is not None])]
    pool = [t for t, ok in per_trace if ok] or [t for t, _ in per_trace]
    return float(numpy.quantile(pool, q)) if pool else 0.0


def labels(conf: list[float | None], tau: float) -> StepLabels:
    """Good where the step's confidence clears tau; unknown steps stay unlabelled."""
    def score(c: float) -> float:  # confidence is >= 0 and unbounded: tau -> 0.5, towards 1 above
        if tau <= 0:
            return 1.0
        return 0.5 * c / tau if c < tau else 1.0 - 0.5 * tau / c

    scores = [None if c is None else score(c) for c in conf]
    hard = [None if c is None else int(c >= tau) for c in conf]
    first = next((i for i, y in enumerate(hard) if y == 0), -1)
    return StepLabels(scores, hard, first if any(y is not None for y in hard) else None)
