"""`vstar`: run a loop from a YAML config and print what it did."""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from components.checks import load_config
from components.config import ConfigError, dump_yaml
from components.redact import redact

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
# Wide enough for the round table even when stdout is a pipe or a CI log.
console = Console(width=None if Console().is_terminal else 240)
SET_HELP = "Override a config field, e.g. --set generation.k=8 (repeatable)."


def _fail(message: str):
    """A user-caused error: what is wrong and what to do, in red, exit 2 (no traceback)."""
    console.print(redact(message), style="red", markup=False, soft_wrap=True)  # it may quote a URI
    raise typer.Exit(2)


def _watch_temporary_server() -> None:
    """With no PREFECT_API_URL, Prefect starts a temporary server in a process of its own on first
    use (prefect.server.api.server.SubprocessASGIServer) and stops it at exit; a `vstar` that is
    SIGKILLed leaves it running for good (ppid 1, its port and ~300 MB held). A thread waits for it to
    start, without importing the server itself (~5 s), and puts a watcher beside it that ends it once
    this process is gone (components/runtime/orphans.py)."""
    import sys
    import threading

    def wait_for_it() -> None:
        import psutil

        from components.runtime import orphans

        watched: set[int] = set()
        while True:  # every server process it starts (it starts another when its port was taken)
            server = sys.modules.get("prefect.server.api.server")
            for inst in list(getattr(getattr(server, "SubprocessASGIServer", None), "_instances", {}).values()):
                proc = getattr(inst, "server_process", None)
                if proc is not None and proc.pid not in watched and proc.poll() is None:
                    try:
                        orphans.watch(proc.pid, psutil.Process(proc.pid).create_time())
                        watched.add(proc.pid)
                    except psutil.NoSuchProcess:
                        pass
            time.sleep(0.25)

    threading.Thread(target=wait_for_it, daemon=True, name="vstar-server-watch").start()


@app.callback()
def main() -> None:
    """vstar-flow: orchestrated V-STaR-style self-improvement."""
    if not os.environ.get("PREFECT_API_URL"):
        _watch_temporary_server()
    # Analytics off: with it on, the ephemeral API's SQLite reports "database is locked" under load.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    # Prefect waits 20 s for its ephemeral API server; on two busy cores it took longer (a CI run
    # failed "Timed out while attempting to connect to ephemeral Prefect API server").
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")


def _load(config: Optional[Path], overrides: list[str]):
    try:
        return load_config(config, overrides)
    except ConfigError as e:
        _fail(str(e))


@app.command()
def config(config: Optional[Path] = typer.Argument(None), set: list[str] = typer.Option([], "--set", help=SET_HELP)):
    """Print the resolved config and its loop id."""
    cfg = _load(config, set)
    console.print(dump_yaml(cfg), markup=False)
    console.print(f"loop id: {cfg.loop_id()}")


@app.command()
def run(config: Optional[Path] = typer.Argument(None, help="YAML config; embedded defaults if omitted."),
        set: list[str] = typer.Option([], "--set", help=SET_HELP),
        recompute: list[str] = typer.Option([], "--recompute", metavar="STAGE",
                                            help="Make this published stage again (and what was made from it) "
                                                 "instead of reusing it; `stale`: every stage made by other code. "
                                                 "Repeatable.")):
    """Bootstrap (or reuse) a generator and run the configured rounds."""
    cfg = _load(config, [*set, *([f"recompute=[{', '.join(recompute)}]"] if recompute else [])])
    from components.artifacts import integrity
    from components.runtime.isolation import StageFailed, warm_up

    from flows.lock import LoopBusy, loop_lock
    from flows.self_improve import self_improve

    t0 = time.perf_counter()
    try:  # taken here too (the flow re-enters it), so a busy loop is one line, not a failed flow's traceback
        with loop_lock(cfg.loop_id()):
            warm_up(cfg)  # stage children's imports start now, beside the flow's start (see warm_up)
            result = self_improve(cfg)
    except LoopBusy as e:
        _fail(str(e))
    except (integrity.CorruptArtifact, integrity.UnsafePath) as e:  # the store, not the code: say which file
        _fail(f"{e}\nRepublish it (`--recompute STAGE` of the stage that made it) or restore it from a copy.")
    except StageFailed as e:  # its log's tail says why (Prefect has shown the trace above)
        console.print(redact(str(e)), style="red", markup=False, soft_wrap=True)
        raise typer.Exit(1)
    print_summary(result, time.perf_counter() - t0)
    print_where_to_look(cfg, result)


