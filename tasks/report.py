import re
import tempfile
from pathlib import Path

from prefect import task

from components import round_table
from components.config import RunConfig
from components.evaluation import report
from components.evaluation.trace_report import REPORT
from components.artifacts import store, tracking
from components.artifacts.layout import Layout
from components.redact import redact
from components.stages import report as trace_report
from tasks.common import run_stage, stage_task


@task(name="report")
def report_task(cfg: RunConfig, parent_run_id: str, rounds: list[dict]) -> str:
    """Cross-round summary on the loop's parent run: a markdown table and a PNG plot."""
    table = report.markdown_table(rounds)
    c = tracking.client(cfg)
    c.log_text(parent_run_id, table, "summary/rounds.md")
    with tempfile.TemporaryDirectory() as tmp:
        png = report.plot(rounds, Path(tmp) / "rounds.png", title=cfg.loop_id())
        c.log_artifact(parent_run_id, str(png), "summary")
    last = rounds[-1]["evaluate"]
    tracking.log_metrics(cfg, parent_run_id, last, prefix="final/")
    return table


def _mlflow_link(cfg: RunConfig, run_id: str) -> str:
    uri = redact(tracking.tracking_uri(cfg))  # shown in the Prefect UI: no credentials
    if not uri.startswith("http"):
        return f"run `{run_id}` in `{uri}`"
    exp = tracking.client(cfg).get_run(run_id).info.experiment_id
    return f"[MLflow run {run_id[:8]}]({uri.rstrip('/')}/#/experiments/{exp}/runs/{run_id})"


@task(name="round-artifact")
def round_artifact_task(cfg: RunConfig, result: dict) -> str:
    """The round's metrics as a Prefect artifact: the Prefect UI shows results without opening MLflow."""
    from prefect.artifacts import create_markdown_artifact

    n = result["round"]
    rows = [(stage, k, v) for stage in (r.key for r in round_table.round_rows())
            for k, v in (result.get(stage) or {}).items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    uris = {k: redact(v) for k, v in result.items() if k.endswith("_uri") and v}
    md = "\n".join([f"# {cfg.loop_id()} round {n}", "", _mlflow_link(cfg, result["run_id"]), "",
                    *[f"- {k}: `{v}`" for k, v in uris.items()], "", "| stage | metric | value |", "|---|---|---|",
                    *[f"| {s} | {k} | {v:.4g} |" for s, k, v in rows]])
    key = re.sub(r"[^a-z0-9-]", "-", f"{cfg.loop_id()}-round-{n}".lower())
    create_markdown_artifact(markdown=md, key=key, description=f"vstar loop {cfg.loop_id()}, round {n}")
    return key


@task(**stage_task(trace_report))
def trace_report_task(cfg: RunConfig, scored_uri: str, filtered_uri: str, round_idx: int, run_id: str,
                      prm_uri: str | None) -> str:
    """The round's HTML trace report, published in the store and logged to the round's MLflow run."""
    uri = Layout.of(cfg).round(round_idx, "report")
    run_stage(cfg, trace_report, uri, run_id, scored_uri=scored_uri, filtered_uri=filtered_uri,
              round_idx=round_idx, prm_uri=prm_uri)
    folder = store.fetch_folder(uri)
    tracking.client(cfg).log_artifact(run_id, str(folder / REPORT), "report")
    return uri
