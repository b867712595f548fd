import tempfile
from pathlib import Path

from prefect import task

from components.config import RunConfig
from components.evaluation import bestofk
from components.artifacts import store, tracking
from components.artifacts.layout import Layout
from components.stages import evaluate
from tasks.common import run_stage, stage_task


@task(**stage_task(evaluate))
def evaluate_task(cfg: RunConfig, model_uri: str, round_idx: int, run_id: str | None,
                  prm_uri: str | None = None, stage: str = "eval", loop_id: str | None = None,
                  verifier_uris: dict[str, str] | None = None) -> tuple[str, dict]:
    """pass@1 per difficulty, maj@k, best-of-k curves by every verifier, PRM F1 on the held-out split
    -> round-<n>/<stage>, and the best-of-k plot on the round's MLflow run.
    A re-evaluation with other eval settings writes beside it (stage eval-<hash>) in the same loop."""
    at = Layout.of(cfg) if loop_id is None else Layout(cfg.store_uri, loop_id, cfg.bootstrap_hash())
    uri = at.round(round_idx, stage)
    metrics = run_stage(cfg, evaluate, uri, run_id, model_uri=model_uri, tag=f"round-{round_idx}",
                        prm_uri=prm_uri, verifier_uris=verifier_uris or {}, prefix=None if stage == "eval" else f"{stage}/")
    table = store.read_manifest(uri).get("bestofk")
    if run_id and table and table["ks"]:  # accuracy against k per selector, with intervals, beside the metrics
        with tempfile.TemporaryDirectory() as tmp:
            png = bestofk.plot(table, Path(tmp) / "bestofk.png", title=f"{at.loop_id} round {round_idx}: best-of-k")
            tracking.client(cfg).log_artifact(run_id, str(png), stage)
    return uri, metrics
