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


def test_setup_requests_outlast_a_busy_server_and_fail_on_a_real_error():
    """`vstar up` failed on a loaded machine: Prefect's server answered 503 (its SQLite database busy) to
    the gpu concurrency limit, asked once, right after its health check passed. A server that is busy
    twice is asked again; a 4xx, or a server busy past the attempts, still fails, naming the status.
    (A stand-in HTTP server: a real one cannot be made busy on demand.)"""
    import http.server
    import json
    import threading
    import urllib.error

    import pytest

    from components.localstack.processes import http_json

    answers = [503, 503, 200]

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            code = answers.pop(0) if answers else 400
            self.send_response(code)
            self.end_headers()
            if code == 200:
                self.wfile.write(json.dumps({"tag": "gpu"}).encode())

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/concurrency_limits/"
    try:
        assert http_json(url, {"tag": "gpu", "concurrency_limit": 1}) == {"tag": "gpu"}
        assert answers == []
        with pytest.raises(urllib.error.HTTPError, match="400"):
            http_json(url, {"tag": "gpu"})
        answers[:] = [503, 503]
        with pytest.raises(urllib.error.HTTPError, match="503"):
            http_json(url, {"tag": "gpu"}, attempts=2)
    finally:
        server.shutdown()
