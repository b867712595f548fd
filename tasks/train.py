from prefect import task

from components.config import RunConfig
from components.infra.layout import Layout
from components.stages import orm, prm, sft
from tasks.common import run_stage, stage_task


@task(**stage_task(sft))
def sft_task(cfg: RunConfig, model_uri: str, kept_uris: list[str], round_idx: int,
             run_id: str | None) -> tuple[str, dict]:
    """Fine-tune the generator on kept traces (+ history, + replayed gold) -> round-<n>/model."""
    uri = Layout.of(cfg).round(round_idx, "model")
    return uri, run_stage(cfg, sft, uri, run_id, model_uri=model_uri, round_idx=round_idx, kept_uris=kept_uris)


@task(**stage_task(prm))
def prm_task(cfg: RunConfig, generator_uri: str, scored_uris: list[str], previous_prm_uri: str | None,
             round_idx: int, run_id: str | None) -> tuple[str, dict]:
    """Train the PRM on the scored steps of all rounds so far -> round-<n>/prm."""
    uri = Layout.of(cfg).round(round_idx, "prm")
    return uri, run_stage(cfg, prm, uri, run_id, generator_uri=generator_uri, round_idx=round_idx,
                          scored_uris=scored_uris, previous_prm_uri=previous_prm_uri)


@task(**stage_task(orm))
def orm_task(cfg: RunConfig, generator_uri: str, generated_uris: list[str], round_idx: int,
             run_id: str | None) -> tuple[str, dict]:
    """Train the outcome verifier on every generated trace of rounds 1..n -> round-<n>/orm."""
    uri = Layout.of(cfg).round(round_idx, "orm")
    return uri, run_stage(cfg, orm, uri, run_id, generator_uri=generator_uri, round_idx=round_idx,
                          generated_uris=generated_uris)
