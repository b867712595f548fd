"""Scorers: what ranks a problem's sampled solutions at evaluation, one signature.

    fn(samples, ctx) -> {score name: one score per sample}   (higher = more likely right)

A trained verifier's scorer is named by its row of the round table (components/round_table.py:
`scorer`) and runs when the round has that verifier; `confidence` runs first and `calc` last.

- `confidence`: the generator's own lowest windowed token confidence over the steps (DeepConf, Fu et
  al. 2025: -mean top-k log-probability per token), from one prefill pass: no verifier model at all;
- `prm`: the round's PRM, its step scores aggregated by min, prod, last and mean (each sample keeps
  its step scores too, for the PRM's first-error F1 and the trace report);
- `orm`: the round's outcome verifier, P(right) read at the trace's last step tag;
- `dpo`: V-STaR's verifier, DPO's implicit reward r = beta * log(pi_dpo / pi_G) against the generator it
  was trained from, r itself (`dpo`: ranked by r; as sigmoid(r), every r past ~37 was 1.0 in floats and
  tied, and r < -709 overflowed); a vote weighted by it uses sigmoid(r), the Bradley-Terry probability
  that the solution is preferred to one the reference likes as much (bestofk.LOGIT_SCORES); and the
  verifier's own likelihood per token, exp(mean log pi_dpo) (`dpo_likelihood`), for comparison;
  and, from the same passes, the implicit PRM (Yuan et al. 2024; components/models/dpo.py): each step's
  q_t, ranked by the worst step (`implicit_min`) or the mean (`implicit_mean`); the last step's q is r.
- `calc`: the family's calculator (arith, gsm8k), no model: 1 when no step's stated arithmetic is
  wrong, else 0 (as a weighted vote: the vote among the samples it passes); with a PRM also `prm_calc`,
  the PRM's min step score, 0 where the calculator finds a wrong step (a PRM with a tool).
Which of them run: `confidence` always, `calc` where the family has a calculator, the others when the
round has the model. Majority and
weighted votes are selectors over these scores (components/evaluation/bestofk.py), not verifiers.

Each verifier also records what scoring one sample costs, `ctx.flops[name]`: ~2 x params x input
tokens (a forward pass), the same rule as `generation_flops` for producing the sample; training
FLOPs (~6 x params x tokens seen) are in the PRM and ORM stages' metrics.
"""
from __future__ import annotations

import importlib
import math
from dataclasses import dataclass, field
from typing import Callable

from components import round_table
from components.config import RunConfig
from components.evaluation.bestofk import sigmoid
from components.labeling import confidence as conf
from components.artifacts import store
from components.labeling.filtering import AGGREGATES
from components.models import serving


@dataclass
class Context:
    cfg: RunConfig
    family: object
    generator: serving.Generator
    models: dict[str, str] = field(default_factory=dict)  # the round's trained verifiers: "prm", "orm", "dpo" -> URI
    flops: dict[str, float] = field(default_factory=dict)  # score name -> mean FLOPs to score one sample
    scorers: dict[str, object] = field(default_factory=dict)  # model URI -> its step scorer, loaded once

    def scorer(self, uri: str, kind: str | None = None):
        """The step scorer of the PRM (or ORM) at `uri`, loaded on first use (beam search reuses it)."""
        if uri not in self.scorers:
            self.scorers[uri] = serving.prm_scorer(self.cfg, uri, kind)
        return self.scorers[uri]


Scorer = Callable[[list[dict], Context], dict[str, list[float]]]


def _steps(samples: list[dict], ctx: Context) -> list[list[str]]:
    return [ctx.family.split_steps(s["completion"]) for s in samples]


def _mean(xs: list[int]) -> float:
    return sum(xs) / len(xs) if xs else 0.0


def generation_flops(samples: list[dict], ctx: Context) -> float:
    """Mean FLOPs to produce one sample: ~2 x the generator's params x (prompt + completion) tokens
    (counted once per context: a confidence prefill costs the same)."""
    if "generate" not in ctx.flops:
        tok = ctx.generator._tokenizer()
        lengths = [len(tok(s["prompt"] + s["completion"]).input_ids) for s in samples]
        ctx.flops["generate"] = 2.0 * ctx.generator.params * _mean(lengths)
    return ctx.flops["generate"]


def _lm_flops(model_dir, samples: list[dict]) -> float:
    """~2 x params x (prompt + completion) tokens of the causal LM at `model_dir`, per sample."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    return 2.0 * serving.param_count(model_dir) * _mean([len(tok(s["prompt"] + s["completion"]).input_ids) for s in samples])


def input_tokens(model_dir) -> Callable[[list[str], list[list[str]]], list[int]]:
    """The verifier at `model_dir`'s input length (prompt, steps and their tags) per trace it scores."""
    from transformers import AutoTokenizer

    from components.models import prm as prm_model

    fmt, tok = prm_model.load_format(model_dir), AutoTokenizer.from_pretrained(str(model_dir))
    return lambda prompts, steps: [len(tok(prm_model.format_input(p, st, fmt)).input_ids)
                                   for p, st in zip(prompts, steps)]


def _verifier_flops(model_dir, samples: list[dict], steps: list[list[str]]) -> float:
    """~2 x params x the verifier's input tokens, per sample."""
    lengths = input_tokens(model_dir)([s["prompt"] for s in samples], steps)
    return 2.0 * serving.param_count(model_dir) * _mean(lengths)


