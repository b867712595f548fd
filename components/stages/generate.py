"""k samples per round problem (the curriculum's level), each with its outcome and its gold first error;
with `rationalize` on, STaR's rationalization for the problems none of whose samples is right."""
from __future__ import annotations

import time

from components.config import RunConfig
from components.data.curriculum import round_problems
from components.data.prompting import family_of, hinted_prompt
from components.data.ingest import Quarantine, reject_long
from components.artifacts import layout, shards, store
from components.models import serving
from components.models.generation import Sampling
from components.stages import Stage

STAGE = Stage.of(__name__, accelerator=True, isolated=True, shardable=True,
              summary=("{traces:,} traces", "{accuracy:.1%} correct",
                       "rationalized {rationalized:,} of {rationalize_samples:,} hinted samples "
                       "({rationalized_problems:,}/{rationalize_problems:,} failed problems)",
                       "{k_tokens_per_s:.1f}k tok/s"))


def problem_row(p) -> dict:
    # "question": the problem before prompt rendering, what decontamination compares.
    return {"problem_id": p.id, "prompt": p.prompt, "question": p.meta.get("question", p.prompt), "answer": p.answer,
            "difficulty": p.difficulty}


def sample_row(fam, p, j: int, s) -> dict:
    return {**problem_row(p), "sample": j, "completion": s.text, "token_ids": s.token_ids,
            "cumulative_logprob": s.cumulative_logprob, "finish_reason": s.finish_reason,
            "correct": fam.is_correct(p, s.text), "gold_first_error": fam.first_error(p, s.text)}


def rationalize(cfg: RunConfig, fam, generator, problems: list, rows: list[dict], round_idx: int
                ) -> tuple[list[dict], int]:
    """STaR's rationalization: the problems with no right sample are asked again with their answer as a
    hint; the samples that reach it come back as rows of the problem's own prompt, hint removed, their
    sample numbers after the k plain ones (cumulative_logprob is the hinted prompt's). Returns those
    rows and how many hinted samples were drawn: the wrong ones are counted, never kept."""
    solved = {r["problem_id"] for r in rows if r["correct"]}
    failed = [p for p in problems if p.id not in solved]
    if not failed:
        return [], 0
    g, k = cfg.generation, cfg.rationalize.k or cfg.generation.k
    outs = generator.generate([hinted_prompt(fam, p, cfg.rationalize.hint) for p in failed], Sampling(
        n=k, temperature=g.temperature, top_p=g.top_p, max_tokens=g.max_tokens, seed=g.seed + 1000 * round_idx + 500))
    right = [{**sample_row(fam, p, g.k + j, s), "rationalized": True} for p, samples in zip(failed, outs)
             for j, s in enumerate(samples) if fam.is_correct(p, s.text)]
    return right, len(failed) * k


def run(cfg: RunConfig, out_uri: str, model_uri: str, round_idx: int, target: int | None = None,
        shard: list[int] | None = None) -> dict:
    """`shard` (i, n): only the i-th of n blocks of the round's problems (components/artifacts/shards.py)."""
    fam = family_of(cfg)
    g = cfg.generation
    # A problem whose prompt leaves no room for a solution in the model's context is quarantined.
    q = Quarantine(f"{cfg.family.name}:train")
    tok = serving.tokenizer(model_uri)
    problems = reject_long(shards.part(round_problems(cfg, fam, target, round_idx), shard),
                           lambda t: len(tok(t).input_ids), cfg.model.max_positions - g.max_tokens, q,
                           field_name="prompt")
    q.write(store.join(out_uri, layout.QUARANTINE))
    t0 = time.perf_counter()
    generator = serving.Generator(cfg, model_uri, fam)
    t_load = time.perf_counter() - t0
    outs = generator.generate([p.prompt for p in problems], Sampling(
        n=g.k, temperature=g.temperature, top_p=g.top_p, max_tokens=g.max_tokens, seed=g.seed + 1000 * round_idx))
    t_gen = time.perf_counter() - t0 - t_load
    rows = [sample_row(fam, p, j, s) for p, samples in zip(problems, outs) for j, s in enumerate(samples)]
    hinted = 0
    if cfg.rationalize.enabled:
        extra, hinted = rationalize(cfg, fam, generator, problems, rows, round_idx)
        rows = [{**r, "rationalized": False} for r in rows] + extra
        t_gen = time.perf_counter() - t0 - t_load
    metrics = _metrics(rows, target, len(problems), len(q.rejected), t_load, t_gen, time.perf_counter() - t0,
                       cfg.rationalize.enabled and hinted)
    store.write_rows(rows, out_uri, {"stage": "generate", "round": round_idx, "model": model_uri, "metrics": metrics})
    return metrics


def merge(cfg: RunConfig, out_uri: str, parts: list[str], model_uri: str, round_idx: int,
          target: int | None = None, seconds: float = 0.0) -> dict:
    """Publish the round's candidates from its shards' (`parts`, in shard order): the rows the
    unsharded stage writes. Engine load and generation time add up over the shards; `seconds` is the
    stage's wall time."""
    got = shards.gathered(parts, out_uri)
    gen_s = sum(m["tokens"] / m["tokens_per_s"] for m in got.metrics if m.get("tokens_per_s"))
    metrics = {**_metrics(got.rows, target, got.total("problems"), got.total("too_long_quarantined"),
                          got.total("engine_load_s"), gen_s, seconds,
                          cfg.rationalize.enabled and got.total("rationalize_samples")), **got.sharding}
    store.write_rows(got.rows, out_uri, {"stage": "generate", "round": round_idx, "model": model_uri, "metrics": metrics})
    return metrics


def _metrics(rows: list[dict], target: int | None, problems: int, quarantined: int, t_load: float, t_gen: float,
             seconds: float, hinted: int | bool = False) -> dict:
    """`traces`, `correct`, `accuracy`: the k plain samples per problem; with rationalization on
    (`hinted`: the hinted samples drawn, or False when it is off), its counts beside them."""
    n_tokens = sum(len(r["token_ids"]) for r in rows)
    plain = [r for r in rows if not r.get("rationalized")]
    out = {"target_ops": target or 0, "problems": problems, "too_long_quarantined": quarantined,
           "traces": len(plain), "correct": sum(r["correct"] for r in plain),
           "accuracy": sum(r["correct"] for r in plain) / max(1, len(plain)), "tokens": n_tokens,
           "tokens_per_s": n_tokens / max(t_gen, 1e-9), "engine_load_s": t_load, "seconds": seconds}
    if hinted is not False:
        ids = {r["problem_id"] for r in plain}
        solved = {r["problem_id"] for r in plain if r["correct"]}
        out.update(rationalize_problems=len(ids - solved), rationalize_samples=int(hinted),
                   rationalized=len(rows) - len(plain),
                   rationalized_problems=len({r["problem_id"] for r in rows if r.get("rationalized")}))
    return out
