#!/usr/bin/env python
"""Monte Carlo step labels: per-step MC (Math-Shepherd) vs binary search for the first error (OmegaPRM).

The same candidate traces for every row: k samples from the config's bootstrap model (taken from the
store, trained first if missing) for train problems with the given numbers of ops. Each row labels
all of them and counts model calls per labeled trace (prefix estimates, rollouts, generated tokens),
engine calls and wall time, and scores the labels' first errors against the family's exact step
check (first-error F1, ProcessBench). One in-process vLLM engine; its prefix cache is emptied before
each row so no row reuses the KV of another.

    .venv/bin/python benchmarks/mc_labeling.py                         # 100 problems x k=4, N in 4,8,16
    .venv/bin/python benchmarks/mc_labeling.py --problems 20 --rollouts 4 --model-dir PATH/TO/HF/MODEL
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: make `components` importable
    sys.path.insert(0, str(ROOT))

# name -> (labeller, MCConfig switches); the early-stop chunk is set per N (see `methods`).
METHODS = {
    "per-step": ("estimate", {}),
    "binary": ("estimate_binary", {"share_prefixes": False, "reuse_completion": False}),
    "binary +share": ("estimate_binary", {"share_prefixes": True, "reuse_completion": False}),
    "binary +share +reuse": ("estimate_binary", {"share_prefixes": True, "reuse_completion": True}),
    "binary +share +reuse +early stop": ("estimate_binary", {"share_prefixes": True, "reuse_completion": True,
                                                             "early_stop_chunk": None}),
}


def methods(n: int) -> dict:
    """METHODS with the early-stop chunk filled in: a quarter of N at a time."""
    return {name: (fn, {k: (max(1, n // 4) if v is None else v) for k, v in sw.items()})
            for name, (fn, sw) in METHODS.items()}


def sample_traces(cfg, engine, fam, ops: list[int], problems: int, k: int, seed: int):
    from components.models.generation import Sampling

    probs = [p for p in fam.problems("train") if p.difficulty in ops][:problems]
    if not probs:
        raise SystemExit(f"no train problems with {ops} ops in {cfg.name}'s family")
    outs = engine.generate([p.prompt for p in probs], Sampling(n=k, temperature=cfg.generation.temperature,
                                                               max_tokens=cfg.generation.max_tokens, seed=seed))
    return [(p, s.text) for p, o in zip(probs, outs) for s in o]


def label(method: str, fn: str, switches: dict, n: int, cfg, engine, fam, items, gold, seed: int) -> dict:
    from components.labeling import montecarlo
    from components.labeling.quality import first_error_f1

    mc = cfg.scoring.mc.model_copy(update={"rollouts": n, **switches})
    engine.llm.reset_prefix_cache()
    t0 = time.perf_counter()
    results, stats = getattr(montecarlo, fn)(fam, engine, items, mc, cfg.generation.max_tokens, seed)
    wall = time.perf_counter() - t0
    q = first_error_f1([r.first_error for r in results], gold)
    per = {f"{k}_per_trace": stats[k] / len(items) for k in ("mc_estimates", "mc_rollouts", "mc_rollout_tokens")}
    return {"method": method, "rollouts_N": n, "mc": mc.model_dump(), "stats": stats, **per, "wall_s": wall,
            **{f"label_{k}": v for k, v in q.items()}}


def print_table(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    s = report["settings"]
    t = Table(title=f"MC step labels on {s['traces']} traces ({s['problems']} train problems with {s['ops']} ops "
                    f"x k={s['k']}): per-step vs binary search",
              caption="per trace: prefix estimates / rollouts / generated tokens; 'vs per-step' = binary's "
                      "rollouts and tokens over per-step's at the same N; F1 = first-error F1 vs gold.",
              caption_justify="left")
    for col in ["N", "method", "estimates", "rollouts", "tokens", "engine calls", "wall s", "F1",
                "acc err", "acc ok", "rollouts vs per-step", "tokens vs per-step"]:
        t.add_column(col, justify="left" if col == "method" else "right")
    for n in s["rollouts"]:
        rows = [r for r in report["rows"] if r["rollouts_N"] == n]
        base = next(r for r in rows if r["method"] == "per-step")
        for r in rows:
            t.add_row(str(n), r["method"], f"{r['mc_estimates_per_trace']:.2f}", f"{r['mc_rollouts_per_trace']:.1f}",
                      f"{r['mc_rollout_tokens_per_trace']:.0f}", str(r["stats"]["mc_engine_calls"]),
                      f"{r['wall_s']:.1f}", f"{r['label_f1']:.3f}", f"{r['label_acc_erroneous']:.3f}",
                      f"{r['label_acc_correct']:.3f}",
                      f"{r['mc_rollouts_per_trace'] / base['mc_rollouts_per_trace']:.0%}",
                      f"{r['mc_rollout_tokens_per_trace'] / base['mc_rollout_tokens_per_trace']:.0%}")
        t.add_section()
    Console(width=170).print(t)


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--config", default="configs/demo.yaml", help="run config (bootstrap model, family, MC settings)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override, repeatable")
    ap.add_argument("--model-dir", help="HF model folder to use instead of the config's bootstrap model")
    ap.add_argument("--problems", type=int, default=100, help="train problems (the first ones with --ops ops)")
    ap.add_argument("--ops", default="4,5", help="numbers of ops of the problems, comma-separated")
    ap.add_argument("--k", type=int, default=4, help="candidates sampled per problem")
    ap.add_argument("--rollouts", default="4,8,16", help="N, rollouts per estimate, comma-separated")
    ap.add_argument("--methods", default=",".join(METHODS), help="rows to run, comma-separated")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="benchmarks/results/mc_labeling.json")
    args = ap.parse_args(argv)
    args.ops = [int(x) for x in args.ops.split(",")]
    args.rollouts = [int(x) for x in args.rollouts.split(",")]
    args.methods = [m.strip() for m in args.methods.split(",")]
    unknown = set(args.methods) - set(METHODS)
    if unknown or "per-step" not in args.methods:
        ap.error(f"--methods: need per-step (the baseline) and names from {list(METHODS)}; unknown: {sorted(unknown)}")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    from benchmarks.generation import bootstrap_dir, machine_info
    from benchmarks.common import config_or_exit, write_report
    from components.data.families import get_family
    from components.models.generation import load_backend

    cfg = config_or_exit(args.config, args.set)
    fam = get_family(cfg.family, cfg.seed)
    model_dir = Path(args.model_dir).resolve() if args.model_dir else bootstrap_dir(cfg)
    t_start = time.perf_counter()
    from components.models.hardware import resolve

    engine = load_backend("vllm", str(model_dir), cfg.generation, cfg.model.max_positions, resolve(cfg.hardware))
    items = sample_traces(cfg, engine, fam, args.ops, args.problems, args.k, args.seed)
    gold = [fam.first_error(p, c) for p, c in items]
    print(f"[note] {len(items)} traces, {sum(g < 0 for g in gold)} gold-correct, "
          f"{sum(fam.is_correct(p, c) for p, c in items)} with the right answer", flush=True)
    rows = []
    for n in args.rollouts:
        for name, (fn, sw) in methods(n).items():
            if name in args.methods:
                rows.append(label(name, fn, sw, n, cfg, engine, fam, items, gold, args.seed + 1))
                r = rows[-1]
                print(f"[run] N={n} {name}: {r['stats']['mc_rollouts']:,} rollouts, {r['wall_s']:.1f} s, "
                      f"F1 {r['label_f1']:.3f}", flush=True)
    report = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
              "machine": {**machine_info(), "load_average_end": list(os.getloadavg())},
              "settings": {"config": args.config, "overrides": args.set, "model_dir": str(model_dir),
                           "problems": len({p.id for p, _ in items}), "ops": args.ops, "k": args.k,
                           "traces": len(items), "rollouts": args.rollouts, "seed": args.seed,
                           "temperature": cfg.scoring.mc.temperature, "max_tokens": cfg.generation.max_tokens,
                           "gold_correct": sum(g < 0 for g in gold)},
              "total_s": time.perf_counter() - t_start, "rows": rows}
    return write_report(args.out, report, print_table)


if __name__ == "__main__":
    main()
