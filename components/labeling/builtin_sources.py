"""The label sources themselves, each registered by name (components/labeling/source_registry.py) with
the engines it needs, as a `fn(batch, cfg, engines) -> (labels, stats)`; what each means for the loop
is in components/labeling/sources.py, which imports this module: importing it registers every source."""
from __future__ import annotations

from components.config import RunConfig
from components.labeling.source_registry import SOURCES, Batch, Engines, label, source
from components.labeling.step_labels import StepLabels, centred, first_error_from_scores, first_error_of, from_first_error
from components.evaluation.bestofk import sigmoid
from components.models import prm as prm_model


@source("gold")
def gold(batch: Batch, cfg: RunConfig, engines: Engines):
    out = []
    for p, c, steps in zip(batch.problems, batch.completions, batch.steps):
        labels = batch.family.step_labels(p, c)
        known = batch.family.first_error(p, c)
        if known is None and not batch.family.exact_steps:  # a partial check (gsm8k): infer from what it checked
            known = first_error_of(labels) if any(y is not None for y in labels) else None
        fe = known
        out.append(StepLabels([None if y is None else float(y) for y in labels], labels, fe))
    return out, {}


@source("calc")
def calc(batch: Batch, cfg: RunConfig, engines: Engines):
    """Steps with nothing to compute stay unlabelled; a trace with none to compute is unchecked (None)."""
    out = []
    for steps in batch.steps:
        labels = batch.family.calculator_labels(steps)
        checked = any(y is not None for y in labels)
        out.append(StepLabels([None if y is None else float(y) for y in labels], labels,
                              first_error_of(labels) if checked else None))
    return out, {"calc_steps_checked": sum(y is not None for s in out for y in s.labels),
                 "calc_traces_flagged": sum(s.first_error is not None and s.first_error >= 0 for s in out)}


def _mc(estimator):
    def run(batch: Batch, cfg: RunConfig, engines: Engines):
        results, stats = estimator(batch.family, engines.get("generator"), list(zip(batch.problems, batch.completions)),
                                   cfg.scoring.mc, cfg.generation.max_tokens, engines.seed)
        return [StepLabels(list(r.scores), list(r.hard), r.first_error) for r in results], stats
    return run


def _register_mc():
    from components.labeling import montecarlo

    source("mc", needs=("generator",))(_mc(montecarlo.estimate))
    source("mc_binary", needs=("generator",))(_mc(montecarlo.estimate_binary))


_register_mc()


def _confidence_labels(raw: list[StepLabels], correct: list[bool], cfg: RunConfig):
    """The step threshold is a quantile of the round's right-answer traces' confidence."""
    from components.labeling import confidence as conf

    tau = conf.threshold([r.scores for r in raw], correct, cfg.scoring.confidence.quantile)
    return [conf.labels(r.scores, tau) for r in raw], {"confidence_threshold": tau}


@source("confidence", needs=("generator",), pooled=_confidence_labels)
def confidence(batch: Batch, cfg: RunConfig, engines: Engines):
    """The generator's own per-step confidence (components/labeling/confidence.py): one prefill pass
    per trace, nothing sampled. Raw: each step's confidence; labels come from `_confidence_labels`."""
    from components.labeling import confidence as conf

    tokens = engines.get("generator").token_logprobs([p.prompt for p in batch.problems], batch.completions,
                                                     top_k=cfg.scoring.confidence.top_k)
    per_step = [conf.step_confidence(t, conf.step_spans(text, steps), cfg.scoring.confidence.window)
                for t, text, steps in zip(tokens, batch.completions, batch.steps)]
    return [StepLabels(x, [None] * len(x), None) for x in per_step], {"confidence_tokens": sum(len(t) for t in tokens)}


@source("judge", needs=("judge",))
def judge(batch: Batch, cfg: RunConfig, engines: Engines):
    from components.data.prompting import problem_text
    from components.labeling.judge import judge_traces

    results, stats = judge_traces(cfg.scoring.judge, engines.get("judge"),
                                  [problem_text(p) for p in batch.problems], batch.steps)
    return [StepLabels(list(r.scores), list(r.labels), r.first_error) for r in results], stats


