"""One typed run config (pydantic v2), loaded from YAML, overridable with `--set a.b=v`.

The resolved config is the run's identity: its hash names the loop, its flattened form goes to
MLflow params. Secrets belong in the environment (AWS_* read by s3fs, the judge's key variable); a URI
that carries some anyway (user-info, a signed query) is redacted wherever the config is shown.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from components.config_scoring import FilterConfig, ScoringConfig
from components.config_sections import (CurriculumConfig, DecontamConfig, EvalConfig, ExecutionConfig, FamilyConfig,
                                        GenerationConfig, HardwareConfig, ModelConfig, RationalizeConfig, Strict,
                                        TrainConfig)
from components.config_training import (REWARDS, DPOVerifierConfig, GRPOConfig, LoraConfig, ORMConfig, PRMConfig,
                                        SFTConfig, TrainGeneratorConfig)
from components.redact import redact, redact_tree


class ConfigError(ValueError):
    """A config that cannot run, with the file and the field that are wrong."""


# Fields that say where or how long a loop runs, not what it computes: excluded from its identity,
# so `--set rounds=5` continues the same loop and an s3:// store holds the same loop as a local one.
# `hardware` too: a loop started on a CPU may go on on a GPU (each stage's metrics say whether it
# used one: used_gpu, peak_gpu_mb).
# `recompute` says which published stages to make again this time, not what the loop is; `execution`
# how its work is spread (shards make the same artifacts: tests/test_sharding.py).
NOT_IDENTITY = ("rounds", "store_uri", "tracking_uri", "experiment", "hardware", "execution", "recompute")
# Fields added after loops were published, whose default computes what those loops computed: at that
# default they are left out of the identity (as a switched-off section is), so those loop ids stay.
# The verifiers' warmup_ratio came with their sections' extending TrainConfig: 0.05 is what they used.
NEUTRAL_DEFAULTS = {("sft", "min_kept"): 1, ("orm", "labels"): "outcome", **{
    (verifier, "warmup_ratio"): 0.05 for verifier in ("prm", "orm", "dpo")}}
# Fields renamed after loops were published: the identity keeps the name they were published under.
PUBLISHED_NAMES = {("filter", "rank_by"): "verifier"}
# The same, for a field of whichever section has it (TrainConfig's and the verifiers' token budgets;
# sft.lora's target_modules, at the modules every LoRA loop trained before it could be set).
NEUTRAL_FIELDS = {"max_tokens_per_batch": None, "target_modules": list(LoraConfig().target_modules)}


class RunConfig(Strict):
    """The whole run. Cross-field rules live in `_consistent` so a bad combination fails at load; the
    rules that need a registry (a family, a label source, a stage) in components/checks.py."""

    name: str = Field("demo", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    seed: int = 0
    rounds: int = Field(1, ge=0, le=100)
    store_uri: str = ".vstar/store"
    tracking_uri: str | None = None  # None: $MLFLOW_TRACKING_URI, else sqlite under .vstar/
    experiment: str = "vstar"
    hardware: HardwareConfig = HardwareConfig()
    execution: ExecutionConfig = ExecutionConfig()
    family: FamilyConfig = FamilyConfig()
    model: ModelConfig = ModelConfig()
    bootstrap: TrainConfig = TrainConfig()
    generation: GenerationConfig = GenerationConfig()
    rationalize: RationalizeConfig = RationalizeConfig()
    scoring: ScoringConfig = ScoringConfig()
    filter: FilterConfig = FilterConfig()
    curriculum: CurriculumConfig = CurriculumConfig()
    train_generator: TrainGeneratorConfig = TrainGeneratorConfig()
    sft: SFTConfig = SFTConfig()
    grpo: GRPOConfig = GRPOConfig()
    prm: PRMConfig = PRMConfig()
    orm: ORMConfig = ORMConfig()
    dpo: DPOVerifierConfig = DPOVerifierConfig()
    eval: EvalConfig = EvalConfig()
    decontam: DecontamConfig = DecontamConfig()
    # Published stages to make again rather than reuse (and what was made from them): stage names
    # (components/round_table.py), or `stale` for every stage published by other code than this checkout's.
    recompute: list[str] = []

    @model_validator(mode="after")
    def _consistent(self):
        lab = self.scoring.labels
        if lab.uri and lab.budget:
            raise ValueError("scoring.labels: set uri (a labels file) or budget (traces labelled here), not both")
        if lab.budget and self.family.name != "arith":
            raise ValueError(f"scoring.labels.budget labels traces with the family's exact step check, which only "
                             f"the arith family has ({self.family.name!r}: import human labels with scoring.labels.uri)")
        f, src = self.filter, self.scoring.label_source
        if f.rank_by and f.rank_by not in (src, *self.scoring.also):
            raise ValueError(f"filter.rank_by {f.rank_by!r} ranks by a source's step scores: it must be the "
                             f"label source ({src!r}) or in scoring.also ({', '.join(self.scoring.also) or 'empty'})")
        mc, g = self.scoring.mc, self.generation
        if "mc_binary" in (src, *self.scoring.also) and mc.reuse_completion and \
                (mc.temperature != g.temperature or g.top_p != 1.0):
            # The candidate's own continuation is a rollout only if rollouts sample as generation did.
            raise ValueError(f"scoring.mc.reuse_completion counts each candidate's own continuation as one MC "
                             f"rollout, which holds only when rollouts sample as generation does: "
                             f"scoring.mc.temperature {mc.temperature} vs generation.temperature {g.temperature}, "
                             f"rollouts at top_p 1.0 vs generation.top_p {g.top_p}; make them equal or set "
                             f"scoring.mc.reuse_completion: false")
        pr = self.family.prompt
        if pr.style == "chat" and not self.model.init_uri:
            raise ValueError("family.prompt.style chat renders with the chat template of a pretrained "
                             "tokenizer: set model.init_uri (the tiny model trained here has none)")
        if self.family.name == "arith" and (pr.step_separator != "\n" or pr.answer_line):
            raise ValueError("family.prompt: the arith family's trace format is fixed (one step per line, "
                             "'Answer: N'); step_separator and answer_line apply to file-backed families")
        return self

    def identity(self) -> dict:
        tree = {k: v for k, v in self.model_dump(mode="json").items() if k not in NOT_IDENTITY}
        for (section, field), neutral in NEUTRAL_DEFAULTS.items():
            if tree[section].get(field) == neutral:
                del tree[section][field]
        for (section, field), name in PUBLISHED_NAMES.items():
            tree[section][name] = tree[section].pop(field)
        if self.train_generator.method == "sft":  # every round by SFT, as every loop before GRPO: the same id
            del tree["train_generator"], tree["grpo"]
        return _switched_on(_without_neutral(tree))

    def config_hash(self) -> str:
        return stable_hash(self.identity())

    def loop_id(self) -> str:
        """`name-hash`; a loop that trains its generator by RL says so and with what: `demo-grpo-outcome-prm-hash`."""
        rl = "" if self.train_generator.method == "sft" else f"-{self.train_generator.method}-{'-'.join(r for r in REWARDS if r in self.grpo.rewards)}"
        return f"{self.name}{rl}-{self.config_hash()[:10]}"

    def bootstrap_hash(self) -> str:
        """What the bootstrap model depends on, and nothing else: later stages may change freely."""
        return stable_hash({"seed": self.seed, "family": self.family.model_dump(mode="json"),
                            "model": self.model.model_dump(mode="json"),
                            "bootstrap": _without_neutral(self.bootstrap.model_dump(mode="json"))})

    def flat_params(self) -> dict[str, str]:
        """What MLflow shows as params: credentials in URIs masked (components/redact.py)."""
        return flatten(redact_tree(self.model_dump(mode="json")))


def _switched_on(tree: Any) -> Any:
    """The tree without the sections switched off (`enabled: false`): they compute nothing, so a feature
    added off by default, or the settings of one that is off, leave every loop id as it was."""
    if not isinstance(tree, dict):
        return tree
    return {k: _switched_on(v) for k, v in tree.items() if not (isinstance(v, dict) and v.get("enabled") is False)}


def _without_neutral(tree: Any) -> Any:
    """The tree without the NEUTRAL_FIELDS at their neutral value, at any depth."""
    if not isinstance(tree, dict):
        return tree
    return {k: _without_neutral(v) for k, v in tree.items() if not (k in NEUTRAL_FIELDS and v == NEUTRAL_FIELDS[k])}


def stable_hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def flatten(d: dict, prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}/{k}" if prefix else k
        if isinstance(v, dict):
            out.update(flatten(v, key))
        else:
            out[key] = json.dumps(v) if isinstance(v, list) else str(v)
    return out


def apply_override(data: dict, assignment: str) -> None:
    if "=" not in assignment:
        raise ConfigError(f"--set {redact(assignment)!r}: expected KEY=VALUE, e.g. generation.k=8")
    key, raw = assignment.split("=", 1)
    parts = key.strip().split(".")
    node = data
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {key}: {p} is not a section")
    try:
        node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"--set {key}: the value is not valid YAML ({str(e).splitlines()[0]}): {redact(raw)!r}") from None


def describe(source: str, problems: list[tuple[str, str]]) -> str:
    """A config error's text: the file, then each bad field with what is wrong, a line each."""
    return "\n".join([f"{source}: invalid config", *(f"  {source}: {field}: {msg}" for field, msg in problems)])