@app.command()
def unlock(loop: str = typer.Argument(..., help="Loop id, e.g. demo-aac74faae2 (printed by `vstar run`)."),
           force: bool = typer.Option(False, "--force", help="Clear it even if its holder may be alive.")):
    """Free a loop's lock left by a run that died; refused while the holder is alive unless --force."""
    from flows.lock import LoopBusy, unlock as free

    try:
        console.print(free(loop, force))
    except LoopBusy as e:
        _fail(str(e))


@app.command()
def status(loop: Optional[str] = typer.Argument(None, help="Loop id; omitted: every loop in the store."),
           config: Optional[Path] = typer.Option(None, "--config", help="YAML config naming the store, MLflow "
                                                 "and experiment; embedded defaults if omitted."),
           set: list[str] = typer.Option([], "--set", help=SET_HELP)):
    """Where loops stand: per round, each stage published (when, key figures), running, failed or not
    started; whether a live run holds the loop; the running flow runs; where the runs and data are."""
    from components.artifacts import tracking
    from components.artifacts.layout import Layout
    from flows import status as st
    from flows.lock import lock_state

    cfg = _load(config, set)
    loops = st.loop_ids(cfg.store_uri)
    if loop is None:
        t = Table(title=f"loops in {redact(cfg.store_uri)}")
        for col in ("loop", "rounds evaluated", "last published", "stale stages", "lock"):
            t.add_column(col)
        for loop_id in loops:
            at = Layout(cfg.store_uri, loop_id)
            rows = [r for n in st.rounds(at) for r in st.round_rows(at, n, None, None, None) if r.when]
            done = [r.round for r in rows if r.stage == "evaluate"]
            t.add_row(loop_id, str(max(done)) if done else "-", max((r.when for r in rows), default="-"),
                      str(sum(r.state.startswith("stale") for r in rows)), lock_state(loop_id)[1])
        console.print(t if loops else f"no loops in {redact(cfg.store_uri)}")
    else:
        if loop not in loops:
            _fail(f"no loop {loop!r} in {cfg.store_uri}; loops there: {', '.join(loops) or 'none'}")
        at = Layout(cfg.store_uri, loop)
        alive, lock_text = lock_state(loop)
        runs = st.mlflow_runs(cfg, loop)
        parent, by_round = runs if runs else (None, {})
        def on(section: str) -> bool:  # as the loop ran, when MLflow has its params
            default = str(getattr(cfg, section).enabled)
            return (parent.data.params.get(f"{section}/enabled", default) if parent else default) == "True"
        ran = parent.data.params if parent else {}  # as the loop ran
        trains_generator = type(cfg.train_generator)(
            method=ran.get("train_generator/method", cfg.train_generator.method),
            from_round=int(ran.get("train_generator/from_round", cfg.train_generator.from_round)))
        t = Table(title=f"loop {loop}")
        for col in ("round", "stage", "state", "published (UTC)", "key figures"):
            t.add_column(col)
        for n in st.rounds(at):
            run = by_round.get(n)
            for r in st.round_rows(at, n, {a: on(a) for a in st.OPTIONAL}, run.info.status if run else None, alive,
                                   trains_generator.method_of(n)):
                t.add_row(str(r.round), r.stage, r.state, r.when, r.figures)
        console.print(t)
        g0 = st.generator_0(at)
        if g0:
            console.print(f"G_0: {describe_g0(g0)}", markup=False)
        console.print(f"lock: {lock_text}", markup=False)
        where = f"{redact(tracking.tracking_uri(cfg))}, experiment {cfg.experiment}"
        if parent:
            where += f", loop run {parent.info.run_id} {parent.info.status}"
            where += "".join(f"; round {n} run {r.info.run_id} {r.info.status}" for n, r in sorted(by_round.items()))
        console.print(f"MLflow: {where if parent else where + ': no runs of this loop'}", markup=False)
        console.print(f"store: {redact(at.loop())}", markup=False)
    running = st.running_flow_runs()
    console.print("running flow runs: " + ("; ".join(running) if running else "none"), markup=False)


