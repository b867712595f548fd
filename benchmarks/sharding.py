"""A round unsharded against the same round with its generation, scoring and evaluation in 2 shards
(tasks/shards.py), and with its training stages in 2 data-parallel processes.

    python benchmarks/sharding.py [--config configs/smoke.yaml] [--set k=v ...]

Three ways, one after another in this process, each a fresh store with the same published bootstrap,
on one Prefect server, one MLflow sqlite store and one local Ray head (started here, 1 CPU per shard):
    unsharded    execution.shards=1
    ray x2       execution.engine=ray, shards=2 (prefect-ray: each shard a Prefect task on Ray)
    local x2     execution.engine=local, shards=2 (one shard after the other)
    train x2     execution.train_processes=2 (SFT, PRM, ORM under torchrun, DDP over gloo)
Reports the round's wall time and, per sharded stage (generate, score, evaluate), its wall time, its
slowest shard's own time and the overhead (stage wall minus slowest shard: scheduling, the shards'
engine starts, the merge), and the training stages' times, as ratios to the unsharded run: on 2 cores
neither can be faster, the point is what each costs. The candidates', scored and filtered datasets'
digests are compared too (they must be equal when sharded). Writes benchmarks/results/sharding.json.
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
from components.checks import load_config  # noqa: E402
from components.artifacts import store  # noqa: E402
from components.localstack import services  # noqa: E402
from components.artifacts.layout import Layout  # noqa: E402

WAYS = {"unsharded": [], "ray x2": ["execution.engine=ray", "execution.shards=2"],
        "local x2": ["execution.engine=local", "execution.shards=2"], "train x2": ["execution.train_processes=2"]}
SHARDED = {"generate": "candidates", "score": "scored", "evaluate": "eval"}
TRAINED = {"sft": "model", "prm": "prm", "orm": "orm"}


def one_round(config: str, overrides: list[str], tmp: str, name: str) -> dict:
    from flows.self_improve import self_improve

    dest = f"{tmp}/{name.replace(' ', '-')}"
    cfg = load_config(config, [*overrides, f"store_uri={dest}", "rounds=1", f"tracking_uri=sqlite:///{tmp}/mlflow.db"])
    _seed_store(cfg, dest)
    t0 = time.perf_counter()
    self_improve(cfg)
    wall = time.perf_counter() - t0
    layout, out = Layout.of(cfg), {"round_s": wall}
    for stage, artifact in SHARDED.items():
        m = store.read_manifest(layout.round(1, artifact))["metrics"]
        slowest = m.get("slowest_shard_s", m["seconds"])
        out[stage] = {"s": m["seconds"], "slowest_shard_s": slowest, "overhead_s": m["seconds"] - slowest}
    for stage, artifact in TRAINED.items():
        out[stage] = {"s": store.read_manifest(layout.round(1, artifact))["metrics"]["seconds"]}
    out["digests"] = [store.read_manifest(layout.round(1, a))["digests"] for a in ("candidates", "scored", "filtered")]
    return out


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
    t = Table(title=f"one {Path(args.config).stem} round: generation, scoring and evaluation unsharded and in 2 shards, "
                    f"training in 1 and 2 processes ({os.cpu_count()} CPUs)")
    for col in ("way", "round s", "x", *(f"{st} s (x; overhead s)" for st in SHARDED), *(f"{st} s (x)" for st in TRAINED),
                "same data"):
        t.add_column(col, justify="right")
    for name, r in results.items():
        t.add_row(name, f"{r['round_s']:.0f}", f"{r['round_s'] / base['round_s']:.2f}",
                  *(f"{r[st]['s']:.1f} ({r[st]['s'] / base[st]['s']:.2f}; {r[st]['overhead_s']:.1f})" for st in SHARDED),
                  *(f"{r[st]['s']:.1f} ({r[st]['s'] / base[st]['s']:.2f})" for st in TRAINED),
                  "yes" if r["digests"] == base["digests"] else "NO")
    Console(width=200).print(t)
    print(f"Ray head start: {startup.get('ray-head', float('nan')):.1f} s")
    out = ROOT / "benchmarks/results/sharding.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"config": args.config, "overrides": args.set, "host": platform.node(),
                               "cpus": os.cpu_count(), "ray_head_start_s": startup.get("ray-head"),
                               "results": {k: {x: y for x, y in v.items() if x != "digests"} | {
                                   "same_data": v["digests"] == base["digests"]} for k, v in results.items()}},
                              indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
