"""What a human-label budget buys (Let's Verify's setting): PRM_0 trained on N labelled traces, scoring
traces it never saw.

    python benchmarks/label_budget.py --loop-config configs/demo.yaml [--budgets 250 1000 4000] [--set k=v ...]
                                      [--prm prm.balance=true ...]

For each budget N: G_0 (the config's published bootstrap) samples k solutions to problems set aside for
labelling (disjoint from every round's and from evaluation); the first N are labelled by the exact step
check, written as PRM800K and imported (`scoring.labels.budget`, the loop's own path); PRM_0 trains on
them (the config's `prm` settings). It then scores the candidates of a published loop's rounds (other
problems, G_0..G_2's traces), and is measured there against the gold step labels: first-error F1 per
difficulty, and what a step filter on its scores keeps (kept traces, and the share holding a wrong
step) next to outcome-only filtering. Writes benchmarks/results/label_budget.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from components.checks import load_config  # noqa: E402
from components.artifacts import store  # noqa: E402
from components.artifacts.layout import Layout  # noqa: E402


def measure(cfg, prm_uri: str, pool: list[dict]) -> dict:
    """PRM_0's scores on the pool, against gold: F1 per difficulty and the step filter's keep."""
    return measure_scored(cfg, scored(cfg, prm_uri, pool))


def scored(cfg, prm_uri: str, pool: list[dict]) -> list[dict]:
    """The pool's traces with the PRM's step scores."""
    from components.models import serving

    scores = serving.prm_scorer(cfg, prm_uri).score([r["prompt"] for r in pool], [r["steps"] for r in pool])
    return [{**r, "step_scores": s} for r, s in zip(pool, scores)]


def measure_scored(cfg, rows: list[dict], threshold: float = 0.5) -> dict:
    """Scored traces against gold: first-error F1 per difficulty and what a step filter keeps."""
    from components.labeling.filtering import select
    from components.labeling.quality import first_error_f1
    from components.labeling.step_labels import first_error_from_scores

    out: dict = {}
    for level in sorted({r["difficulty"] for r in rows}) + ["all"]:
        at = [r for r in rows if level == "all" or r["difficulty"] == level]
        q = first_error_f1([first_error_from_scores(r["step_scores"], threshold) for r in at],
                           [r["gold_first_error"] for r in at])
        out[f"f1_{level}"] = q["f1"]
        out[f"acc_erroneous_{level}"], out[f"acc_correct_{level}"] = q["acc_erroneous"], q["acc_correct"]
    _, stats = select(rows, cfg.filter.model_copy(update={"mode": "step", "threshold": threshold}))
    out.update({k: stats[k] for k in ("kept", "kept_flawed_share", "outcome_only_kept", "outcome_only_flawed_share")})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--loop-config", default="configs/demo.yaml",
                    help="its bootstrap is G_0; its published rounds' candidates are the pool")
    ap.add_argument("--budgets", type=int, nargs="+", default=[250, 1000, 4000])
    ap.add_argument("--set", action="append", default=[], dest="overrides", help="the loop's config (pool, G_0)")
    ap.add_argument("--prm", action="append", default=[], help="PRM_0 settings only, e.g. prm.balance=true")
    ap.add_argument("--out", default="benchmarks/results/label_budget.json")
    args = ap.parse_args()
    from components.loop import labels_uri
    from components.stages import labels as labels_stage
    from components.stages import prm as prm_stage

    from components.data.prompting import family_of

    loop_cfg = load_config(args.loop_config, args.overrides)
    at, fam = Layout.of(loop_cfg), family_of(loop_cfg)
    pool = [{**r, "steps": fam.split_steps(r["completion"])} for n in range(1, loop_cfg.rounds + 1)
            if store.is_published(at.round(n, "candidates")) for r in store.read_rows(at.round(n, "candidates"))
            if r["gold_first_error"] is not None]
    pool = [r for r in pool if r["steps"]]
    if not pool:
        raise SystemExit(f"no published candidates in {at.round(1, 'candidates')}: run the loop first")
    g0 = at.bootstrap()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.budgets:
            # PRM_0 trains on the whole budget (the loop's prm.max_examples would cap 4,000 at 3,000)
            cap = [f"prm.max_examples={max(n, loop_cfg.prm.max_examples)}"]
            cfg = load_config(args.loop_config, args.overrides + cap + args.prm + ["scoring.label_source=labels",
                                                                                   f"scoring.labels.budget={n}"])
            t0 = time.perf_counter()
            uri = labels_uri(cfg)
            spent = (store.read_manifest(uri)["metrics"] if store.is_published(uri)
                     else labels_stage.run(cfg, uri, g0))
            trained = prm_stage.run(cfg, f"{tmp}/prm-{n}", g0, 0, [uri])
            results[n] = {"budget": n, "labelled_flawed_share": spent["budget_flawed_share"],
                          "prm_examples": trained["examples"], "prm_heldout_auroc": trained.get("heldout_auroc"),
                          **measure(cfg, f"{tmp}/prm-{n}", pool), "seconds": time.perf_counter() - t0}
    levels = sorted({r["difficulty"] for r in pool})
    t = Table(title=f"PRM_0 from a label budget, scored on {len(pool)} traces of other problems (first-error F1 vs gold)")
    for col in (["budget", "labelled flawed"] + [f"F1 {n} ops" for n in levels]
                + [f"clean {n} ops called clean" for n in levels] + ["F1 all", "kept", "kept flawed", "outcome-only flawed", "s"]):
        t.add_column(col, justify="right")
    for r in results.values():
        t.add_row(str(r["budget"]), f"{100 * r['labelled_flawed_share']:.0f}%",
                  *[f"{r[f'f1_{n}']:.2f}" for n in levels], *[f"{r[f'acc_correct_{n}']:.2f}" for n in levels],
                  f"{r['f1_all']:.2f}", str(r["kept"]),
                  f"{100 * r['kept_flawed_share']:.0f}%", f"{100 * r['outcome_only_flawed_share']:.0f}%",
                  f"{r['seconds']:.0f}")
    Console(width=180).print(t)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"loop_config": args.loop_config, "overrides": args.overrides, "prm": args.prm,
                                          "pool": len(pool), "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
                                          "date": time.strftime("%Y-%m-%d %H:%M"), "results": results}, indent=1))
    print(f"results: {args.out}")


if __name__ == "__main__":
    main()
