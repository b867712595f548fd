"""Per-step labels from the round's label source, plus the label-quality report: every source in use
(the primary, `scoring.also`, an MC audit sample) against gold and against each other.

Labelling goes trace by trace, so it splits by problem (`shard`): each shard labels its block of the
round's traces with every source and publishes them as a part; `finish` makes the decisions that need
the whole round (a pooled source's threshold, the quality report) from the rows, so the artifact is
the same however many shards made it."""
from __future__ import annotations

import random
import time

from components.config import RunConfig
from components.data.prompting import family_of
from components.artifacts import shards, store
from components.labeling import sources
from components.labeling.quality import quality
from components.labeling.sources import Batch, Engines
from components.labeling.step_labels import StepLabels
from components.models import serving
from components.stages import Stage

STAGE = Stage.of(__name__, accelerator=True,
              isolated=True, shardable=True,
              summary=("{traces:,} traces", "{steps:,} steps labelled", "label F1 {label_f1:.2f}"))
AUDIT = "mc"  # the audit sample's source: its columns are set on the sampled rows only


def engines(cfg: RunConfig, fam, model_uri: str, prm_uri: str | None, judge_uri: str | None, seed: int,
            dpo_uri: str | None = None) -> Engines:
    def prm():
        if not prm_uri:
            raise ValueError("this label source needs a PRM and none is published yet")
        return serving.prm_scorer(cfg, prm_uri)

    def dpo():
        if not dpo_uri:
            raise ValueError("this label source needs a DPO verifier and none is published yet")
        return serving.ImplicitPRM(cfg, dpo_uri)

    return Engines(lambda: serving.Generator(cfg, model_uri, fam), lambda: serving.judge_client(cfg, judge_uri), prm, seed,
                   dpo)


def run(cfg: RunConfig, out_uri: str, model_uri: str, candidates_uri: str, round_idx: int,
        prm_uri: str | None = None, judge_uri: str | None = None, shard: list[int] | None = None,
        dpo_uri: str | None = None) -> dict:
    """`shard` (i, n): label only the i-th of n blocks of the round's problems, published as a part."""
    fam = family_of(cfg)
    rows = store.read_rows(candidates_uri)
    t0 = time.perf_counter()
    source, names = _sources(cfg, prm_uri, dpo_uri)
    eng = engines(cfg, fam, model_uri, prm_uri, judge_uri, cfg.generation.seed + 1000 * round_idx + 7, dpo_uri)
    # The audit sample is drawn over the whole round, before it is split: every shard audits its share.
    audit = set(random.Random(eng.seed).sample(range(len(rows)), min(cfg.scoring.audit_mc, len(rows)))
                if _audits(cfg, names) else ())
    by_problem: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        by_problem.setdefault(r["problem_id"], []).append(i)
    mine = [i for block in shards.part(list(by_problem.values()), shard) for i in block]
    rows = [rows[i] for i in mine]
    problems = {p.id: p for p in fam.problems("train")}
    batch = Batch(fam, [problems[r["problem_id"]] for r in rows], [r["completion"] for r in rows])

    stats: dict = {}
    for name in names:
        labels, st = sources.measure(name, batch, cfg, eng)
        stats.update({k if name == source else f"{name}/{k}": v for k, v in st.items()})  # e.g. mc_binary/mc_rollouts
        _put(rows, name, labels, raw=bool(sources.SOURCES[name].pooled))
    if audit:  # Label quality of Monte Carlo on a sample, even when filtering does not use it.
        sample = [j for j, i in enumerate(mine) if i in audit]
        labels, st = sources.measure(AUDIT, batch.subset(sample), cfg, eng)
        stats.update({f"audit_{k}": v for k, v in st.items()})  # audit_mc_rollouts, ...
        _put(rows, AUDIT, [None] * len(rows))  # a column for every row: only the sample has values
        _put([rows[j] for j in sample], AUDIT, labels)
    for r, steps in zip(rows, batch.steps):
        r["steps"] = steps
    if shard is not None:
        store.write_rows(rows, out_uri, {"stage": "score", "round": round_idx, "shard": list(shard),
                                         "metrics": {**stats, "seconds": time.perf_counter() - t0}})
        return stats
    return finish(cfg, out_uri, rows, [stats], round_idx, prm_uri, time.perf_counter() - t0, dpo_uri=dpo_uri)


def merge(cfg: RunConfig, out_uri: str, parts: list[str], model_uri: str, candidates_uri: str, round_idx: int,
          prm_uri: str | None = None, judge_uri: str | None = None, seconds: float = 0.0,
          dpo_uri: str | None = None) -> dict:
    """Publish the round's scored traces from its shards' parts (in shard order)."""
    got = shards.gathered(parts, out_uri)
    return finish(cfg, out_uri, got.rows, got.metrics, round_idx, prm_uri, seconds, dpo_uri=dpo_uri, **got.sharding)


