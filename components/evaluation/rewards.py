"""The rewards a GRPO round trains the generator on (components/stages/grpo.py), one signature:

    fn(batch, models, cfg) -> one reward per completion (higher = better)

- `outcome`: 1 if the family's answer check says the final answer is right, else 0 (R1's reward);
- `calc`: 1 if the family's calculator finds no step whose stated arithmetic is wrong, else 0;
- `prm`: round n-1's PRM, its step scores folded by `grpo.aggregate` (min / last / mean);
- `orm`: round n-1's outcome verifier, P(right) at the trace's last step tag;
- `implicit`: the implicit PRM of round n-1's DPO verifier (Yuan et al. 2024, "Free process rewards
  without process labels"): q_t = beta * sum_{i <= t} log(pi(y_i | y_<i) / pi_ref(y_i | y_<i)) over
  the tokens up to step t's end (components/models/dpo.py), as sigmoid(q_t), folded by `grpo.aggregate`.
The same models and scorers evaluation ranks samples by (components/evaluation/scorers.py).

`Rewarder` sums them with their weights (`grpo.rewards`) and keeps every completion it rewarded, so the
stage can watch for reward hacking: how the reward rose against what the exact check says.
"""
from __future__ import annotations

from typing import Callable

from components.config import RunConfig
from components.evaluation.bestofk import sigmoid
from components.labeling.filtering import AGGREGATES
from components.labeling.source_registry import Batch  # what a label source reads: the same traces
from components.models import serving


class Models:
    """Round n-1's verifiers by config section (prm, orm, dpo) -> URI; each step scorer loaded once."""

    def __init__(self, cfg: RunConfig, uris: dict[str, str]):
        self.cfg, self.uris, self._scorers = cfg, uris, {}

    def scorer(self, name: str, kind: str | None = None):
        if name not in self._scorers:
            self._scorers[name] = serving.prm_scorer(self.cfg, self.uris[name], kind)
        return self._scorers[name]


def _prompts(b: Batch) -> list[str]:
    return [p.prompt for p in b.problems]


def _fold(cfg: RunConfig, step_scores: list[list[float]]) -> list[float]:
    return [AGGREGATES[cfg.grpo.aggregate](s) if s else 0.0 for s in step_scores]


def outcome(b: Batch, models: Models, cfg: RunConfig) -> list[float]:
    return [float(b.family.is_correct(p, c)) for p, c in zip(b.problems, b.completions)]


def calc(b: Batch, models: Models, cfg: RunConfig) -> list[float]:
    return [0.0 if 0 in b.family.calculator_labels(s) else 1.0 for s in b.steps]


def prm(b: Batch, models: Models, cfg: RunConfig) -> list[float]:
    return _fold(cfg, models.scorer("prm").score(_prompts(b), b.steps))


def orm(b: Batch, models: Models, cfg: RunConfig) -> list[float]:
    return [s[-1] if s else 0.0 for s in models.scorer("orm", cfg.orm.scorer).score(_prompts(b), b.steps)]


def implicit(b: Batch, models: Models, cfg: RunConfig) -> list[float]:
    q = serving.dpo_verifier_scores(cfg, models.uris["dpo"], _prompts(b), b.completions, b.steps).steps
    return _fold(cfg, [[sigmoid(x) for x in row] for row in q])


Reward = Callable[[Batch, Models, RunConfig], list[float]]
REWARDS: dict[str, Reward] = {"outcome": outcome, "orm": orm, "prm": prm, "implicit": implicit, "calc": calc}


class Rewarder:
    """The reward GRPO trains on: sum over `cfg.grpo.rewards` of weight x reward, for TRL's reward_funcs
    signature (prompts, completions, **columns) -> list[float]. Every completion it rewarded is kept
    (`seen`) with its parts, its answer check and, where the family's step check is exact, whether a
    step is wrong: what `watch` reports."""

    __name__ = "reward"  # TRL logs a reward function by its name: rewards/reward/mean

    def __init__(self, cfg: RunConfig, family, problems: dict, verifier_uris: dict[str, str]):
        self.cfg, self.family, self.problems = cfg, family, problems  # prompt -> Problem
        self.models = Models(cfg, verifier_uris)
        self.seen: list[dict] = []

    def score(self, problems: list, completions: list[str]) -> list[dict]:
        """{reward, <each part>, right, flawed} per completion."""
        b = Batch(self.family, problems, completions)
        parts = {name: REWARDS[name](b, self.models, self.cfg) for name in self.cfg.grpo.rewards}
        exact = getattr(self.family, "exact_steps", False)
        out = []
        for i, (p, c) in enumerate(zip(problems, completions)):
            err = self.family.first_error(p, c) if exact else None
            out.append({"reward": sum(w * parts[n][i] for n, w in self.cfg.grpo.rewards.items()),
                        **{n: v[i] for n, v in parts.items()}, "right": self.family.is_correct(p, c),
                        "flawed": (err is not None and err >= 0) if exact else None, "chars": len(c)})
        return out

    def __call__(self, prompts: list[str], completions: list[str], **_) -> list[float]:
        rows = self.score([self.problems[p] for p in prompts], completions)
        self.seen += rows
        return [r["reward"] for r in rows]

    def watch(self) -> dict:
        return watch(self.seen, list(self.cfg.grpo.rewards))


def watch(rows: list[dict], parts: list[str], top: float = 0.25) -> dict:
    """What the policy's samples (`rows`, in the order rewarded) got against the truth: the reward's mean
    (over the first and last tenth of training too), each part's mean, the share right, and of the
    samples the reward ranks in its top quarter (ties in) the share the exact check calls flawed and the
    share with a wrong answer. `hacked` is 1 when the reward rose (by 0.05 or more) while the share right
    did not: the policy learned what the reward pays for, not what it stands for."""
    if not rows:
        return {}
    n, tenth = len(rows), max(1, len(rows) // 10)
    mean = lambda rs, k: sum(r[k] for r in rs) / len(rs)  # noqa: E731
    cut = sorted(r["reward"] for r in rows)[min(n - 1, int(n * (1 - top)))]
    high = [r for r in rows if r["reward"] >= cut]
    first, last = rows[:tenth], rows[-tenth:]
    out = {"samples": n, "reward_mean": mean(rows, "reward"), "reward_first": mean(first, "reward"),
           "reward_last": mean(last, "reward"), "right": mean(rows, "right"), "right_first": mean(first, "right"),
           "right_last": mean(last, "right"), "mean_chars": mean(rows, "chars"), "high_reward_wrong": 1 - mean(high, "right"),
           **{f"reward_{name}": mean(rows, name) for name in parts}}
    out["hacked"] = int(out["reward_last"] - out["reward_first"] >= 0.05 and out["right_last"] <= out["right_first"])
    if rows[0]["flawed"] is not None:
        out["high_reward_flawed"] = mean(high, "flawed")
        out["flawed"] = mean(rows, "flawed")
    return out
