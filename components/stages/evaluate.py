"""On the held-out split (never trained on): greedy pass@1 per difficulty; on a subset, one pool of k
samples per problem that every selector ranks (vote, and each verifier of
components/evaluation/scorers.py: the PRM's aggregates, the ORM, the DPO verifier, the generator's own
confidence; votes weighted by each): maj@k and best-of-k, curves for k = 1, 2, 4, ..., N with bootstrap
intervals (components/evaluation/bestofk.py), and the PRM's first-error F1 vs gold."""
from __future__ import annotations

import time

from components.config import RunConfig
from components.data.prompting import family_of
from components.evaluation import beam_search, bestofk, scorers
from components.evaluation.heldout import round_metrics
from components.artifacts import shards, store
from components.labeling.quality import refuse_leak
from components.models import dpo, prm, serving
from components.models.generation import Sampling
from components.stages import Stage
from components.stages.generate import problem_row

STAGE = Stage.of(__name__, accelerator=True, isolated=True,
              shardable=True,
              summary=("pass@1 {pass1_all:.1%}", "maj@k {maj_at_k_all:.1%}", "best-of-k by PRM {bestofk_prm_min_all:.1%}",
                       "PRM F1 {prm_f1:.2f}", "at its calibrated threshold {prm_f1_calibrated:.2f}"))


def run(cfg: RunConfig, out_uri: str, model_uri: str, tag: str, prm_uri: str | None = None,
        verifier_uris: dict[str, str] | None = None, shard: list[int] | None = None) -> dict:
    """`shard` (i, n): only the i-th of n blocks of the held-out problems, published as a part; the
    metrics over every problem come from `merge` (each problem's samples and scores are its own)."""
    fam = family_of(cfg)
    e = cfg.eval
    t0 = time.perf_counter()
    problems = fam.problems("eval")
    pool = _pool_order(cfg, problems)
    problems = shards.part(problems, shard)
    subset = sorted((p for p in problems if p.id in pool), key=lambda p: pool[p.id])
    gen = serving.Generator(cfg, model_uri, fam)
    outs = gen.generate([p.prompt for p in problems], Sampling(n=1, temperature=0.0, max_tokens=cfg.generation.max_tokens))
    greedy = [{**problem_row(p), "kind": "greedy", "sample": 0, "completion": o[0].text,
               "correct": fam.is_correct(p, o[0].text), "gold_first_error": fam.first_error(p, o[0].text),
               "gold": p.answer, "answer": fam.extract_answer(o[0].text), "prm_scores": [], "scores": None}
              for p, o in zip(problems, outs)]
    sampled = gen.generate([p.prompt for p in subset], Sampling(n=e.k, temperature=e.temperature,
                                                                max_tokens=cfg.generation.max_tokens, seed=cfg.seed + 99))
    samples = [{**problem_row(p), "kind": "sample", "sample": j, "completion": s.text, "gold": p.answer,
                "answer": fam.extract_answer(s.text), "correct": fam.is_correct(p, s.text),
                "gold_first_error": fam.first_error(p, s.text), "prm_scores": []}
               for p, o in zip(subset, sampled) for j, s in enumerate(o)]
    # What the metrics need beyond the rows, as sums over samples and problems (shards add them up).
    work: dict = {"samples": len(samples), "sample_tokens": sum(len(s.token_ids) for o in sampled for s in o), "flops": {}}
    names: list[str] = []
    if samples:
        ctx = scorers.Context(cfg, fam, gen, {**({"prm": prm_uri} if prm_uri else {}), **(verifier_uris or {})})
        names = scorers.score(samples, ctx)
        scorers.generation_flops(samples, ctx)
        work["flops"] = {k: v * len(samples) for k, v in ctx.flops.items()}  # ctx.flops: per sample
        if e.beam.enabled and prm_uri:
            work["beam"] = beam_work(cfg, gen, fam, subset, ctx.scorer(prm_uri), store.fetch_folder(prm_uri))
    if shard is not None:
        store.write_rows(greedy + samples, out_uri, {"stage": "evaluate", "tag": tag, "shard": list(shard), "names": names,
                                                     "work": work, "metrics": {"seconds": time.perf_counter() - t0}})
        return {"problems": len(problems), "samples": len(samples)}
    return finish(cfg, out_uri, greedy, samples, [names], [work], model_uri, tag, prm_uri, verifier_uris,
                  time.perf_counter() - t0)


