"""Best-of-k on one candidate pool: each held-out problem has N samples, and a selector picks one answer
out of any k of them. What is reported is the selector's accuracy averaged over *all* C(N, k) subsets,
not one random subset, so curves for k = 1, 2, 4, ..., N come from one pool and are comparable across
selectors (every selector ranks the same samples).

- A ranking selector (a verifier's score per sample): the sample at rank i (0 = best) is picked from a
  subset when it is in it and nothing ranked above it is: C(N-1-i, k-1) / C(N, k) of the subsets.
  Tied scores share their ranks' weight (ties broken uniformly at random).
- A voting selector (majority vote, or votes weighted by a verifier's score, over equivalent answers):
  every subset is enumerated when there are at most MAX_SUBSETS of them, else MAX_SUBSETS random
  subsets are averaged (unbiased, and `exact=False` says so). Tied winners share the credit.
- pass@k, the oracle ceiling (right if any of the k is): 1 - C(N-c, k) / C(N, k) (Chen et al. 2021).

Intervals are percentile bootstraps over problems; differences between two selectors are paired (the
same resampled problems for both), which is what makes a small gap measurable on a few hundred problems.
"""
from __future__ import annotations

import itertools
import math
import operator
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from components import round_table

MAX_SUBSETS = 20_000


def ks_for(n: int) -> list[int]:
    """1, 2, 4, ... up to n (n itself included)."""
    ks = [1 << i for i in range(n.bit_length()) if 1 << i <= n]
    return ks if ks[-1] == n else [*ks, n]


def pass_at_k(n: int, c: int, k: int) -> float:
    """Probability that k of n samples, c of them right, include a right one."""
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def ranked(scores: Sequence[float], correct: Sequence[bool], k: int) -> float:
    """Expected accuracy of picking the best-scored of k samples drawn without replacement."""
    n = len(scores)
    order = np.argsort(-np.asarray(scores, dtype=float), kind="stable")
    weight = np.array([math.comb(n - 1 - i, k - 1) for i in range(n)], dtype=float) / math.comb(n, k)
    s = np.asarray(scores, dtype=float)[order]
    c = np.asarray(correct, dtype=float)[order]
    total, i = 0.0, 0
    while i < n:  # a run of equal scores: each member is the pick with the run's mean weight
        j = i + 1
        while j < n and s[j] == s[i]:
            j += 1
        total += weight[i:j].mean() * c[i:j].sum()
        i = j
    return float(total)


def voted(groups: Sequence[int], weights: Sequence[float], correct: Sequence[bool], k: int,
          rng: np.random.Generator | None = None, max_subsets: int = MAX_SUBSETS) -> tuple[float, bool]:
    """Expected accuracy of the answer with the largest total weight among k samples, and whether it is
    exact. `groups[i]`: sample i's answer class (-1: no answer, never a candidate); a class is right when
    its samples are."""
    n = len(groups)
    g = np.asarray(groups)
    classes = sorted(set(g[g >= 0].tolist()))
    if not classes:
        return 0.0, True
    member = np.zeros((n, len(classes)))
    for j, cl in enumerate(classes):
        member[g == cl, j] = 1.0
    w = member * np.asarray(weights, dtype=float)[:, None]  # [sample, class]
    right = np.array([bool(np.asarray(correct)[g == cl].any()) for cl in classes], dtype=float)
    exact = math.comb(n, k) <= max_subsets
    if exact:
        subsets = np.array(list(itertools.combinations(range(n), k)), dtype=int).reshape(-1, k)
    else:
        rng = rng or np.random.default_rng(0)
        subsets = np.argsort(rng.random((max_subsets, n)), axis=1)[:, :k]
    credit = 0.0
    for at in range(0, len(subsets), 2_000):  # in blocks: [subsets, k, classes] floats stay small
        block = subsets[at:at + 2_000]
        present = member[block].sum(axis=1) > 0
        totals = np.where(present, w[block].sum(axis=1), -np.inf)  # [subset, class]
        winners = present & (totals == totals.max(axis=1, keepdims=True))
        credit += float(((winners * right).sum(axis=1) / np.maximum(winners.sum(axis=1), 1)).sum())
    return credit / len(subsets), exact


def answer_groups(answers: Sequence[str | None], same: Callable[[str, str], bool] = operator.eq) -> list[int]:
    """Class ids of equivalent answers (the family's equivalence), -1 for no answer."""
    reps: list[str] = []
    out = []
    for a in answers:
        if a is None:
            out.append(-1)
            continue
        j = next((i for i, r in enumerate(reps) if same(r, a)), None)
        if j is None:
            reps.append(a)
            j = len(reps) - 1
        out.append(j)
    return out


@dataclass(frozen=True)
class Selector:
    """How one answer is chosen from k samples: by the highest `rank` score, or by the largest total
    `vote` weight over equivalent answers."""
    name: str
    rank: Callable[[dict], float] | None = None
    vote: Callable[[dict], float] | None = None