labels_app = typer.Typer(no_args_is_help=True, help="Step-labelled traces in the PRM800K / Math-Shepherd formats.")
app.add_typer(labels_app, name="labels")


@labels_app.command("export")
def labels_export(scored_uri: str = typer.Argument(..., help="A published scored dataset (a round's `scored`)."),
                  out: str = typer.Argument(..., help="jsonl to write (any fsspec URI)."),
                  format: str = typer.Option("prm800k", help="prm800k | math_shepherd")):
    """Export a round's step-labelled traces in a published format (for other tools, or as `labels`)."""
    from components.artifacts import store
    from components.data.importers import EXPORTERS

    if format not in EXPORTERS:
        _fail(f"--format: unknown {format!r}; known: {', '.join(sorted(EXPORTERS))}")
    try:
        rows = [r for r in store.read_rows(scored_uri) if r.get("steps")]
    except store.NotPublished as e:
        _fail(f"{e}: give a published scored dataset, e.g. <store>/loops/<loop id>/round-1/scored")
    EXPORTERS[format](rows, out)
    console.print(f"wrote {len(rows)} traces from {redact(scored_uri)} to {redact(out)} ({format})")


@app.command()
def compare(loops: list[str] = typer.Argument(..., help="Loop ids, e.g. demo-aac74faae2."),
            tracking_uri: Optional[str] = typer.Option(None, help="Default: $MLFLOW_TRACKING_URI, else .vstar/mlflow.db."),
            experiment: str = "vstar", out: Path = typer.Option(Path("compare.png"), help="PNG plot to write.")):
    """Rounds x key metrics of one or more loops, read from MLflow, with changes since the previous round."""
    from mlflow import MlflowClient

    from components.evaluation import report
    from components.artifacts import tracking

    c = MlflowClient(tracking_uri or tracking.tracking_uri())
    found = {}
    for loop in loops:
        try:
            found[loop] = tracking.loop_runs(c, experiment, loop)
        except ValueError as e:
            _fail(str(e))
    rounds = {loop: report.rounds_from_runs(children, parent) for loop, (parent, children) in found.items()}
    tables = [("rounds compared (greedy pass@1 on held-out problems; change since the previous round)",
               report.comparison_rows(rounds)),
              # which verifier picks best from the same samples, and by how much (95% bootstrap intervals)
              ("best-of-N on each round's evaluation pool, by selector (accuracy % [95% interval])",
               report.verifier_rows(rounds)),
              ("paired differences of best-of-N on the same pool (points [95% interval, each alone: of 20 "
               "such intervals about 1 excludes 0 by chance])",
               report.verifier_rows(rounds, differences=True)),
              # PRM vs ORM at one label budget (orm.labels: prm): the same labels, their cost, what each bought
              ("what each learned verifier cost and bought (labels: step labels learned from, the DPO verifier's "
               "pairs; label TFLOPs: the Monte Carlo rollouts behind them, 0 for outcome labels)", report.cost_rows(rounds)),
              # SFT on filtered traces vs GRPO on a reward (train_generator.method), and the reward against the truth
              ("how each round trained its generator, what it cost and bought", report.generator_rows(rounds))]
    for title, (header, rows) in tables:
        if not rows:
            continue
        t = Table(title=title)
        for col in header:
            t.add_column(col, justify="right")
        for row in rows:
            t.add_row(*row)
        console.print(t)
    report.plot_comparison(rounds, out)
    for parent, _ in found.values():
        c.log_artifact(parent.info.run_id, str(out), "compare")
    console.print(f"plot: {out} (also logged to each loop's parent run under compare/)")


