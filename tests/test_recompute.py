"""A published stage is reused, unless the config asks to recompute it, or it was made by other code
and `stale` is asked for, or an input it was made from has been made again since (#14: stale results
are never reused silently). Two light stages run through tasks/common.run_stage in a real Prefect flow:
`filter` publishes rows, `sft` publishes what it read from them."""
import logging
import shutil
import types
from pathlib import Path

import mlflow
import pytest
from prefect import flow

from components.checks import load_config
from components.artifacts import code_version, store, tracking
from components.stages import Stage
from tasks.common import run_stage


def stage(name: str, run) -> types.ModuleType:
    mod = types.ModuleType(f"tests.fake_{name.replace('-', '_')}")
    mod.STAGE, mod.run = Stage(name, publishes=name), run
    return mod


@pytest.fixture
def loop(tmp_path, prefect_server):
    rows = [{"x": 1}, {"x": 2}]  # what `filter` publishes; a test changes it as a bug fix would
    calls = []

    def filter_run(cfg, out_uri):
        calls.append("filter")
        store.write_rows(list(rows), out_uri, {"metrics": {"kept": len(rows)}})
        return {"kept": len(rows)}

    def sft_run(cfg, out_uri, filtered_uri):
        calls.append("sft")
        n = len(store.read_rows(filtered_uri))
        store.write_rows([{"n": n}], out_uri, {"metrics": {"examples": n}})
        return {"examples": n}

    filt, sft = stage("filter", filter_run), stage("sft", sft_run)
    a, b = f"{tmp_path}/store/filtered", f"{tmp_path}/store/model"
    tracking_uri = f"sqlite:///{tmp_path}/mlflow.db"

    @flow(persist_result=False)
    def two_stages(overrides: list[str], root: str, tracking_uri: str) -> dict:
        cfg = load_config(None, [f"store_uri={root}", f"tracking_uri={tracking_uri}", *overrides])
        run_id = tracking.round_run(cfg, tracking.loop_run(cfg), 1)
        a, b = f"{root}/filtered", f"{root}/model"
        return {"filter": run_stage(cfg, filt, a, run_id), "sft": run_stage(cfg, sft, b, run_id, filtered_uri=a),
                "run_id": run_id}

    def run(*overrides, root=f"{tmp_path}/store", tracking=tracking_uri):
        calls.clear()
        out = two_stages(list(overrides), root, tracking)
        return list(calls), out

    return run, rows, a, b, tracking_uri


def test_reuse_recompute_and_out_of_date_inputs(loop, caplog):
    run, rows, a, b, _ = loop
    assert run()[0] == ["filter", "sft"]
    made = store.read_manifest(b)
    assert made["inputs"] == {a: store.read_manifest(a)["sha256"]}  # what it was made from
    assert made["code"]["module"] == "tests.fake_sft"
    assert run()[0] == []  # published: reused

    # Recomputing `filter` makes the same rows: `sft`, made from identical input, is still current.
    first = store.read_manifest(a)
    with caplog.at_level(logging.INFO):
        assert run("recompute=[filter]")[0] == ["filter"]
    assert "filter: published at" in caplog.text and "asked to (recompute): recomputing" in caplog.text
    assert store.read_manifest(a)["sha256"] == first["sha256"]

    # A fix changes what `filter` makes: recomputing it makes `sft`, made from the old rows, out of date.
    rows.pop()
    caplog.clear()
    with caplog.at_level(logging.INFO):
        calls, out = run("recompute=[filter]")
    assert calls == ["filter", "sft"] and out["sft"]["examples"] == 1
    assert f"sft: published at {b}, but its inputs changed since ({a}): recomputing" in caplog.text
    assert store.read_manifest(b)["inputs"] == {a: store.read_manifest(a)["sha256"]}
    assert run()[0] == []  # and then both are current again

    # The loop copied to another store (the store is not the loop's identity) is current there too.
    shutil.copytree(Path(a).parent, Path(a).parent.with_name("copy"))
    assert run(root=str(Path(a).parent.with_name("copy")))[0] == []


def test_a_reused_stage_shows_its_metrics_on_the_rounds_mlflow_run(loop, tmp_path):
    """The loop's stages published, tracked on another MLflow server (a store copied to another machine,
    a new tracking database): the round's run there still has every stage's metrics, from its manifest."""
    run, *_ = loop
    run()
    elsewhere = f"sqlite:///{tmp_path}/elsewhere.db"
    calls, out = run(tracking=elsewhere)
    assert calls == []  # reused...
    metrics = mlflow.MlflowClient(elsewhere).get_run(out["run_id"]).data.metrics
    assert metrics["filter/kept"] == 2 and metrics["sft/examples"] == 2  # ...and reported


def test_stale_code_is_reused_loudly_or_recomputed_on_request(loop, caplog, monkeypatch):
    run, _, a, b, tracking_uri = loop
    run()
    real = code_version.code_version

    def after_a_fix(module):  # this checkout's `sft` is other code than the one that published it
        return {**real(module), "hash": "0123456789ab"} if module == "tests.fake_sft" else real(module)

    monkeypatch.setattr(code_version, "code_version", after_a_fix)
    with caplog.at_level(logging.INFO):
        calls, out = run()
    assert calls == []  # the default stays "reuse"...
    warning = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("sft: published by other code" in w and "this checkout: 0123456789ab" in w and "--recompute sft" in w
               for w in warning), warning  # ...but never silently: the log, and a tag on the round's run
    tags = mlflow.MlflowClient(tracking_uri).get_run(out["run_id"]).data.tags
    assert tags["vstar.stale.sft"].endswith("(this checkout: 0123456789ab)")

    assert run("recompute=[stale]")[0] == ["sft"]  # only what other code made
    assert store.read_manifest(b)["code"]["hash"] == "0123456789ab"
    assert run("recompute=[stale]")[0] == []


def test_recompute_names_stages():
    from components.config import ConfigError

    with pytest.raises(ConfigError, match="recompute: unknown stage 'scor'; known: prepare-data, bootstrap"):
        load_config(None, ["recompute=[scor]"])
    assert load_config(None, ["recompute=[score]"]).loop_id() == load_config(None).loop_id()  # not the loop's identity
