from prefect import task

from components.config import RunConfig
from components.artifacts.layout import Layout
from components.stages import generate
from tasks.common import run_stage, stage_task


@task(**stage_task(generate))
def generate_task(cfg: RunConfig, model_uri: str, round_idx: int, target: int | None,
                  run_id: str | None) -> tuple[str, dict]:
    """k candidate solutions per round problem (curriculum level `target`) -> round-<n>/candidates."""
    uri = Layout.of(cfg).round(round_idx, "candidates")
    return uri, run_stage(cfg, generate, uri, run_id, model_uri=model_uri, round_idx=round_idx, target=target)
