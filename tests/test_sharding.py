"""Sharded stages on a Ray cluster (#16), against the real services: a local Ray head (started and
stopped by the session like the other services), the Prefect server, MLflow, the S3 store.

One round of the smoke config generates, scores and evaluates in 2 shards, each a Prefect task on Ray
(prefect-ray) with its own vLLM engine, while one generation shard's stage process is SIGKILLed
mid-way: the shard is retried alone, the candidates are published once, and they, the scored and the
filtered datasets and the evaluation are byte for byte those of the unsharded stages; MLflow holds one
round run with the merged metrics."""
from __future__ import annotations

import threading

import mlflow
import psutil
import pytest

from components.artifacts import store, tracking
from components.artifacts.layout import Layout
from components.stages import evaluate, filter as filter_stage, generate, score
from tests.procs import PublishedWatcher, stage_child, stray_files, wait_for

# A round as short as it gets on the tiny model (as tests/test_faults.py), generating on vLLM: its
# seeds are per prompt, so a shard's samples do not depend on which other prompts share its engine.
# Sharded: generation, scoring (MC rollouts), evaluation (greedy, the pool, its PRM scores, beam search
# guided by the PRM). The ORM is off: it is scored like the PRM.
OVERRIDES = {"family.eval.per_level": 5, "eval.sampled_per_level": 2, "curriculum.problems": 24,
             "orm.enabled": "false"}


@pytest.fixture(scope="module")
def ray_head(service_stack):
    handle = service_stack.ray_head(num_cpus=2)
    try:
        yield handle
    finally:
        service_stack.stop(handle.service)


def _cfg(smoke_cfg, store_uri: str, **execution):
    from components.checks import load_config

    sets = [f"{k}={v}" for k, v in OVERRIDES.items()] + [f"execution.{k}={v}" for k, v in execution.items()]
    return load_config("configs/smoke.yaml", [f"store_uri={store_uri}", *sets])


class Killer(threading.Thread):
    """SIGKILLs the first shard's stage process it finds under the Ray head, once, a moment in."""

    def __init__(self, head_pid: int):
        super().__init__(daemon=True)
        self.head_pid, self.killed, self.stop = head_pid, None, threading.Event()

    def run(self):
        child = wait_for(lambda: self.stop.is_set() or stage_child(self.head_pid, "generate"), 600, "a shard")
        if child is True:
            return
        self.stop.wait(1.0)  # mid-way: its engine is loading or generating
        try:
            child.kill()
            self.killed = child.pid
        except psutil.NoSuchProcess:
            pass