# ------------------------------------------------------------------------ catalogued datasets

datasets_app = typer.Typer(no_args_is_help=True, help="Published filtered datasets, catalogued for reuse.")
app.add_typer(datasets_app, name="datasets")
STORE_HELP = "Store URI holding the catalog (default: $VSTAR_STORE, else .vstar/store)."


def _entry(store_uri: Optional[str], id: str) -> tuple[str, dict]:
    from components.artifacts import catalog

    store_uri = store_uri or catalog.default_store()
    try:
        return store_uri, catalog.get(store_uri, id)
    except catalog.UnknownDataset as e:
        _fail(str(e))


def _filter_text(f: dict) -> str:
    if not f:
        return "-"
    rule = "answer only" if f.get("mode") == "outcome" else f"{f.get('aggregate')} >= {f.get('threshold')}"
    return f"{rule}, <= {f.get('max_per_problem')}/problem"


@datasets_app.command("list")
def datasets_list(store_uri: Optional[str] = typer.Option(None, "--store", help=STORE_HELP)):
    """Every catalogued dataset: id, loop, round, rows, filter, label source, URI."""
    from components.artifacts import catalog

    store_uri = store_uri or catalog.default_store()
    entries = catalog.list_entries(store_uri)
    t = Table(title=f"catalogued datasets in {redact(store_uri)} ({len(entries)})")
    for col in ["id", "loop", "round", "rows", "filter", "labels", "published", "uri"]:
        t.add_column(col, overflow="fold")
    for e in entries:
        t.add_row(e["id"], e.get("loop_id", "-"), str(e.get("round", "-")), str(e["rows"]),
                  _filter_text(e.get("filter") or {}), str(e.get("label_source", "-")),
                  str(e.get("published_at", "-")), redact(e["uri"]))
    console.print(t)


@datasets_app.command("show")
def datasets_show(id: str = typer.Argument(..., help="Catalog id, or a unique prefix of one."),
                  store_uri: Optional[str] = typer.Option(None, "--store", help=STORE_HELP)):
    """One catalog entry in full, with how to load it."""
    import json

    store_uri, e = _entry(store_uri, id)
    console.print_json(redact(json.dumps(e)))
    console.print(f"python: components.artifacts.catalog.load_filtered({e['id']!r}, store_uri={redact(store_uri)!r})",
                  markup=False)
    console.print(f"datasets: datasets.load_dataset('parquet', data_files={redact(e['data_files'])!r}, split='train')",
                  markup=False)


SFT_OPTIONS = {"batch_size": "batch-size", "r": "lora-r"}  # `vstar sft`'s options by the config field they set


