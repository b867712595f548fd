"""prefect.yaml deployed to a real server; a deployment run triggered and executed by a real worker."""
import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow

from components import store
from components.config import load_config

ROOT = Path(__file__).resolve().parent.parent
PREFECT = str(Path(sys.executable).parent / "prefect")


def prefect(*args, timeout=600):
    return subprocess.run([PREFECT, "--no-prompt", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ})


def test_deploy_and_run_smoke_on_worker(s3, mlflow_server, prefect_worker, smoke_cfg, tiny_model_dir):
    store_uri = s3.uri("deployed")
    cfg = smoke_cfg.model_copy(update={"store_uri": store_uri})
    store.publish_folder(tiny_model_dir, store.bootstrap_uri(store_uri, cfg.bootstrap_hash()), {"kind": "model"})

    assert prefect_worker == "vstar"  # the pool prefect.yaml names
    out = prefect("deploy", "--all")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "vstar-from-file/smoke" in out.stdout + out.stderr

    overrides = [f"store_uri={store_uri}", "generation.k=2"]
    run = prefect("deployment", "run", "vstar-from-file/smoke", "--param", f"overrides={json.dumps(overrides)}", "--watch",
                  "--watch-timeout", "500")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "Completed" in run.stdout + run.stderr

    # The worker's flow run wrote to the store and to the MLflow server.
    loop_id = load_config(ROOT / "configs/smoke.yaml", overrides).loop_id()  # what the worker resolved
    filtered = store.round_uri(store_uri, loop_id, 1, "filtered")
    assert store.is_published(filtered)
    runs = mlflow.MlflowClient(mlflow_server).search_runs(
        [mlflow.MlflowClient(mlflow_server).get_experiment_by_name(cfg.experiment).experiment_id],
        f"tags.`vstar.loop_id` = '{loop_id}' and tags.`vstar.round` = '1'")
    m = runs[0].data.metrics
    assert len(runs) == 1 and m["generate/traces"] == m["generate/problems"] * 2 > 0  # k=2 reached the worker
