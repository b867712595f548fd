"""One typed run config (pydantic v2), loaded from YAML, overridable with `--set a.b=v`.

The resolved config is the run's identity: its hash names the loop, its flattened form goes to
MLflow params. Secrets never live here: S3 keys come from the environment (AWS_*), read by s3fs.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class ConfigError(ValueError):
    """A config that cannot run, with the file and the field that are wrong."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class OpsRange(Strict):
    min_ops: int = Field(1, ge=1, le=32)
    max_ops: int = Field(3, ge=1, le=32)

    @model_validator(mode="after")
    def _ordered(self):
        if self.min_ops > self.max_ops:
            raise ValueError(f"min_ops ({self.min_ops}) > max_ops ({self.max_ops})")
        return self


class SplitConfig(OpsRange):
    size: int = Field(600, ge=1)


class EvalSplitConfig(OpsRange):
    per_level: int = Field(100, ge=1)


class FamilyConfig(Strict):
    name: str = "arith"
    max_value: int = Field(99, ge=9, le=10**6)
    operations: list[Literal["add", "sub", "mul", "mod10", "max", "mul0"]] = [
        "add", "sub", "mul", "mod10", "max"]
    bootstrap: SplitConfig = SplitConfig(min_ops=1, max_ops=3, size=66000)
    train: SplitConfig = SplitConfig(min_ops=4, max_ops=4, size=600)
    eval: EvalSplitConfig = EvalSplitConfig(min_ops=1, max_ops=6, per_level=100)


class ModelConfig(Strict):
    """The tiny Llama trained from scratch. rope_factor >> 1 makes rotations negligible: measured
    here, standard RoPE never produced a genuine longer chain (../shared/notes/demo-feasibility.md)."""
    hidden_size: int = Field(128, ge=8)
    layers: int = Field(4, ge=1)
    heads: int = Field(4, ge=1)
    intermediate_size: int = Field(512, ge=8)
    max_positions: int = Field(256, ge=32)
    rope_factor: float = Field(1000.0, ge=1.0, le=10000.0)

    @model_validator(mode="after")
    def _heads_divide(self):
        if self.hidden_size % self.heads:
            raise ValueError(f"hidden_size ({self.hidden_size}) must be divisible by heads ({self.heads})")
        return self


class TrainConfig(Strict):
    epochs: float = Field(1.0, gt=0)
    lr: float = Field(2e-3, gt=0, lt=1)
    batch_size: int = Field(64, ge=1)
    warmup_ratio: float = Field(0.05, ge=0, lt=1)