@app.command("sft")
def sft_command(
        data: str = typer.Option(..., "--data", help="Catalog id of the training data (vstar datasets list)."),
        model: str = typer.Option(..., "--model", help="Base model: a local folder or a published store URI."),
        out: Optional[str] = typer.Option(None, help="Model URI to publish to (default <store>/sft/<id>/<hash>)."),
        epochs: float = 1.0, lr: float = 3e-4, batch_size: int = 32, seed: int = 0,
        lora_r: int = typer.Option(0, help="LoRA rank; 0 = full fine-tuning."),
        store_uri: Optional[str] = typer.Option(None, "--store", help=STORE_HELP),
        tracking_uri: Optional[str] = typer.Option(None, help="Default: $MLFLOW_TRACKING_URI, else .vstar/mlflow.db."),
        experiment: str = "vstar"):
    """Fine-tune a model on a catalogued dataset; publish it and log the lineage (dataset -> model) in MLflow."""
    from pydantic import ValidationError

    from components.config import RunConfig
    from components.config_training import LoraConfig, SFTConfig
    from components.stages import finetune
    from tasks.finetune import finetune_tracked

    store_uri, entry = _entry(store_uri, data)
    try:
        cfg = RunConfig(store_uri=store_uri, tracking_uri=tracking_uri, experiment=experiment, seed=seed,
                        sft=SFTConfig(epochs=epochs, lr=lr, batch_size=batch_size,
                                      lora=LoraConfig(r=lora_r) if lora_r else None))
        src = finetune.source(store_uri, entry, model)
    except ValidationError as e:
        _fail("\n".join(f"--{SFT_OPTIONS.get(x['loc'][-1], x['loc'][-1])}: {x['msg']}" for x in e.errors()))
    except finetune.Refused as e:
        _fail(str(e))
    out = out or finetune.default_out(cfg, src)
    m, run_id = finetune_tracked(cfg, out, src)
    console.print(f"fine-tuned {redact(model)} on {entry['id']} ({m['examples']} examples, {m['steps']} steps, "
                  f"loss {m['loss_first']:.3f} -> {m['loss_last']:.3f}) in {m['seconds']:.0f} s")
    console.print(f"model: {redact(out)}")
    console.print(f"MLflow run {run_id} (experiment {experiment}): input {redact(entry['uri'])}")


# ------------------------------------------------------------------------ the full local stack

services_app = typer.Typer(no_args_is_help=True, help="The full local stack: S3 (moto), MLflow, Prefect server "
                                                      "+ work pool `vstar` + worker, on 127.0.0.1.")
app.add_typer(services_app, name="services")
STACK_DIR_HELP = "Where the stack keeps state.json, env.sh, logs and its databases."
STACK_DIR = Path(".vstar/services")  # = components.localstack.local_stack.STACK_DIR, imported only when used


def _shown(path: Path) -> str:
    rel = os.path.relpath(path)
    return path.as_posix() if rel.startswith("..") else rel


@services_app.command("up")
def services_up(dir: Path = typer.Option(STACK_DIR, "--dir", help=STACK_DIR_HELP),
                no_s3: bool = typer.Option(False, "--no-s3", help="No S3: MLflow keeps artifacts under DIR."),
                prefect_port: Optional[int] = typer.Option(None, help="Default: a free port."),
                mlflow_port: Optional[int] = typer.Option(None, help="Default: a free port."),
                s3_port: Optional[int] = typer.Option(None, help="Default: a free port.")):
    """Start the stack; it keeps running after this command. Writes DIR/env.sh to source."""
    from components.localstack import local_stack
    from components.localstack.processes import ServiceStartError

    try:
        state = local_stack.start_stack(dir, s3=not no_s3, s3_port=s3_port, mlflow_port=mlflow_port,
                                     prefect_port=prefect_port, say=lambda m: console.print(m, markup=False))
    except local_stack.StackRunning as e:
        _fail(str(e))
    except ServiceStartError as e:
        console.print(str(e), style="red", markup=False, soft_wrap=True)
        raise typer.Exit(1)
    at = "" if dir == STACK_DIR else f" --dir {_shown(dir)}"
    t = Table(title=f"local stack (vstar services status{at} checks it, vstar services down{at} stops it)")
    for col in ["service", "URL", "pid", "log"]:
        t.add_column(col, overflow="fold")
    for r in state["services"]:
        t.add_row(r["name"], r["url"], str(r["pid"]), _shown(Path(r["log"])))
    console.print(t)
    console.print(f"source {_shown(Path(state['dir']) / local_stack.ENV_FILE)}", markup=False)


