from prefect import task

from components import store
from components.config import RunConfig
from tasks.common import CACHED, run_stage


@task(name="evaluate", tags=["gpu"], **CACHED)
def evaluate_task(cfg: RunConfig, model_uri: str, round_idx: int, run_id: str | None,
                  prm_uri: str | None = None, stage: str = "eval", loop_id: str | None = None) -> tuple[str, dict]:
    """pass@1 per difficulty, maj@k, best-of-k by PRM, PRM F1 on the held-out split -> round-<n>/<stage>.
    A re-evaluation with other eval settings writes beside it (stage eval-<hash>) in the same loop."""
    uri = store.round_uri(cfg.store_uri, loop_id or cfg.loop_id(), round_idx, stage)
    return uri, run_stage(cfg, "evaluate", uri, run_id, model_uri=model_uri, tag=f"round-{round_idx}",
                          prm_uri=prm_uri, prefix=None if stage == "eval" else f"{stage}/")
