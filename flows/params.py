"""What a deployment's parameters may ask of a worker, checked before anything runs.

Deployments take `config_path` and `overrides` from anyone who reaches the Prefect API, so:
  - config_path: a YAML file inside the checkout's configs/ folder (no `..`; symlinks resolved);
  - overrides (and eval_overrides): `a.b=v` of known config fields only;
  - store_uri (from the file or an override): under a prefix listed in $VSTAR_ALLOWED_STORES
    (comma-separated); unset or empty: the local default `.vstar/store` and the config file's own
    store_uri only;
  - every input the run reads (a field named `uri` or `*_uri`: the family's data files, model.init_uri,
    the judge's model, imported labels): the config file's own value, a `package:` name, or under an
    allowed store or a prefix in $VSTAR_ALLOWED_INPUTS (comma-separated). The worker reads inputs with
    its credentials and copies rejected rows into the store's quarantine: `file:///etc/passwd` or
    another team's bucket must not be one override away;
  - the fields that decide where the worker's credentials go (tracking_uri: MLflow's token or password;
    the remote judge's base_url and api_key_env: the judge key; execution.engine and execution.address:
    the Ray cluster gets the worker's AWS_/HF_ variables, and Ray Client unpickles what it sends back)
    come from the config file (or, typed, the defaults) only: an override may not change them.
A refused parameter is one line naming it (ParameterError). This guards against mistakes and
tampering through run parameters; it is no sandbox for someone who may create deployments.
"""
from __future__ import annotations

import os
import typing
from pathlib import Path

import yaml
from pydantic import BaseModel

from components.checks import check, load_config
from components.config import ConfigError, RunConfig
from components.redact import redact

ROOT = Path(__file__).resolve().parents[1]  # the checkout the worker runs from
CONFIGS = ROOT / "configs"
ALLOWED_STORES_ENV = "VSTAR_ALLOWED_STORES"
ALLOWED_INPUTS_ENV = "VSTAR_ALLOWED_INPUTS"
DEFAULT_STORE = RunConfig.model_fields["store_uri"].default
# A deployment may not change these from the config file's value (see the module's docstring).
PINNED = ("tracking_uri", "scoring.judge.remote.base_url", "scoring.judge.remote.api_key_env",
          "execution.engine", "execution.address")
NOT_INPUTS = ("store_uri", "tracking_uri")  # checked on their own


class ParameterError(ConfigError):
    """A deployment parameter that is refused: one line, naming the parameter."""


def config_file(config_path: str | os.PathLike) -> Path:
    """The config file `config_path` names (relative paths from the checkout), resolved, if it lies in configs/."""
    raw = str(config_path)
    if ".." in Path(raw).parts:
        raise ParameterError(f"config_path {raw!r}: '..' is not allowed; name a file in {CONFIGS}")
    p = Path(raw) if Path(raw).is_absolute() else ROOT / raw
    resolved = p.resolve()  # follows symlinks: one under configs/ pointing elsewhere is outside
    if not resolved.is_relative_to(CONFIGS.resolve()):
        raise ParameterError(f"config_path {raw!r}: resolves to {resolved}, outside the checkout's configs "
                             f"folder {CONFIGS}")
    if resolved.suffix not in (".yaml", ".yml") or not resolved.is_file():
        raise ParameterError(f"config_path {raw!r}: no YAML config file {resolved}")
    return resolved


def _listed(env: str) -> list[str]:
    return [s.strip() for s in os.environ.get(env, "").split(",") if s.strip()]


def allowed_stores(file_store: str | None = None) -> list[str]:
    """Store URI prefixes a deployment may use: $VSTAR_ALLOWED_STORES, else the local default and the
    config file's own store_uri."""
    return _listed(ALLOWED_STORES_ENV) or [DEFAULT_STORE, *([file_store] if file_store else [])]


def field_value(cfg: BaseModel, dotted: str):
    for name in dotted.split("."):
        cfg = getattr(cfg, name)
    return cfg


def input_uris(cfg: BaseModel, prefix: str = "") -> dict[str, str]:
    """Every input URI the config names, by dotted field: the fields called `uri` or `*_uri`, found by
    walking the config, so a field added later is checked without being listed here."""
    found: dict[str, str] = {}
    for name, value in cfg:
        dotted = prefix + name
        if isinstance(value, BaseModel):
            found |= input_uris(value, dotted + ".")
        elif isinstance(value, str) and (name == "uri" or name.endswith("_uri")) and dotted not in NOT_INPUTS:
            found[dotted] = value
    return found


def store_allowed(uri: str, prefixes: list[str]) -> bool:
    return any(_within(uri, p) for p in prefixes)


def _local_path(uri: str) -> Path | None:
    if uri.startswith("file://"):
        uri = uri[len("file://"):]
    elif "://" in uri:
        return None
    return Path(os.path.expanduser(uri))  # as fsspec reads it: `~/x` is in the home folder


def _within(uri: str, prefix: str) -> bool:
    local, local_prefix = _local_path(uri), _local_path(prefix)
    if local is not None or local_prefix is not None:
        # Resolved from the worker's directory, as the store will be: `.vstar/store/../../x` is outside.
        return local is not None and local_prefix is not None and local.resolve().is_relative_to(local_prefix.resolve())
    if any(seg in ("..", ".") for seg in uri.split("://", 1)[1].split("/")):
        return False  # object keys are not normalised: refuse rather than guess
    base = prefix.rstrip("/")
    return uri.rstrip("/") == base or uri.startswith(base + "/")  # s3://b/x allows s3://b/x/y, not s3://b/x-other


