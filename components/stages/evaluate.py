"""On the held-out split (never trained on): greedy pass@1 per difficulty; on a subset, one pool of k
samples per problem that every selector ranks (vote, the PRM's aggregates, the generator's own
confidence, votes weighted by each): maj@k and best-of-k, curves for k = 1, 2, 4, ..., N with bootstrap
intervals (components/evaluation/bestofk.py), and the PRM's first-error F1 vs gold."""
from __future__ import annotations

import time

from components.config import RunConfig
from components.data.prompting import family_of
from components.evaluation import bestofk
from components.evaluation.heldout import round_metrics
from components.labeling import confidence
from components.labeling.filtering import AGGREGATES
from components.infra import store
from components.models import serving
from components.models.generation import Sampling
from components.stages import Stage
from components.stages.generate import problem_row

STAGE = Stage("evaluate", reads=("model", "prm", "orm"), publishes="eval", accelerator=True, isolated=True,
              summary=("pass@1 {pass1_all:.1%}", "maj@k {maj_at_k_all:.1%}", "best-of-k by PRM {bestofk_prm_min_all:.1%}",
                       "PRM F1 {prm_f1:.2f}"))


def run(cfg: RunConfig, out_uri: str, model_uri: str, tag: str, prm_uri: str | None = None,
        orm_uri: str | None = None) -> dict:
    fam = family_of(cfg)
    problems = fam.problems("eval")
    t0 = time.perf_counter()
    gen = serving.Generator(cfg, model_uri, fam)
    outs = gen.generate([p.prompt for p in problems], Sampling(n=1, temperature=0.0, max_tokens=cfg.generation.max_tokens))
    greedy = [{**problem_row(p), "kind": "greedy", "sample": 0, "completion": o[0].text,
               "correct": fam.is_correct(p, o[0].text), "gold_first_error": fam.first_error(p, o[0].text)}
              for p, o in zip(problems, outs)]
    e = cfg.eval
    levels = sorted({p.difficulty for p in problems})
    subset = [p for n in levels for p in [q for q in problems if q.difficulty == n][: e.sampled_per_level]]
    sampled = gen.generate([p.prompt for p in subset], Sampling(n=e.k, temperature=e.temperature,
                                                                max_tokens=cfg.generation.max_tokens, seed=cfg.seed + 99))
    samples = [{**problem_row(p), "kind": "sample", "sample": j, "completion": s.text, "gold": p.answer,
                "answer": fam.extract_answer(s.text), "correct": fam.is_correct(p, s.text),
                "gold_first_error": fam.first_error(p, s.text), "prm_scores": []}
               for p, o in zip(subset, sampled) for j, s in enumerate(o)]
    if prm_uri:
        scorer = serving.prm_scorer(cfg, prm_uri)
        for smp, sc in zip(samples, scorer.score([s["prompt"] for s in samples],
                                                 [fam.split_steps(s["completion"]) for s in samples])):
            smp["prm_scores"] = sc
    verifiers = trace_scores(samples, gen, fam, cfg, with_prm=bool(prm_uri))
    if orm_uri:  # the outcome verifier's P(right), read at the trace's last step
        orm = serving.prm_scorer(cfg, orm_uri, cfg.orm.scorer)
        for s, sc in zip(samples, orm.score([s["prompt"] for s in samples],
                                            [fam.split_steps(s["completion"]) for s in samples])):
            s["scores"]["orm"] = sc[-1] if sc else 0.0
        verifiers.append("orm")
    metrics = round_metrics(greedy, samples, bool(prm_uri), fam.same_answer)
    pools: dict[str, list[dict]] = {}
    for s in samples:
        pools.setdefault(s["problem_id"], []).append(s)
    curves, table = bestofk.curve_metrics(list(pools.values()), verifiers, fam.same_answer, seed=cfg.seed)
    metrics.update({**curves, "seconds": time.perf_counter() - t0})
    for r in greedy:
        r.update(gold=r["answer"], answer=fam.extract_answer(r["completion"]), prm_scores=[],
                 scores={v: None for v in verifiers})
    store.write_rows(greedy + samples, out_uri, {"stage": "evaluate", "tag": tag, "model": model_uri,
                                                 "prm": prm_uri, "orm": orm_uri, "metrics": metrics, "bestofk": table})
    return metrics


def trace_scores(samples: list[dict], gen, fam, cfg: RunConfig, with_prm: bool) -> list[str]:
    """Each sample's `scores`: one per verifier (higher = more likely right); returns their names.
    `confidence`: the generator's lowest windowed token confidence over the steps (DeepConf), one
    prefill pass; `prm_<aggregate>`: the PRM's step scores aggregated."""
    window = cfg.scoring.confidence.window
    tokens = gen.token_logprobs([s["prompt"] for s in samples], [s["completion"] for s in samples])
    for s, t in zip(samples, tokens):
        steps = fam.split_steps(s["completion"])
        per_step = [c for c in confidence.step_confidence(t, confidence.step_spans(s["completion"], steps), window)
                    if c is not None]
        s["scores"] = {"confidence": min(per_step) if per_step else 0.0}
        if with_prm:
            for how in ("min", "prod", "last", "mean"):
                s["scores"][f"prm_{how}"] = AGGREGATES[how](s["prm_scores"]) if s["prm_scores"] else 0.0
    return list(samples[0]["scores"]) if samples else []
