"""Problem families: where problems, gold solutions and step checks come from.

A family turns a FamilyConfig into fixed problem splits and knows how to read a completion: cut it
into steps, pull out the answer, and (for verifiable families) say which step first went wrong.
Everything downstream (generation, scoring, filtering, eval) talks to this interface only.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from components.config_sections import FamilyConfig


@dataclass(frozen=True)
class Problem:
    id: str  # stable across runs and machines: derived from the prompt, not from a counter
    prompt: str
    answer: str
    difficulty: int
    meta: dict = field(hash=False)  # family-specific, JSON-serialisable; left out of the hash (dicts can't hash)


class Family(Protocol):
    """What every family provides. Constructed as `Family(cfg: FamilyConfig, seed: int)`."""

    # True where first_error is the exact truth for every trace (arith): its None then means "no first
    # error to name" (a trace cut short), not "cannot tell", and nothing may infer one from step labels.
    exact_steps: bool

    def problems(self, split: str) -> list[Problem]:
        """'bootstrap' | 'train' | 'eval': deterministic given (cfg, seed), disjoint by prompt."""
        ...

    def gold_solution(self, p: Problem) -> str:
        """The reference completion (what follows the prompt)."""
        ...

    def split_steps(self, completion: str) -> list[str]:
        """The completion's steps, in order; the answer line is the last one."""
        ...

    def extract_answer(self, completion: str) -> str | None: ...

    def is_correct(self, p: Problem, completion: str) -> bool: ...

    def same_answer(self, a: str, b: str) -> bool:
        """Whether two extracted answers are the same answer (majority vote groups by it)."""
        ...

    def first_error(self, p: Problem, completion: str) -> int | None:
        """Index in split_steps of the first wrong step, -1 if none is wrong; None where the family
        has no exact step truth (file-backed families): downstream treats None as "no gold"."""
        ...

    def step_labels(self, p: Problem, completion: str) -> list[int | None]:
        """1 per step before first_error, 0 from it on; None for a step the family cannot check
        (gsm8k checks only steps with calculator annotations)."""
        ...

    # Optional (arith, gsm8k): `calculator_labels(steps) -> list[int | None]`, the arithmetic each step
    # states, recomputed from the trace alone (no problem, no reference): 1 checks out, 0 from the first
    # step that does not on, None nothing to compute. The `calc` source and `scoring.calculator` use it.

    def prefix_text(self, p: Problem, steps: list[str], i: int) -> str:
        """Prompt plus steps[0..i]: where a Monte Carlo rollout for step i continues from."""
        ...

    def steps_text(self, steps: list[str]) -> str: ...

    def answer_end(self, completion: str) -> int | None:
        """Where the first answer line ends (after its separator), None if there is none: generation
        cuts what a model writes after its answer."""
        ...


def answer_end(completion: str, sep: str, is_answer) -> int | None:
    """End of the first step (split on `sep`) that `is_answer`, its separator included when present."""
    pos = 0
    for block in completion.split(sep):
        end = pos + len(block)
        if block.strip() and is_answer(block.strip("\n").rstrip()):
            return min(end + len(sep), len(completion))
        pos = end + len(sep)
    return None


FAMILIES: dict[str, type] = {}


def register(name: str):
    def deco(cls: type) -> type:
        FAMILIES[name] = cls
        return cls
    return deco


def get_family(cfg: FamilyConfig, seed: int = 0) -> Family:
    if cfg.name not in FAMILIES:
        raise ValueError(f"unknown problem family {cfg.name!r}; known: {', '.join(sorted(FAMILIES))}")
    return FAMILIES[cfg.name](cfg, seed)


# Imported last so the families can import Problem and register from this module.
from components.data.families import arith  # noqa: E402,F401
from components.data.families import custom, gsm8k, mathbox  # noqa: E402,F401