def confidence(samples: list[dict], ctx: Context) -> dict[str, list[float]]:
    window, top_k = ctx.cfg.scoring.confidence.window, ctx.cfg.scoring.confidence.top_k
    tokens = ctx.generator.token_logprobs([s["prompt"] for s in samples], [s["completion"] for s in samples],
                                          top_k=top_k)
    out = []
    for s, t, steps in zip(samples, tokens, _steps(samples, ctx)):
        per_step = [c for c in conf.step_confidence(t, conf.step_spans(s["completion"], steps), window) if c is not None]
        out.append(min(per_step) if per_step else 0.0)
    ctx.flops["confidence"] = generation_flops(samples, ctx)  # one prefill pass of what was generated
    return {"confidence": out}


def prm(samples: list[dict], ctx: Context) -> dict[str, list[float]]:
    steps = _steps(samples, ctx)
    step_scores = ctx.scorer(ctx.models["prm"]).score([s["prompt"] for s in samples], steps)
    for s, sc in zip(samples, step_scores):
        s["prm_scores"] = sc
    cost = _verifier_flops(store.fetch_folder(ctx.models["prm"]), samples, steps)
    out = {f"prm_{how}": [AGGREGATES[how](sc) if sc else 0.0 for sc in step_scores] for how in ("min", "prod", "last", "mean")}
    ctx.flops.update({name: cost for name in out})
    return out


def orm(samples: list[dict], ctx: Context) -> dict[str, list[float]]:
    steps = _steps(samples, ctx)
    scorer = ctx.scorer(ctx.models["orm"], ctx.cfg.orm.scorer)  # the PRM's model and format
    ctx.flops["orm"] = _verifier_flops(store.fetch_folder(ctx.models["orm"]), samples, steps)
    return {"orm": [sc[-1] if sc else 0.0 for sc in scorer.score([s["prompt"] for s in samples], steps)]}


def dpo(samples: list[dict], ctx: Context) -> dict[str, list[float]]:
    out = serving.dpo_verifier_scores(ctx.cfg, ctx.models["dpo"], [s["prompt"] for s in samples],
                                      [s["completion"] for s in samples], _steps(samples, ctx))
    for s, q in zip(samples, out.steps):
        s["implicit_scores"] = [sigmoid(x) for x in q]  # P(right | the first t steps), for first-error F1
    # Two forward passes of the verifier's size (the verifier, and its reference: the generator's size
    # unless it has a backbone of its own) over the solution in its own tokens; the implicit PRM's step
    # scores and the likelihood are read off the same passes.
    one = _lm_flops(store.fetch_folder(ctx.models["dpo"]), samples)
    ctx.flops.update({"dpo": 2 * one, "implicit_min": 2 * one, "implicit_mean": 2 * one, "dpo_likelihood": one})
    return dpo_scores(out.reward, out.mean_logp, out.steps)


def dpo_scores(reward: list[float], logp: list[float], steps: list[list[float]]) -> dict[str, list[float]]:
    """The DPO verifier's scores from its rewards r, mean token log-likelihoods and the implicit PRM's
    q_t per step (module docstring): `implicit_min` and `implicit_mean` rank by the worst and the mean
    step; the last step's q is r itself, `dpo`."""
    return {"dpo": [float(r) for r in reward], "dpo_likelihood": [math.exp(x) for x in logp],
            "implicit_min": [min(q) if q else 0.0 for q in steps],
            "implicit_mean": [sum(q) / len(q) if q else 0.0 for q in steps]}


def calc(samples: list[dict], ctx: Context) -> dict[str, list[float]]:
    """After the trained verifiers (`score`): the PRM's step scores are on the samples by now, when it ran."""
    for s, steps in zip(samples, _steps(samples, ctx)):
        s["calc_labels"] = ctx.family.calculator_labels(steps)
    out = {"calc": [0.0 if 0 in s["calc_labels"] else 1.0 for s in samples]}
    ctx.flops["calc"] = 0.0  # arithmetic on a few numbers: nothing next to a forward pass
    if "prm_min" in ctx.flops:
        out["prm_calc"] = [0.0 if 0 in s["calc_labels"] or not s["prm_scores"] else min(s["prm_scores"]) for s in samples]
        ctx.flops["prm_calc"] = ctx.flops["prm_min"]
    return out


def scorers(ctx: Context) -> list[Scorer]:
    """What scores this round's samples, in order: the generator's confidence, each verifier of the
    round table the round has (ctx.models), the calculator where the family has one."""
    trained = [r.scorer.split(":") for r in round_table.verifiers() if r.verifier in ctx.models and r.scorer]
    return [confidence, *(getattr(importlib.import_module(m), fn) for m, fn in trained),
            *([calc] if hasattr(ctx.family, "calculator_labels") else [])]


def score(samples: list[dict], ctx: Context) -> list[str]:
    """Every scorer that applies: each sample gets `scores` {name: score}; returns the names."""
    names: list[str] = []
    for s in samples:
        s.setdefault("scores", {})
    for fn in scorers(ctx):
        for name, values in fn(samples, ctx).items():
            for s, v in zip(samples, values):
                s["scores"][name] = v
            names.append(name)
    return names
