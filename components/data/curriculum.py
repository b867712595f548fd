"""Which train problems a round samples (Lee et al. 2025): one level past the longest chain the
current generator already solves greedily (pass@1 >= promote_at), plus a share one level easier."""
from __future__ import annotations

import random

from components.config import RunConfig
from components.data.families import Problem


def next_difficulty(pass1: dict[int, float], promote_at: float, lo: int, hi: int) -> int:
    """One level past the longest chain already solved at `promote_at`, within [lo, hi]."""
    solved = [n for n, acc in sorted(pass1.items()) if acc >= promote_at]
    return max(lo, min(hi, (max(solved) if solved else lo - 1) + 1))


def round_problems(cfg: RunConfig, fam, target: int | None, round_idx: int) -> list[Problem]:
    """The train problems round `round_idx` samples: the target level plus a share one easier
    (every train problem when the curriculum is off)."""
    pool = fam.problems("train")
    if not cfg.curriculum.enabled or target is None:
        return pool
    rng = random.Random(f"{cfg.seed}/round-{round_idx}")
    c = cfg.curriculum
    n_easy = int(c.problems * c.easier_share)
    at = [p for p in pool if p.difficulty == target]
    easier = [p for p in pool if p.difficulty == target - 1]
    return rng.sample(at, min(c.problems - n_easy, len(at))) + rng.sample(easier, min(n_easy, len(easier)))
