"""Monte Carlo step scores (Math-Shepherd, Wang et al. 2024, arXiv 2312.08935).

From the prefix that ends at step i, sample N completions and check their final answers:
soft score = fraction that reach the gold answer, hard label = 1 if any does.
The answer line needs no rollouts: its prefix is the whole trace, so its score is the outcome itself.

Candidates of one problem often share prefixes (a tiny model's correct traces are mostly identical),
so each distinct prefix is estimated once and the estimate serves every trace that has it; all
rollouts of a round go to the engine in one call, where prefix caching reuses their shared KV.
"""
from __future__ import annotations

from dataclasses import dataclass

from components.config import MCConfig
from components.families import Family, Problem
from components.generation import Backend, Sampling


@dataclass
class MCResult:
    scores: list[float]  # soft estimate per step
    hard: list[int]  # 1 if any rollout from this step's prefix reached the gold answer
    first_error: int  # first step with hard == 0, -1 if none (the hard labeller's ProcessBench answer)


def prefixes_needing_rollouts(family: Family, p: Problem, completion: str) -> list[tuple[int, str]]:
    """(step index, prefix text) for every step except a final answer line."""
    steps = family.split_steps(completion)
    last_is_answer = bool(steps) and family.extract_answer(steps[-1]) is not None
    n = len(steps) - 1 if last_is_answer else len(steps)
    return [(i, family.prefix_text(p, steps, i)) for i in range(n)]


def estimate(family: Family, backend: Backend, items: list[tuple[Problem, str]], cfg: MCConfig,
             max_tokens: int, seed: int) -> tuple[list[MCResult], dict]:
    """Score every step of every (problem, completion); returns results and call counts."""
    wanted: dict[str, Problem] = {}
    for p, completion in items:
        for _, prefix in prefixes_needing_rollouts(family, p, completion):
            wanted.setdefault(prefix, p)
    prefixes = list(wanted)
    # Rollouts continue after the prompt: sample from the full prefix text, judge the joined text.
    outs = backend.generate(prefixes, Sampling(n=cfg.rollouts, temperature=cfg.temperature,
                                               max_tokens=max_tokens, seed=seed))
    soft: dict[str, float] = {}
    tokens = 0
    for prefix, samples in zip(prefixes, outs):
        p = wanted[prefix]
        so_far = prefix[len(p.prompt):]
        hits = sum(family.is_correct(p, so_far + s.text) for s in samples)
        soft[prefix] = hits / len(samples)
        tokens += sum(len(s.token_ids) for s in samples)

    results = []
    n_step_refs = 0
    for p, completion in items:
        steps = family.split_steps(completion)
        need = dict(prefixes_needing_rollouts(family, p, completion))
        n_step_refs += len(need)
        scores = [soft[need[i]] if i in need else float(family.is_correct(p, completion))
                  for i in range(len(steps))]
        hard = [int(s > 0) for s in scores]
        results.append(MCResult(scores, hard, next((i for i, h in enumerate(hard) if not h), -1)))
    stats = {"mc_prefixes": len(prefixes), "mc_step_refs": n_step_refs,
             "mc_rollouts": len(prefixes) * cfg.rollouts, "mc_rollout_tokens": tokens}
    return results, stats
