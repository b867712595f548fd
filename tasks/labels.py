from prefect import task

from components.config import RunConfig
from components.loop import judge_uri, labels_uri
from components.stages import judge, labels
from tasks.common import run_stage, stage_task


@task(**stage_task(judge))
def judge_task(cfg: RunConfig, generator_uri: str, run_id: str | None) -> tuple[str, dict]:
    """The loop's own small judge, trained once per bootstrap and judge settings."""
    uri = judge_uri(cfg)
    return uri, run_stage(cfg, judge, uri, run_id, generator_uri=generator_uri)


@task(**stage_task(labels))
def labels_task(cfg: RunConfig, generator_uri: str, run_id: str | None) -> tuple[str, dict]:
    """Human step labels (a file, or a budget spent on G_0's traces) -> the trace schema, with a
    quarantine of rejected rows."""
    uri = labels_uri(cfg)
    return uri, run_stage(cfg, labels, uri, run_id, model_uri=generator_uri)
