"""Which train problems a round samples (Lee et al. 2025): one level past the longest chain the
current generator already solves greedily (pass@1 >= promote_at), plus a share one level easier.

A weak model (a pretrained checkpoint's cold start) solves no level so: then the round samples the
level it can learn from most, the one where the previous evaluation's sampled pass@k is highest (a
right sample is what the filter keeps and SFT learns from), the easiest of equals, and the easiest
level when no sample was right anywhere."""
from __future__ import annotations

import random

from components.config import RunConfig
from components.data.families import Problem


def next_difficulty(pass1: dict[int, float], promote_at: float, lo: int, hi: int,
                    pass_k: dict[int, float] | None = None) -> tuple[int, str]:
    """The round's level within [lo, hi], and why (the log says it)."""
    solved = [n for n, acc in sorted(pass1.items()) if acc >= promote_at]
    if solved:
        level = max(lo, min(hi, max(solved) + 1))
        return level, f"one past the longest chain solved at greedy pass@1 >= {promote_at:g} ({max(solved)})"
    learnable = {n: v for n, v in (pass_k or {}).items() if lo <= n <= hi and v > 0}
    if learnable:
        level = max(sorted(learnable), key=lambda n: learnable[n])  # max keeps the first (easiest) of equals
        return level, (f"no level solved at greedy pass@1 >= {promote_at:g}: level {level}, where the last "
                       f"evaluation's pass@k is highest ({learnable[level]:.0%})")
    return lo, (f"no level solved at greedy pass@1 >= {promote_at:g} and no sample right at any train level: "
                f"the easiest, {lo}")


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
