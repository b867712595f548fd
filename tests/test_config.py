import pytest

from components.checks import load_config
from components.config import ConfigError, RunConfig


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


def test_a_feature_switched_off_is_not_the_loops_identity():
    """A section added off by default (as `dpo` was) or retuned while off leaves the loop id alone:
    before, adding any such field renamed every loop. Switched on, its settings are identity."""
    base = RunConfig()
    assert "dpo" not in base.identity() and "orm" not in base.identity() and "beam" not in base.identity()["eval"]
    assert base.loop_id() == load_config(None, ["dpo.beta=0.5", "orm.epochs=7", "eval.beam.width=9"]).loop_id()
    on = load_config(None, ["dpo.enabled=true"])
    assert on.loop_id() != base.loop_id() != load_config(None, ["prm.enabled=false"]).loop_id()
    assert on.loop_id() != load_config(None, ["dpo.enabled=true", "dpo.beta=0.5"]).loop_id()


# A credential in every URI field a user might put one in (user-info, a signed query string); the
# judge's key lives in the environment variable the config names. tests/test_secrets.py uses these too.
SECRET_OVERRIDES = [
    "store_uri=s3://AKIAEXAMPLE:store-SECRET-1@vstar-test/secrets",
    "tracking_uri=http://mlflow-user:tracking-SECRET-2@127.0.0.1:5000",
    "model.init_uri=https://hf-user:init-SECRET-3@models.example/tiny",
    "scoring.judge.backend=remote",
    "scoring.judge.model_uri=s3://AKIAEXAMPLE:judge-SECRET-4@bucket/judge",
    "scoring.judge.remote.base_url=https://judge-user:base-SECRET-5@judge.example/v1",
    "family.data.train_uri=https://data.example/train.jsonl?X-Amz-Credential=cred-SECRET-6&X-Amz-Signature=sig-SECRET-7",
    "family.data.eval_uri=https://acct.blob.example/eval.jsonl?sv=2020&sig=sas-SECRET-8",
    "scoring.labels.uri=https://token-SECRET-9@labels.example/prm800k.jsonl",
]
JUDGE_KEY = "sk-judge-SECRET-10"


def secrets_in(text: str) -> list[str]:
    import re

    return re.findall(r"[a-z]+-SECRET-\d+", text)


def test_no_credential_reaches_params_or_the_config_yaml(monkeypatch):
    """flat_params (MLflow params) and dump_yaml (config.yaml, `vstar config`) mask every credential;
    the config itself keeps the real values, which are what connects."""
    from components.config import dump_yaml

    monkeypatch.setenv("VSTAR_JUDGE_API_KEY", JUDGE_KEY)
    cfg = load_config("configs/smoke.yaml", SECRET_OVERRIDES)
    assert len(secrets_in(cfg.model_dump_json())) == 9  # all there (the 10th, the key, is in the environment)
    params = cfg.flat_params()
    assert secrets_in(" ".join(params.values())) == [] and JUDGE_KEY not in str(params)
    assert params["store_uri"] == "s3://AKIAEXAMPLE:***@vstar-test/secrets"  # scheme, host, path stay
    assert params["family/data/train_uri"] == ("https://data.example/train.jsonl?X-Amz-Credential=***"
                                               "&X-Amz-Signature=***")
    assert params["scoring/labels/uri"] == "https://***@labels.example/prm800k.jsonl"
    assert params["scoring/judge/remote/api_key_env"] == "VSTAR_JUDGE_API_KEY"  # the name, never the value
    shown = dump_yaml(cfg)
    assert secrets_in(shown) == [] and JUDGE_KEY not in shown and "judge.example/v1" in shown
    # An error quoting the overrides masks them too.
    with pytest.raises(ConfigError) as e:
        load_config("configs/smoke.yaml", [*SECRET_OVERRIDES, "generation.k=many"])
    assert "generation.k" in str(e.value) and secrets_in(str(e.value)) == []


