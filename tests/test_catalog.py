"""The dataset catalog: a loop's filtered data found again by ID, in this process and in another one
(`vstar datasets`, `vstar sft --data`), on a local store and on a real S3 server with real MLflow."""
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import datasets
import mlflow
import pytest

from components.artifacts import catalog, store, tracking
from components.artifacts.layout import Layout
from components.stages import filter as filter_stage
from components.stages import score

VSTAR = str(Path(sys.executable).parent / "vstar")


def publish_round(cfg, fam, n_problems: int, round_idx: int = 1) -> tuple[str, dict]:
    """A round's filtered data made by the real score (gold step labels) and filter stages; per problem
    the gold trace and one with a wrong answer, so the filter has something to reject."""
    uri = lambda stage: Layout.of(cfg).round(round_idx, stage)  # noqa: E731
    rows = []
    for p in fam.problems("train")[:n_problems]:
        gold = fam.gold_solution(p)
        for j, c in enumerate([gold, gold.replace(f"Answer: {p.answer}", f"Answer: {int(p.answer) + 1}")]):
            rows.append({"problem_id": p.id, "prompt": p.prompt, "answer": p.answer, "difficulty": p.difficulty,
                         "sample": j, "completion": c, "correct": fam.is_correct(p, c),
                         "gold_first_error": fam.first_error(p, c)})
    store.write_rows(rows, uri("candidates"))
    score.run(cfg, uri("scored"), "unused: gold labels need no model", uri("candidates"), round_idx)
    stats = filter_stage.run(cfg, uri("filtered"), uri("scored"), round_idx)
    return uri("filtered"), stats


def gold_cfg(smoke_cfg, store_uri):
    return smoke_cfg.model_copy(update={"store_uri": store_uri,
                                        "scoring": smoke_cfg.scoring.model_copy(update={"label_source": "gold"})})


def register(cfg, filtered, stats, round_idx=1, parent_run_id=None, run_id=None):
    return catalog.register(cfg.store_uri, filtered, loop_id=cfg.loop_id(), round=round_idx,
                            filter=cfg.filter.model_dump(), label_source=cfg.scoring.label_source,
                            parent_run_id=parent_run_id, run_id=run_id, rows=stats["kept"])


def test_catalog_finds_published_rounds_by_id(smoke_cfg, smoke_family, tmp_path, monkeypatch):
    cfg = gold_cfg(smoke_cfg, str(tmp_path / "store"))
    assert catalog.list_entries(cfg.store_uri) == []
    entries = []
    for n in (1, 2):
        filtered, stats = publish_round(cfg, smoke_family, 6 * n, n)
        entries.append(register(cfg, filtered, stats, n))
    e1, e2 = entries
    sha = store.read_manifest(e1["uri"])["sha256"]
    assert e1["id"] == f"{cfg.loop_id()}-r1-{sha[:8]}" and e1["rows"] == 6 and e2["rows"] == 12
    assert [e["id"] for e in catalog.list_entries(cfg.store_uri)] == [e1["id"], e2["id"]]
    assert catalog.get(cfg.store_uri, f"{cfg.loop_id()}-r2")["uri"] == e2["uri"]  # a unique prefix will do
    monkeypatch.setenv("VSTAR_STORE", cfg.store_uri)
    ds = catalog.load_filtered(e1["id"])
    assert ds.to_list() == store.read_rows(e1["uri"]) and all(ds["correct"])

    with pytest.raises(catalog.UnknownDataset, match=rf"unknown dataset id .*did you mean: {e1['id']}"):
        catalog.get(cfg.store_uri, e1["id"][:-1] + "x")  # a typo
    with pytest.raises(catalog.UnknownDataset, match="ambiguous"):
        catalog.get(cfg.store_uri, cfg.loop_id())


def test_catalog_refuses_what_it_cannot_vouch_for(smoke_cfg, smoke_family, tmp_path):
    cfg = gold_cfg(smoke_cfg, str(tmp_path / "store"))
    filtered, stats = publish_round(cfg, smoke_family, 4)
    with pytest.raises(store.NotPublished, match="nowhere"):
        catalog.register(cfg.store_uri, str(tmp_path / "nowhere"), loop_id="x", round=1, filter={},
                         label_source="gold", parent_run_id=None, run_id=None, rows=1)
    with pytest.raises(ValueError, match="manifest says 4 rows, register was told 5"):
        register(cfg, filtered, {"kept": 5})
    entry = register(cfg, filtered, stats)
    store.write_rows(store.read_rows(filtered)[:2], filtered)  # the round is re-run and republished
    with pytest.raises(ValueError, match=f"{entry['id']}: .* was republished"):
        catalog.load_filtered(entry["id"], cfg.store_uri)
    entry_path = Path(cfg.store_uri, "catalog", f"{entry['id']}.json")
    entry_path.write_text("{not json")
    with pytest.raises(ValueError, match=f"{entry['id']}.json: catalog entry is not valid JSON"):
        catalog.list_entries(cfg.store_uri)