def merge(cfg: RunConfig, out_uri: str, parts: list[str], model_uri: str, tag: str, prm_uri: str | None = None,
          verifier_uris: dict[str, str] | None = None, seconds: float = 0.0) -> dict:
    """Publish the evaluation from its shards' parts (in shard order): the rows and metrics of the
    unsharded stage."""
    got = shards.gathered(parts, out_uri)
    pool = _pool_order(cfg, family_of(cfg).problems("eval"))
    samples = sorted((r for r in got.rows if r["kind"] == "sample"), key=lambda r: pool[r["problem_id"]])  # stable
    return finish(cfg, out_uri, [r for r in got.rows if r["kind"] == "greedy"], samples,
                  [m["names"] for m in got.manifests], [m["work"] for m in got.manifests], model_uri, tag, prm_uri,
                  verifier_uris, seconds, **got.sharding)


def finish(cfg: RunConfig, out_uri: str, greedy: list[dict], samples: list[dict], names: list[list[str]],
           work: list[dict], model_uri: str, tag: str, prm_uri: str | None, verifier_uris: dict[str, str] | None,
           seconds: float, **extra) -> dict:
    """Metrics over every held-out problem, and the artifact (`extra`: metrics of a sharded stage)."""
    fam = family_of(cfg)
    names = list(dict.fromkeys(n for each in names for n in each))
    n_samples = sum(w["samples"] for w in work)
    flops = {k: sum(w["flops"].get(k, 0.0) for w in work) / max(1, n_samples)
             for k in dict.fromkeys(k for w in work for k in w["flops"])}
    thresholds = calibrated_thresholds(prm_uri, (verifier_uris or {}).get("dpo"), [r["prompt"] for r in greedy + samples])
    metrics = round_metrics(greedy, samples, bool(prm_uri), fam.same_answer, thresholds)
    pools: dict[str, list[dict]] = {}
    for s in samples:
        pools.setdefault(s["problem_id"], []).append(s)
    curves, table = bestofk.curve_metrics(list(pools.values()), names, fam.same_answer, seed=cfg.seed, flops=flops)
    metrics.update(curves)
    beams = [w["beam"] for w in work if "beam" in w]
    if beams:
        beam = {k: sum(b[k] for b in beams) for k in ("problems", "correct", "tokens", "flops")}
        tokens_per_sample = sum(w["sample_tokens"] for w in work) / max(1, n_samples)
        metrics.update(beam_metrics(beam, table, tokens_per_sample, sample_flops(beams[0]["generator_params"], tokens_per_sample, flops),
                                    cfg.eval.beam.aggregate))
    metrics.update(seconds=seconds, **extra)
    for r in greedy:
        r["scores"] = {v: None for v in names}
    store.write_rows(greedy + samples, out_uri, {"stage": "evaluate", "tag": tag, "model": model_uri,
                                                 "prm": prm_uri, "verifiers": verifier_uris or {}, "metrics": metrics, "bestofk": table})
    return metrics


def calibrated_thresholds(prm_uri: str | None, dpo_uri: str | None, prompts: list[str]) -> dict[str, float]:
    """The step thresholds F1 is also reported at: the one the PRM's training calibrated on its
    held-back traces, the implicit PRM's on labelled traces of problems the DPO verifier did not train
    on. Either was chosen on problems other than these, or it is refused (quality.refuse_leak)."""
    out = {}
    if prm_uri:
        fmt = prm.load_format(store.fetch_folder(prm_uri))
        refuse_leak(prm.calibrated_on(fmt), prompts, prm_uri)
        out["prm_scores"] = prm.threshold(fmt)
    if dpo_uri:
        folder = store.fetch_folder(dpo_uri)
        refuse_leak(dpo.calibrated_on(folder), prompts, dpo_uri)
        out["implicit_scores"] = dpo.step_threshold(folder)
    return out


