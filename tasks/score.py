from prefect import task

from components import store
from components.config import RunConfig
from tasks.common import CACHED, run_stage


@task(name="score", tags=["gpu"], **CACHED)
def score_task(cfg: RunConfig, model_uri: str, candidates_uri: str, round_idx: int,
               run_id: str | None, prm_uri: str | None = None, judge_uri: str | None = None) -> tuple[str, dict]:
    """Per-step scores from the configured label source -> round-<n>/scored."""
    uri = store.round_uri(cfg.store_uri, cfg.loop_id(), round_idx, "scored")
    return uri, run_stage(cfg, "score", uri, run_id, model_uri=model_uri, candidates_uri=candidates_uri,
                          round_idx=round_idx, prm_uri=prm_uri, judge_uri=judge_uri)
