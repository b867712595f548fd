"""Per-step labels from the round's label source, plus the label-quality report: every source in use
(the primary, `scoring.also`, an MC audit sample) against gold and against each other."""
from __future__ import annotations

import random
import time

from components.config import RunConfig
from components.data.prompting import family_of
from components.infra import store
from components.labeling import sources
from components.labeling.quality import quality
from components.labeling.sources import Batch, Engines
from components.models import serving
from components.stages import Stage

STAGE = Stage("score", reads=("candidates", "model", "prm", "judge"), publishes="scored", accelerator=True,
              isolated=True, summary=("{traces:,} traces", "{steps:,} steps labelled", "label F1 {label_f1:.2f}"))


def engines(cfg: RunConfig, fam, model_uri: str, prm_uri: str | None, judge_uri: str | None, seed: int) -> Engines:
    def prm():
        if not prm_uri:
            raise ValueError("this label source needs a PRM and none is published yet")
        return serving.prm_scorer(cfg, prm_uri)

    return Engines(lambda: serving.Generator(cfg, model_uri, fam), lambda: serving.judge_client(cfg, judge_uri), prm, seed)


def run(cfg: RunConfig, out_uri: str, model_uri: str, candidates_uri: str, round_idx: int,
        prm_uri: str | None = None, judge_uri: str | None = None) -> dict:
    fam = family_of(cfg)
    rows = store.read_rows(candidates_uri)
    t0 = time.perf_counter()
    problems = {p.id: p for p in fam.problems("train")}
    batch = Batch(fam, [problems[r["problem_id"]] for r in rows], [r["completion"] for r in rows])
    source = sources.for_round(cfg, has_prm=bool(prm_uri))
    eng = engines(cfg, fam, model_uri, prm_uri, judge_uri, cfg.generation.seed + 1000 * round_idx + 7)
    primary, stats = sources.label(source, batch, cfg, eng)
    by_source = {source: primary}
    for extra in cfg.scoring.also:
        if extra != source:
            by_source[extra], st = sources.label(extra, batch, cfg, eng)
            stats.update({f"{extra}/{k}": v for k, v in st.items()})  # e.g. mc_binary/mc_rollouts
    gold_fe = [r["gold_first_error"] for r in rows]
    report = quality(by_source, gold_fe)
    if cfg.scoring.audit_mc and source != "mc" and "mc" not in by_source:
        # Label quality of Monte Carlo on a sample, even when filtering does not use it.
        audit = random.Random(eng.seed).sample(range(len(rows)), min(cfg.scoring.audit_mc, len(rows)))
        mc, st = sources.label("mc", batch.subset(audit), cfg, eng)
        stats.update({f"audit_{k}": v for k, v in st.items()})  # audit_mc_rollouts, ...
        sub = {"mc": mc, **{k: [v[i] for i in audit] for k, v in by_source.items()}}
        report.update({f"audit_{k}": v for k, v in quality(sub, [gold_fe[i] for i in audit]).items()
                       if k.startswith("mc/") or k.startswith("agree/")})
        for r in rows:
            r.setdefault("mc_scores", None)  # a column for every row: only the sample has values
        for i, lab in zip(audit, mc):
            rows[i]["mc_scores"] = lab.scores
    for name, labels in by_source.items():
        for r, lab in zip(rows, labels):
            r[f"{name.replace('+', '_')}_scores"] = lab.scores
            r[f"{name.replace('+', '_')}_first_error"] = lab.first_error
    for r, steps, lab in zip(rows, batch.steps, primary):
        r.update(steps=steps, step_scores=lab.scores, step_labels=lab.labels, label_first_error=lab.first_error,
                 label_source=lab.origin)
    metrics = {**stats, **{f"quality/{k}": v for k, v in report.items()}, "traces": len(rows),
               "steps": sum(len(s) for s in batch.steps), "seconds": time.perf_counter() - t0}
    primary_q = {k.split("/", 1)[1]: v for k, v in report.items() if k.startswith(source.replace("+", "_") + "/")}
    metrics.update({f"label_{k}": v for k, v in primary_q.items() if k in ("f1", "acc_erroneous", "acc_correct")})
    store.write_rows(rows, out_uri, {"stage": "score", "round": round_idx, "metrics": metrics, "label_source": source})
    return metrics