@source("consensus", needs=("generator", "judge"))
def consensus(batch: Batch, cfg: RunConfig, engines: Engines):
    """MC and the judge, kept only where they agree (Zhang et al. 2025, "The Lessons of Developing
    PRMs"): see `agree`."""
    mc, mc_stats = SOURCES["mc"].fn(batch, cfg, engines)
    jd, jd_stats = SOURCES["judge"].fn(batch, cfg, engines)
    out = [agree(a, b) for a, b in zip(mc, jd)]
    compared = [(x, y) for a, b in zip(mc, jd) for x, y in zip(a.labels, b.labels) if x is not None and y is not None]
    return out, {**mc_stats, **jd_stats,
                 "consensus_step_agreement": sum(x == y for x, y in compared) / len(compared) if compared else 0.0,
                 "consensus_steps_compared": len(compared),
                 "consensus_steps_agreeing": sum(x == y for x, y in compared),
                 "consensus_steps_kept": sum(y is not None for s in out for y in s.labels),
                 "consensus_steps_total": sum(len(s.labels) for s in out),
                 "consensus_traces_agree": sum(s.first_error is not None for s in out)}


def agree(a: StepLabels, b: StepLabels) -> StepLabels:
    """Two sources' verdict on one trace, kept only where they name the same first error: then the
    labels that error implies. Where they disagree (or either has no verdict) the whole trace is left
    unlabelled: a step filter rejects it (an unchecked trace scores 0) and no PRM trains on it. Keeping
    the steps they happen to agree on instead would pass a trace that only one of them flags."""
    if a.first_error is None or a.first_error != b.first_error:
        return StepLabels([None] * len(a.labels), [None] * len(a.labels), None)
    return from_first_error(len(a.labels), a.first_error)


def _unsure(labels: list[StepLabels], cfg: RunConfig) -> list[int]:
    lo, hi = cfg.scoring.prm_unsure
    return [i for i, s in enumerate(labels) if s.scores and lo < min(s.scores) < hi]


@source("prm", needs=("prm",), uses="prm")
def prm(batch: Batch, cfg: RunConfig, engines: Engines):
    """`prm.calibrate`: a step is wrong below the threshold the PRM's training chose on held-back
    traces (its scores centred on it), else below 0.5."""
    scorer = engines.get("prm")
    t = prm_model.threshold(scorer.fmt) if cfg.prm.calibrate.enabled else 0.5
    scores = [[centred(x, t) for x in s] for s in scorer.score([p.prompt for p in batch.problems], batch.steps)]
    out = [StepLabels(s, [int(x >= 0.5) for x in s], first_error_from_scores(s)) for s in scores]
    return out, {"prm_unsure": len(_unsure(out, cfg)), "prm_threshold": t}


# A PRM trained on imported human labels scores the traces.
source("labels", needs=("prm",), uses="prm", imported=True)(prm)


@source("prm+mc", needs=("prm", "generator"), uses="prm")
def prm_mc(batch: Batch, cfg: RunConfig, engines: Engines):
    """The PRM's scores, replaced by Monte Carlo's on traces where the PRM is unsure."""
    out, prm_stats = prm(batch, cfg, engines)
    unsure = _unsure(out, cfg)
    stats: dict = {}
    if unsure:
        mc, stats = label("mc", batch.subset(unsure), cfg, engines)
        for i, lab in zip(unsure, mc):
            out[i] = lab
    return out, {**stats, **prm_stats, "prm_unsure": len(unsure)}


@source("implicit", needs=("dpo",), uses="dpo")
def implicit(batch: Batch, cfg: RunConfig, engines: Engines):
    """The previous round's DPO verifier read as an implicit PRM (Yuan et al. 2024, arXiv 2412.01981:
    q_t = beta * sum over the tokens up to step t's end of log pi/pi_ref; components/models/dpo.py):
    a step is wrong where sigmoid(q_t) is below the threshold its training calibrated on labelled
    traces of problems it did not train on; scores centred on that threshold."""
    scorer = engines.get("dpo")
    q = scorer.step_q([p.prompt for p in batch.problems], batch.completions, batch.steps)
    t = scorer.threshold
    scores = [[centred(sigmoid(x), t) for x in qs] for qs in q]
    return [StepLabels(s, [int(x >= 0.5) for x in s], first_error_from_scores(s)) for s in scores], {"implicit_threshold": t}