def vstar(*args, cwd, env=None):
    return subprocess.run([VSTAR, *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=900)


def test_dataset_reused_by_another_process_on_s3(s3, mlflow_server, smoke_cfg, smoke_family, tiny_model_dir, tmp_path):
    cfg = gold_cfg(smoke_cfg, s3.uri(f"catalog-{uuid.uuid4().hex[:6]}")).model_copy(
        update={"tracking_uri": mlflow_server})
    parent = tracking.loop_run(cfg)
    run = tracking.round_run(cfg, parent, 1)
    filtered, stats = publish_round(cfg, smoke_family, 24)
    entry = register(cfg, filtered, stats, parent_run_id=parent, run_id=run)
    assert stats["kept"] == 24 and filtered.startswith("s3://")

    # Anyone with the store can read the rows with plain `datasets`, no vstar code involved.
    (data_file,) = entry["data_files"]
    plain = datasets.load_dataset("parquet", data_files=data_file, split="train",
                                  storage_options=store.storage_options(data_file))
    assert plain.to_list() == store.read_rows(filtered)

    # Another process finds it through the catalog alone.
    listed = vstar("datasets", "list", "--store", cfg.store_uri, cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert entry["id"] in listed.stdout and "24" in listed.stdout and "min >= 0.5" in listed.stdout
    shown = vstar("datasets", "show", entry["id"][:-3], cwd=tmp_path, env={"VSTAR_STORE": cfg.store_uri})
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout[: shown.stdout.rindex("}") + 1])["run_id"] == run
    typo = vstar("datasets", "show", entry["id"] + "9", "--store", cfg.store_uri, cwd=tmp_path)
    assert typo.returncode == 2 and f"did you mean: {entry['id']}" in typo.stdout

    out = store.join(cfg.store_uri, "sft-from-catalog")
    tuned = vstar("sft", "--data", entry["id"], "--model", str(tiny_model_dir), "--store", cfg.store_uri,
                  "--out", out, "--epochs", "1", "--batch-size", "8", "--lr", "1e-3", "--tracking-uri", mlflow_server,
                  "--experiment", cfg.experiment, cwd=tmp_path)
    assert tuned.returncode == 0, tuned.stdout + tuned.stderr
    manifest = store.read_manifest(out)
    assert manifest["data_id"] == entry["id"] and manifest["data_uri"] == filtered
    assert manifest["base_model"] == str(tiny_model_dir) and manifest["metrics"]["examples"] == 24

    # The lineage in MLflow: the catalogued dataset is the run's training input; the run names both models.
    c = mlflow.MlflowClient(mlflow_server)
    exp = c.get_experiment_by_name(cfg.experiment).experiment_id
    found = c.search_runs([exp], f"tags.`vstar.data_id` = '{entry['id']}'")
    assert len(found) == 1, ([(x.info.run_name, x.data.tags.get("vstar.data_id")) for x in c.search_runs([exp])],
                             manifest.get("mlflow_run_id"), tuned.stdout[-2000:])
    (r,) = found
    assert r.info.status == "FINISHED" and r.info.run_id == manifest["mlflow_run_id"]
    assert r.data.params["data_id"] == entry["id"] and r.data.params["model_uri"] == out
    assert r.data.params["base_model"] == str(tiny_model_dir) and r.data.tags["vstar.data_run_id"] == run
    assert "loss_last" in r.data.metrics
    (inp,) = r.inputs.dataset_inputs
    assert inp.dataset.name == entry["id"] and filtered in inp.dataset.source
    assert {t.key: t.value for t in inp.tags}["mlflow.data.context"] == "training"

    # And the published model is a fine-tuned copy of the base, not the base itself.
    from safetensors.torch import load_file

    base = load_file(str(Path(tiny_model_dir) / "model.safetensors"))
    new = load_file(str(store.fetch_folder(out, cache_root=tmp_path / "cache") / "model.safetensors"))
    assert base.keys() == new.keys() and any(not (base[k] == new[k]).all() for k in base)


def test_filtered_data_records_the_source_that_labelled_it(smoke_cfg, smoke_family, tmp_path):
    """A PRM source has no PRM in round 1: the round labels with `first_round_source`, and the scored
    and filtered manifests (which the catalog entry copies) say so, not the configured source."""
    cfg = smoke_cfg.model_copy(update={"store_uri": str(tmp_path / "store"), "scoring": smoke_cfg.scoring.model_copy(
        update={"label_source": "prm", "first_round_source": "gold"})})
    filtered, _ = publish_round(cfg, smoke_family, 4)
    scored = filtered.rsplit("/", 1)[0] + "/scored"
    assert store.read_manifest(scored)["label_source"] == "gold"
    assert store.read_manifest(filtered)["label_source"] == "gold"
    assert {r["label_source"] for r in store.read_rows(filtered)} == {"gold"}


def sft_cli(*args, tmp_path):
    from typer.testing import CliRunner

    from flows.cli import app

    return CliRunner().invoke(app, ["sft", *args, "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db"])


def test_vstar_sft_publishes_an_adapter_where_it_always_did(smoke_cfg, smoke_family, tiny_model_dir, tmp_path,
                                                             monkeypatch):
    """`vstar sft --lora-r 4` on a local store: an adapter of rank 4 and alpha 8 (LoraConfig's default, 2 r)
    on the attention projections, published at the URI the command has always chosen (its settings'
    hash under <store>/sft/<id>/) with the manifest fields it has always written, the run in MLflow."""
    cfg = gold_cfg(smoke_cfg, str(tmp_path / "store"))
    filtered, stats = publish_round(cfg, smoke_family, 8)
    entry = register(cfg, filtered, stats)
    monkeypatch.chdir(tmp_path)
    res = sft_cli("--data", entry["id"], "--model", str(tiny_model_dir), "--store", cfg.store_uri, "--epochs", "1",
                  "--batch-size", "8", "--lr", "1e-3", "--lora-r", "4", tmp_path=tmp_path)
    assert res.exit_code == 0, res.output
    hp = {"epochs": 1.0, "lr": 1e-3, "batch_size": 8, "seed": 0, "lora_r": 4}
    base_sha = store.read_manifest(str(tiny_model_dir))["sha256"]
    out = Layout(cfg.store_uri).sft(entry["id"], {"base": base_sha, **hp})
    m = store.read_manifest(out)
    assert set(m) == {"kind", "data_id", "data_uri", "data_sha256", "base_model", "base_sha256", "hparams",
                      "mlflow_run_id", "metrics", "files", "digests", "sha256", "published_at", "uri"}, sorted(m)
    assert (m["kind"], m["data_id"], m["data_uri"], m["data_sha256"]) == ("lora", entry["id"], filtered, entry["sha256"])
    assert (m["base_model"], m["base_sha256"], m["hparams"]) == (str(tiny_model_dir), base_sha, hp)
    assert set(m["metrics"]) == {"examples", "loss_first", "loss_last", "steps", "seconds", "loss_curve"}
    assert m["metrics"]["examples"] == 8 and m["metrics"]["steps"] == 1
    adapter = json.loads((Path(out) / "adapter_config.json").read_text())
    assert (adapter["r"], adapter["lora_alpha"]) == (4, 8)
    assert sorted(adapter["target_modules"]) == ["k_proj", "o_proj", "q_proj", "v_proj"]
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert lines[-3].startswith(f"fine-tuned {tiny_model_dir} on {entry['id']} (8 examples, 1 steps, loss ")
    assert lines[-2:] == [f"model: {out}", f"MLflow run {m['mlflow_run_id']} (experiment vstar): input {filtered}"]
    r = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").get_run(m["mlflow_run_id"])
    assert r.info.status == "FINISHED" and r.data.params["lora_r"] == "4" and r.data.params["model_uri"] == out


def test_vstar_sft_refuses_what_it_cannot_train(smoke_cfg, smoke_family, tmp_path, monkeypatch):
    """Settings the loop's config would refuse, and a base that is not there: one line naming the option,
    exit 2, before anything is trained or an MLflow run is opened."""
    cfg = gold_cfg(smoke_cfg, str(tmp_path / "store"))
    entry = register(cfg, *publish_round(cfg, smoke_family, 2))
    monkeypatch.chdir(tmp_path)
    common = ("--data", entry["id"], "--store", cfg.store_uri)
    res = sft_cli(*common, "--model", str(tmp_path / "nowhere"), tmp_path=tmp_path)
    assert res.exit_code == 2 and f"--model {tmp_path / 'nowhere'}: " in res.output and "no published" in res.output
    res = sft_cli(*common, "--model", str(tmp_path), "--lr", "2", "--batch-size", "0", tmp_path=tmp_path)
    assert res.exit_code == 2, res.output
    assert res.output.splitlines() == ["--lr: Input should be less than 1",
                                       "--batch-size: Input should be greater than or equal to 1"]
    res = sft_cli(*common, "--model", str(tmp_path), "--lora-r", "-1", tmp_path=tmp_path)
    assert res.output.splitlines() == ["--lora-r: Input should be greater than or equal to 1"]
    assert not (tmp_path / "mlflow.db").exists() and not Path(cfg.store_uri, "sft").exists()
