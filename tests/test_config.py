import pytest

from components.config import ConfigError, RunConfig, load_config


def write(tmp_path, text):
    p = tmp_path / "run.yaml"
    p.write_text(text)
    return p


def test_demo_config_loads_and_overrides_apply():
    cfg = load_config("configs/demo.yaml", ["generation.k=3", "rounds=2", "filter.mode=outcome"])
    assert cfg.generation.k == 3 and cfg.rounds == 2 and cfg.filter.mode == "outcome"
    assert cfg.flat_params()["generation/k"] == "3"


def test_unknown_key_names_file_and_field(tmp_path):
    p = write(tmp_path, "generation:\n  kk: 3\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert str(p) in str(e.value) and "generation.kk" in str(e.value) and "unknown field" in str(e.value)


def test_wrong_type_and_impossible_values_rejected(tmp_path):
    with pytest.raises(ConfigError, match="generation.k"):
        load_config(write(tmp_path, "generation: {k: many}\n"))
    with pytest.raises(ConfigError, match=r"family.train.*min_ops \(5\) > max_ops \(4\)"):
        load_config(None, ["family.train.min_ops=5", "family.train.max_ops=4"])
    with pytest.raises(ConfigError, match="--set"):
        load_config(None, ["generation.k"])
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_identity_ignores_where_and_how_long_but_not_what():
    base = RunConfig()
    assert base.loop_id() == RunConfig(rounds=7, store_uri="s3://b/x").loop_id()
    assert base.loop_id() != load_config(None, ["generation.k=4"]).loop_id()
    # the bootstrap depends only on what trains it
    assert base.bootstrap_hash() == load_config(None, ["filter.threshold=0.9"]).bootstrap_hash()
    assert base.bootstrap_hash() != load_config(None, ["model.layers=2"]).bootstrap_hash()


def test_no_secret_fields_in_params(monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "hunter2")
    params = RunConfig().flat_params()
    assert not any("hunter2" in v or "secret" in k.lower() for k, v in params.items())


def test_label_budget_settings_are_checked():
    """A labelling budget needs the exact step check (arith) and excludes a labels file."""
    cfg = load_config("configs/demo.yaml", ["scoring.label_source=labels", "scoring.labels.budget=250", "prm.enabled=true"])
    assert cfg.scoring.labels.budget == 250
    with pytest.raises(ConfigError, match="prm.enabled must be true"):  # the demo trains no PRM by default
        load_config("configs/demo.yaml", ["scoring.label_source=labels", "scoring.labels.budget=250"])
    with pytest.raises(ConfigError, match="uri.*budget.*not both"):
        load_config("configs/demo.yaml", ["scoring.labels.budget=250", "scoring.labels.uri=/tmp/x.jsonl"])
    with pytest.raises(ConfigError, match="exact step check"):
        load_config("configs/gsm8k.yaml", ["scoring.labels.budget=250"])
    with pytest.raises(ConfigError, match="neither scoring.labels.uri nor scoring.labels.budget"):
        load_config("configs/demo.yaml", ["scoring.label_source=labels"])
