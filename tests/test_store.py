import json

import datasets
import pytest

from components.artifacts import store


def test_local_publish_and_read_back(tmp_path):
    uri = str(tmp_path / "loops/x/round-1/filtered")
    assert not store.is_published(uri)
    m = store.write_rows([{"a": 1, "s": [0.5, 1.0]}, {"a": 2, "s": []}], uri, {"metrics": {"kept": 2}})
    assert m["rows"] == 2 and store.read_manifest(uri)["metrics"] == {"kept": 2}
    assert store.read_rows(uri) == [{"a": 1, "s": [0.5, 1.0]}, {"a": 2, "s": []}]


def test_a_field_only_later_rows_carry_is_published_not_dropped(tmp_path):
    """Evaluation rows: greedy ones first, without the verifiers' step scores the sampled ones carry.
    The field was dropped from every row (datasets takes its columns from the first row alone), so the
    implicit PRM's published step scores were missing; now the rows without it read None."""
    uri = str(tmp_path / "loops/x/round-1/eval")
    store.write_rows([{"kind": "greedy"}, {"kind": "sample", "implicit_scores": [0.2, 0.9]}], uri)
    assert store.read_rows(uri) == [{"kind": "greedy", "implicit_scores": None},
                                    {"kind": "sample", "implicit_scores": [0.2, 0.9]}]


def test_files_without_manifest_are_not_published(tmp_path):
    """What a writer that died before its manifest leaves behind is not readable as a dataset."""
    uri = str(tmp_path / "half")
    (tmp_path / "half").mkdir()
    datasets.Dataset.from_list([{"a": 1}]).to_parquet(str(tmp_path / "half/data.parquet"))
    assert not store.is_published(uri)
    with pytest.raises(store.NotPublished, match="half"):
        store.read_rows(uri)


def test_republish_unpublishes_first(tmp_path):
    uri = str(tmp_path / "d")
    store.write_rows([{"a": 1}], uri)
    first = store.read_manifest(uri)["sha256"]
    store.write_rows([{"a": 2}], uri)
    assert store.read_manifest(uri)["sha256"] != first and store.read_rows(uri) == [{"a": 2}]


def test_s3_roundtrip_readable_with_plain_datasets(s3, tmp_path):
    uri = s3.uri("unit/filtered")
    store.write_rows([{"q": "1 +2\n", "ok": True}], uri)
    ds = datasets.load_dataset("parquet", data_files=f"{uri}/data.parquet", split="train",
                               storage_options=store.storage_options(uri))
    assert ds.to_list() == [{"q": "1 +2\n", "ok": True}]
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"x": 1}))
    store.publish_folder(folder, s3.uri("unit/model"), {"kind": "model"})
    local = store.fetch_folder(s3.uri("unit/model"), cache_root=tmp_path / "cache")
    assert json.loads((local / "config.json").read_text()) == {"x": 1}


def test_an_artifact_published_again_reads_back_as_published(s3):
    """Rows published again at the same URI (a recomputed stage, a rerun loop) read back as they are
    now. Reading through `datasets.load_dataset` once served the first version from the machine's
    Hugging Face cache: on S3 its cache key is the path alone, so a loop whose id stayed the same saw
    an earlier session's evaluation shards, columns and all."""
    uri = s3.uri("unit/republished")
    store.write_rows([{"x": 1, "scores": {"a": 0.5}}], uri, {"stage": "test"})
    assert store.read_rows(uri) == [{"x": 1, "scores": {"a": 0.5}}]
    store.write_rows([{"x": 2, "scores": {"a": 0.25, "b": 1.0}}, {"x": 3, "scores": {"a": 0.0, "b": 0.0}}], uri,
                     {"stage": "test"})
    assert store.read_rows(uri) == [{"x": 2, "scores": {"a": 0.25, "b": 1.0}}, {"x": 3, "scores": {"a": 0.0, "b": 0.0}}]



def test_an_artifact_another_process_publishes_is_seen_though_its_folder_was_listed_before(s3, tmp_path):
    """A long-lived process (the flow process, a Prefect worker) whose S3 filesystem had listed an
    artifact's folder before its manifest was written read it as unpublished for good: s3fs answers
    from its listing cache ("listed, and no manifest.json there"). Seen in the Ray sharding test: the
    merged `scored` published, then `filter` in the flow process found no manifest. The other process
    here is an S3 filesystem of its own, writing the artifact's files and its manifest last."""
    import fsspec

    local = tmp_path / "artifact"
    store.write_rows([{"x": 1}], str(local))
    uri = s3.uri("unit/published-elsewhere")
    fs, path = store.fs_for(uri)  # this process's filesystem, the one every store call uses
    elsewhere = fsspec.filesystem("s3", skip_instance_cache=True, **store.storage_options(uri))
    elsewhere.put_file(str(local / "data.parquet"), f"{path}/data.parquet")  # the writer has begun
    assert [p.rsplit("/", 1)[1] for p in fs.ls(path)] == ["data.parquet"] and not store.is_published(uri)
    elsewhere.put_file(str(local / "manifest.json"), f"{path}/manifest.json")  # ... and published
    assert store.is_published(uri) and store.read_rows(uri) == [{"x": 1}]