@services_app.command("status")
def services_status(dir: Path = typer.Option(STACK_DIR, "--dir", help=STACK_DIR_HELP)):
    """Each recorded service: alive (process group) and healthy (its health check). Exit 0 only when all are."""
    from components.localstack import local_stack

    rows = local_stack.stack_status(dir)
    if rows is None:
        console.print(f"no stack recorded in {_shown(dir)}: start one with vstar services up", markup=False)
        raise typer.Exit(1)
    t = Table(title=f"local stack in {_shown(dir)}")
    for col in ["service", "alive", "healthy", "URL", "pid", "log"]:
        t.add_column(col, overflow="fold")
    for r in rows:
        t.add_row(r["name"], "yes" if r["alive"] else "[red]no[/]", "yes" if r["healthy"] else "[red]no[/]",
                  r.get("url") or "-", str(r["pid"]), _shown(Path(r["log"])))
    console.print(t)
    down = [r["name"] for r in rows if not r["healthy"]]
    if down or len(rows) == 0:
        console.print(f"not up: {', '.join(down) or 'nothing started'} (logs above; restart: vstar services down, "
                      f"then vstar services up)", style="red", markup=False)
        raise typer.Exit(1)


@services_app.command("down")
def services_down(dir: Path = typer.Option(STACK_DIR, "--dir", help=STACK_DIR_HELP)):
    """Stop every recorded service (its whole process group) and forget the stack. Harmless when none runs."""
    from components.localstack import local_stack

    stopped = local_stack.stop_stack(dir)
    if stopped is None:
        console.print(f"no stack recorded in {_shown(dir)}: nothing to stop", markup=False)
        return
    for s in stopped:
        console.print(f"{'stopped' if s['was_running'] else 'already gone'}: {s['name']} (pid {s['pid']})",
                      markup=False)
    console.print(f"removed {_shown(dir / local_stack.STATE_FILE)} and {local_stack.ENV_FILE}; logs and databases "
                  f"stay in {_shown(dir)}", markup=False)


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.0f}%"


def describe_g0(model_uri: str) -> str:
    """G_0 for what it is: trained here (params, examples, time), or imported (source, digest, params)."""
    from components.artifacts import store

    m = store.read_manifest(model_uri)
    x = m.get("metrics", {})
    if x.get("imported"):
        digest = f", sha256 {m['source_sha256'][:16]}" if m.get("source_sha256") else ""
        kind = f" ({m['architecture']} from GGUF {'/'.join(m.get('quant_types', []))})" if m.get("converted_from") else ""
        return (f"imported from {m.get('source', '?')}{kind}{digest}, {x.get('params', 0):,} params, "
                f"not trained here  {redact(model_uri)}")
    return (f"trained here: {x.get('params', 0):,} params, {x.get('examples', 0):,} examples, "
            f"{x.get('train_seconds', 0):.0f} s  {redact(model_uri)}")


