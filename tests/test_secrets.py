"""Credentials never reach MLflow, config.yaml, the CLI or logs: URIs are redacted wherever shown,
while connections use the real values."""
import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from components.checks import load_config
from components.redact import redact
from tests.test_config import JUDGE_KEY, SECRET_OVERRIDES, secrets_in


@pytest.mark.parametrize("raw, shown", [
    ("s3://AKIA:se/cr+et@bucket/x/y", "s3://AKIA:***@bucket/x/y"),  # cloud secrets hold unescaped / and +
    ("https://user:pass@host:8443/v1", "https://user:***@host:8443/v1"),
    ("https://ghp_token@github.com/o/r", "https://***@github.com/o/r"),  # a token as the user name
    ("https://b.s3.amazonaws.com/k?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AK%2F1&X-Amz-Signature=ab12"
     "&X-Amz-Security-Token=zz", "https://b.s3.amazonaws.com/k?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=***"
     "&X-Amz-Signature=***&X-Amz-Security-Token=***"),
    ("https://a.blob.core.windows.net/c/f?sv=2020&sp=r&sig=abc%3D", "https://a.blob.core.windows.net/c/f?sv=2020&sp=r&sig=***"),
    ("https://h/x?api_key=k1&token=t1&page=2#access_token=t2", "https://h/x?api_key=***&token=***&page=2#access_token=***"),
    ("http://127.0.0.1:5000", "http://127.0.0.1:5000"),  # nothing secret: unchanged
    ("sqlite:////tmp/mlflow.db", "sqlite:////tmp/mlflow.db"),
    (".vstar/store/loops/x", ".vstar/store/loops/x"),
    ("Problem:\n{problem}\n", "Problem:\n{problem}\n"),
    ("running -> s3://K:S1@b/loops/x (published at https://h/y?sig=S2)",
     "running -> s3://K:***@b/loops/x (published at https://h/y?sig=***)"),  # URIs inside a log line
    ("{'Authorization': 'Bearer sk-abc123'} x-api-key: sk-456", "{'Authorization': 'Bearer ***'} x-api-key: ***"),
])
def test_redact(raw, shown):
    assert redact(raw) == shown


def test_redact_masks_literal_secrets_and_leaves_non_strings():
    assert redact("the key sk-live-123 was refused", ["sk-live-123", None]) == "the key *** was refused"
    assert redact(None) is None and redact(3) == 3


def test_vstar_config_prints_no_credential(monkeypatch):
    from typer.testing import CliRunner

    from flows.cli import app

    out = CliRunner().invoke(app, ["config", "configs/smoke.yaml", *[a for o in SECRET_OVERRIDES for a in ("--set", o)]])
    assert out.exit_code == 0, out.output
    assert "judge.example/v1" in out.output and secrets_in(out.output) == []
    bad = CliRunner().invoke(app, ["config", "configs/smoke.yaml", "--set", SECRET_OVERRIDES[0], "--set", "rounds=-1"])
    assert bad.exit_code == 2 and "rounds" in bad.output and secrets_in(bad.output) == []


