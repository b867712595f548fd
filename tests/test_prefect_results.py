"""Nothing in the store is ever unpickled (#14, a shared bucket): Prefect's persisted results under
<store>/prefect-results are plain JSON records, they still serve the cache a resumed run relies on,
and a pickle planted there (raw, or wrapped in a record that names Prefect's pickle serializer) is
never loaded: the run reads it as a cache miss and still succeeds. (Flows' own results are not
persisted: nothing reads them back.)"""
import base64
import json
import logging
import pickle
from pathlib import Path

import pytest

from components.config import load_config
from components.infra import store
from components.infra.layout import Layout
from tasks.results import SERIALIZER, UnsafeResult, checked_record

ROOT = Path(__file__).resolve().parent.parent
# A round as short as it gets on the session's tiny model (the test is about results, not learning).
OVERRIDES = ["prm.enabled=false", "scoring.label_source=gold", "family.eval.per_level=5", "eval.sampled_per_level=2",
             "generation.k=2", "curriculum.problems=8", "sft.max_examples=16"]


class Marker:
    """Unpickling this creates `path`: the proof that a planted pickle was loaded."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def planted(payload: bytes, i: int) -> bytes:
    """The pickle as a raw blob, as the record Prefect writes with its default serializer, and as an
    old-style record (`{"data": ...}`, which Prefect reads with pickle as well)."""
    b64 = base64.encodebytes(payload).decode()
    record = {"metadata": {"storage_key": "k", "expiration": None,
                           "serializer": {"type": "pickle", "picklelib": "cloudpickle"},
                           "prefect_version": "3.7.7", "storage_block_id": None}, "result": b64}
    return [payload, json.dumps(record).encode(), json.dumps({"data": b64}).encode()][i % 3]


def result_files(store_uri: str) -> dict[Path, bytes]:
    root = Path(store.fs_for(Layout(store_uri).prefect_results())[1])
    return {p: p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def task_states(flow_run_id) -> dict[str, str]:
    """Task name -> state name, through the flow run's subflows."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, FlowRunFilterParentTaskRunId

    out, frontier = {}, [flow_run_id]
    with get_client(sync_client=True) as c:
        while frontier:
            runs = c.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=frontier)))
            out.update({t.name.rsplit("-", 1)[0]: t.state.name for t in runs})
            frontier = [fr.id for fr in c.read_flow_runs(flow_run_filter=FlowRunFilter(
                parent_task_run_id=FlowRunFilterParentTaskRunId(any_=[t.id for t in runs])))] if runs else []
    return out


def test_the_check_refuses_every_record_but_a_plain_json_one():
    from prefect._internal.result_records import ResultRecord, ResultRecordMetadata
    from prefect.serializers import JSONSerializer, PickleSerializer

    from tasks.results import SafeJSON

    ok = ResultRecord(metadata=ResultRecordMetadata(serializer=SafeJSON()), result=("s3://b/x", {"f": 0.5})).serialize()
    assert ResultRecord.deserialize(checked_record(ok, "k")).result == ["s3://b/x", {"f": 0.5}]
    for ser in (PickleSerializer(), JSONSerializer()):  # Prefect's `json` imports any class a record names
        bad = ResultRecord(metadata=ResultRecordMetadata(serializer=ser), result=1).serialize()
        with pytest.raises(UnsafeResult, match=f"refusing Prefect result at/k: serializer .*'{ser.type}'"):
            checked_record(bad, "at/k")
    meta = '{"serializer": {"type": "vstar-json"}}'
    for bad, why in [(pickle.dumps(("x", {})), "not JSON"),
                     (f'{{"metadata": {meta}, "result": "[1]", "serializer": {{"type": "pickle"}}}}',
                      "not a result record"),
                     ('{"data": "gASVBQ=="}', "not a result record"), ('[1, 2]', "not a result record"),
                     (f'{{"metadata": {meta}, "metadata": {{"serializer": {{"type": "pickle"}}}}, "result": "1"}}',
                      "duplicate"),
                     (f'{{"metadata": {meta}, "result": "gASVBQ=="}}', "result is not JSON"),
                     (f'{{"metadata": {meta}, "result": [1]}}', "not JSON text")]:
        with pytest.raises(UnsafeResult, match=why):
            checked_record(bad.encode() if isinstance(bad, str) else bad, "k")


def test_results_are_json_serve_the_cache_and_a_planted_pickle_is_never_loaded(tmp_path, prefect_server, tiny_model_dir,
                                                                               caplog):
    from flows.self_improve import self_improve

    cfg = load_config(ROOT / "configs/smoke.yaml", [f"store_uri={tmp_path}/store",
                                                    f"tracking_uri=sqlite:///{tmp_path}/mlflow.db", *OVERRIDES])
    store.publish_folder(tiny_model_dir, Layout.of(cfg).bootstrap(), {"kind": "model"})
    first = self_improve(cfg)
    assert first["rounds"][1]["filter"]["kept"] >= 0

    # Every persisted result is a JSON record whose result is JSON text: no pickle, raw or wrapped.
    files = result_files(cfg.store_uri)
    assert len(files) >= 8, files.keys()  # bootstrap, evaluate x2, generate, score, filter, sft, trace-report
    for path, body in files.items():
        assert not body.startswith(b"\x80"), path
        record = json.loads(body)
        assert isinstance(record, dict) and "metadata" in record, (path, body[:400])
        assert record["metadata"]["serializer"] == {"type": SERIALIZER}, (path, record["metadata"])
        json.loads(record["result"])

    # A rerun takes every stage from Prefect's cache, i.e. from those JSON records (what resuming a
    # killed run relies on); a tuple comes back as a list and the flow unpacks it as before.
    state = self_improve(cfg, return_state=True)
    assert state.is_completed()
    states = task_states(state.state_details.flow_run_id)
    stages = ("bootstrap", "evaluate", "generate", "score", "filter", "sft", "trace-report")
    assert {s: states.get(s) for s in stages} == {s: "Cached" for s in stages}, states
    assert state.result()["rounds"][1]["filtered_uri"] == first["rounds"][1]["filtered_uri"]

    # Someone with write access to the bucket replaces every result with a pickle that would create
    # `marker` when loaded.
    marker = tmp_path / "unpickled"
    payload = pickle.dumps(Marker(str(marker)))
    paths = sorted(result_files(cfg.store_uri))
    for i, path in enumerate(paths):
        path.write_bytes(planted(payload, i))
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        again = self_improve(cfg, return_state=True)
    assert not marker.exists(), "a planted pickle was loaded"
    # Each refusal is logged (the run's logger, else tasks.results), naming the file. Read as log
    # records, not from the console: what an earlier test did to console handlers must not decide this.
    out = "\n".join(r.getMessage() for r in caplog.records)
    assert all(f"refusing Prefect result {p}" in out for p in paths), out[-3000:]
    assert again.is_completed()
    states = task_states(again.state_details.flow_run_id)
    assert {s: states.get(s) for s in stages} == {s: "Completed" for s in stages}, states  # cache misses
    # The lookups did reach the planted keys: each was refused, and the stage's JSON record is back.
    rewritten = result_files(cfg.store_uri)
    assert all(json.loads(rewritten[p])["metadata"]["serializer"] == {"type": SERIALIZER} for p in paths)
    assert not marker.exists()
