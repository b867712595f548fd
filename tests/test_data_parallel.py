"""Data-parallel training (#16): a training stage run in `execution.train_processes` processes under
torchrun (DDP through transformers' Trainer and TRL; gloo on this CPU machine, NCCL on GPUs), against
the same stage in one process."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from components.artifacts import store
from components.runtime.isolation import call_isolated, run_isolated
from components.stages import generate, prm as prm_stage, score, sft as sft_stage


def publish_rank(out_uri: str) -> dict:
    """A child's target: every rank runs it and tries to publish an artifact of its own."""
    rank = os.environ["RANK"]
    (Path(out_uri) / f"ran-{rank}").touch()
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "rank.txt").write_text(rank)
        store.publish_folder(tmp, f"{out_uri}/rank-{rank}", {"kind": "test"})
    return {"rank": int(rank)}


def test_every_rank_runs_and_rank_0_alone_publishes_and_answers(tmp_path):
    out = call_isolated("tests.test_data_parallel:publish_rank", {"out_uri": str(tmp_path)}, "ranks", tmp_path / "logs", processes=2)
    assert out["rank"] == 0 and out["train_processes"] == 2
    assert (tmp_path / "ran-0").exists() and (tmp_path / "ran-1").exists()
    assert store.is_published(f"{tmp_path}/rank-0") and not store.is_published(f"{tmp_path}/rank-1")


def test_a_batch_that_does_not_split_over_the_processes_is_refused(monkeypatch):
    from components.models.hardware import per_process_batch

    monkeypatch.setenv("WORLD_SIZE", "4")
    assert per_process_batch(32) == 8
    with pytest.raises(ValueError, match="batch size of 30 .* execution.train_processes=4"):
        per_process_batch(30)


@pytest.fixture(scope="module")
def scored(smoke_cfg, tiny_model_uri, tmp_path_factory):
    base = tmp_path_factory.mktemp("data-parallel")
    # Generated on the transformers backend: what is tested is training (vLLM's engine start costs ~8 s).
    cfg = smoke_cfg.model_copy(update={"scoring": smoke_cfg.scoring.model_copy(update={"label_source": "gold"}),
                                       "generation": smoke_cfg.generation.model_copy(update={"backend": "transformers"})})
    generate.run(cfg, f"{base}/candidates", tiny_model_uri, 1, target=2)
    score.run(cfg, f"{base}/scored", tiny_model_uri, f"{base}/candidates", 1)
    return cfg, f"{base}/scored"


def test_the_prm_and_sft_train_in_two_processes_as_in_one(scored, tiny_model_uri, tmp_path):
    """The same optimizer steps over the same global batches, and the loss each process trains on is
    its share of the batch's mean. The PRM's loss is our own (weighted, over step tags): before the
    fix the Trainer scaled it by the process count, as if it were a sum, so a PRM trained on 2
    processes took steps twice as large (its first logged loss was twice the one-process run's)."""
    cfg, scored_uri = scored
    two = cfg.model_copy(update={"execution": cfg.execution.model_copy(update={"train_processes": 2})})
    for stage, args in ((prm_stage, {"generator_uri": tiny_model_uri, "round_idx": 1, "scored_uris": [scored_uri]}),
                        (sft_stage, {"model_uri": tiny_model_uri, "round_idx": 1, "kept_uris": [scored_uri]})):
        one = stage.run(cfg, str(tmp_path / f"{stage.STAGE.name}-1"), **args)
        dp = run_isolated(stage, two, {"out_uri": str(tmp_path / f"{stage.STAGE.name}-2"), **args},
                          log_dir=tmp_path / "logs")
        assert dp["train_processes"] == 2 and "train_processes" not in one, stage.STAGE.name
        assert dp["steps"] == one["steps"] > 1 and dp["examples"] == one["examples"], stage.STAGE.name
        # The first step: the same starting weights on a batch of the same size.
        assert dp["loss_first"] == pytest.approx(one["loss_first"], rel=0.2), stage.STAGE.name
        assert store.read_manifest(str(tmp_path / f"{stage.STAGE.name}-2"))["metrics"]["steps"] == one["steps"]