LOGIT_SCORES = ("dpo", "implicit_min", "implicit_mean")  # scores that are rewards on the real line: a vote weighs them by their sigmoid


def sigmoid(x: float) -> float:
    """1 / (1 + e^-x) without overflow for any float x."""
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)
    return z / (1.0 + z)


def vote_weight(verifier: str) -> Callable[[float], float]:
    return sigmoid if verifier in LOGIT_SCORES else (lambda x: max(x, 0.0))


def selectors(verifiers: Sequence[str]) -> list[Selector]:
    """Majority vote, and for each verifier whose trace score the samples carry (`s["scores"][v]`):
    ranking by it and votes weighted by it (a probability as it is, a reward by its sigmoid)."""
    out = [Selector("vote", vote=lambda s: 1.0)]
    for v in verifiers:
        w = vote_weight(v)
        out.append(Selector(v, rank=lambda s, v=v: s["scores"][v]))
        out.append(Selector(f"weighted_vote/{v}", vote=lambda s, v=v, w=w: w(s["scores"][v])))
    return out


def per_problem(pools: Sequence[Sequence[dict]], chosen: Sequence[Selector], ks: Sequence[int],
                same: Callable[[str, str], bool] = operator.eq, seed: int = 0) -> tuple[dict, bool]:
    """{(selector, k): accuracy per problem} for every selector, plus `pass@k` and `random` (any one
    sample); and whether every value is exact. Each pool is one problem's N samples (answer, correct)."""
    rng = np.random.default_rng(seed)
    out: dict[tuple[str, int], np.ndarray] = {}
    exact = True
    for k in ks:
        out[("pass_at_k", k)] = np.array([pass_at_k(len(p), sum(s["correct"] for s in p), k) for p in pools])
        out[("random", k)] = np.array([np.mean([s["correct"] for s in p]) for p in pools])
    groups = [answer_groups([s["answer"] for s in p], same) for p in pools]
    for sel in chosen:
        for k in ks:
            vals = []
            for p, g in zip(pools, groups):
                correct = [bool(s["correct"]) for s in p]
                if sel.rank is not None:
                    vals.append(ranked([sel.rank(s) for s in p], correct, k))
                else:
                    v, ok = voted(g, [sel.vote(s) for s in p], correct, k, rng)
                    exact &= ok
                    vals.append(v)
            out[(sel.name, k)] = np.array(vals)
    return out, exact


