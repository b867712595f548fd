"""`vstar`: run a loop from a YAML config and print what it did."""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from components.config import ConfigError, dump_yaml, load_config

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
# Wide enough for the round table even when stdout is a pipe or a CI log.
console = Console(width=None if Console().is_terminal else 240)
SET_HELP = "Override a config field, e.g. --set generation.k=8 (repeatable)."


@app.callback()
def main() -> None:
    """vstar-flow: orchestrated V-STaR-style self-improvement."""
    # Analytics off: with it on, the ephemeral API's SQLite reports "database is locked" under load.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")


def _load(config: Optional[Path], overrides: list[str]):
    try:
        return load_config(config, overrides)
    except ConfigError as e:
        console.print(f"[red]{e}[/red]")
        raise typer.Exit(2)


@app.command()
def config(config: Optional[Path] = typer.Argument(None), set: list[str] = typer.Option([], "--set", help=SET_HELP)):
    """Print the resolved config and its loop id."""
    cfg = _load(config, set)
    console.print(dump_yaml(cfg), markup=False)
    console.print(f"loop id: {cfg.loop_id()}")


@app.command()
def run(config: Optional[Path] = typer.Argument(None, help="YAML config; embedded defaults if omitted."),
        set: list[str] = typer.Option([], "--set", help=SET_HELP)):
    """Bootstrap (or reuse) a generator and run the configured rounds."""
    cfg = _load(config, set)
    from flows.self_improve import self_improve

    t0 = time.perf_counter()
    result = self_improve(cfg)
    print_summary(result, time.perf_counter() - t0)


@app.command()
def compare(loops: list[str] = typer.Argument(..., help="Loop ids, e.g. demo-aac74faae2."),
            tracking_uri: Optional[str] = typer.Option(None, help="Default: $MLFLOW_TRACKING_URI, else .vstar/mlflow.db."),
            experiment: str = "vstar", out: Path = typer.Option(Path("compare.png"), help="PNG plot to write.")):
    """Rounds x key metrics of one or more loops, read from MLflow, with changes since the previous round."""
    from mlflow import MlflowClient

    from components import report, tracking

    c = MlflowClient(tracking_uri or tracking.tracking_uri())
    found = {}
    for loop in loops:
        try:
            found[loop] = tracking.loop_runs(c, experiment, loop)
        except ValueError as e:
            console.print(f"[red]{e}[/red]")
            raise typer.Exit(2)
    rounds = {loop: report.rounds_from_runs(children) for loop, (_, children) in found.items()}
    header, rows = report.comparison_rows(rounds)
    t = Table(title="rounds compared (greedy pass@1 on held-out problems; change since the previous round)")
    for col in header:
        t.add_column(col, justify="right")
    for row in rows:
        t.add_row(*row)
    console.print(t)
    report.plot_comparison(rounds, out)
    for parent, _ in found.values():
        c.log_artifact(parent.info.run_id, str(out), "compare")
    console.print(f"plot: {out} (also logged to each loop's parent run under compare/)")


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.0f}%"


def print_summary(result: dict, seconds: float) -> None:
    rounds = result["rounds"]
    boot = rounds[0]["bootstrap"]
    console.print(f"bootstrap model: {boot.get('params', 0):,} params, {boot.get('examples', 0):,} examples, "
                  f"trained in {boot.get('train_seconds', 0):.0f} s  {rounds[0]['model_uri']}")
    levels = sorted(int(k[len("pass1_n"):]) for k in rounds[0]["evaluate"] if k.startswith("pass1_n"))
    t = Table(title="rounds (held-out greedy pass@1 by number of ops; round 0 = bootstrap)")
    cols = ["round", "ops", "generated", "correct", "kept", "kept flawed", "outcome-only flawed", "label F1"]
    cols += [f"n={n}" for n in levels] + ["best-of-k PRM", "maj@k", "PRM F1", "min"]
    for col in cols:
        t.add_column(col, justify="right")
    for r in rounds:
        g, s, f, e = r.get("generate", {}), r.get("score", {}), r.get("filter", {}), r["evaluate"]
        f1 = s.get("audit_mc_f1", s.get("label_f1"))
        minutes = sum(v.get("seconds", 0) for v in r.values() if isinstance(v, dict)) / 60
        t.add_row(str(r["round"]), str(r.get("target") or "-"), str(g.get("traces", "-")),
                  _pct(g.get("accuracy")), f"{f['kept']}" if f else "-", _pct(f.get("kept_flawed_share")),
                  _pct(f.get("outcome_only_flawed_share")), "-" if f1 is None else f"{f1:.2f}",
                  *[_pct(e.get(f"pass1_n{n}")) for n in levels], _pct(e.get("bestofk_prm_min_all")),
                  _pct(e.get("maj_at_k_all")), "-" if e.get("prm_f1") is None else f"{e['prm_f1']:.2f}",
                  f"{minutes:.1f}")
    console.print(t)
    console.print(f"label F1 = first-error F1 vs gold of the labels used to filter (of MC when audited); "
                  f"loop {result['loop_id']}, MLflow parent run {result['parent_run_id']}, "
                  f"wall {seconds / 60:.1f} min")
    for r in rounds[1:]:
        console.print(f"round {r['round']}: MLflow run {r['run_id']}  filtered data {r['filtered_uri']}")


if __name__ == "__main__":
    app()
