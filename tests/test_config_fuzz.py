"""Generated invalid configs (wrong types, unknown keys, out-of-range values, bad combinations, broken
files) always end in the config error naming the file and the field, never in a traceback (issue #14)."""
from __future__ import annotations

import tempfile
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from components.checks import load_config
from components.config import ConfigError, RunConfig

FIELDS = sorted(k.replace("/", ".") for k in RunConfig().flat_params())  # every leaf, dotted
SECTIONS = sorted({f.rsplit(".", 1)[0] for f in FIELDS if "." in f})
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**12, 10**12),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                       st.dictionaries(st.text(max_size=6), inner, max_size=3)),
                      max_leaves=6)
keys = st.one_of(st.sampled_from(FIELDS),  # a real field
                 st.builds(lambda s, k: f"{s}.{k}", st.sampled_from(SECTIONS), st.from_regex(r"[a-z_]{1,10}", fullmatch=True)),
                 st.builds(lambda f, k: f"{f}.{k}", st.sampled_from(FIELDS), st.from_regex(r"[a-z]{1,5}", fullmatch=True)))


def render(value) -> str:
    """What a user types after `=`: YAML flow style, or raw text (which may not be valid YAML)."""
    return value if isinstance(value, str) else yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("\n...")


def check(error: ConfigError, source: str, keys: list[str]) -> None:
    text = str(error)
    assert text.startswith((source, "--set ")), text  # the file (or defaults), or the --set that is wrong
    # the field: one of the keys set, or a section / parent of one (a wrong type for a whole section)
    assert any(k in text or k.rsplit(".", 1)[0] in text for k in keys), (keys, text)


@FUZZ
@given(st.lists(st.tuples(keys, st.one_of(values, st.text(max_size=12))), min_size=1, max_size=3))
def test_generated_overrides_give_a_config_error_naming_the_field(assignments):
    overrides = [f"{k}={render(v)}" for k, v in assignments]
    try:
        cfg = load_config(None, overrides)
    except ConfigError as e:
        check(e, "<defaults>", [k for k, _ in assignments])
    else:  # a config that loads can be used, and comes back as itself from its YAML (the run's config.yaml)
        again = RunConfig.model_validate(yaml.safe_load(yaml.safe_dump(cfg.model_dump(mode="json"))))
        assert again == cfg and again.loop_id() == cfg.loop_id()


@FUZZ
@given(st.dictionaries(st.one_of(st.sampled_from(SECTIONS + FIELDS), st.text(max_size=8)), values, max_size=4))
def test_generated_yaml_files_give_a_config_error_naming_the_file(doc):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "fuzz.yaml"
        path.write_text(yaml.safe_dump(doc))
        try:
            load_config(path)
        except ConfigError as e:
            assert str(e).startswith(str(path)), str(e)


def test_broken_files_give_a_config_error_naming_the_file(tmp_path):
    cases = {"latin1.yaml": "generation:\n  k: 4  # caf\xe9\n".encode("latin-1"),
             "tabs.yaml": b"generation:\n\tk: 4\n", "list.yaml": b"- 1\n- 2\n", "empty.yaml": b"",
             "binary.yaml": bytes(range(256))}
    for name, body in cases.items():
        path = tmp_path / name
        path.write_bytes(body)
        try:
            load_config(path)
        except ConfigError as e:
            assert str(e).startswith(str(path)), str(e)
        else:
            assert name == "empty.yaml"  # an empty file is the defaults
