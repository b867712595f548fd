"""On the held-out split (never trained on): greedy pass@1 per difficulty; on a subset, k samples per
problem for maj@k and best-of-k ranked by the PRM, and the PRM's first-error F1 vs gold."""
from __future__ import annotations

import time

from components.config import RunConfig
from components.data.prompting import family_of
from components.evaluation.heldout import round_metrics
from components.infra import store
from components.models import serving
from components.models.generation import Sampling
from components.stages import Stage
from components.stages.generate import problem_row

STAGE = Stage("evaluate", reads=("model", "prm"), publishes="eval", accelerator=True, isolated=True,
              summary=("pass@1 {pass1_all:.1%}", "maj@k {maj_at_k_all:.1%}", "best-of-k by PRM {bestofk_prm_min_all:.1%}",
                       "PRM F1 {prm_f1:.2f}"))


def run(cfg: RunConfig, out_uri: str, model_uri: str, tag: str, prm_uri: str | None = None) -> dict:
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
    metrics = {**round_metrics(greedy, samples, bool(prm_uri), fam.same_answer), "seconds": time.perf_counter() - t0}
    for r in greedy:
        r.update(gold=r["answer"], answer=fam.extract_answer(r["completion"]), prm_scores=[])
    store.write_rows(greedy + samples, out_uri, {"stage": "evaluate", "tag": tag, "model": model_uri,
                                                 "prm": prm_uri, "metrics": metrics})
    return metrics
