"""Step-level vs outcome-only filtering: the same loop twice, one flag apart.

    python benchmarks/filter_ablation.py [--config configs/demo.yaml] [--set k=v ...]

Both loops share the bootstrap (same bootstrap hash) and differ only in `filter.mode`; loops that are
already published are read back, not recomputed. Prints accuracy per round and the share of kept
traces holding a gold-wrong step, and writes JSON to benchmarks/results/filter_ablation.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from components.config import load_config  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="configs/demo.yaml")
    ap.add_argument("--set", action="append", default=[], dest="overrides")
    ap.add_argument("--out", default="benchmarks/results/filter_ablation.json")
    args = ap.parse_args()
    from flows.self_improve import self_improve

    results = {}
    for mode in ("step", "outcome"):
        cfg = load_config(args.config, args.overrides + [f"filter.mode={mode}"])
        t0 = time.perf_counter()
        out = self_improve(cfg)
        results[mode] = {"loop_id": out["loop_id"], "wall_seconds": time.perf_counter() - t0,
                         "rounds": [{"round": r["round"], "target": r.get("target"), "evaluate": r["evaluate"],
                                     "filter": r.get("filter", {})} for r in out["rounds"]]}
    levels = sorted(int(k[len("pass1_n"):]) for k in results["step"]["rounds"][0]["evaluate"] if k.startswith("pass1_n"))
    t = Table(title="step-level vs outcome-only filtering (held-out greedy pass@1; flawed = kept traces with a gold-wrong step)")
    for col in ["round", "filter", "ops"] + [f"n={n}" for n in levels] + ["kept", "kept flawed"]:
        t.add_column(col, justify="right")
    for i in range(len(results["step"]["rounds"])):
        for mode in ("step", "outcome"):
            r = results[mode]["rounds"][i]
            f = r["filter"]
            t.add_row(str(r["round"]), mode, str(r["target"] or "-"),
                      *[f"{100 * r['evaluate'][f'pass1_n{n}']:.0f}%" for n in levels],
                      str(f.get("kept", "-")), f"{100 * f['kept_flawed_share']:.0f}%" if f else "-")
    Console(width=160).print(t)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"config": args.config, "overrides": args.overrides,
                                          "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
                                          "date": time.strftime("%Y-%m-%d %H:%M"), "results": results}, indent=1))
    print(f"results: {args.out}")


if __name__ == "__main__":
    main()
