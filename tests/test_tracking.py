"""MLflow runs say what happened to them: a finished loop's runs are not shown as running forever."""
import pytest

from components.artifacts import tracking


def test_a_run_is_running_only_while_its_block_works_on_it(mlflow_server, smoke_cfg):
    cfg = smoke_cfg.model_copy(update={"tracking_uri": mlflow_server, "experiment": "run-lifecycle"})
    c = tracking.client(cfg)
    run_id = c.create_run(tracking.experiment_id(c, cfg.experiment)).info.run_id

    with tracking.running(cfg, run_id):
        assert c.get_run(run_id).info.status == "RUNNING"
    assert c.get_run(run_id).info.status == "FINISHED" and c.get_run(run_id).info.end_time

    with pytest.raises(ValueError), tracking.running(cfg, run_id):  # the loop goes on, then a stage fails
        assert c.get_run(run_id).info.status == "RUNNING"
        raise ValueError("a stage failed")
    assert c.get_run(run_id).info.status == "FAILED"

    with pytest.raises(KeyboardInterrupt), tracking.running(cfg, run_id):  # Ctrl-C or a cancellation
        raise KeyboardInterrupt
    assert c.get_run(run_id).info.status == "KILLED"


def test_the_local_default_keeps_mlflow_artifacts_under_vstar(tmp_path, monkeypatch, smoke_cfg):
    """Without a tracking URI the database was under .vstar/ but the artifacts went to ./mlruns."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = smoke_cfg.model_copy(update={"tracking_uri": None})
    run_id = tracking.round_run(cfg, tracking.loop_run(cfg), 0)
    tracking.client(cfg).log_text(run_id, "hello", "note.txt")
    assert (tmp_path / ".vstar/mlflow.db").exists() and not (tmp_path / "mlruns").exists()
    assert list((tmp_path / ".vstar/mlartifacts").rglob("note.txt"))
