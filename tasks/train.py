from functools import cache

from prefect import get_run_logger, task

from components import round_table
from components.config import RunConfig
from components.artifacts import tracking
from components.artifacts.layout import Layout
from components.loop import RoundInputs, learned_nothing
from components.stages import grpo, prm, sft
from tasks.common import run_stage, stage_task


@task(**stage_task(sft))
def sft_task(cfg: RunConfig, model_uri: str, kept_uris: list[str], round_idx: int,
             run_id: str | None) -> tuple[str, dict]:
    """Fine-tune the generator on kept traces (+ history, + replayed gold) -> round-<n>/model."""
    uri = Layout.of(cfg).round(round_idx, "model")
    return uri, run_stage(cfg, sft, uri, run_id, model_uri=model_uri, round_idx=round_idx, kept_uris=kept_uris)


@task(**stage_task(grpo))
def grpo_task(cfg: RunConfig, model_uri: str, candidates_uri: str, verifier_uris: dict[str, str], round_idx: int,
              run_id: str | None) -> tuple[str, dict]:
    """Train the generator by GRPO on the round's problems, rewarded by grpo.rewards -> round-<n>/model."""
    uri = Layout.of(cfg).round(round_idx, "model")
    return uri, run_stage(cfg, grpo, uri, run_id, model_uri=model_uri, round_idx=round_idx,
                          candidates_uri=candidates_uri, verifier_uris=verifier_uris)


def train_generator(cfg: RunConfig, inp: RoundInputs, candidates_uri: str, filtered_uri: str, round_idx: int,
                    run_id: str | None) -> tuple[str, str, dict]:
    """G_n by the round's method (train_generator): (the method, G_n's URI, its metrics)."""
    method = cfg.train_generator.method_of(round_idx)
    if method == "grpo":
        return (method, *grpo_task(cfg, inp.generator_uri, candidates_uri, inp.reward_uris, round_idx, run_id))
    return (method, *sft_task(cfg, inp.generator_uri, inp.kept_uris + [filtered_uri], round_idx, run_id))


def warn_if_learned_nothing(cfg: RunConfig, round_idx: int, run_id: str | None, generated: dict, kept: dict,
                            sft: dict) -> None:
    """A round whose SFT had too little to train on says so: a warning in the log (and so the CLI) and
    a tag on the round's MLflow run; its G_n manifest already says `unchanged`."""
    line = learned_nothing(cfg, round_idx, generated, kept, sft)
    if line:
        get_run_logger().warning(line)
        if run_id:
            tracking.set_tag(cfg, run_id, "vstar.unchanged", line)


@task(**stage_task(prm))
def prm_task(cfg: RunConfig, generator_uri: str, scored_uris: list[str], previous_prm_uri: str | None,
             round_idx: int, run_id: str | None) -> tuple[str, dict]:
    """Train the PRM on the scored steps of all rounds so far -> round-<n>/prm."""
    uri = Layout.of(cfg).round(round_idx, "prm")
    return uri, run_stage(cfg, prm, uri, run_id, generator_uri=generator_uri, round_idx=round_idx,
                          scored_uris=scored_uris, previous_prm_uri=previous_prm_uri)


@cache
def verifier_task(row: round_table.Row):
    """The Prefect task training the verifier of `row` (round_table.on_generated) on the outcomes of
    every trace generated in rounds 1..n -> round-<n>/<its artifact>."""
    stage = row.stage()

    @task(**stage_task(stage))
    def train_verifier(cfg: RunConfig, generator_uri: str, generated_uris: list[str], round_idx: int,
                       run_id: str | None) -> tuple[str, dict]:
        uri = Layout.of(cfg).round(round_idx, row.artifact)
        return uri, run_stage(cfg, stage, uri, run_id, generator_uri=generator_uri, round_idx=round_idx,
                              generated_uris=generated_uris)
    return train_verifier


def train_verifiers(cfg: RunConfig, generator_uri: str, generated_uris: list[str], round_idx: int,
                    run_id: str | None) -> dict[str, tuple[str, dict]]:
    """Every verifier of the round table trained on generated traces that the config switches on:
    name -> (its URI, its metrics)."""
    return {row.verifier: verifier_task(row)(cfg, generator_uri, generated_uris, round_idx, run_id)
            for row in round_table.on_generated() if row.enabled(cfg)}