def finish(cfg: RunConfig, out_uri: str, rows: list[dict], stats: list[dict], round_idx: int,
           prm_uri: str | None, seconds: float, dpo_uri: str | None = None, **extra) -> dict:
    """The decisions over the whole round, from the labelled rows, and the artifact (`extra`: metrics
    of a sharded stage, e.g. `shards`)."""
    source, names = _sources(cfg, prm_uri, dpo_uri)
    stats = sources.add_stats(stats)
    by_source = {}
    for name in names:
        if sources.SOURCES[name].pooled:
            raw = [StepLabels(r[f"{_col(name)}_raw"], [None] * len(r[f"{_col(name)}_raw"]), None) for r in rows]
            labels, st = sources.decide(name, raw, [r["correct"] for r in rows], cfg)
            stats.update({k if name == source else f"{name}/{k}": v for k, v in st.items()})
            _put(rows, name, labels)
        by_source[name] = [_get(r, name) for r in rows]
    gold_fe = [r["gold_first_error"] for r in rows]
    report = quality(by_source, gold_fe)
    audited = [i for i, r in enumerate(rows) if r.get(f"{AUDIT}_first_error") is not None] if _audits(cfg, names) else []
    if audited:
        sub = {AUDIT: [_get(rows[i], AUDIT) for i in audited], **{k: [v[i] for i in audited] for k, v in by_source.items()}}
        report.update({f"audit_{k}": v for k, v in quality(sub, [gold_fe[i] for i in audited]).items()
                       if k.startswith(f"{AUDIT}/") or k.startswith("agree/")})
    graded, primary = source, by_source[source]
    if cfg.scoring.calculator.enabled:  # what the filter and the PRM see: the source, overruled by the calculator
        calc = [c.labels for c in by_source["calc"]]
        primary = [sources.overrule(lab, c) for lab, c in zip(primary, calc)]
        if cfg.filter.rank_by not in (None, "calc"):  # the filter ranks by that column: overruled too
            _put(rows, cfg.filter.rank_by, [sources.overrule(lab, c) for lab, c in zip(by_source[cfg.filter.rank_by], calc)])
        graded = f"{source}+calculator"
        report.update(quality({graded: primary}, gold_fe))
    for r, lab in zip(rows, primary):
        r.update(step_scores=lab.scores, step_labels=lab.labels, label_first_error=lab.first_error,
                 label_source=r.pop("label_origin"))
    metrics = {**stats, **{f"quality/{k}": v for k, v in report.items()}, "traces": len(rows),
               "steps": sum(len(r["steps"]) for r in rows), "seconds": seconds, **extra}
    primary_q = {k.split("/", 1)[1]: v for k, v in report.items() if k.startswith(_col(graded) + "/")}
    metrics.update({f"label_{k}": v for k, v in primary_q.items() if k in ("f1", "acc_erroneous", "acc_correct")})
    store.write_rows(rows, out_uri, {"stage": "score", "round": round_idx, "metrics": metrics, "label_source": source})
    return metrics


def _sources(cfg: RunConfig, prm_uri: str | None, dpo_uri: str | None = None) -> tuple[str, list[str]]:
    """The round's source (one that needs a verifier falls back in round 1) and every source it labels with."""
    source = sources.for_round(cfg, {v for v, uri in (("prm", prm_uri), ("dpo", dpo_uri)) if uri})
    calc = ["calc"] if cfg.scoring.calculator.enabled else []  # its own verdict: reported, and what overrules
    return source, [source, *(x for x in dict.fromkeys([*cfg.scoring.also, *calc]) if x != source)]


def _audits(cfg: RunConfig, names: list[str]) -> bool:
    return bool(cfg.scoring.audit_mc) and AUDIT not in names


def _col(name: str) -> str:
    return name.replace("+", "_")  # column and metric names: no "+"


def _put(rows: list[dict], name: str, labels: list, raw: bool = False) -> None:
    """A source's labels as columns; a pooled source's raw values (its labels come in `finish`)."""
    col = _col(name)
    for r, lab in zip(rows, labels):
        if raw:
            r[f"{col}_raw"] = lab.scores
        else:
            r.update({f"{col}_scores": lab and lab.scores, f"{col}_labels": lab and lab.labels,
                      f"{col}_first_error": lab and lab.first_error})
        if lab is not None and "label_origin" not in r:  # the primary source comes first
            r["label_origin"] = lab.origin


def _get(r: dict, name: str) -> StepLabels:
    col = _col(name)
    return StepLabels(r[f"{col}_scores"], r[f"{col}_labels"], r[f"{col}_first_error"])