def test_two_shards_on_ray_match_the_unsharded_round(ray_head, s3, mlflow_server, prefect_server, smoke_cfg,
                                                      tiny_model_dir, tmp_path):
    from prefect import get_client
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterName

    from flows.self_improve import self_improve

    cfg = _cfg(smoke_cfg, s3.uri("sharded"), engine="ray", shards=2, address=ray_head.address)
    cfg = cfg.model_copy(update={"tracking_uri": mlflow_server, "experiment": "sharding", "rounds": 1})
    layout = Layout.of(cfg)
    store.publish_folder(tiny_model_dir, layout.bootstrap(), {"kind": "model"})

    killer = Killer(ray_head.service.pid)
    with PublishedWatcher(cfg.store_uri) as watcher:
        killer.start()
        result = self_improve(cfg)["rounds"][1]
        killer.stop.set()
        killer.join()
    assert killer.killed, "no shard process was found to kill"
    assert not watcher.violations, watcher.violations

    # The killed shard ran again, alone: one shard task with two runs, the other with one.
    with get_client(sync_client=True) as c:
        runs = c.read_task_runs(task_run_filter=TaskRunFilter(name=TaskRunFilterName(like_="generate-shard")))
    assert sorted(r.run_count for r in runs) == [1, 2], [(r.name, r.run_count, r.state_name) for r in runs]
    candidates = layout.round(1, "candidates")
    manifest = store.read_manifest(candidates)
    assert manifest["metrics"]["shards"] == 2
    # Published once (the watcher saw one manifest), its parts gone, nothing else left behind.
    assert stray_files(cfg.store_uri) == []
    assert not store.fs_for(candidates + ".shards")[0].exists(store.fs_for(candidates + ".shards")[1])

    # The unsharded stages on the same model make the same bytes.
    ref = _cfg(smoke_cfg, str(tmp_path / "ref"))
    ref_layout = Layout.of(ref)
    g0 = ref_layout.bootstrap()
    store.publish_folder(tiny_model_dir, g0, {"kind": "model"})
    generate.run(ref, ref_layout.round(1, "candidates"), g0, 1, result["target"])
    score.run(ref, ref_layout.round(1, "scored"), g0, ref_layout.round(1, "candidates"), 1)
    filter_stage.run(ref, ref_layout.round(1, "filtered"), ref_layout.round(1, "scored"), 1)
    # The round's evaluation, unsharded, of the same model with the same PRM.
    evaluate.run(ref, ref_layout.round(1, "eval"), layout.round(1, "model"), "round-1", prm_uri=layout.round(1, "prm"))
    for artifact in ("candidates", "scored", "filtered"):
        got, want = store.read_manifest(layout.round(1, artifact)), store.read_manifest(ref_layout.round(1, artifact))
        assert got["digests"] == want["digests"], artifact
    # The evaluation too, but for the PRM's scores: a PRM scores a batch of traces in one padded forward
    # pass, whose rounding depends on what else is in the batch, so they agree to ~1e-7, not bit for bit.
    got, want = (store.read_rows(lay.round(1, "eval")) for lay in (layout, ref_layout))
    assert len(got) == len(want) > 0
    exact = lambda r: {k: v for k, v in r.items() if k not in ("prm_scores", "scores")}  # noqa: E731
    assert [exact(r) for r in got] == [exact(r) for r in want]
    for g, w in zip(got, want):
        assert g["prm_scores"] == pytest.approx(w["prm_scores"], abs=1e-5)
        assert g["scores"] == pytest.approx(w["scores"], abs=1e-5)
    got, want = (store.read_manifest(lay.round(1, "eval"))["metrics"] for lay in (layout, ref_layout))
    assert got["shards"] == 2 and "shards" not in want and got["beam/accuracy"] == want["beam/accuracy"]
    assert {k: v for k, v in got.items() if k.startswith(("pass1", "bok/", "maj_at"))} == pytest.approx(
        {k: v for k, v in want.items() if k.startswith(("pass1", "bok/", "maj_at"))}, abs=1e-9)
    assert store.read_manifest(layout.round(1, "scored"))["metrics"]["shards"] == 2
    assert manifest["rows"] == store.read_manifest(ref_layout.round(1, "candidates"))["rows"] > 0

    # MLflow: one run for the round, with the stage's merged metrics.
    client = mlflow.MlflowClient(mlflow_server)
    _, rounds = tracking.loop_runs(client, cfg.experiment, cfg.loop_id())
    rounds = [r for r in rounds if r.data.tags[tracking.ROUND_TAG] == "1"]
    assert len(rounds) == 1
    metrics = rounds[0].data.metrics
    assert metrics["generate/shards"] == metrics["score/shards"] == metrics["evaluate/shards"] == 2
    assert metrics["generate/traces"] == manifest["rows"] == result["generate"]["traces"]
    assert metrics["generate/problems"] * cfg.generation.k == metrics["generate/traces"]


def test_a_part_left_by_a_crash_is_reused_only_if_made_from_the_same_inputs(smoke_cfg, tmp_path):
    """After a crash mid-stage a rerun skips the parts already published, unless what they were made
    from has changed (another model, other code) or the stage is to be recomputed."""
    from components.artifacts import code_version
    from tasks.shards import reusable_part

    part = Layout.shard(str(tmp_path / "round-1/candidates"), 0, 2)
    inputs = code_version.input_digests({"model_uri": str(tmp_path / "g0"), "round_idx": 1})
    assert reusable_part(smoke_cfg, generate, part, inputs) is None  # nothing there
    with code_version.stamped(generate.__name__, inputs):
        store.write_rows([{"problem_id": "p1", "completion": "x"}], part, {"metrics": {"traces": 1}})
    assert reusable_part(smoke_cfg, generate, part, inputs)["metrics"] == {"traces": 1}
    assert reusable_part(smoke_cfg, generate, part, {uri: "another model" for uri in inputs}) is None
    assert reusable_part(smoke_cfg.model_copy(update={"recompute": ["generate"]}), generate, part, inputs) is None


def test_a_ray_head_starts_beside_a_token_left_by_ray_init(service_stack, tmp_path, monkeypatch):
    """`ray.init()` (Ray Data, a notebook) writes ~/.ray/auth_token; a head started by `ray start` then
    refused every client that did not send it, and the session's Ray head never became ready."""
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("f" * 64)
    monkeypatch.setenv("HOME", str(tmp_path))
    head = service_stack.ray_head(num_cpus=1)
    service_stack.stop(head.service)

