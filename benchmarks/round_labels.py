"""What labels on the *current* generator's traces buy a PRM (issue #12): the measurement that the
one-off budget on G_0 (benchmarks/label_budget.py) pointed at.

    python benchmarks/round_labels.py [--loop-config configs/demo.yaml] [--budgets 250 1000 0] [--set k=v ...]

For each published round n of a loop: its candidates (G_{n-1}'s samples at the round's level) are split
by problem in two halves. N traces of half A (0: all of them) are labelled by the exact step check
(standing in for annotators) through the score stage's `gold` source; a PRM trains on those of four
fifths of half A's problems (the loop's `prm` settings, from G_{n-1}'s backbone), the other fifth sets
its step threshold (best first-error F1 there), and it scores half B's traces: problems it never saw,
at the lengths the round trains on. Measured there against gold, at the threshold and at 0.5:
first-error F1 per difficulty, clean traces called clean, and what a step filter on its scores keeps
against outcome-only filtering.
Writes benchmarks/results/round_labels.json.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from benchmarks.generation import machine_info  # noqa: E402
from benchmarks.label_budget import measure_scored, scored  # noqa: E402
from components.checks import load_config  # noqa: E402
from components.data.prompting import family_of  # noqa: E402
from components.artifacts import store  # noqa: E402
from components.artifacts.layout import Layout  # noqa: E402


def half(problem_id: str) -> str:
    return "A" if hashlib.sha256(problem_id.encode()).digest()[0] % 2 == 0 else "B"


def held_for_calibration(problem_id: str) -> bool:
    """A fifth of half A's problems: labelled like the rest, not trained on, used to set the threshold."""
    return hashlib.sha256(problem_id.encode()).digest()[1] % 5 == 0


def calibrate(cfg, prm_uri: str, rows: list[dict]) -> float:
    """The step threshold with the best first-error F1 on labelled traces the PRM did not train on."""
    from components.labeling.quality import first_error_f1
    from components.labeling.step_labels import first_error_from_scores

    scores = [r["step_scores"] for r in scored(cfg, prm_uri, rows)]
    gold = [r["label_first_error"] for r in rows]
    grid = [i / 100 for i in range(2, 99, 2)]
    return max(grid, key=lambda t: (first_error_f1([first_error_from_scores(s, t) for s in scores], gold)["f1"], -abs(t - 0.5)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--loop-config", default="configs/demo.yaml")
    ap.add_argument("--budgets", type=int, nargs="+", default=[250, 1000, 0], help="traces labelled; 0: all of half A")
    ap.add_argument("--set", action="append", default=[], dest="overrides")
    ap.add_argument("--out", default="benchmarks/results/round_labels.json")
    args = ap.parse_args()
    from components.stages import prm as prm_stage, score

    loop_cfg = load_config(args.loop_config, args.overrides)
    at, fam = Layout.of(loop_cfg), family_of(loop_cfg)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in range(1, loop_cfg.rounds + 1):
            if not store.is_published(at.round(n, "candidates")):
                break
            rows = store.read_rows(at.round(n, "candidates"))
            a = [r for r in rows if half(r["problem_id"]) == "A"]
            b = [{**r, "steps": fam.split_steps(r["completion"])} for r in rows if half(r["problem_id"]) == "B"]
            b = [r for r in b if r["steps"] and r["gold_first_error"] is not None]
            random.Random(f"{loop_cfg.seed}/round-labels/{n}").shuffle(a)
            for budget in args.budgets:
                chosen = a[:budget] if budget else a
                cfg = load_config(args.loop_config, args.overrides + [
                    "scoring.label_source=gold", "scoring.also=[]", "scoring.audit_mc=0",
                    f"prm.max_examples={max(len(chosen), loop_cfg.prm.max_examples)}"])
                t0 = time.perf_counter()
                base = f"{tmp}/round-{n}-{budget}"
                store.write_rows(chosen, f"{base}/labelled-candidates", {"kind": "dataset"})
                score.run(cfg, f"{base}/labelled", at.generator(n - 1), f"{base}/labelled-candidates", n)
                labelled = store.read_rows(f"{base}/labelled")
                calib = [r for r in labelled if held_for_calibration(r["problem_id"]) and r["steps"]
                         and r["label_first_error"] is not None]
                train = [r for r in labelled if not held_for_calibration(r["problem_id"])]
                store.write_rows(train, f"{base}/train", {"kind": "dataset"})
                trained = prm_stage.run(cfg, f"{base}/prm", at.generator(n - 1), n, [f"{base}/train"])
                threshold = calibrate(cfg, f"{base}/prm", calib)
                b_scored = scored(cfg, f"{base}/prm", b)
                results.append({
                    "round": n, "budget": len(chosen), "labelled_flawed_share":
                        sum(r["label_first_error"] is not None and r["label_first_error"] >= 0 for r in labelled)
                        / max(1, len(labelled)),
                    "trained_traces": len(train),
                    "calibration_traces": len(calib), "threshold": threshold,
                    "scored_traces": len(b), "prm_heldout_auroc": trained.get("heldout_auroc"),
                    **measure_scored(cfg, b_scored),
                    **{f"cal_{k}": v for k, v in measure_scored(cfg, b_scored, threshold).items()},
                    "seconds": time.perf_counter() - t0})
                print(results[-1], flush=True)
    levels = sorted({int(k.split("_")[1]) for r in results for k in r if k.startswith("f1_") and k[3:].isdigit()})
    t = Table(title="A PRM trained on N labelled traces of the round's own generator (half A of its problems, a "
                    "fifth held back to set its threshold), scoring half B: first-error F1 vs gold")
    for col in (["round", "labelled", "flawed", "F1 all @0.5", "threshold"] + [f"F1 {k} ops" for k in levels]
                + ["F1 all", "clean called clean", "kept", "kept flawed", "kept flawed @0.5", "outcome-only flawed", "s"]):
        t.add_column(col, justify="right")
    for r in results:
        t.add_row(str(r["round"]), str(r["budget"]), f"{100 * r['labelled_flawed_share']:.0f}%", f"{r['f1_all']:.2f}",
                  f"{r['threshold']:.2f}", *[f"{r.get(f'cal_f1_{k}', float('nan')):.2f}" for k in levels],
                  f"{r['cal_f1_all']:.2f}", f"{r['cal_acc_correct_all']:.2f}", str(r["cal_kept"]),
                  f"{100 * r['cal_kept_flawed_share']:.0f}%", f"{100 * r['kept_flawed_share']:.0f}%",
                  f"{100 * r['outcome_only_flawed_share']:.0f}%", f"{r['seconds']:.0f}")
    Console(width=200).print(t)
    out = {"loop_config": args.loop_config, "overrides": args.overrides, "date": time.strftime("%Y-%m-%d %H:%M"),
           "machine": {**machine_info(), "load_average_end": list(os.getloadavg())}, "results": results}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(f"results: {args.out}")


if __name__ == "__main__":
    main()
