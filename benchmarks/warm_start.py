"""Warm starts of stage children (components/runtime/warm.py) against a new Python per stage.

    python benchmarks/warm_start.py [--config configs/smoke.yaml] [--set k=v ...] [--repeats 3]

Two measurements, each warm and plain in the same run (ratios, not absolute seconds: these machines
are noisy):
    start    a child that imports what a vLLM stage imports (torch, transformers' auto classes and
             Trainer, vLLM's LLM) and returns: the fixed cost of a stage child, `repeats` times each
             way (the warm way's first call starts the helper and is shown apart);
    round    one round of a fresh loop on the same published bootstrap (`vstar run`, in a new
             process each, so each way starts cold): wall seconds, and the stages' own seconds.
Prints a table and writes benchmarks/results/warm_start.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from benchmarks.orchestration import STAGES, _seed_store  # noqa: E402
from components.checks import load_config  # noqa: E402
from components.artifacts import store  # noqa: E402
from components.artifacts.layout import Layout  # noqa: E402


def imports() -> bool:
    """What a vLLM stage child imports before its own work (transformers is lazy: the names a stage
    uses, not its top level, are what cost)."""
    import torch  # noqa: F401
    from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer  # noqa: F401
    from vllm import LLM  # noqa: F401

    return True


def child_starts(repeats: int, warm: bool) -> list[float]:
    from components.runtime.isolation import call_isolated

    os.environ["VSTAR_WARM_START"] = "1" if warm else "0"
    out = []
    with tempfile.TemporaryDirectory() as logs:
        for _ in range(repeats + warm):  # warm: one more, the helper's own start
            t0 = time.perf_counter()
            call_isolated("benchmarks.warm_start:imports", {}, "imports", log_dir=logs)
            out.append(time.perf_counter() - t0)
    return out


def one_round(config: str, overrides: list[str], warm: bool) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        over = [*overrides, f"store_uri={tmp}/store", f"tracking_uri=sqlite:///{tmp}/mlflow.db"]
        cfg = load_config(config, over)
        _seed_store(cfg, f"{tmp}/store")
        env = {**os.environ, "VSTAR_WARM_START": "1" if warm else "0", "PREFECT_HOME": f"{tmp}/prefect"}
        env = {k: v for k, v in env.items() if k not in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI")}
        t0 = time.perf_counter()
        proc = subprocess.run([str(Path(sys.executable).parent / "vstar"), "run", config, *[x for o in over for x in ("--set", o)]],
                              cwd=ROOT, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise SystemExit(proc.stdout[-3000:] + proc.stderr[-3000:])
        stages = 0.0
        for a in ("candidates", "scored", "filtered", "model", "prm", "eval"):
            uri = Layout(cfg.store_uri, cfg.loop_id()).round(1, a)
            if store.is_published(uri):
                stages += float(store.read_manifest(uri).get("metrics", {}).get("seconds", 0.0))
        return {"wall_s": wall, "stages_s": stages}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="configs/smoke.yaml")
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    plain, warm = child_starts(args.repeats, False), child_starts(args.repeats, True)
    rounds = {way: one_round(args.config, args.set, way == "warm") for way in ("plain", "warm")}
    t = Table(title=f"stage child start and one {Path(args.config).stem} round: warm vs a new Python per stage")
    for col in ("way", "child start s (median)", "helper start s", "round wall s", "stages' own s"):
        t.add_column(col, justify="right")
    t.add_row("plain", f"{statistics.median(plain):.2f}", "-", f"{rounds['plain']['wall_s']:.0f}",
              f"{rounds['plain']['stages_s']:.0f}")
    t.add_row("warm", f"{statistics.median(warm[1:]):.2f}", f"{warm[0]:.1f}", f"{rounds['warm']['wall_s']:.0f}",
              f"{rounds['warm']['stages_s']:.0f}")
    Console().print(t)
    ratio = rounds["warm"]["wall_s"] / rounds["plain"]["wall_s"]
    print(f"round wall, warm / plain: {ratio:.2f}; child start, warm / plain: "
          f"{statistics.median(warm[1:]) / statistics.median(plain):.3f}")
    out = ROOT / "benchmarks/results/warm_start.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"config": args.config, "overrides": args.set, "host": platform.node(),
                               "cpus": os.cpu_count(), "child_start_s": {"plain": plain, "warm": warm},
                               "round": rounds, "round_ratio_warm_plain": ratio, "stages": STAGES}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
