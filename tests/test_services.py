"""The service fixtures work end to end: S3 via s3fs/boto3, MLflow with S3 artifacts, Prefect."""

from __future__ import annotations

import uuid

from prefect import flow, task


def test_s3fs_roundtrip(s3):
    import fsspec

    # No endpoint passed: s3fs must find the moto server through AWS_ENDPOINT_URL like app code does.
    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    path = s3.uri(f"roundtrip/{uuid.uuid4().hex}.txt")
    with fs.open(path, "wb") as f:
        f.write(b"hello vstar")
    with fs.open(path, "rb") as f:
        assert f.read() == b"hello vstar"
    key = path.removeprefix(f"s3://{s3.bucket}/")
    assert s3.client().get_object(Bucket=s3.bucket, Key=key)["Body"].read() == b"hello vstar"


def test_mlflow_artifact_lands_in_s3(mlflow_server, s3, tmp_path):
    import mlflow

    assert mlflow.get_tracking_uri() == mlflow_server
    mlflow.set_experiment("services-test")
    (tmp_path / "note.txt").write_text("artifact body")
    with mlflow.start_run() as run:
        mlflow.log_metric("acc", 0.5)
        mlflow.log_artifact(str(tmp_path / "note.txt"))
    got = mlflow.get_run(run.info.run_id)
    assert got.data.metrics["acc"] == 0.5

    keys = [o["Key"] for o in s3.client().list_objects_v2(Bucket=s3.bucket, Prefix="mlflow-artifacts/")
            .get("Contents", [])]
    ours = [k for k in keys if run.info.run_id in k and k.endswith("note.txt")]
    assert ours, keys
    body = s3.client().get_object(Bucket=s3.bucket, Key=ours[0])["Body"].read()
    assert body == b"artifact body"


@task
def _double(x: int) -> int:
    return 2 * x


@flow(name="services-smoke")
def _smoke_flow(x: int) -> int:
    return _double(x) + 1


def test_prefect_flow_run_recorded_on_server(prefect_server):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.settings import get_current_settings

    assert get_current_settings().api.url == prefect_server
    state = _smoke_flow(20, return_state=True)
    assert state.is_completed() and state.result() == 41

    run_id = state.state_details.flow_run_id
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id])))
    assert len(runs) == 1
    assert runs[0].state.type.value == "COMPLETED"


def test_prefect_worker_online(prefect_worker):
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        pool = client.read_work_pool(prefect_worker)
        workers = client.read_workers_for_work_pool(prefect_worker)
    assert pool.type == "process"
    assert any(w.status.value == "ONLINE" for w in workers), workers