class _EchoAuth(BaseHTTPRequestHandler):
    """An endpoint that answers 500, then 401, each time quoting the request's Authorization header
    (a misbehaving server must not get the key into our errors or logs)."""
    calls = 0

    def do_POST(self):
        type(self).calls += 1
        status = 500 if type(self).calls == 1 else 401
        body = json.dumps({"error": {"message": f"bad auth {self.headers.get('Authorization')}"}}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.mark.parametrize("userinfo", ["", "judge-user:base-SECRET-5@"])
def test_remote_judge_never_shows_its_key_or_password(monkeypatch, userinfo):
    from components.config_scoring import JudgeConfig, RemoteJudgeConfig
    from components.labeling.judge_clients import JudgeError, make_judge_client

    class Capture(logging.Handler):
        def __init__(self):
            super().__init__(logging.DEBUG)
            self.lines = []

        def emit(self, record):
            self.lines.append(self.format(record))

    _EchoAuth.calls = 0
    srv = HTTPServer(("127.0.0.1", 0), _EchoAuth)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    capture = Capture()
    loggers = [logging.getLogger(n) for n in ("vstar", "httpx", "httpx2", "openai")]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.addHandler(capture)
            lg.setLevel(logging.DEBUG)
        monkeypatch.setenv("VSTAR_JUDGE_API_KEY", JUDGE_KEY)
        cfg = RemoteJudgeConfig(base_url=f"http://{userinfo}127.0.0.1:{srv.server_port}/v1", retries=1, backoff_s=0)
        judge = make_judge_client(JudgeConfig(backend="remote", remote=cfg))
        with pytest.raises(JudgeError) as e:  # a retried 500 (logged), then a 401 (raised)
            judge.complete(["1 +1\n=="], 4, 0.0)
    finally:
        for lg, level in zip(loggers, levels):
            lg.removeHandler(capture)
            lg.setLevel(level)
        srv.shutdown()
    shown = "\n".join([str(e.value), repr(judge), *capture.lines])
    assert _EchoAuth.calls == 2 and "401" in str(e.value) and "attempt 1 of 2" in shown  # both paths ran
    assert f"127.0.0.1:{srv.server_port}" in shown  # the endpoint is still named
    assert JUDGE_KEY not in shown and secrets_in(shown) == [], shown
    assert e.value.__cause__ is None and e.value.__suppress_context__  # no unredacted cause in tracebacks


def test_the_loop_run_in_mlflow_holds_no_credential(mlflow_server, s3, smoke_cfg, monkeypatch, tmp_path):
    """The loop's parent run as `tracking.loop_run` creates it (params, tags, config.yaml) and a round
    run, with a credential in every URI field, against the MLflow server with user-info in its URI
    (what connects keeps it; MLflow's server ignores it)."""
    from mlflow import MlflowClient

    from components.artifacts import tracking

    monkeypatch.setenv("VSTAR_JUDGE_API_KEY", JUDGE_KEY)
    host = mlflow_server.split("://", 1)[1]
    cfg = load_config("configs/smoke.yaml", [*SECRET_OVERRIDES, f"store_uri={smoke_cfg.store_uri}",
                                             f"tracking_uri=http://mlflow-user:tracking-SECRET-2@{host}",
                                             "experiment=secrets"])
    parent = tracking.loop_run(cfg)
    child = tracking.round_run(cfg, parent, 0)
    with tracking.running(cfg, child):
        pass
    c = MlflowClient(mlflow_server)
    for run_id in (parent, child):
        run = c.get_run(run_id)
        assert secrets_in(json.dumps({**run.data.params, **run.data.tags})) == []
        assert JUDGE_KEY not in json.dumps({**run.data.params, **run.data.tags})
    assert c.get_run(parent).data.params["tracking_uri"] == f"http://mlflow-user:***@{host}"
    folder = c.download_artifacts(parent, "", str(tmp_path))
    texts = [p.read_text(errors="replace") for p in tmp_path.rglob("*") if p.is_file()]
    assert any("judge.example/v1" in t for t in texts), f"no config.yaml in {folder}"
    assert all(secrets_in(t) == [] and JUDGE_KEY not in t for t in texts)


def test_stage_logs_and_failures_show_no_credential(tmp_path):
    """Library log lines (the `vstar` logger) are redacted; so is a failed child stage's traceback, in
    its log file and in the error the flow raises."""
    from components.runtime.isolation import StageFailed, call_isolated
    from components.runtime.log import get_logger
    from components.redact import RedactFilter

    get_logger(__name__)
    assert any(isinstance(f, RedactFilter) for h in logging.getLogger("vstar").handlers for f in h.filters)
    with pytest.raises(StageFailed) as e:  # the child's error quotes the URI it was given
        call_isolated("importlib:import_module", {"name": "s3://AKIA:store-SECRET-1@bucket/x"}, "probe", log_dir=tmp_path)
    assert "s3://AKIA:***@bucket/x" in str(e.value) and secrets_in(str(e.value)) == []
    assert all(secrets_in(p.read_text()) == [] for p in tmp_path.iterdir())
