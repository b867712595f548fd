from prefect import task

from components import store
from components.config import RunConfig
from tasks.common import CACHED, run_stage


@task(name="sft", tags=["gpu"], **CACHED)
def sft_task(cfg: RunConfig, model_uri: str, kept_uris: list[str], round_idx: int,
             run_id: str | None) -> tuple[str, dict]:
    """Fine-tune the generator on kept traces (+ history, + replayed gold) -> round-<n>/model."""
    uri = store.round_uri(cfg.store_uri, cfg.loop_id(), round_idx, "model")
    return uri, run_stage(cfg, "train_generator", uri, run_id, model_uri=model_uri, round_idx=round_idx,
                          kept_uris=kept_uris)


@task(name="train-prm", tags=["gpu"], **CACHED)
def prm_task(cfg: RunConfig, generator_uri: str, scored_uris: list[str], previous_prm_uri: str | None,
             round_idx: int, run_id: str | None) -> tuple[str, dict]:
    """Train the PRM on the scored steps of all rounds so far -> round-<n>/prm."""
    uri = store.round_uri(cfg.store_uri, cfg.loop_id(), round_idx, "prm")
    return uri, run_stage(cfg, "train_prm", uri, run_id, generator_uri=generator_uri, round_idx=round_idx,
                          scored_uris=scored_uris, previous_prm_uri=previous_prm_uri)
