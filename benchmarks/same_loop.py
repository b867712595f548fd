"""One loop computed twice (e.g. `hardware.packing` off and on, or on another thread count), side by
side from the two runs' MLflow stores: per round, greedy pass@1 at the hardest levels, best-of-N by
selector with its 95% interval, the PRM's first-error F1, and what the training stages took.

    python benchmarks/same_loop.py LOOP_ID LABEL=TRACKING_URI LABEL=TRACKING_URI [--out FILE]
    python benchmarks/same_loop.py demo-b72a45f165 padded=sqlite:////tmp/a/mlflow.db packed=sqlite:////tmp/b/mlflow.db

`hardware` is not part of a loop's identity, so the runs must each have had a store of their own.
Prints the table; writes benchmarks/results/same_loop.json (`--out`).
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

from components.evaluation import report  # noqa: E402
from components.artifacts import tracking  # noqa: E402

STAGES = ("train_generator", "train_prm", "train_orm", "train_dpo", "evaluate")


def rounds_of(loop: str, uri: str, experiment: str) -> list[dict]:
    from mlflow import MlflowClient

    parent, children = tracking.loop_runs(MlflowClient(uri), experiment, loop)
    return report.rounds_from_runs(children)


def row(r: dict, levels: list[int]) -> dict:
    ev, n = r["evaluate"], int(r["evaluate"].get("bok_pool") or 0)
    out = {f"pass1_n{lv}": ev.get(f"pass1_n{lv}") for lv in levels}
    out["maj_at_k_all"] = ev.get("maj_at_k_all")
    for s in report.selectors()[1:]:
        key = f"bok/{s}/k{n}"
        if key in ev:
            out[f"bok16/{s}"] = [ev[key], ev[key + "/lo"], ev[key + "/hi"]]
    out["prm_f1_calibrated"] = ev.get("prm_f1_calibrated")
    out["seconds"] = {s: r.get(s, {}).get("seconds") for s in STAGES}
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("loop")
    ap.add_argument("runs", nargs=2, metavar="LABEL=TRACKING_URI")
    ap.add_argument("--experiment", default="vstar")
    ap.add_argument("--levels", default="5,6")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/same_loop.json"))
    args = ap.parse_args(argv)
    levels = [int(x) for x in args.levels.split(",")]
    runs = dict(r.split("=", 1) for r in args.runs)
    data = {label: {r["round"]: row(r, levels) for r in rounds_of(args.loop, uri, args.experiment)}
            for label, uri in runs.items()}
    (a, ra), (b, rb) = data.items()
    t = Table(title=f"{args.loop}: {a} vs {b} (best-of-N: % [95% interval]; seconds: the stage's own)")
    for col in ("round", "figure", a, b):
        t.add_column(col, justify="left" if col == "figure" else "right")
    fmt = lambda v: ("-" if v is None else f"{100 * v[0]:.0f} [{100 * v[1]:.0f}, {100 * v[2]:.0f}]"  # noqa: E731
                     if isinstance(v, list) else f"{100 * v:.1f}%" if v <= 1 else f"{v:.0f}")
    for n in sorted(set(ra) & set(rb)):
        keys = [k for k in ra[n] if k != "seconds"]
        for k in keys:
            t.add_row(str(n), k, fmt(ra[n].get(k)), fmt(rb[n].get(k)))
        for s in STAGES:
            x, y = ra[n]["seconds"].get(s), rb[n]["seconds"].get(s)
            if x or y:
                t.add_row(str(n), f"{s} seconds", f"{x:.0f}" if x else "-",
                          f"{y:.0f}" + (f" ({y / x:.2f}x)" if x and y else "") if y else "-")
        t.add_section()
    Console(width=140).print(t)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"loop": args.loop, "runs": runs, "rounds": data}, indent=1))
    print(f"results: {args.out}")
    return data


if __name__ == "__main__":
    main()