def print_summary(result: dict, seconds: float) -> None:
    from components.evaluation.report import selectors

    rounds = result["rounds"]
    console.print(f"bootstrap model: {describe_g0(rounds[0]['model_uri'])}", markup=False)
    levels = sorted(int(k[len("pass1_n"):]) for k in rounds[0]["evaluate"] if k.startswith("pass1_n"))
    t = Table(title="rounds (held-out greedy pass@1 by number of ops; round 0 = bootstrap)")
    cols = ["round", "ops", "generated", "correct", "kept", "kept flawed", "outcome-only flawed", "label F1"]
    cols += [f"n={n}" for n in levels] + ["best-of-k PRM", "maj@k", "PRM F1", "min"]
    for col in cols:
        t.add_column(col, justify="right")
    for r in rounds:
        g, s, f, e = r.get("generate", {}), r.get("score", {}), r.get("filter", {}), r["evaluate"]
        f1 = s.get("quality/audit_mc/f1", s.get("label_f1"))
        minutes = sum(v.get("seconds", 0) for v in r.values() if isinstance(v, dict)) / 60
        t.add_row(str(r["round"]), str(r.get("target") or "-"), str(g.get("traces", "-")),
                  _pct(g.get("accuracy")), f"{f['kept']}" if f else "-", _pct(f.get("kept_flawed_share")),
                  _pct(f.get("outcome_only_flawed_share")), "-" if f1 is None else f"{f1:.2f}",
                  *[_pct(e.get(f"pass1_n{n}")) for n in levels], _pct(e.get("bestofk_prm_min_all")),
                  _pct(e.get("maj_at_k_all")), "-" if e.get("prm_f1") is None else f"{e['prm_f1']:.2f}",
                  f"{minutes:.1f}")
    console.print(t)
    for r in rounds[1:]:  # a round that learned nothing says so again where the user reads the results
        line = r.get("sft", {}).get("unchanged") and f"round {r['round']}: G_{r['round']} = G_{r['round'] - 1}, " \
            f"unchanged ({r.get('filter', {}).get('kept', 0)} kept; the warning above says what to try)"
        if line:
            console.print(line, style="yellow", markup=False)
    console.print(f"label F1 = first-error F1 vs gold of the labels used to filter (of MC when audited); "
                  f"loop {result['loop_id']}, MLflow parent run {result['parent_run_id']}, "
                  f"wall {seconds / 60:.1f} min")
    for r in rounds[1:]:
        console.print(f"round {r['round']}: MLflow run {r['run_id']}  filtered data {redact(r['filtered_uri'])}")
        q = {k.split("/")[1]: v for k, v in r.get("score", {}).items()
             if k.startswith("quality/") and k.endswith("/f1") and "agree" not in k}
        if len(q) > 1:
            console.print("  first-error F1 vs gold by label source: "
                          + ", ".join(f"{k} {v:.2f}" for k, v in sorted(q.items())))
        e = r["evaluate"]
        k = max((int(x.rsplit("/k", 1)[1]) for x in e if x.startswith("bok/vote/k") and x.count("/") == 2), default=0)
        if k > 1:  # the pool's verifiers against the vote at the largest k (curves and intervals: MLflow)
            picks = {v: e[f"bok/{v}/k{k}"] for v in selectors()[1:] if f"bok/{v}/k{k}" in e}
            f1s = {n: e[m] for n, m in (("PRM", "prm_f1"), ("PRM at its calibrated threshold", "prm_f1_calibrated"),
                                        ("PRM with the calculator", "prm_calc_f1"), ("implicit PRM", "implicit_f1"),
                                        ("implicit PRM calibrated", "implicit_f1_calibrated")) if m in e}
            console.print(f"  best-of-{k}: " + ", ".join(f"{v} {_pct(x)}" for v, x in picks.items())
                          + "".join(f"; {n} F1 {x:.2f}" for n, x in f1s.items()))
    data = rounds[0].get("data") or {}
    if data:  # problems from files: what was read, kept and quarantined (never dropped silently)
        console.print("problems: " + ", ".join(f"{k} {v}" for k, v in data.items() if "/rows_" in k))
        for k, v in data.items():
            if "/quarantined/" in k:
                console.print(f"  quarantined {k.split('/quarantined/')[0]}: {k.split('/quarantined/')[1]}: {v}")


def print_where_to_look(cfg, result: dict) -> None:
    """What a user opens next: the MLflow runs, the last round's trace report, the store, a comparison."""
    from components.artifacts import tracking
    from components.artifacts.layout import Layout

    at, uri, last = Layout.of(cfg), tracking.tracking_uri(cfg), result["rounds"][-1]["round"]
    runs = f"experiment {cfg.experiment}, loop run {result['parent_run_id']}"
    ui = f"mlflow ui --backend-store-uri {uri}" if uri.startswith("sqlite:") else uri  # the local default, or a server
    where = [("MLflow", f"{ui}   ({runs})")]
    if last > 0:
        where.append(("trace report", f"{at.round(last, 'report')}/report.html"))
    where += [("store", at.loop()), ("compare", f"vstar compare {result['loop_id']} OTHER_LOOP_ID ...")]
    console.print("where to look:")
    for label, text in where:
        console.print(f"  {label:<13} {redact(text)}", markup=False)  # a path may hold [ ], which rich reads as markup


if __name__ == "__main__":
    app()
