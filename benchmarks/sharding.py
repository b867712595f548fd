"""A round unsharded against the same round with its generation in 2 shards (tasks/shards.py).

    python benchmarks/sharding.py [--config configs/smoke.yaml] [--set k=v ...]

Three ways, one after another in this process, each a fresh store with the same published bootstrap,
on one Prefect server, one MLflow sqlite store and one local Ray head (started here, 1 CPU per shard):
    unsharded    execution.shards=1
    ray x2       execution.engine=ray, shards=2 (prefect-ray: each shard a Prefect task on Ray)
    local x2     execution.engine=local, shards=2 (one shard after the other)
Reports the round's wall time, the generate stage's, its slowest shard's own time, and the overhead
(stage wall minus slowest shard: scheduling, the shards' engine starts, the merge), as ratios to the
unsharded run: on 2 cores a sharded round cannot be faster, the point is what sharding costs. The
candidates' digests are compared too (they must be equal). Writes benchmarks/results/sharding.json.
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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from benchmarks.orchestration import _seed_store  # noqa: E402
from components.config import load_config  # noqa: E402
from components.infra import services, store  # noqa: E402
from components.infra.layout import Layout  # noqa: E402

WAYS = {"unsharded": [], "ray x2": ["execution.engine=ray", "execution.shards=2"],
        "local x2": ["execution.engine=local", "execution.shards=2"]}


def one_round(config: str, overrides: list[str], tmp: str, name: str) -> dict:
    from flows.self_improve import self_improve

    dest = f"{tmp}/{name.replace(' ', '-')}"
    cfg = load_config(config, [*overrides, f"store_uri={dest}", "rounds=1", f"tracking_uri=sqlite:///{tmp}/mlflow.db"])
    _seed_store(cfg, dest)
    t0 = time.perf_counter()
    self_improve(cfg)
    wall = time.perf_counter() - t0
    m = store.read_manifest(Layout.of(cfg).round(1, "candidates"))
    g = m["metrics"]
    slowest = g.get("slowest_shard_s", g["seconds"])
    return {"round_s": wall, "generate_s": g["seconds"], "slowest_shard_s": slowest,
            "overhead_s": g["seconds"] - slowest if "shards" in g else 0.0,
            "engine_load_s": g["engine_load_s"], "traces": g["traces"], "digests": m["digests"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="configs/smoke.yaml")
    ap.add_argument("--set", action="append", default=[])
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp, services.ServiceStack(tmp) as stack:
        stack.prefect_server()
        head = stack.ray_head(num_cpus=2)
        if "prefect.context" in sys.modules:  # Prefect read its settings at import, before the server
            sys.modules["prefect.context"].refresh_global_settings_context()
        results = {}
        for name, way in WAYS.items():
            extra = [f"execution.address={head.address}"] if "ray" in name else []
            results[name] = one_round(args.config, [*args.set, *way, *extra], tmp, name)
        startup = stack.startup_times()

    base = results["unsharded"]
    t = Table(title=f"one {Path(args.config).stem} round, generation unsharded and in 2 shards "
                    f"({os.cpu_count()} CPUs)")
    for col in ("way", "round s", "x unsharded", "generate s", "x unsharded", "slowest shard s",
                "overhead s", "engine loads s (sum)", "same candidates"):
        t.add_column(col, justify="right")
    for name, r in results.items():
        t.add_row(name, f"{r['round_s']:.0f}", f"{r['round_s'] / base['round_s']:.2f}", f"{r['generate_s']:.1f}",
                  f"{r['generate_s'] / base['generate_s']:.2f}", f"{r['slowest_shard_s']:.1f}",
                  f"{r['overhead_s']:.1f}", f"{r['engine_load_s']:.1f}",
                  "yes" if r["digests"] == base["digests"] else "NO")
    Console(width=160).print(t)
    print(f"Ray head start: {startup.get('ray-head', float('nan')):.1f} s")
    out = ROOT / "benchmarks/results/sharding.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"config": args.config, "overrides": args.set, "host": platform.node(),
                               "cpus": os.cpu_count(), "ray_head_start_s": startup.get("ray-head"),
                               "results": {k: {x: y for x, y in v.items() if x != "digests"} | {
                                   "same_candidates": v["digests"] == base["digests"]} for k, v in results.items()}},
                              indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