def parse_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> tuple[RunConfig, str]:
    """Read YAML (or the embedded defaults when path is None), apply `a.b=v` overrides, validate the
    types: the config and the name errors are reported under. components/checks.load_config adds the
    rules that need the registries: load through it."""
    source = str(path) if path else "<defaults>"
    data: dict = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"{source}: config file not found")
        try:
            data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except UnicodeDecodeError as e:
            raise ConfigError(f"{source}: not UTF-8 text (byte {e.start}: {e.reason})") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"{source}: not valid YAML: {e}") from e
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: top level must be a mapping, got {type(data).__name__}")
    for o in overrides:
        apply_override(data, o)
    if overrides:  # error text is printed and logged: no credentials from an override's URI
        source += " (with --set " + ", ".join(redact(o) for o in overrides) + ")"
    try:
        return RunConfig.model_validate(data), source
    except ValidationError as e:
        problems = [(".".join(str(p) for p in err["loc"]) or "(top level)",
                     "unknown field" if err["type"] == "extra_forbidden" else err["msg"].removeprefix("Value error, "))
                    for err in e.errors()]
        raise ConfigError(describe(source, problems)) from None


def dump_yaml(cfg: RunConfig) -> str:
    """The config as shown (`vstar config`, MLflow's config.yaml): credentials in URIs masked."""
    return yaml.safe_dump(redact_tree(cfg.model_dump(mode="json")), sort_keys=False)
