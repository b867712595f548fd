"""What labels on the *current* generator's traces buy a PRM (issue #12): the measurement that the
one-off budget on G_0 (benchmarks/label_budget.py) pointed at.

    python benchmarks/round_labels.py [--loop-config configs/demo.yaml] [--budgets 250 1000 0] [--set k=v ...]

For each published round n of a loop: its candidates (G_{n-1}'s samples at the round's level) are split
by problem in two halves. N traces of half A (0: all of them) are labelled by the exact step check
(standing in for annotators) through the score stage's `gold` source; a PRM trains on them alone (the
loop's `prm` settings, from G_{n-1}'s backbone) and scores half B's traces: problems it never saw, at
the lengths the round trains on. Measured there against gold: first-error F1 per difficulty, clean
traces called clean, and what a step filter on its scores keeps against outcome-only filtering.
Writes benchmarks/results/round_labels.json.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from benchmarks.label_budget import measure  # noqa: E402
from components.config import load_config  # noqa: E402
from components.data.prompting import family_of  # noqa: E402
from components.infra import store  # noqa: E402
from components.infra.layout import Layout  # noqa: E402


def half(problem_id: str) -> str:
    return "A" if hashlib.sha256(problem_id.encode()).digest()[0] % 2 == 0 else "B"


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
                score.run(cfg, f"{base}/labelled", at.model(n - 1), f"{base}/labelled-candidates", n)
                trained = prm_stage.run(cfg, f"{base}/prm", at.model(n - 1), n, [f"{base}/labelled"])
                labelled = store.read_rows(f"{base}/labelled")
                results.append({
                    "round": n, "budget": len(chosen), "labelled_flawed_share":
                        sum(r["label_first_error"] is not None and r["label_first_error"] >= 0 for r in labelled)
                        / max(1, len(labelled)),
                    "scored_traces": len(b), "prm_heldout_auroc": trained.get("heldout_auroc"),
                    **measure(cfg, f"{base}/prm", b), "seconds": time.perf_counter() - t0})
                print(results[-1], flush=True)
    levels = sorted({int(k.split("_")[1]) for r in results for k in r if k.startswith("f1_") and k[3:].isdigit()})
    t = Table(title="A PRM trained on N labelled traces of the round's own generator (half A of its problems), "
                    "scoring half B (first-error F1 vs gold)")
    for col in (["round", "labelled", "flawed"] + [f"F1 {k} ops" for k in levels]
                + [f"clean {k} ops called clean" for k in levels] + ["F1 all", "kept", "kept flawed",
                                                                     "outcome-only flawed", "s"]):
        t.add_column(col, justify="right")
    for r in results:
        t.add_row(str(r["round"]), str(r["budget"]), f"{100 * r['labelled_flawed_share']:.0f}%",
                  *[f"{r.get(f'f1_{k}', float('nan')):.2f}" for k in levels],
                  *[f"{r.get(f'acc_correct_{k}', float('nan')):.2f}" for k in levels],
                  f"{r['f1_all']:.2f}", str(r["kept"]), f"{100 * r['kept_flawed_share']:.0f}%",
                  f"{100 * r['outcome_only_flawed_share']:.0f}%", f"{r['seconds']:.0f}")
    Console(width=200).print(t)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"loop_config": args.loop_config, "overrides": args.overrides,
                                          "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
                                          "date": time.strftime("%Y-%m-%d %H:%M"), "results": results}, indent=1))
    print(f"results: {args.out}")


if __name__ == "__main__":
    main()
