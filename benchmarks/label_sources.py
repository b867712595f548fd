"""Every label source inside the round flow on the demo config, measured against the gold step labels.

    python benchmarks/label_sources.py [--labels PRM800K_JSONL] [--set k=v ...]

Three one-round loops on the demo's bootstrap:
  consensus  filters on MC∧judge (the judge is the small one the loop trains), with mc, mc_binary,
             judge and gold scored beside it on the same traces for the label-quality report;
  labels     filters with a PRM trained on imported human labels: a PRM800K file (--labels), by
             default a labelling budget (`scoring.labels.budget`, 1,000 traces of G_0 on problems set
             aside from every round and from evaluation, so PRM_0 never scores what it trained on);
  remote     filters on the judge served by `vllm serve` (OpenAI-compatible HTTP) on 127.0.0.1.
Prints per source: first-error F1 vs gold, model calls, kept traces, and the share of kept traces
holding a gold-wrong step; writes benchmarks/results/label_sources.json.
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

from components.artifacts import store  # noqa: E402
from components.checks import load_config  # noqa: E402
from components.loop import judge_uri  # noqa: E402


PRIMARY = {"consensus": "consensus", "labels": "labels", "remote judge": "judge"}  # loop -> what it filters on


def run(config: str, overrides: list[str]) -> dict:
    from flows.self_improve import self_improve

    cfg = load_config(config, overrides)
    t0 = time.perf_counter()
    out = self_improve(cfg)
    r1 = out["rounds"][1]
    return {"loop_id": out["loop_id"], "overrides": overrides, "wall_s": time.perf_counter() - t0,
            "score": r1["score"], "filter": r1["filter"], "evaluate": r1["evaluate"],
            "judge_heldout_f1": store.read_manifest(judge_uri(cfg)).get("metrics", {}).get("heldout_f1")
            if judge_uri(cfg) else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="configs/demo.yaml")
    ap.add_argument("--labels", default=None, help="PRM800K jsonl of human labels (default: a labelling budget)")
    ap.add_argument("--budget", type=int, default=1000, help="labelled traces when --labels is not given")
    ap.add_argument("--set", action="append", default=["rounds=1", "curriculum.problems=200", "scoring.audit_mc=0"],
                    dest="overrides")
    ap.add_argument("--out", default="benchmarks/results/label_sources.json")
    args = ap.parse_args()
    results = {}
    results["consensus"] = run(args.config, args.overrides + [
        "scoring.label_source=consensus", "scoring.also=[mc, mc_binary, judge, gold]"])
    labels = [f"scoring.labels.uri={args.labels}"] if args.labels else [f"scoring.labels.budget={args.budget}"]
    results["labels"] = run(args.config, args.overrides + ["scoring.label_source=labels", *labels])
    from components.localstack import services

    cfg = load_config(args.config, args.overrides + ["scoring.label_source=judge"])
    with tempfile.TemporaryDirectory() as tmp:
        stack = services.ServiceStack(Path(tmp))
        try:
            srv = stack.vllm_serve(store.fetch_folder(judge_uri(cfg)), max_model_len=cfg.model.max_positions,
                                   kv_cache_bytes=cfg.generation.kv_cache_bytes)
            results["remote judge"] = run(args.config, args.overrides + [
                "scoring.label_source=judge", "scoring.judge.backend=remote",
                f"scoring.judge.remote.base_url={srv.base_url}", f"scoring.judge.remote.model={srv.model}"])
        finally:
            stack.close()

    t = Table(title="label sources in the round flow (demo config, one round; F1 = first-error F1 vs gold)")
    for col in ("loop", "source", "F1", "answered", "calls", "kept", "kept flawed", "pass@1 all"):
        t.add_column(col, justify="right")
    for name, r in results.items():
        q = {k.split("/")[1]: v for k, v in r["score"].items() if k.startswith("quality/") and k.endswith("/f1")
             and "agree" not in k}
        for src, f1 in sorted(q.items()):
            key = "" if src == PRIMARY[name] else f"{src}/"  # an `also` source's stats carry its name
            calls = {"mc": "mc_rollouts", "mc_binary": "mc_rollouts", "consensus": "mc_rollouts",
                     "judge": "judge_calls"}.get(src)
            t.add_row(name, src, f"{f1:.2f}", f"{r['score'].get(f'quality/{src}/answered', float('nan')):.2f}",
                      str(r["score"].get(key + calls, "-")) if calls else "-", str(r["filter"]["kept"]),
                      f"{100 * r['filter']['kept_flawed_share']:.0f}%", f"{100 * r['evaluate']['pass1_all']:.0f}%")
    Console(width=160).print(t)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"config": args.config, "overrides": args.overrides, "results": results,
                                          "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
                                          "date": time.strftime("%Y-%m-%d %H:%M")}, indent=1, default=str))
    print(f"results: {args.out}")


if __name__ == "__main__":
    main()
