"""On the held-out split (never trained on): greedy pass@1 per difficulty; on a subset, one pool of k
samples per problem that every selector ranks (vote, and each verifier of
components/evaluation/verifiers.py: the PRM's aggregates, the ORM, the DPO verifier, the generator's own
confidence; votes weighted by each): maj@k and best-of-k, curves for k = 1, 2, 4, ..., N with bootstrap
intervals (components/evaluation/bestofk.py), and the PRM's first-error F1 vs gold."""
from __future__ import annotations

import time

from components.config import RunConfig
from components.data.prompting import family_of
from components.evaluation import beam_search, bestofk, verifiers
from components.evaluation.heldout import round_metrics
from components.infra import store
from components.models import serving
from components.models.generation import Sampling
from components.stages import Stage
from components.stages.generate import problem_row

STAGE = Stage("evaluate", reads=("model", "prm", "orm", "dpo"), publishes="eval", accelerator=True, isolated=True,
              summary=("pass@1 {pass1_all:.1%}", "maj@k {maj_at_k_all:.1%}", "best-of-k by PRM {bestofk_prm_min_all:.1%}",
                       "PRM F1 {prm_f1:.2f}"))


def run(cfg: RunConfig, out_uri: str, model_uri: str, tag: str, prm_uri: str | None = None,
        verifier_uris: dict[str, str] | None = None) -> dict:
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
    ctx = verifiers.Context(cfg, fam, gen, {**({"prm": prm_uri} if prm_uri else {}), **(verifier_uris or {})})
    names = verifiers.score(samples, ctx)
    verifiers.generation_flops(samples, ctx)
    flops = dict(ctx.flops)
    metrics = round_metrics(greedy, samples, bool(prm_uri), fam.same_answer)
    pools: dict[str, list[dict]] = {}
    for s in samples:
        pools.setdefault(s["problem_id"], []).append(s)
    curves, table = bestofk.curve_metrics(list(pools.values()), names, fam.same_answer, seed=cfg.seed, flops=flops)
    metrics.update(curves)
    if e.beam.enabled and prm_uri:
        tokens_per_sample = sum(len(s.token_ids) for o in sampled for s in o) / max(1, len(samples))
        metrics.update(beam_metrics(cfg, gen, fam, subset, ctx.scorer(prm_uri), table, tokens_per_sample))
    metrics["seconds"] = time.perf_counter() - t0
    for r in greedy:
        r.update(gold=r["answer"], answer=fam.extract_answer(r["completion"]), prm_scores=[],
                 scores={v: None for v in names})
    store.write_rows(greedy + samples, out_uri, {"stage": "evaluate", "tag": tag, "model": model_uri,
                                                 "prm": prm_uri, "verifiers": verifier_uris or {}, "metrics": metrics, "bestofk": table})
    return metrics



def beam_metrics(cfg: RunConfig, gen, fam, problems, scorer, table: dict, tokens_per_sample: float) -> dict:
    """PRM-guided beam search on the pool's problems, against best-of-k by the PRM and the vote at the
    same generated tokens per problem (k = the search's tokens / one sample's, interpolated)."""
    b, e = cfg.eval.beam, cfg.eval
    found, tokens = beam_search.search(gen, fam, [p.prompt for p in problems], scorer.score, b.width, b.expansions,
                                       b.max_steps, Sampling(temperature=e.temperature, max_tokens=cfg.generation.max_tokens,
                                                             seed=cfg.seed + 199), cfg.family.prompt.step_separator)
    per_problem = tokens / max(1, len(problems))
    k_equal = per_problem / max(tokens_per_sample, 1e-9)
    return {"beam/accuracy": sum(fam.is_correct(p, t) for p, t in zip(problems, found)) / max(1, len(problems)),
            "beam/tokens_per_problem": per_problem, "beam/k_equal_tokens": k_equal,
            "beam/bestofk_prm_min_equal_tokens": bestofk.at_k(table, "prm_min", k_equal),
            "beam/vote_equal_tokens": bestofk.at_k(table, "vote", k_equal)}
