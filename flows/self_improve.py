"""The loop: bootstrap a generator (or reuse a published one), evaluate it, then run the rounds.

    G_0 = bootstrap(easy problems, gold solutions)      trained from scratch; skipped if published
    evaluate(G_0)                                       round 0 of the table
    for n = 1..rounds:  G_n, PRM_n = round(n)           see flows/round.py
"""
from __future__ import annotations

from prefect import flow

from components import tracking
from components.config import RunConfig, load_config
from flows.round import run_round
from tasks.bootstrap import bootstrap_task
from tasks.evaluate import evaluate_task
from tasks.report import report_task


@flow(name="vstar-self-improve")
def self_improve(config: RunConfig = RunConfig()) -> dict:
    parent = tracking.loop_run(config)
    model_uri, boot = bootstrap_task(config, parent)
    run0 = tracking.round_run(config, parent, 0)
    _, eval0 = evaluate_task(config, model_uri, 0, run0)
    tracking.set_terminated(config, run0)
    rounds = [{"round": 0, "run_id": run0, "model_uri": model_uri, "evaluate": eval0, "bootstrap": boot}]
    for n in range(1, config.rounds + 1):
        rounds.append(run_round(config, n))
    report_task(config, parent, rounds)
    return {"loop_id": config.loop_id(), "parent_run_id": parent, "rounds": rounds}


@flow(name="vstar-from-file")
def self_improve_from_file(config_path: str = "configs/demo.yaml", overrides: list[str] | None = None) -> dict:
    """The loop from a YAML config in the checkout plus `a.b=v` overrides: what deployments run."""
    return self_improve(load_config(config_path, overrides or []))
