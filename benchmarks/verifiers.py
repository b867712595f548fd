"""Which selector picks best from the same samples: vote, PRM, ORM, the DPO verifier, the generator's
confidence, on a loop's published evaluation pools (components/evaluation/bestofk.py), for all
held-out problems and for the hardest levels alone; and PRM-guided beam search at equal tokens.

    python benchmarks/verifiers.py CONFIG [--set k=v ...] [--levels 5,6] [--rounds 1,2,3]

Reads each round's `eval` dataset of the loop CONFIG names (its samples carry every verifier's trace
score), so it costs no generation: run the loop first, e.g.
    vstar run configs/demo.yaml
Prints, per round and problem set, best-of-k at k = 1 and N with 95% bootstrap intervals, the paired
differences of the verifiers with each other and with the vote at k = N, what each verifier scored on
its own held-out training split and beam search against best-of-k at the same generated tokens;
writes benchmarks/results/verifiers.json (`--out`).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from components.checks import load_config  # noqa: E402
from components.data.prompting import family_of  # noqa: E402
from components.evaluation import bestofk  # noqa: E402
from components.round_table import differences  # noqa: E402
from components.artifacts import store  # noqa: E402
from components.artifacts.layout import Layout  # noqa: E402

SHOWN = ("pass_at_k", "vote", "prm_min", "prm_calc", "orm", "dpo", "dpo_likelihood", "confidence", "calc",
         "weighted_vote/prm_min", "weighted_vote/orm", "weighted_vote/dpo", "weighted_vote/calc")
TRAINING = {"prm": ("heldout_auroc",), "orm": ("heldout_auroc",), "dpo": ("heldout_pair_accuracy", "heldout_within_auroc")}


def pools_of(rows: list[dict], levels: set[int] | None) -> list[list[dict]]:
    pools: dict[str, list[dict]] = {}
    for r in rows:
        if r["kind"] == "sample" and (levels is None or r["difficulty"] in levels):
            pools.setdefault(r["problem_id"], []).append({**r, "scores": {k: v for k, v in r["scores"].items() if v is not None}})
    return list(pools.values())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("config")
    ap.add_argument("--set", dest="sets", action="append", default=[])
    ap.add_argument("--levels", default="", help="difficulties of the 'hardest' problem set, e.g. 5,6")
    ap.add_argument("--rounds", default="", help="default: every published round")
    ap.add_argument("--loop", default="", help="a loop id, when the config no longer names it (e.g. after new fields)")
    ap.add_argument("--out", default="benchmarks/results/verifiers.json")
    args = ap.parse_args()
    cfg = load_config(args.config, args.sets)
    fam = family_of(cfg)
    at = Layout(cfg.store_uri, args.loop, cfg.bootstrap_hash()) if args.loop else Layout.of(cfg)
    rounds = [int(x) for x in args.rounds.split(",") if x] or \
        [n for n in range(cfg.rounds + 1) if store.is_published(at.round(n, "eval"))]
    hard = {int(x) for x in args.levels.split(",") if x}
    out, console = {"loop": at.loop_id, "rounds": {}}, Console(width=250)
    t = Table(title=f"best-of-k on one pool per problem, loop {at.loop_id} (accuracy %, [95% interval])")
    d = Table(title="paired differences at k = N (points, [95% interval])")
    b = Table(title="PRM-guided beam search against best-of-k at the same generated tokens, and at the same "
                    "FLOPs (the PRM's reading counted; all problems)")
    for col in ("round", "problems", "pool", "k", *SHOWN):
        t.add_column(col, justify="right")
    for col in ("round", "problems", "pool", *differences()):
        d.add_column(col, justify="right")
    for col in ("round", "beam accuracy", "tokens = k samples", "best-of-k PRM", "vote", "FLOPs = k PRM-ranked",
                "best-of-k PRM", "FLOPs = k voted", "vote", "training (own held-out split)"):
        b.add_column(col, justify="right")
    for n in rounds:
        rows = store.read_rows(at.round(n, "eval"))
        for name, levels in [("all", None)] + ([(f"levels {','.join(map(str, sorted(hard)))}", hard)] if hard else []):
            pools = pools_of(rows, levels)
            verifiers = sorted(pools[0][0]["scores"]) if pools else []
            metrics, table = bestofk.curve_metrics(pools, verifiers, fam.same_answer, seed=cfg.seed)
            out["rounds"].setdefault(str(n), {})[name] = table
            size = table["pool"]
            for k in sorted({1, size}):
                def cell(sel: str) -> str:
                    v = table["selectors"].get(sel, {}).get(k)
                    return "-" if v is None else f"{100 * v[0]:.1f} [{100 * v[1]:.0f}, {100 * v[2]:.0f}]"
                t.add_row(str(n), name, f"{size} x {table['problems']}", str(k), *map(cell, SHOWN))

            def diff(x: str) -> str:
                v = table["differences"].get(x)
                return "-" if v is None else f"{100 * v[0]:+.1f} [{100 * v[1]:+.0f}, {100 * v[2]:+.0f}]"
            if table["differences"]:
                d.add_row(str(n), name, f"{size} x {table['problems']}", *map(diff, differences()))
        ev = store.read_manifest(at.round(n, "eval")).get("metrics", {})
        trained = {v: {f: store.read_manifest(at.round(n, v))["metrics"].get(f) for f in fields}
                   for v, fields in TRAINING.items() if n > 0 and store.is_published(at.round(n, v))}
        out["rounds"][str(n)]["beam"] = {k: v for k, v in ev.items() if k.startswith("beam/")}
        out["rounds"][str(n)]["training"] = trained
        if "beam/accuracy" in ev or trained:
            pct = lambda key: "-" if ev.get(key) is None else f"{100 * ev[key]:.1f}"  # noqa: E731
            b.add_row(str(n), pct("beam/accuracy"), f"{ev.get('beam/k_equal_tokens', float('nan')):.1f}",
                      pct("beam/bestofk_prm_min_equal_tokens"), pct("beam/vote_equal_tokens"),
                      f"{ev.get('beam/k_equal_compute_bestofk_prm_min', float('nan')):.1f}",
                      pct("beam/bestofk_prm_min_equal_compute"),
                      f"{ev.get('beam/k_equal_compute_vote', float('nan')):.1f}", pct("beam/vote_equal_compute"),
                      "; ".join(f"{v} {f.replace('heldout_', '')} {x:.2f}" for v, fs in trained.items()
                                for f, x in fs.items() if x is not None))
    for table in (t, d, b):
        console.print(table)
    path = ROOT / args.out
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1))
    console.print(f"JSON: {path}")


if __name__ == "__main__":
    main()
