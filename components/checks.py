"""The config's rules that need a registry: a family by name, a label source by name (and what it
needs), a stage by name. The typed config (components/config*.py) imports nothing above itself, so
these live here, and every loader calls them: `load_config` below, and flows/params.check_typed for
a config handed to a flow as a typed parameter. A code-version closure of a stage then takes in the
config without taking in every registry (components/artifacts/code_version.py)."""
from __future__ import annotations

from pathlib import Path

from components import round_table
from components.config import ConfigError, RunConfig, describe, parse_config
from components.config_training import REWARDS
from components.data.families import FAMILIES
from components.labeling import sources


def problems(cfg: RunConfig) -> list[tuple[str, str]]:
    """(field, what is wrong) for each rule the config breaks; empty when it may run."""
    out = []
    unknown = [n for n in cfg.recompute if n not in (*round_table.names(), "stale")]
    if unknown:
        out.append(("recompute", f"unknown stage {', '.join(map(repr, unknown))}; known: "
                                 f"{', '.join(round_table.names())}, stale"))
    if cfg.family.name not in FAMILIES:
        out.append(("family.name", f"unknown family {cfg.family.name!r}; known: {', '.join(sorted(FAMILIES))}"))
    s = cfg.scoring
    named = [("scoring.label_source", s.label_source, False), ("scoring.first_round_source", s.first_round_source, True),
             *((f"scoring.also.{i}", name, True) for i, name in enumerate(s.also))]
    for field, name, standalone in named:
        try:
            sources.check_name(name, standalone)
        except ValueError as e:
            out.append((field, str(e)))
    if out:  # the rules below read the registries at these names
        return out
    src, lab = s.label_source, s.labels
    if sources.prm0_from_imports(cfg) and not (lab.uri or lab.budget):
        out.append(("scoring.labels", f"scoring.label_source is {src!r} but neither scoring.labels.uri nor "
                                      f"scoring.labels.budget is set"))
    if sources.prm0_from_imports(cfg) and not cfg.prm.enabled:
        out.append(("prm.enabled", f"scoring.label_source {src!r} scores with a PRM trained on them: "
                                   f"prm.enabled must be true"))
    uses = sources.SOURCES[src].uses  # the verifier of the round before it labels with: it must be trained
    if uses and not getattr(cfg, uses).enabled:
        out.append((f"{uses}.enabled", f"scoring.label_source {src!r} labels with the {uses} verifier of the "
                                       f"round before, which is off: {uses}.enabled must be true"))
    if (s.calculator.enabled or "calc" in (src, *s.also)) and not hasattr(FAMILIES[cfg.family.name], "calculator_labels"):
        out.append(("scoring.calculator", f"the calculator (`calc`, scoring.calculator) reads the arithmetic a step "
                                          f"states; the {cfg.family.name!r} family has no such check (arith and gsm8k do)"))
    if cfg.train_generator.method == "grpo":
        out += reward_problems(cfg)
    return out


def reward_problems(cfg: RunConfig) -> list[tuple[str, str]]:
    """A GRPO reward must exist in every round that trains on it: its verifier on (and trained by the
    round before), the calculator in the family."""
    out, first = [], cfg.train_generator.from_round
    for name in cfg.grpo.rewards:
        field, section = f"grpo.rewards.{name}", REWARDS[name]
        if name == "calc" and not hasattr(FAMILIES[cfg.family.name], "calculator_labels"):
            out.append((field, f"the {cfg.family.name!r} family has no calculator (arith and gsm8k do)"))
        if section and not getattr(cfg, section).enabled:
            out.append((field, f"the {name} reward scores with the previous round's {section} verifier, which is "
                               f"off: {section}.enabled must be true"))
        elif section and first == 1 and not (name == "prm" and sources.prm0_from_imports(cfg)):
            out.append((field, f"round 1 has no {section} verifier to reward with (round n rewards with round "
                               f"n-1's; the first is trained in round 1): set train_generator.from_round: 2, "
                               f"so round 1 trains by SFT"))
    return out


def check(cfg: RunConfig, source: str = "config") -> RunConfig:
    """`cfg` if it breaks no rule of a registry, else a ConfigError naming `source` and each field."""
    found = problems(cfg)
    if found:
        raise ConfigError(describe(source, found))
    return cfg


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Load YAML (or the embedded defaults when path is None), apply `a.b=v` overrides, validate the
    types (components/config.py) and the registries' rules (above)."""
    cfg, source = parse_config(path, overrides)
    return check(cfg, source)
