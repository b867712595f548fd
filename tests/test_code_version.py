"""Which code made a published artifact, and `vstar status` telling a stale stage (issue #15, #14)."""
from __future__ import annotations

import pytest

from components.artifacts import code_version, store
from components.artifacts.layout import Layout
from flows import status


@pytest.fixture
def fake_checkout(tmp_path, monkeypatch):
    """A checkout of three modules: stage imports lib (lazily, inside a function); other is unrelated."""
    pkg = tmp_path / "components"
    (pkg / "stages").mkdir(parents=True)
    for f in ("__init__.py", "stages/__init__.py"):
        (pkg / f).write_text("")
    (pkg / "stages/a.py").write_text("def run():\n    from components import lib\n    return lib.f()\n")
    (pkg / "lib.py").write_text("def f():\n    return 1\n")
    (pkg / "other.py").write_text("X = 1\n")
    monkeypatch.setattr(code_version, "ROOT", tmp_path)
    for fn in (code_version.closure, code_version.code_version):
        fn.cache_clear()
    yield pkg
    for fn in (code_version.closure, code_version.code_version):
        fn.cache_clear()


def hash_of(module: str) -> str:
    for fn in (code_version.closure, code_version.code_version):
        fn.cache_clear()
    return code_version.code_version(module)["hash"]


def test_a_stage_hash_follows_the_code_it_imports_and_nothing_else(fake_checkout):
    before = hash_of("components.stages.a")
    assert [p.name for p in code_version.closure("components.stages.a")] == ["__init__.py", "lib.py", "a.py"]
    (fake_checkout / "other.py").write_text("X = 2\n")
    assert hash_of("components.stages.a") == before
    (fake_checkout / "lib.py").write_text("def f():\n    return 2  # the bug fix\n")
    assert hash_of("components.stages.a") != before


def test_manifests_record_their_code_and_status_calls_other_code_stale(tmp_path):
    at = Layout(str(tmp_path / "store"), "smoke-0000000000")
    module = status.BY_ARTIFACT["candidates"].__name__  # components.stages.generate
    with code_version.stamped(module):
        manifest = store.write_rows([{"x": 1}], at.round(1, "candidates"), {"metrics": {"traces": 1}})
    store.write_rows([{"x": 1}], at.round(1, "scored"), {"metrics": {"traces": 1}})  # no code recorded
    assert manifest["code"] == {"module": module, **code_version.code_version(module)}
    assert code_version.is_stale(manifest, module) is False
    assert code_version.is_stale({**manifest, "code": {**manifest["code"], "hash": "0" * 12}}, module) is True

    rows = status.round_rows(at, 1, {"prm": False}, run_status="FAILED", holder_alive=False)
    assert [(r.stage, r.state) for r in rows] == [("generate", "published"), ("score", "published (code not recorded)"),
                                                  ("filter", "failed")]
    store.write_rows([{"x": 1}], at.round(1, "candidates"),  # as an older checkout published it
                     {"metrics": {"traces": 1}, "code": {**manifest["code"], "hash": "0" * 12}})
    assert status.round_rows(at, 1, {"prm": False}, None, True)[0].state == "stale: code 000000000000"
    assert status.round_rows(at, 1, {"prm": False}, None, True)[-1].state == "running"
    # the loop list does not know whether the loop trains a PRM: a missing one is passed over
    for artifact in ("filtered", "model", "eval"):
        store.write_rows([], at.round(1, artifact), {"metrics": {}})
    assert [r.stage for r in status.round_rows(at, 1, None, None, None)][-2:] == ["evaluate", "trace-report"]
    assert [r.stage for r in status.round_rows(at, 1, {"prm": True}, None, None)][-1] == "train-prm"


def test_a_library_upgrade_or_a_change_to_the_stage_runner_makes_every_stage_stale(fake_checkout, tmp_path,
                                                                                    monkeypatch):
    """The hash covered components/ only: a stage made under transformers X and reused under Y (or by
    another child entry) looked current. Two installs of a library here: its version goes into every
    stage's hash, and the manifest says which versions made it."""
    import sys

    entry = tmp_path.joinpath(*code_version.ENTRY.split(".")).with_suffix(".py")  # the fake checkout's runner
    entry.parent.mkdir()
    (entry.parent / "__init__.py").write_text("")
    entry.write_text("def main():\n    pass\n")
    monkeypatch.setattr(code_version, "LIBRARIES", ("vstar-fake-lib",))
    for version in ("1.0", "1.1"):
        dist = tmp_path / f"site-{version}" / f"vstar_fake_lib-{version}.dist-info"
        dist.mkdir(parents=True)
        (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: vstar-fake-lib\nVersion: {version}\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site-1.0"))
    old = hash_of("components.stages.a")
    assert code_version.code_version("components.stages.a")["libraries"] == {"vstar-fake-lib": "1.0"}
    sys.path.remove(str(tmp_path / "site-1.0"))
    monkeypatch.syspath_prepend(str(tmp_path / "site-1.1"))
    upgraded = hash_of("components.stages.a")
    assert upgraded != old and code_version.code_version("components.stages.a")["libraries"] == {"vstar-fake-lib": "1.1"}
    entry.write_text("def main():\n    return 1  # the runner changed\n")
    assert hash_of("components.stages.a") != upgraded