def _pool_order(cfg: RunConfig, problems: list) -> dict[str, int]:
    """The problems every selector ranks a pool of samples of (the first `sampled_per_level` of each
    level), id -> position in the order the metrics take them."""
    levels = sorted({p.difficulty for p in problems})
    subset = [p for n in levels for p in [q for q in problems if q.difficulty == n][: cfg.eval.sampled_per_level]]
    return {p.id: i for i, p in enumerate(subset)}


def beam_work(cfg: RunConfig, gen, fam, problems, scorer, prm_dir) -> dict:
    """PRM-guided beam search on the pool's problems: how many it solved, the tokens it generated, and
    its FLOPs: ~2 x params per token the generator generates and per token the PRM reads (every
    proposal's whole partial trace, each step)."""
    b, e = cfg.eval.beam, cfg.eval
    measure = scorers.input_tokens(prm_dir)
    found = beam_search.search(gen, fam, [p.prompt for p in problems], scorer.score, b.width, b.expansions,
                               b.max_steps, Sampling(temperature=e.temperature, max_tokens=cfg.generation.max_tokens,
                                                     seed=cfg.seed + 199), cfg.family.prompt.step_separator,
                               b.aggregate, lambda p, s: sum(measure(p, s)))
    flops = 2.0 * gen.params * found.tokens + 2.0 * serving.param_count(prm_dir) * found.scored_tokens
    return {"problems": len(problems), "correct": sum(fam.is_correct(p, t) for p, t in zip(problems, found.texts)),
            "tokens": found.tokens, "flops": flops, "generator_params": gen.params}


def sample_flops(generator_params: int, tokens_per_sample: float, flops: dict) -> dict[str, float]:
    """What one best-of-k sample costs, counted as the beam is: ~2 x params per generated token (the
    prompt's prefill is shared, as vLLM caches it for the beam), plus its verifier's scoring (none for the vote)."""
    gen = 2.0 * generator_params * tokens_per_sample
    return {"vote": gen, **{name: gen + f for name, f in flops.items() if name.startswith("prm_")}}


def beam_metrics(beam: dict, table: dict, tokens_per_sample: float, per_sample: dict[str, float],
                 aggregate: str = "min") -> dict:
    """Beam search against best-of-k by the PRM (the search's aggregate) and the vote, at the same
    generated tokens per problem and at the same FLOPs per problem (k = the search's cost / one
    sample's, interpolated on the curves; left out where it lies past the pool)."""
    per_problem = beam["tokens"] / max(1, beam["problems"])
    flops = beam["flops"] / max(1, beam["problems"])
    prm = f"prm_{aggregate}"
    out = {"beam/accuracy": beam["correct"] / max(1, beam["problems"]), "beam/tokens_per_problem": per_problem,
           "beam/flops_per_problem": flops, "beam/k_equal_tokens": per_problem / max(tokens_per_sample, 1e-9)}
    for name, key in ((prm, f"bestofk_{prm}"), ("vote", "vote")):
        if name in per_sample:
            out[f"beam/k_equal_compute_{key}"] = flops / max(per_sample[name], 1e-9)
    top = table["ks"][-1] if table["ks"] else 0
    for name, key in ((prm, f"bestofk_{prm}"), ("vote", "vote")):
        if out["beam/k_equal_tokens"] <= top:  # the search spent no more than the pool holds
            out[f"beam/{key}_equal_tokens"] = bestofk.at_k(table, name, out["beam/k_equal_tokens"])
        if out.get(f"beam/k_equal_compute_{key}", top + 1) <= top:
            out[f"beam/{key}_equal_compute"] = bestofk.at_k(table, name, out[f"beam/k_equal_compute_{key}"])
    return out