def test_label_budget_settings_are_checked():
    """A labelling budget needs the exact step check (arith) and excludes a labels file."""
    cfg = load_config("configs/demo.yaml", ["scoring.label_source=labels", "scoring.labels.budget=250", "prm.enabled=true"])
    assert cfg.scoring.labels.budget == 250
    with pytest.raises(ConfigError, match="prm.enabled must be true"):
        load_config("configs/demo.yaml", ["scoring.label_source=labels", "scoring.labels.budget=250", "prm.enabled=false"])
    with pytest.raises(ConfigError, match="uri.*budget.*not both"):
        load_config("configs/demo.yaml", ["scoring.labels.budget=250", "scoring.labels.uri=/tmp/x.jsonl"])
    with pytest.raises(ConfigError, match="exact step check"):
        load_config("configs/gsm8k.yaml", ["scoring.labels.budget=250"])
    with pytest.raises(ConfigError, match="neither scoring.labels.uri nor scoring.labels.budget"):
        load_config("configs/demo.yaml", ["scoring.label_source=labels"])


def test_reusing_the_candidates_completion_as_a_rollout_needs_rollouts_sampled_like_it():
    """Binary-search MC counts each candidate's own continuation as one rollout: a draw from the rollout
    distribution only when rollouts sample at generation's temperature and top_p. Before, a mismatch
    was accepted and mixed draws of two distributions into one estimate."""
    binary = ["scoring.label_source=mc_binary"]
    assert load_config("configs/demo.yaml", binary).scoring.mc.reuse_completion
    for mismatch in ("scoring.mc.temperature=1.2", "generation.top_p=0.9"):
        with pytest.raises(ConfigError, match="reuse_completion.*sample as generation does"):
            load_config("configs/demo.yaml", [*binary, mismatch])
        load_config("configs/demo.yaml", [*binary, mismatch, "scoring.mc.reuse_completion=false"])  # then it is fine
        load_config("configs/demo.yaml", ["scoring.label_source=mc", mismatch])  # plain MC never reuses


def test_the_calculator_needs_a_family_with_written_arithmetic():
    """`calc` and scoring.calculator recompute what a step states: arith and gsm8k have it, MATH does not."""
    assert load_config("configs/demo.yaml", ["scoring.calculator.enabled=true"]).scoring.calculator.enabled
    assert load_config("configs/gsm8k.yaml", ["scoring.also=[calc]"]).scoring.also == ["calc"]
    with pytest.raises(ConfigError, match="'math' family has no such check"):
        load_config("configs/gsm8k.yaml", ["family.name=math", "scoring.calculator.enabled=true"])
    # off, it is not the loop's identity: every loop id stays as it was
    assert load_config("configs/demo.yaml").loop_id() == load_config(
        "configs/demo.yaml", ["scoring.calculator.enabled=false"]).loop_id()


def test_lora_defaults_come_from_one_place_and_lora_loops_keep_their_ids():
    """sft.lora's alpha is 2 r unless given, at any rank, as `vstar sft --lora-r` always had it (a config
    used to get 16 whatever its r); target_modules may be set, and at its default (the attention
    projections every LoRA loop trained on before it could be) a LoRA loop keeps its published id."""
    lora = lambda value: load_config("configs/demo.yaml", [f"sft.lora={value}"])  # noqa: E731
    assert [lora(v).sft.lora.alpha for v in ("{}", "{r: 4}", "{r: 32}", "{r: 4, alpha: 4}")] == [16, 8, 64, 4]
    assert lora("{r: 8}").loop_id() == lora("{r: 8, alpha: 16}").loop_id() == "demo-aaf12f4b84"
    assert lora("{r: 16, alpha: 32}").loop_id() == "demo-7994639051"
    # the same modules, in any order: the same adapter, the same loop
    assert lora("{r: 8, target_modules: [v_proj, q_proj, o_proj, k_proj, q_proj]}").loop_id() == "demo-aaf12f4b84"
    mlp = lora("{r: 8, target_modules: [q_proj, v_proj, gate_proj]}")
    assert mlp.sft.lora.target_modules == ["gate_proj", "q_proj", "v_proj"] and mlp.loop_id() != "demo-aaf12f4b84"
    for bad, why in (("{target_modules: []}", "at least 1 item"), ("{target_modules: q_proj}", "valid list"),
                     ("{r: 0}", "greater than or equal to 1")):
        with pytest.raises(ConfigError, match=f"sft.lora.(target_modules|r): .*{why}"):
            lora(bad)