class GenerationConfig(Strict):
    backend: str = "vllm"
    k: int = Field(8, ge=1, le=256)
    temperature: float = Field(0.8, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    max_tokens: int = Field(96, ge=1)
    seed: int = 0
    kv_cache_bytes: int = Field(256 * 2**20, ge=2**20)
    prefix_caching: bool = True


class MCConfig(Strict):
    rollouts: int = Field(8, ge=1, le=64)
    temperature: float = Field(0.8, ge=0)


class ScoringConfig(Strict):
    """Where step labels for filtering come from. `gold` is the exact step check of a verifiable
    family (the bar the others are measured by); `prm` uses the previous round's PRM (round 1, which
    has none, uses `first_round_source`); `prm+mc` runs MC only on traces the PRM is unsure about."""
    label_source: Literal["mc", "gold", "prm", "prm+mc"] = "mc"
    first_round_source: Literal["mc", "gold"] = "mc"
    mc: MCConfig = MCConfig()
    prm_unsure: tuple[float, float] = (0.2, 0.8)
    audit_mc: int = Field(0, ge=0)  # traces also scored by MC to report its label quality (0 = off)


class FilterConfig(Strict):
    mode: Literal["step", "outcome"] = "step"
    aggregate: Literal["min", "prod", "last", "mean"] = "min"
    threshold: float = Field(0.5, ge=0, le=1)
    max_per_problem: int = Field(2, ge=1)


# Fields that say where or how long a loop runs, not what it computes: excluded from its identity,
# so `--set rounds=5` continues the same loop and an s3:// store holds the same loop as a local one.
NOT_IDENTITY = ("rounds", "store_uri", "tracking_uri", "experiment")


class CurriculumConfig(Strict):
    """Which train problems a round samples: one level past the longest chain the current generator
    already solves (greedy pass@1 >= promote_at), plus a share one level easier (Lee et al. 2025)."""
    enabled: bool = True
    promote_at: float = Field(0.8, gt=0, le=1)
    problems: int = Field(400, ge=1)
    easier_share: float = Field(0.25, ge=0, lt=1)


class LoraConfig(Strict):
    r: int = Field(8, ge=1)
    alpha: int = Field(16, ge=1)
    dropout: float = Field(0.0, ge=0, lt=1)


class SFTConfig(TrainConfig):
    epochs: float = Field(3.0, gt=0)
    lr: float = Field(1e-3, gt=0, lt=1)
    replay_gold: float = Field(1.0, ge=0)  # bootstrap gold examples mixed in per kept trace
    keep_history: bool = True  # earlier rounds' kept traces join this round's
    max_examples: int = Field(6000, ge=1)
    lora: LoraConfig | None = None


class PRMConfig(Strict):
    enabled: bool = True
    init_from: Literal["generator", "previous"] = "generator"
    epochs: float = Field(2.0, gt=0)
    lr: float = Field(1e-3, gt=0, lt=1)
    batch_size: int = Field(64, ge=1)
    max_examples: int = Field(4000, ge=1)
    soft: bool = True  # train on MC fractions as floats (BCE) rather than hard labels
    scorer: Literal["transformers", "vllm"] = "transformers"


class EvalConfig(Strict):
    k: int = Field(4, ge=1)
    sampled_per_level: int = Field(30, ge=1)  # problems per level that get k samples for maj@k / best-of-k
    temperature: float = Field(0.8, ge=0)


class RunConfig(Strict):
    name: str = Field("demo", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    seed: int = 0
    rounds: int = Field(1, ge=0, le=100)
    store_uri: str = ".vstar/store"
    tracking_uri: str | None = None  # None: $MLFLOW_TRACKING_URI, else sqlite under .vstar/
    experiment: str = "vstar"
    family: FamilyConfig = FamilyConfig()
    model: ModelConfig = ModelConfig()
    bootstrap: TrainConfig = TrainConfig()
    generation: GenerationConfig = GenerationConfig()
    scoring: ScoringConfig = ScoringConfig()
    filter: FilterConfig = FilterConfig()
    curriculum: CurriculumConfig = CurriculumConfig()
    sft: SFTConfig = SFTConfig()
    prm: PRMConfig = PRMConfig()
    eval: EvalConfig = EvalConfig()

    def identity(self) -> dict:
        return {k: v for k, v in self.model_dump(mode="json").items() if k not in NOT_IDENTITY}

    def config_hash(self) -> str:
        return stable_hash(self.identity())

    def loop_id(self) -> str:
        return f"{self.name}-{self.config_hash()[:10]}"

    def bootstrap_hash(self) -> str:
        """What the bootstrap model depends on, and nothing else: later stages may change freely."""
        return stable_hash({"seed": self.seed, "family": self.family.model_dump(mode="json"),
                            "model": self.model.model_dump(mode="json"),
                            "bootstrap": self.bootstrap.model_dump(mode="json")})

    def flat_params(self) -> dict[str, str]:
        return flatten(self.model_dump(mode="json"))


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
        raise ConfigError(f"--set {assignment!r}: expected KEY=VALUE, e.g. generation.k=8")
    key, raw = assignment.split("=", 1)
    parts = key.strip().split(".")
    node = data
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {key}: {p} is not a section")
    node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else ""


def _describe(err: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid config"]
    for e in err.errors():
        field = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = "unknown field" if e["type"] == "extra_forbidden" else e["msg"]
        lines.append(f"  {source}: {field}: {msg}")
    return "\n".join(lines)


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Load YAML (or the embedded defaults when path is None), apply `a.b=v` overrides, validate."""
    source = str(path) if path else "<defaults>"
    data: dict = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"{source}: config file not found")
        try:
            data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{source}: not valid YAML: {e}") from e
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: top level must be a mapping, got {type(data).__name__}")
    for o in overrides:
        apply_override(data, o)
    if overrides:
        source += " (with --set " + ", ".join(overrides) + ")"
    try:
        return RunConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_describe(e, source)) from None


def dump_yaml(cfg: RunConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