def bootstrap(values: dict, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> dict:
    """{key: (mean, low, high)}: percentile intervals over problems, the same resamples for every key."""
    keys = list(values)
    if not keys:
        return {}
    n = len(values[keys[0]])
    idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    lo, hi = (1 - level) / 2 * 100, (1 + level) / 2 * 100
    out = {}
    for key in keys:
        v = np.asarray(values[key], dtype=float)
        means = v[idx].mean(axis=1)
        out[key] = (float(v.mean()), float(np.percentile(means, lo)), float(np.percentile(means, hi)))
    return out


def paired_difference(a: np.ndarray, b: np.ndarray, n_boot: int = 1000, seed: int = 0) -> tuple[float, float, float]:
    """Mean of a - b over problems with its bootstrap interval (paired: one resample for both)."""
    return bootstrap({"d": np.asarray(a, dtype=float) - np.asarray(b, dtype=float)}, n_boot, seed)["d"]


def curve_metrics(pools: Sequence[Sequence[dict]], verifiers: Sequence[str], same=operator.eq, seed: int = 0,
                  n_boot: int = 1000, flops: dict[str, float] | None = None) -> tuple[dict[str, float], dict]:
    """MLflow-ready metrics `bok/<selector>/k<k>` (with `/lo`, `/hi`: 95% bootstrap interval) for
    k = 1, 2, 4, ..., N, paired differences `bok_diff/<a>-<b>/k<N>` of each verifier against the vote
    and between the headline verifiers (components/round_table.py: selectors), and the table as JSON (for the manifest and the plot).
    `flops`: mean FLOPs per sample to generate it ("generate") and to score it (per verifier score),
    logged as `cost/...` and kept in the table for the accuracy-against-compute plot.
    N is the largest pool: a problem with fewer samples (a quarantined or lost sample) is left out and
    counted (`bok_short_pools`), not cut to the shortest pool's size with all the others. The paired
    intervals are 95% each, not jointly: of m of them about 0.05 m exclude 0 by chance
    (`bok_diff_intervals` says how many were computed)."""
    n = max((len(p) for p in pools), default=0)
    short = sum(len(p) < n for p in pools)
    pools = [list(p) for p in pools if n and len(p) == n]
    metrics: dict[str, float] = {"bok_problems": len(pools), "bok_pool": n, "bok_short_pools": short}
    table: dict = {"ks": [], "problems": len(pools), "pool": n, "short_pools": short, "exact": True, "selectors": {},
                   "differences": {}, "flops": dict(flops or {})}
    if not pools:  # nothing sampled: no curve to draw
        return metrics, table
    ks = table["ks"] = ks_for(n)
    values, exact = per_problem(pools, selectors(verifiers), ks, same, seed)
    ci = bootstrap(values, n_boot, seed)
    metrics["bok_exact"], table["exact"] = float(exact), exact
    for name, f in (flops or {}).items():
        metrics["cost/generate_flops_per_sample" if name == "generate" else f"cost/{name}/score_flops_per_sample"] = f
    for (name, k), (mean, lo, hi) in ci.items():
        metrics.update({f"bok/{name}/k{k}": mean, f"bok/{name}/k{k}/lo": lo, f"bok/{name}/k{k}/hi": hi})
        table["selectors"].setdefault(name, {})[k] = [mean, lo, hi]
    # Each verifier against the vote, and the headline verifiers against each other (PRM - ORM first).
    headline = [v for v in round_table.selectors() if v in verifiers]
    pairs = [(v, "vote") for v in verifiers] + list(itertools.combinations(headline, 2))
    for a, b in pairs:
        mean, lo, hi = paired_difference(values[(a, n)], values[(b, n)], n_boot, seed)
        metrics.update({f"bok_diff/{a}-{b}/k{n}": mean, f"bok_diff/{a}-{b}/k{n}/lo": lo,
                        f"bok_diff/{a}-{b}/k{n}/hi": hi})
        table["differences"][f"{a}-{b}"] = [mean, lo, hi]
    metrics["bok_diff_intervals"] = len(pairs)
    return metrics, table


def sample_flops(table: dict, selector: str) -> float | None:
    """FLOPs one sample costs a selector: generating it, plus scoring it by the verifier it uses."""
    f = table.get("flops") or {}
    if "generate" not in f:
        return None
    verifier = selector.split("/", 1)[1] if selector.startswith("weighted_vote/") else selector
    return f["generate"] + f.get(verifier, 0.0)


def plot(table: dict, path, title: str = ""):
    """Accuracy against k per selector, with its interval as a band, and (when the table has the FLOPs)
    against the inference compute per problem: k x (generating + scoring one sample). PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = table["ks"]
    with_cost = sample_flops(table, "vote") is not None
    fig, axes = plt.subplots(1, 2 if with_cost else 1, figsize=(13 if with_cost else 7, 4.5), squeeze=False)
    for name, by_k in table["selectors"].items():
        if name.startswith("weighted_vote/"):
            continue  # one line per verifier (ranked), plus vote and the references: readable
        ys = [by_k[k] if k in by_k else by_k[str(k)] for k in ks]
        style = {"linestyle": "--", "color": "grey"} if name in ("pass_at_k", "random") else {}
        xs = [ks] + ([[k * sample_flops(table, name) for k in ks]] if with_cost else [])
        for ax, x in zip(axes[0], xs):
            ax.plot(x, [100 * y[0] for y in ys], marker="o", label=name, **style)
            ax.fill_between(x, [100 * y[1] for y in ys], [100 * y[2] for y in ys], alpha=0.15,
                            **({"color": "grey"} if style else {}))
    ax = axes[0][0]
    ax.set(xscale="log", xlabel="k (samples per problem the selector sees)", ylabel="accuracy (%)",
           title=title or f"best-of-k on {table['problems']} held-out problems, pool of {table['pool']}", ylim=(0, 102))
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.legend(fontsize=8)
    if with_cost:
        axes[0][1].set(xscale="log", xlabel="inference FLOPs per problem (k x (generate + score one sample))",
                       ylabel="accuracy (%)", title="at equal compute", ylim=(0, 102))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def at_k(table: dict, selector: str, k: float) -> float:
    """A selector's accuracy at a fractional k (equal compute), interpolated linearly in log k between
    the measured ks; below k = 1 it is the k = 1 value. Past the pool's N it is not measured: ValueError
    (clamping to N would report best-of-N as the accuracy at a larger budget)."""
    ks = table["ks"]
    by_k = table["selectors"][selector]
    acc = [(by_k[k_] if k_ in by_k else by_k[str(k_)])[0] for k_ in ks]
    if k > ks[-1]:
        raise ValueError(f"k = {k:.2f} is past the pool of N = {ks[-1]} samples: best-of-k is not measured there")
    k = max(k, ks[0])
    for (k0, a0), (k1, a1) in zip(zip(ks, acc), zip(ks[1:], acc[1:])):
        if k <= k1:
            t = 0.0 if k1 == k0 else (math.log(k) - math.log(k0)) / (math.log(k1) - math.log(k0))
            return a0 + t * (a1 - a0)
    return acc[-1]
