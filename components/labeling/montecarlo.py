"""Monte Carlo step labels: per step (Math-Shepherd) or by binary search for the first error (OmegaPRM).

Per step (`estimate`, Wang et al. 2024, arXiv 2312.08935): from the prefix that ends at step i, sample
N completions and check their final answers: soft score = fraction that reach the gold answer, hard
label = 1 if any does. The answer line needs no rollouts: its prefix is the whole trace, so its score
is the outcome itself. Cost: one estimate per step.

Binary search (`estimate_binary`, Luo et al. 2024, arXiv 2406.06592): hard labels are monotone if a
prefix that no rollout can rescue stays hopeless when steps are added, so the first error is the first
prefix with 0 successes, found by bisection in O(log steps) estimates. All traces advance one bisection
level per engine call, so the engine batches them and prefix-caches what they share.

Shared by both: each distinct prefix is estimated once (`share_prefixes`) and the estimate serves every
trace that has it, across bisection levels too.
"""
from __future__ import annotations

from dataclasses import dataclass

from components.config_scoring import MCConfig
from components.data.families import Family, Problem
from components.models.generation import Backend, Sampling

# Seed offset between early-stop chunks: a chunk must not redraw the samples of the one before
# (seeds are per prompt, so the same prefix with the same seed gives the same rollouts).
CHUNK_SEED_STRIDE = 1_000_003


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


class Rollouts:
    """MC estimates per prefix key, [hits, samples], filled a batch of keys per engine call.

    A key is the prefix text when prefixes are shared, else (trace index, prefix text): unshared
    traces pay for their own estimates even when the text is the same. With `reuse`, a candidate's
    own completion (`add_free`) is a free sample from each of its step prefixes (sampling is autoregressive, so
    its continuation after a prefix is a draw from that prefix). A key with a free success needs no rollouts.
    """

    def __init__(self, family: Family, backend: Backend, cfg: MCConfig, max_tokens: int, seed: int,
                 reuse: bool = False, chunk: int = 0):
        self.family, self.backend, self.cfg, self.max_tokens, self.seed = family, backend, cfg, max_tokens, seed
        # With reuse, the own completion is one of the N samples of each estimate it reaches, so N-1 are drawn.
        self.per_estimate = cfg.rollouts - reuse
        self.chunk = chunk  # > 0: draw this many at a time and stop at the first success
        self.est: dict = {}  # key -> [hits, samples]
        self.done: set = set()  # keys whose estimate is final
        self.stats = {"mc_estimates": 0, "mc_rollouts": 0, "mc_rollout_tokens": 0, "mc_engine_calls": 0}

    def key(self, trace: int, prefix: str):
        return prefix if self.cfg.share_prefixes else (trace, prefix)

    def add_free(self, trace: int, p: Problem, completion: str) -> None:
        """Count a generated completion as one sample from each of its step prefixes."""
        hit = self.family.is_correct(p, completion)
        for _, prefix in prefixes_needing_rollouts(self.family, p, completion):
            e = self.est.setdefault(self.key(trace, prefix), [0, 0])
            e[0] += hit
            e[1] += 1

    def hits(self, key) -> int:
        return self.est[key][0]

    def score(self, key) -> float:
        hits, n = self.est[key]
        return hits / n

    def fill(self, wanted: dict) -> None:
        """Finish the estimate of every key in `wanted` (key -> (problem, prefix text))."""
        todo = {k: v for k, v in wanted.items()
                if k not in self.done and self.est.get(k, (0, 0))[0] == 0 and self.per_estimate > 0}
        self.stats["mc_estimates"] += len(todo)
        left, chunk_idx = self.per_estimate, 0
        while todo and left > 0:
            n = min(self.chunk or left, left)
            self._draw(todo, n, self.seed + CHUNK_SEED_STRIDE * chunk_idx)
            left, chunk_idx = left - n, chunk_idx + 1
            # Early stop: a prefix with a success is recoverable, more rollouts can't change its hard label.
            todo = {k: v for k, v in todo.items() if self.est[k][0] == 0} if self.chunk else {}
        self.done.update(wanted)

    def _draw(self, todo: dict, n: int, seed: int) -> None:
        keys = list(todo)
        # Rollouts continue after the prefix text; the joined text (steps so far + rollout) is judged.
        outs = self.backend.generate([todo[k][1] for k in keys], Sampling(
            n=n, temperature=self.cfg.temperature, max_tokens=self.max_tokens, seed=seed))
        for k, samples in zip(keys, outs):
            p, prefix = todo[k]
            so_far = prefix[len(p.prompt):]
            e = self.est.setdefault(k, [0, 0])
            e[0] += sum(self.family.is_correct(p, so_far + s.text) for s in samples)
            e[1] += len(samples)
            self.stats["mc_rollouts"] += len(samples)
            self.stats["mc_rollout_tokens"] += sum(len(s.token_ids) for s in samples)
        self.stats["mc_engine_calls"] += 1


