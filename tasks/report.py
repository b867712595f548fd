import tempfile
from pathlib import Path

from prefect import task

from components import report, tracking
from components.config import RunConfig


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