def _section(annotation):
    """The pydantic model (or dict) a field's annotation holds, through Optional; None for a leaf."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) is dict or annotation is dict:
        return dict
    for arg in typing.get_args(annotation) if typing.get_origin(annotation) in (typing.Union, type(int | None)) else ():
        if (found := _section(arg)) is not None:
            return found
    return None


def known_field(dotted: str) -> bool:
    """Whether `a.b.c` names a config field (a section, a leaf, or a key under a mapping field)."""
    node = RunConfig
    for name in dotted.split("."):
        if node is dict:
            return True  # family.data.fields.<name>: the mapping's keys are free
        if node is None or name not in node.model_fields:
            return False
        node = _section(node.model_fields[name].annotation)
    return True


def _check_overrides(param: str, overrides: list[str]) -> None:
    for o in overrides:
        if not isinstance(o, str) or "=" not in o:
            raise ParameterError(f"{param}: {redact(str(o))!r}: expected KEY=VALUE, e.g. generation.k=8")
        key = o.split("=", 1)[0].strip()
        if not known_field(key):
            raise ParameterError(f"{param}: {redact(o)!r}: unknown field {key!r}")


def _load(path: Path, overrides: list[str], param: str) -> RunConfig:
    try:
        return load_config(path, overrides)
    except ConfigError as e:  # load_config lists each bad field on its own line: one line here
        lines = str(e).splitlines()
        raise ParameterError(f"{param}: " + "; ".join(s.strip() for s in lines[1:] or lines)) from None


def _file_data(path: Path) -> dict:
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    return data if isinstance(data, dict) else {}


def check_store(cfg: RunConfig, file_store: str | None, param: str) -> None:
    prefixes = allowed_stores(file_store)
    if not store_allowed(cfg.store_uri, prefixes):
        how = "" if os.environ.get(ALLOWED_STORES_ENV, "").strip() else " unset"
        raise ParameterError(f"{param}: store_uri {redact(cfg.store_uri)!r} is not an allowed store "
                             f"(${ALLOWED_STORES_ENV}{how}: {redact(', '.join(prefixes))})")


def check_pinned(cfg: RunConfig, reference: RunConfig, param: str) -> None:
    """`cfg` sends the worker's credentials only where `reference` (the file, or the defaults) does."""
    for field in PINNED:
        if field_value(cfg, field) != field_value(reference, field):
            raise ParameterError(f"{param}: {field} may only be set in the config file (the worker's credentials "
                                 f"go where it says), not by a deployment's parameters")


def check_inputs(cfg: RunConfig, reference: RunConfig, file_store: str | None, param: str) -> None:
    """Every input URI of `cfg` is the file's own (`reference`), a `package:` name, or under an allowed
    store or input prefix."""
    prefixes = allowed_stores(file_store) + _listed(ALLOWED_INPUTS_ENV)
    for field, uri in input_uris(cfg).items():
        if uri == field_value(reference, field) or uri.startswith("package:") or store_allowed(uri, prefixes):
            continue
        raise ParameterError(f"{param}: {field} {redact(uri)!r} is not an allowed input (the config file's own, "
                             f"or under ${ALLOWED_INPUTS_ENV} or an allowed store: {redact(', '.join(prefixes))})")


def check_typed(cfg: RunConfig) -> None:
    """The typed deployment's config (a form in the Prefect UI, no file): an allowed store and inputs,
    the defaults' endpoints and execution, and the registries' rules a file would be checked by."""
    try:
        check(cfg)
    except ConfigError as e:
        raise ParameterError("; ".join(s.strip() for s in str(e).splitlines()[1:])) from None
    check_store(cfg, None, "config")
    check_pinned(cfg, RunConfig(), "config")
    check_inputs(cfg, RunConfig(), None, "config")


def deployment_config(config_path: str, overrides: list[str] | None = None,
                      eval_overrides: list[str] | None = None) -> tuple[Path, RunConfig]:
    """The checked config file and the config its parameters name (eval_overrides are checked too:
    the caller loads them on top). Raises ParameterError."""
    path = config_file(config_path)
    overrides, eval_overrides = list(overrides or []), list(eval_overrides or [])
    _check_overrides("overrides", overrides)
    _check_overrides("eval_overrides", eval_overrides)
    file_store = _file_data(path).get("store_uri")
    file_store = file_store if isinstance(file_store, str) else None
    reference = _load(path, [], "config_path")
    cfg = _load(path, overrides, "overrides")
    check_store(cfg, file_store, "config_path" if cfg.store_uri == reference.store_uri else "overrides")
    check_pinned(cfg, reference, "overrides")
    check_inputs(cfg, reference, file_store, "overrides")
    if eval_overrides:
        ev = _load(path, overrides + eval_overrides, "eval_overrides")
        check_store(ev, file_store, "eval_overrides")
        check_pinned(ev, reference, "eval_overrides")
        check_inputs(ev, reference, file_store, "eval_overrides")
    return path, cfg
