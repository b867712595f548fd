from prefect import task

from components.config import RunConfig
from components.loop import judge_uri, labels_uri
from tasks.common import CACHED, run_stage


@task(name="train-judge", tags=["gpu"], **CACHED)
def judge_task(cfg: RunConfig, generator_uri: str, run_id: str | None) -> tuple[str, dict]:
    """The loop's own small judge, trained once per bootstrap and judge settings."""
    uri = judge_uri(cfg)
    return uri, run_stage(cfg, "train_judge", uri, run_id, generator_uri=generator_uri)


@task(name="import-labels", **CACHED)
def labels_task(cfg: RunConfig, run_id: str | None) -> tuple[str, dict]:
    """Existing human step labels -> the trace schema, with a quarantine of rejected rows."""
    uri = labels_uri(cfg)
    return uri, run_stage(cfg, "import_labels", uri, run_id, isolate=False)
