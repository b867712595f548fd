"""Per-step labels, and the two conversions every label source needs: a first-error index to step
labels, and step scores (or labels) to the first error they imply (ProcessBench conventions)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class StepLabels:
    scores: list[float | None]  # P(step good); None where the source says nothing
    labels: list[int | None]  # 1 good, 0 bad, None unknown
    first_error: int | None  # 0-based; -1 = no wrong step; None = the source could not say
    origin: str = ""  # the source that produced them (a row's `label_source`)


def from_first_error(n_steps: int, first_error: int | None) -> StepLabels:
    """Labels implied by a first-error index: good before it, bad from it on (-1: all good)."""
    if first_error is None:
        return StepLabels([None] * n_steps, [None] * n_steps, None)
    labels = [int(first_error < 0 or i < first_error) for i in range(n_steps)]
    return StepLabels([float(y) for y in labels], labels, first_error)


def first_error_of(labels: list[int | None]) -> int:
    """The first step labelled bad, or -1."""
    return next((i for i, y in enumerate(labels) if y == 0), -1)


def first_error_from_scores(scores: list[float], threshold: float = 0.5) -> int:
    """Index of the first step with P(good) < threshold, or -1 (ProcessBench's "no error")."""
    return next((i for i, s in enumerate(scores) if s < threshold), -1)


def centred(score: float, threshold: float) -> float:
    """A step score mapped monotonically so `threshold` falls at 0.5 ([0, t] -> [0, 0.5], [t, 1] ->
    [0.5, 1]): a source with its own threshold hands the filter scores it reads at 0.5 like any."""
    if score < threshold:
        return 0.5 * score / threshold
    return 1.0 if threshold >= 1 else 0.5 + 0.5 * (score - threshold) / (1 - threshold)
