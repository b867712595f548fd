"""Orchestration overhead: a round's wall time against its stages' own compute time.

    python benchmarks/orchestration.py [--config configs/demo.yaml] [--set k=v ...]

Runs one round of a fresh loop twice, on the same published bootstrap: in-process through Prefect's
ephemeral API, and through a real Prefect server + process worker (started here on 127.0.0.1, with
the `manual` deployment of prefect.yaml). For each:
    stages  = sum of the `seconds` each stage measured inside itself (the work)
    tasks   = sum of the Prefect task runs' durations (the work + child-process start + MLflow logging)
    flow    = the round's flow-run duration
    overhead = 1 - stages / flow (everything that is not a stage's own work), and 1 - tasks / flow
    (what Prefect itself adds between tasks). Queue latency (trigger -> start on the worker) is
apart. Prints a table and writes benchmarks/results/orchestration.json.
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
from components.artifacts.layout import Layout
from components.checks import load_config  # noqa: E402

STAGES = ("generate", "score", "filter", "sft", "prm", "evaluate")


def _seed_store(cfg, dest: str) -> None:
    """Publish the loop's bootstrap into a fresh store, training it once if the default store lacks it."""
    src = Layout(".vstar/store", bootstrap_hash=cfg.bootstrap_hash()).bootstrap()
    if not store.is_published(src):
        from components.runtime.isolation import run_isolated
        from components.stages import bootstrap

        run_isolated(bootstrap, cfg.model_copy(update={"store_uri": ".vstar/store"}), {"out_uri": src})
    store.publish_folder(store.fetch_folder(src), Layout(dest, bootstrap_hash=cfg.bootstrap_hash()).bootstrap(),
                         {"kind": "model"})


def _prefect_times(flow_run_id) -> tuple[float, float, float]:
    """(flow-run seconds, sum of its stage task runs' seconds through subflows, queue latency)."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, FlowRunFilterParentTaskRunId

    with get_client(sync_client=True) as c:
        top = c.read_flow_run(flow_run_id)
        total, frontier = 0.0, [flow_run_id]
        while frontier:  # walk down the subflows (start, round): their parents are placeholder task runs
            tasks = c.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=frontier)))
            subs = c.read_flow_runs(flow_run_filter=FlowRunFilter(
                parent_task_run_id=FlowRunFilterParentTaskRunId(any_=[t.id for t in tasks]))) if tasks else []
            parents = {fr.parent_task_run_id for fr in subs}
            total += sum(t.total_run_time.total_seconds() for t in tasks if t.id not in parents)
            frontier = [fr.id for fr in subs]
    latency = (top.start_time - top.expected_start_time).total_seconds() if top.expected_start_time else 0.0
    return top.total_run_time.total_seconds(), total, latency


def _row(mode: str, result: dict, flow_s: float, tasks_s: float, latency: float) -> dict:
    stage_s = sum(float((result.get(s) or {}).get("seconds", 0.0)) for s in STAGES)
    return {"mode": mode, "flow_s": flow_s, "tasks_s": tasks_s, "stages_s": stage_s, "queue_latency_s": latency,
            "overhead_vs_stages": 1 - stage_s / flow_s, "overhead_vs_tasks": 1 - tasks_s / flow_s}


def run_ephemeral(config: str, overrides: list[str]) -> dict:
    from prefect import get_client

    from flows.self_improve import next_round

    with tempfile.TemporaryDirectory() as tmp:
        over = overrides + [f"store_uri={tmp}/store"]
        _seed_store(load_config(config, over), f"{tmp}/store")
        from flows.self_improve import start  # round 0 outside the measured round
        start(load_config(config, over))
        state = next_round(config, over, return_state=True)
        result = state.result()
        with get_client(sync_client=True) as c:
            fr = c.read_flow_run(state.state_details.flow_run_id)
        flow_s, tasks_s, _ = _prefect_times(fr.id)
        return _row("ephemeral API, in-process", result, flow_s, tasks_s, 0.0)


def run_worker(config: str, overrides: list[str]) -> dict:
    import subprocess

    from components.localstack import services

    with tempfile.TemporaryDirectory() as tmp:
        stack = services.ServiceStack(Path(tmp))
        try:
            server = stack.prefect_server()
            from prefect.context import refresh_global_settings_context

            refresh_global_settings_context()
            worker = stack.prefect_worker(server)
            os.environ["VSTAR_HOME"] = str(ROOT)
            subprocess.run([str(Path(sys.executable).parent / "prefect"), "--no-prompt", "deploy", "--all"],
                           cwd=ROOT, check=True, capture_output=True)
            over = overrides + [f"store_uri={tmp}/store"]
            _seed_store(load_config(config, over), f"{tmp}/store")
            from prefect.deployments import run_deployment

            # Round 0 first (bootstrap reuse + its evaluation), so the measured run is one round.
            run_deployment("vstar-evaluate/evaluate", parameters={"config_path": config, "overrides": over, "round": 0},
                           timeout=900)
            fr = run_deployment("vstar-next-round/manual", parameters={"config_path": config, "overrides": over},
                                timeout=1800)
            if not fr.state.is_completed():
                raise RuntimeError(f"worker run ended {fr.state.name}: {fr.state.message}")
            loop = load_config(config, over).loop_id()
            result = {s: store.read_manifest(Layout(f"{tmp}/store", loop).round(1, u)).get("metrics", {})
                      for s, u in zip(STAGES, ("candidates", "scored", "filtered", "model", "prm", "eval"))}
            flow_s, tasks_s, latency = _prefect_times(fr.id)
            _ = worker
            return _row("server + process worker", result, flow_s, tasks_s, latency)
        finally:
            stack.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="configs/demo.yaml")
    ap.add_argument("--set", action="append", default=["rounds=1"], dest="overrides")
    ap.add_argument("--out", default="benchmarks/results/orchestration.json")
    args = ap.parse_args()
    # The flows refuse stores outside $VSTAR_ALLOWED_STORES (flows/params.py): these runs use temporary ones.
    os.environ.setdefault("VSTAR_ALLOWED_STORES", tempfile.gettempdir())
    rows = [run_ephemeral(args.config, args.overrides), run_worker(args.config, args.overrides)]
    t = Table(title="orchestration overhead of one round (flow wall time vs the stages' own compute)")
    for col in ("mode", "flow s", "Prefect tasks s", "stages s", "overhead vs stages", "overhead vs tasks",
                "queue latency s"):
        t.add_column(col, justify="right")
    for r in rows:
        t.add_row(r["mode"], f"{r['flow_s']:.1f}", f"{r['tasks_s']:.1f}", f"{r['stages_s']:.1f}",
                  f"{100 * r['overhead_vs_stages']:.1f}%", f"{100 * r['overhead_vs_tasks']:.1f}%",
                  f"{r['queue_latency_s']:.1f}")
    Console(width=160).print(t)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"config": args.config, "overrides": args.overrides, "rows": rows,
                                          "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
                                          "date": time.strftime("%Y-%m-%d %H:%M")}, indent=1))
    print(f"results: {args.out}")


if __name__ == "__main__":
    main()
