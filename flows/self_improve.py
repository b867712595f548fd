"""The loop: bootstrap a generator (or reuse a published one), evaluate it, then run the rounds.

    D   = problems from files, bad rows quarantined      file-backed families (gsm8k, math, custom)
    G_0 = bootstrap(easy problems, gold solutions)      trained from scratch (or model.init_uri); skipped if published
    J   = train_judge(G_0, planted errors)              when a judge labels steps and none is given
    L   = import(human step labels); PRM_0 = train(L)   when labels (a file, or a budget spent on G_0) are configured
    evaluate(G_0)                                       round 0 of the table
    for n = 1..rounds:  G_n, PRM_n = round(n)           see flows/round.py

Every entry point holds the loop's lock (flows/lock.py) and finds its place from the store, so the
whole loop, one more round (cron or manual) and a re-evaluation can be triggered in any order.
"""
from __future__ import annotations

from prefect import flow, get_run_logger

from components import round_table
from components.artifacts import store, tracking
from components.runtime import isolation
from components.checks import load_config
from components.config import RunConfig, stable_hash
from components.artifacts.layout import Layout
from components.labeling.sources import prm0_from_imports
from components.loop import judge_uri, labels_uri, last_round
from flows.lock import loop_lock
from flows.params import check_typed, deployment_config
from flows.round import run_round
from tasks.bootstrap import bootstrap_task
from tasks.evaluate import evaluate_task
from tasks.labels import judge_task, labels_task
from tasks.train import prm_task
from tasks.data import data_task
from tasks.report import report_task


@flow(name="vstar-start", persist_result=False)
def start(config: RunConfig) -> dict:
    """Round 0: problems from files, the bootstrap, the loop's judge, imported labels and PRM_0 where
    configured, and the bootstrap's evaluation (each skipped once published)."""
    parent = tracking.loop_run(config)
    with tracking.running(config, tracking.round_run(config, parent, 0)) as run0:
        data = {}
        if config.family.data.train_uri:  # problems from files: validated, published, quarantine counted
            _, data = data_task(config, run0)
        model_uri, boot = bootstrap_task(config, parent)
        if judge_uri(config) and not config.scoring.judge.model_uri:
            judge_task(config, model_uri, run0)
        prm0 = None
        if labels_uri(config):
            labels, _ = labels_task(config, model_uri, run0)
            if prm0_from_imports(config):
                prm0, _ = prm_task(config, model_uri, [labels], None, 0, run0)
        _, eval0 = evaluate_task(config, model_uri, 0, run0, prm0)
    return {"round": 0, "run_id": run0, "model_uri": model_uri, "evaluate": eval0, "bootstrap": boot, "data": data}


def _summary(config: RunConfig, upto: int) -> list[dict]:
    """Every published round's evaluation, read back from the store for the cross-round report."""
    out = []
    for n in range(upto + 1):
        uri = Layout.of(config).round(n, "eval")
        out.append({"round": n, "evaluate": store.read_manifest(uri).get("metrics", {})})
    return out


def _deployed() -> bool:
    """Whether this flow run is a deployment's own (not a subflow, not a local call)."""
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    return bool(ctx and ctx.flow_run and ctx.flow_run.deployment_id)


@flow(name="vstar-self-improve")
def self_improve(config: RunConfig = RunConfig(), wait_s: float = 5.0) -> dict:
    if _deployed():  # the typed deployment: the whole config came through the Prefect API
        check_typed(config)
    with loop_lock(config.loop_id(), wait_s), tracking.running(config, tracking.loop_run(config)) as parent:
        isolation.warm_up(config)  # stage children's imports, meanwhile
        rounds = [start(config)]
        for n in range(1, config.rounds + 1):
            rounds.append(run_round(config, n))
        report_task(config, parent, rounds)
    return {"loop_id": config.loop_id(), "parent_run_id": tracking.loop_run(config), "rounds": rounds}


@flow(name="vstar-from-file")
def self_improve_from_file(config_path: str = "configs/demo.yaml", overrides: list[str] | None = None,
                           wait_s: float = 5.0) -> dict:
    """The loop from a YAML config in the checkout plus `a.b=v` overrides: what deployments run.
    Parameters are checked first (flows/params.py): config in configs/, known fields, an allowed store."""
    return self_improve(deployment_config(config_path, overrides)[1], wait_s)


@flow(name="vstar-next-round")
def next_round(config_path: str = "configs/demo.yaml", overrides: list[str] | None = None,
               round: int | None = None, wait_s: float = 5.0) -> dict:
    """Advance a loop by one round: the one after its last published round, or `round` to (re)run a
    given one (its published stages are reused). Stops at the config's `rounds`."""
    config = deployment_config(config_path, overrides)[1]
    log = get_run_logger()
    with loop_lock(config.loop_id(), wait_s), tracking.running(config, tracking.loop_run(config)) as parent:
        isolation.warm_up(config)
        start(config)
        n = round if round is not None else last_round(config) + 1
        if round is None and n > config.rounds:
            log.info("loop %s has run its %d rounds; raise `rounds` to go on", config.loop_id(), config.rounds)
            return {"loop_id": config.loop_id(), "round": None}
        result = run_round(config, n)
        report_task(config, parent, _summary(config, last_round(config)))
    return {"loop_id": config.loop_id(), **result}


@flow(name="vstar-evaluate")
def reevaluate(config_path: str = "configs/demo.yaml", overrides: list[str] | None = None, round: int = 0,
               eval_overrides: list[str] | None = None) -> dict:
    """Evaluate a published round again, e.g. with more samples (`eval_overrides=["eval.k=16"]`). The
    loop is named by config_path + overrides; eval settings change only this evaluation."""
    path, config = deployment_config(config_path, overrides, eval_overrides)
    isolation.warm_up(config)
    loop = config.loop_id()
    at = Layout.of(config)
    model = at.generator(round)
    if not store.is_published(model):
        raise store.NotPublished(f"loop {loop} has no published model for round {round} ({model})")
    prm = at.round(round, "prm") if round > 0 else None
    prm = prm if prm and store.is_published(prm) else None
    verifier_uris = {r.verifier: at.round(round, r.artifact) for r in round_table.on_generated()
                     if round > 0 and store.is_published(at.round(round, r.artifact))}
    ev = load_config(path, (overrides or []) + (eval_overrides or []))
    tag = f"eval-{stable_hash(ev.eval.model_dump(mode='json'))[:8]}" if eval_overrides else "eval"
    run_id = tracking.round_run(config, tracking.loop_run(config), round)
    uri, metrics = evaluate_task(ev, model, round, run_id, prm, stage=tag, loop_id=loop, verifier_uris=verifier_uris)
    return {"loop_id": loop, "round": round, "eval_uri": uri, "evaluate": metrics}