def test_features_added_off_or_at_their_neutral_default_keep_published_loop_ids():
    """rationalize (a section, off) and sft.min_kept (at 1: a round that keeps nothing does not train, as
    before) leave the demo's published loop id as docs/benchmarks.md has it; set, they are the loop's.
    (fce8091ca7 -> b72a45f165 when the DPO verifier moved to G_SFT as V-STaR trains it, beam search to
    search-and-learn's and `confidence` to DeepConf's top-k statistic: each changes what the demo
    computes, so its id must change.)"""
    demo = load_config("configs/demo.yaml")
    assert demo.loop_id() == "demo-b72a45f165"
    assert load_config("configs/demo.yaml", ["sft.min_kept=1", "rationalize.k=3"]).loop_id() == demo.loop_id()
    ids = {load_config("configs/demo.yaml", [o]).loop_id() for o in ("sft.min_kept=5", "rationalize.enabled=true")}
    assert len(ids) == 2 and demo.loop_id() not in ids


def test_grpo_is_named_in_the_loop_id_and_a_reward_the_round_lacks_is_refused():
    """train_generator.method: sft (the default, whatever the grpo section says) keeps every published loop
    id; grpo names itself and its rewards in the id. A reward that needs a verifier round 1 cannot have
    (round n rewards with round n-1's), or one that is off, is refused at load, naming the field."""
    demo = load_config("configs/demo.yaml")
    assert load_config("configs/demo.yaml", ["grpo.rewards={prm: 1.0}", "grpo.lr=0.5"]).loop_id() == "demo-b72a45f165"
    grpo = ["train_generator.method=grpo"]
    outcome = load_config("configs/demo.yaml", grpo)
    assert outcome.loop_id().startswith("demo-grpo-outcome-") and outcome.loop_id() != demo.loop_id()
    both = load_config("configs/demo.yaml", [*grpo, "train_generator.from_round=2", "grpo.rewards={prm: 0.5, outcome: 1}"])
    assert both.loop_id().startswith("demo-grpo-outcome-prm-")
    assert both.train_generator.method_of(1) == "sft" and both.train_generator.method_of(2) == "grpo"
    with pytest.raises(ConfigError, match=r"grpo\.rewards\.prm: round 1 has no prm verifier.*from_round: 2"):
        load_config("configs/demo.yaml", [*grpo, "grpo.rewards={outcome: 1, prm: 0.5}"])
    with pytest.raises(ConfigError, match=r"grpo\.rewards\.orm: .*orm\.enabled must be true"):
        load_config("configs/demo.yaml", [*grpo, "train_generator.from_round=2", "grpo.rewards={orm: 1}",
                                          "orm.enabled=false"])
    with pytest.raises(ConfigError, match=r"grpo\.rewards\.implicit: round 1 has no dpo verifier"):
        load_config("configs/demo.yaml", [*grpo, "grpo.rewards={implicit: 1}"])
    with pytest.raises(ConfigError, match=r"grpo\.rewards\.calc: the 'math' family has no calculator"):
        load_config(None, [*grpo, "grpo.rewards={calc: 1}", "family.name=math"])
    with pytest.raises(ConfigError, match="whole groups"):
        load_config("configs/demo.yaml", [*grpo, "grpo.batch_size=20", "grpo.num_generations=8"])
    with pytest.raises(ConfigError, match="grpo.rewards"):
        load_config("configs/demo.yaml", [*grpo, "grpo.rewards={length: 1}"])
