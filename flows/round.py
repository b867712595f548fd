"""One round of V-STaR-style self-improvement (Hosseini et al. 2024) with step-level verification.

    x_1..x_m  = problems at the curriculum's level                                  (curriculum)
    y_j ~ G_{n-1}(x), k per problem                                                (generate)
    y'_j ~ G_{n-1}(x, hint = answer(x)) where no y_j is right; right ones kept as y (rationalize, when on)
    s_i(y)    = label of step i: MC | binary-search MC | judge | MC∧judge | exact check
                | PRM_{n-1} (trained on own and/or imported human labels) | PRM+MC     (score)
                | implicit PRM of DPO_{n-1} (outcome-trained; Yuan et al. 2024)
    D_n       = {y : answer(y) right and min_i s_i(y) >= tau}                      (filter)
    G_n       = SFT(G_{n-1}, D_1..D_n + replayed gold)                             (sft)
                | GRPO(G_{n-1}; x_1..x_m, R = sum_r w_r r(y); r: outcome | ORM_{n-1}    (grpo, train_generator)
                       | PRM_{n-1} | implicit PRM of DPO_{n-1} | calculator)
    PRM_n     = train on the scored steps of rounds 1..n                           (train-prm)
    ORM_n     = train on the outcomes of every trace generated in rounds 1..n      (train-orm, when on)
                | on PRM_n's rows, their last step's label alone (one label budget)
    DPO_n     = DPO(G_SFT = G_0; right > wrong pairs of every problem of rounds 1..n) (train-dpo, when on)
    report    pass@1; one pool of N samples per held-out problem ranked by vote,   (evaluate)
              PRM_n, ORM_n, DPO_n, confidence: best-of-k curves with intervals; PRM_n F1
              sample traces with PRM / label / gold step scores side by side        (trace report)

Every stage reads and writes URIs in the object store and publishes with a manifest: a rerun of a
round skips what is already published, and round n finds its inputs from the store alone.
"""
from __future__ import annotations

from prefect import flow, get_run_logger

from components.artifacts import tracking
from components.config import RunConfig
from components.loop import round_inputs
from tasks.evaluate import evaluate_task
from tasks.filter import filter_task
from tasks.generate import generate_task
from tasks.report import round_artifact_task, trace_report_task
from tasks.score import score_task
from tasks.train import prm_task, train_generator, train_verifiers, warn_if_learned_nothing


@flow(name="vstar-round", persist_result=False)  # the manifests record what is done
def run_round(config: RunConfig, round_idx: int) -> dict:
    n = round_idx
    with tracking.running(config, tracking.round_run(config, tracking.loop_run(config), n)) as run_id:
        inp = round_inputs(config, n)
        get_run_logger().info("round %d samples level %s: %s", n, inp.target, inp.target_why)
        candidates, gen = generate_task(config, inp.generator_uri, n, inp.target, run_id)
        scored, scores = score_task(config, inp.generator_uri, candidates, n, run_id, inp.prm_uri, inp.judge_uri, inp.dpo_uri)
        filtered, kept = filter_task(config, scored, n, run_id)
        method, model, trained = train_generator(config, inp, candidates, filtered, n, run_id)  # sft | grpo
        if method == "sft":
            warn_if_learned_nothing(config, n, run_id, gen, kept, trained)  # G_n = G_{n-1}: said, never silent
        prm, prm_metrics = (prm_task(config, model, inp.scored_uris + [scored], inp.prm_uri, n, run_id)
                            if config.prm.enabled else (None, {}))
        verifiers = train_verifiers(config, model, [*inp.generated_uris, scored], n, run_id)  # ORM_n, DPO_n, ...
        _, evaluation = evaluate_task(config, model, n, run_id, prm, verifier_uris={v: u for v, (u, _) in verifiers.items()})
        result = {"round": n, "run_id": run_id, "target": inp.target, "model_uri": model, "prm_uri": prm,
                  **{f"{v}_uri": u for v, (u, _) in verifiers.items()}, "filtered_uri": filtered, "generate": gen,
                  "score": scores, "filter": kept, method: trained, "prm": prm_metrics,
                  **{v: m for v, (_, m) in verifiers.items()}, "evaluate": evaluation}
        trace_report_task(config, scored, filtered, n, run_id, prm)
        round_artifact_task(config, result)
    return result
