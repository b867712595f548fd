"""Which filter makes the loop improve: the oracle, learned step signals, or the outcome alone, from
one bootstrap.

    python benchmarks/filter_ablation.py [--config configs/demo.yaml] [--arms gold confidence outcome ...] [--set k=v ...]

Every arm is the config's loop with its step labels (or filter) replaced, sharing the bootstrap
(same bootstrap hash); loops already published are read back, not recomputed. Arms:

    gold        the arith family's exact step check: an oracle no real task has, the ceiling
    calc        the family's calculator: each step's stated arithmetic recomputed from the trace alone
    confidence  the generator's own per-step token confidence (free: one prefill pass)
    confidence+calc  the confidence labels, overruled by the calculator (`scoring.calculator`)
    mc          Monte Carlo rollouts (Math-Shepherd)
    labels      a PRM trained on a labelling budget (`scoring.labels.budget`, 1,000 traces)
    implicit    the previous round's DPO verifier read as an implicit PRM, at its calibrated threshold
                (round 1, before there is one: the calculator)
    outcome     outcome-only filtering (STaR): the answer check alone

The verifiers the demo trains for evaluation only (ORM, DPO, beam search, a pool of 16) are off here:
they change nothing the filter keeps, and cost ~8 min a loop (`--set orm.enabled=true` etc. brings
them back); the PRM stays as the config has it (the `labels` arm needs one).

Prints held-out greedy pass@1 per round, what the filter kept and the share of kept traces holding a
gold-wrong step, the label source's first-error F1 vs gold, the PRM's, and best-of-k by PRM vs
majority vote; writes JSON to benchmarks/results/filter_ablation.json.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from benchmarks.common import pct, write_results  # noqa: E402
from components.checks import load_config  # noqa: E402

EVAL_ONLY_OFF = ["orm.enabled=false", "dpo.enabled=false", "eval.beam.enabled=false", "eval.k=4",
                 "eval.sampled_per_level=30"]
ARMS = {
    "gold": ["scoring.label_source=gold", "filter.mode=step"],
    "calc": ["scoring.label_source=calc", "filter.mode=step"],
    "confidence": ["scoring.label_source=confidence", "filter.mode=step"],
    "confidence+calc": ["scoring.label_source=confidence", "scoring.calculator.enabled=true", "filter.mode=step"],
    "mc": ["scoring.label_source=mc", "filter.mode=step"],
    "labels": ["scoring.label_source=labels", "scoring.labels.budget=1000", "filter.mode=step"],
    # the DPO verifier of the round before as an implicit PRM; round 1 (none yet) on the calculator
    "implicit": ["scoring.label_source=implicit", "scoring.first_round_source=calc", "dpo.enabled=true",
                 "filter.mode=step"],
    "outcome": ["filter.mode=outcome"],
}


def num(x) -> str:
    return "-" if x is None or x != x else f"{x:.2f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="configs/demo.yaml")
    ap.add_argument("--arms", nargs="+", default=["gold", "calc", "confidence", "outcome"], choices=sorted(ARMS))
    ap.add_argument("--set", action="append", default=[], dest="overrides")
    ap.add_argument("--out", default="benchmarks/results/filter_ablation.json")
    args = ap.parse_args()
    from flows.self_improve import self_improve

    results = {}
    for arm in args.arms:
        cfg = load_config(args.config, EVAL_ONLY_OFF + args.overrides + ARMS[arm])
        t0 = time.perf_counter()
        out = self_improve(cfg)
        results[arm] = {"loop_id": out["loop_id"], "overrides": ARMS[arm], "wall_seconds": time.perf_counter() - t0,
                        "rounds": [{"round": r["round"], "target": r.get("target"), "evaluate": r["evaluate"],
                                    "filter": r.get("filter", {}), "score": r.get("score", {})} for r in out["rounds"]]}
    first = results[args.arms[0]]["rounds"]
    levels = sorted(int(k[len("pass1_n"):]) for k in first[0]["evaluate"] if k.startswith("pass1_n"))
    t = Table(title="filters from one bootstrap (held-out greedy pass@1; kept flawed = kept traces with a gold-wrong step)")
    for col in ["round", "arm", "ops"] + [f"n={n}" for n in levels] + ["kept", "kept flawed", "label F1",
                                                                       "PRM F1", "best-of-k PRM", "maj@k"]:
        t.add_column(col, justify="right")
    for i in range(len(first)):
        for arm in args.arms if i else args.arms[:1]:
            r = results[arm]["rounds"][i]
            f, e = r["filter"], r["evaluate"]
            t.add_row(str(r["round"]), arm if i else "(bootstrap)", str(r["target"] or "-"),
                      *[pct(e[f"pass1_n{n}"]) for n in levels], str(f.get("kept", "-")),
                      pct(f.get("kept_flawed_share")), num(r["score"].get("label_f1")), num(e.get("prm_f1")),
                      pct(e.get("bestofk_prm_min_all")), pct(e.get("maj_at_k_all")))
    Console(width=180).print(t)
    write_results(args.out, args.config, args.overrides, results)


if __name__ == "__main__":
    main()
