"""What kind of wrong step a right answer hides, and which free signal sees it (arith family).

    python benchmarks/error_kinds.py LOOP_ID [LOOP_ID ...] [--store .vstar/store]

Reads the published `scored` datasets of each round of each loop (nothing is generated or trained).
For every right-answer trace with a gold-wrong step, its first wrong step is sorted by what went wrong:

    arithmetic     `a<op>c=r` with r not what a<op>c computes (a calculator sees it)
    carried        the step starts from another value than the step before ended on (a calculator sees it)
    wrong op       the step computes right but is not the problem's next op: skipped, repeated, or a
                   constant misread (only a check against the problem sees it: the exact check)
    format         a line that is no step

Then, among all right answers of the round's hardest level, the share holding a gold-wrong step that
each signal would keep: outcome only, the generator's confidence labels (when the loop scored them),
the calculator (`calc`), and both. Prints the tables, writes benchmarks/results/error_kinds.json.
"""
from __future__ import annotations

import argparse
import collections
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from benchmarks.generation import machine_info  # noqa: E402
from components.data.families.arith import APPLY, EQUATION, Arith  # noqa: E402
from components.artifacts import store  # noqa: E402
from components.artifacts.layout import Layout  # noqa: E402

KINDS = ("arithmetic", "carried", "wrong op", "format")


def kind(prompt: str, steps: list[str], first_error: int) -> str:
    """What went wrong at the first wrong step (its predecessors are the gold ones, by definition)."""
    start, *ops = prompt.split()
    ops = [(o[0], int(o[1:])) for o in ops]
    value = int(start)
    for sym, c in ops[:first_error]:
        value = APPLY[sym](value, c)
    m = EQUATION.fullmatch(steps[first_error])
    if not m:
        return "format"
    a, sym, c, r = int(m[1]), m[2], int(m[3]), int(m[4])
    if APPLY[sym](a, c) != r:
        return "arithmetic"
    if a != value:
        return "carried"
    return "wrong op"


def round_stats(rows: list[dict], calculator: Arith) -> dict:
    right = [r for r in rows if r["correct"]]
    flawed = [r for r in right if r["gold_first_error"] is not None and r["gold_first_error"] >= 0]
    kinds = collections.Counter(kind(r["prompt"], list(r["steps"]), r["gold_first_error"]) for r in flawed)
    top = max(r["difficulty"] for r in rows)
    at_top = [r for r in right if r["difficulty"] == top]
    calc_ok = {id(r): 0 not in calculator.calculator_labels(list(r["steps"])) for r in at_top}
    has_conf = all(r.get("confidence_first_error") is not None for r in at_top)
    keeps = {"outcome": lambda r: True, "calc": lambda r: calc_ok[id(r)]}
    if has_conf:
        keeps["confidence"] = lambda r: r["confidence_first_error"] == -1
        keeps["confidence and calc"] = lambda r: r["confidence_first_error"] == -1 and calc_ok[id(r)]
    kept = {}
    for name, keep in keeps.items():
        k = [r for r in at_top if keep(r)]
        kept[name] = {"kept": len(k), "flawed_share": sum(r["gold_first_error"] >= 0 for r in k) / len(k) if k else None}
    return {"right": len(right), "flawed": len(flawed), "kinds": {x: kinds.get(x, 0) for x in KINDS},
            "top_level": top, "right_at_top": len(at_top), "kept_at_top": kept}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("loops", nargs="+")
    ap.add_argument("--store", default=".vstar/store")
    ap.add_argument("--out", default="benchmarks/results/error_kinds.json")
    args = ap.parse_args()
    calculator = Arith.__new__(Arith)  # calculator_labels reads the steps alone: no config needed
    results = {}
    for loop in args.loops:
        layout, rounds = Layout(args.store, loop), []
        for n in range(1, 100):
            uri = layout.round(n, "scored")
            if not store.is_published(uri):
                break
            rounds.append({"round": n, **round_stats(store.read_rows(uri), calculator)})
        results[loop] = rounds
    t = Table(title="first wrong step of right-answer traces, by kind")
    for col in ("loop", "round", "right answers", "flawed", *KINDS):
        t.add_column(col, justify="right")
    for loop, rounds in results.items():
        for r in rounds:
            t.add_row(loop, str(r["round"]), str(r["right"]), str(r["flawed"]),
                      *[f"{r['kinds'][k] / max(r['flawed'], 1):.0%}" for k in KINDS])
    Console(width=160).print(t)
    t = Table(title="at the round's hardest level: right answers each signal keeps, and the share of them flawed")
    for col in ("loop", "round", "ops", "outcome", "confidence", "calc", "confidence and calc"):
        t.add_column(col, justify="right")
    for loop, rounds in results.items():
        for r in rounds:
            cell = lambda k: (f"{r['kept_at_top'][k]['kept']} / {r['kept_at_top'][k]['flawed_share']:.0%}"
                              if k in r["kept_at_top"] and r["kept_at_top"][k]["flawed_share"] is not None else "-")
            t.add_row(loop, str(r["round"]), str(r["top_level"]), *[cell(k) for k in ("outcome", "confidence", "calc", "confidence and calc")])
    Console(width=160).print(t)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"loops": args.loops, "store": args.store, "machine": machine_info(),
                                          "date": time.strftime("%Y-%m-%d %H:%M"), "results": results}, indent=1))
    print(f"results: {args.out}")


if __name__ == "__main__":
    main()
