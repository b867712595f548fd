from prefect import task

from components.config import RunConfig
from components.artifacts.layout import Layout
from components.stages import score
from tasks.common import run_stage, stage_task


@task(**stage_task(score))
def score_task(cfg: RunConfig, model_uri: str, candidates_uri: str, round_idx: int,
               run_id: str | None, prm_uri: str | None = None, judge_uri: str | None = None,
               dpo_uri: str | None = None) -> tuple[str, dict]:
    """Per-step scores from the round's label source -> round-<n>/scored (`dpo_uri`: the implicit PRM's)."""
    uri = Layout.of(cfg).round(round_idx, "scored")
    return uri, run_stage(cfg, score, uri, run_id, model_uri=model_uri, candidates_uri=candidates_uri,
                          round_idx=round_idx, prm_uri=prm_uri, judge_uri=judge_uri,
                          **({"dpo_uri": dpo_uri} if dpo_uri else {}))