def estimate(family: Family, backend: Backend, items: list[tuple[Problem, str]], cfg: MCConfig,
             max_tokens: int, seed: int) -> tuple[list[MCResult], dict]:
    """Score every step of every (problem, completion) with N fresh rollouts; returns results and call counts.
    `reuse_completion` is not used here: per-step soft scores stay plain N-rollout fractions."""
    ro = Rollouts(family, backend, cfg, max_tokens, seed)
    needs, wanted = [], {}  # per trace: step -> key; key -> (problem, prefix)
    for t, (p, c) in enumerate(items):
        need = {}
        for i, prefix in prefixes_needing_rollouts(family, p, c):
            need[i] = ro.key(t, prefix)
            wanted[need[i]] = (p, prefix)
        needs.append(need)
    ro.fill(wanted)  # every prefix at once: one engine call

    results = []
    for (p, completion), need in zip(items, needs):
        scores = [ro.score(need[i]) if i in need else float(family.is_correct(p, completion))
                  for i in range(len(family.split_steps(completion)))]
        hard = [int(s > 0) for s in scores]
        results.append(MCResult(scores, hard, next((i for i, h in enumerate(hard) if not h), -1)))
    stats = {**ro.stats, "mc_prefixes": len(wanted), "mc_step_refs": sum(len(n) for n in needs),
             "mc_traces": len(items)}
    return results, stats


def estimate_binary(family: Family, backend: Backend, items: list[tuple[Problem, str]], cfg: MCConfig,
                    max_tokens: int, seed: int) -> tuple[list[MCResult], dict]:
    """Hard MC labels by binary search for the first step whose prefix no rollout rescues.

    Same MCResult semantics as `estimate`: hard = 1 before first_error, 0 from it on. Scores are the
    hard labels too: the search estimates only the prefixes it probes, so fractions there beside 1.0
    and 0.0 at every step it skipped would hand a soft-target PRM (`prm.soft`) targets of two kinds.

    With `reuse_completion`, the candidate's own completion is one rollout from each of its prefixes:
    a correct trace is a success from every prefix (first_error = -1, no rollouts at all), an incorrect
    one a failure, so N-1 rollouts are drawn per estimate. With `share_prefixes` too, this holds across
    the candidates of a problem: a prefix of any correct candidate is known recoverable. (Rollouts
    could count the same way for the deeper prefixes they pass through; with 4-6 steps bisection
    never asked for those, measured: no saving, so they don't.)
    Caveat, as for per-step hard MC: a wrong step that a later op absorbs (arith's %10, max, *0) still
    reaches the gold answer, so it is labelled fine; a correct answer after a wrong step gets -1.
    """
    ro = Rollouts(family, backend, cfg, max_tokens, seed, cfg.reuse_completion, cfg.early_stop_chunk)
    traces = []  # per trace: steps, rollout prefixes, search bounds
    for t, (p, completion) in enumerate(items):
        steps = family.split_steps(completion)
        prefixes = dict(prefixes_needing_rollouts(family, p, completion))
        correct = family.is_correct(p, completion)
        if cfg.reuse_completion:
            ro.add_free(t, p, completion)
        # Search [lo, hi) for the first hopeless step; hi = len(steps) stands for "none". An answer
        # line needs no rollouts (its label is the outcome): a wrong one is a known hopeless step.
        answer_at = len(prefixes) if len(prefixes) < len(steps) else None
        hi = answer_at if answer_at is not None and not correct else len(steps)
        traces.append({"p": p, "steps": steps, "prefixes": prefixes, "correct": correct,
                       "answer_at": answer_at, "lo": 0, "hi": hi})

    levels = 0
    while True:
        wanted = {}  # this level's probes, all traces at once: one engine call (per early-stop chunk)
        for t, tr in enumerate(traces):
            mid = _next_probe(tr)
            if mid is not None:
                wanted[ro.key(t, tr["prefixes"][mid])] = (tr["p"], tr["prefixes"][mid])
        if not wanted:
            break
        ro.fill(wanted)
        levels += 1
        for t, tr in enumerate(traces):
            if tr["lo"] < tr["hi"]:
                mid = (tr["lo"] + tr["hi"]) // 2
                k = ro.key(t, tr["prefixes"][mid])
                _settle(tr, mid, ro.hits(k) > 0)

    results = []
    for tr in traces:
        b, n = tr["lo"], len(tr["steps"])
        hard = [int(i < b) for i in range(n)]
        results.append(MCResult([float(h) for h in hard], hard, -1 if b == n else b))
    stats = {**ro.stats, "mc_traces": len(items), "mc_levels": levels}
    return results, stats


def _next_probe(tr: dict) -> int | None:
    """The step whose prefix the trace's search needs estimated next, None when the search is over.
    A probe of the answer line is settled on the spot: its label is the outcome."""
    while tr["lo"] < tr["hi"]:
        mid = (tr["lo"] + tr["hi"]) // 2
        if mid != tr["answer_at"]:
            return mid
        _settle(tr, mid, tr["correct"])
    return None


def _settle(tr: dict, mid: int, recoverable: bool) -> None:
    if recoverable:
        tr["lo"] = mid + 1  # the first error is after mid
    else:
        tr["hi"] = mid
