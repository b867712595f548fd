"""Names that come from the store (a manifest's file names and sha256, catalog entries, listings) or
from users (loop ids) never make a path outside where they belong (#14, a shared bucket): a crafted
manifest is refused, naming itself and the file, before anything is written."""
import hashlib
import json
import uuid

import pytest

from components.artifacts import catalog, integrity, store
from components.artifacts.layout import Layout
from flows import status

GOOD = "config.json"


def memory_artifact(files: dict[str, bytes], listed: list[str], **extra) -> str:
    """A remote-looking artifact (fsspec's in-memory filesystem, so fetch_folder downloads it) whose
    manifest lists `listed`, with `files` stored under it; keys may land anywhere the names lead."""
    uri = f"memory://bucket-{uuid.uuid4().hex[:8]}/loops/x/round-1/model"
    fs, path = store.fs_for(uri)
    for name, body in files.items():
        fs.pipe_file(store.join(path, name), body)
    digest = hashlib.sha256(b"".join(n.encode() + files.get(n, b"") for n in listed if isinstance(n, str)))
    manifest = {"files": listed, "sha256": digest.hexdigest(), "uri": uri, **extra}  # what publish_folder records
    fs.pipe_file(store.join(path, store.MANIFEST), json.dumps(manifest).encode())
    return uri


def files_under(root) -> set[str]:
    return {str(p) for p in root.rglob("*") if p.is_file() or p.is_symlink()}


@pytest.mark.parametrize("bad", ["../../evil", "/etc/x", "a/../../b", "..", ".", "", "a//b", "./a",
                                 "a\\..\\..\\evil", "C:/evil", "C:evil", "a/\0b", 3, None])
def test_fetch_refuses_a_manifest_name_outside_the_artifact_and_writes_nothing(tmp_path, bad):
    cache = tmp_path / "home" / "user" / ".vstar" / "cache"
    cache.parent.mkdir(parents=True)
    # The store holds the bytes where a naive join would fetch them from ("/etc/x" is left absent: if
    # it were fetched, it would be written to /etc/x itself).
    planted = {GOOD: b"{}"}
    if isinstance(bad, str) and bad and not bad.startswith("/"):
        planted[bad] = b"pwned"
    uri = memory_artifact(planted, [GOOD, bad])
    with pytest.raises(integrity.UnsafeManifest) as e:
        store.fetch_folder(uri, cache_root=cache)
    assert isinstance(e.value, ValueError)
    msg = str(e.value)
    assert repr(bad) in msg and store.join(uri, store.MANIFEST) in msg, msg
    assert files_under(tmp_path) == set(), "written although the manifest was refused"


def test_fetch_refuses_an_absolute_name_that_would_write_elsewhere(tmp_path):
    cache, target = tmp_path / "cache", tmp_path / "outside" / "evil"
    uri = memory_artifact({GOOD: b"{}", str(target): b"pwned"}, [GOOD, str(target)])
    with pytest.raises(integrity.UnsafeManifest, match="outside/evil"):
        store.fetch_folder(uri, cache_root=cache)
    assert not target.exists() and files_under(tmp_path) == set()


def test_fetch_refuses_a_sha256_that_would_name_another_folder(tmp_path):
    cache = tmp_path / "a" / "cache"
    uri = memory_artifact({GOOD: b"{}"}, [GOOD])
    fs, path = store.fs_for(uri)
    crafted = {"files": [GOOD], "sha256": "../../../../evil-cache-x"}
    fs.pipe_file(store.join(path, store.MANIFEST), json.dumps(crafted).encode())
    with pytest.raises(integrity.UnsafeManifest, match="sha256"):
        store.fetch_folder(uri, cache_root=cache)
    assert files_under(tmp_path) == set()


def test_a_safe_manifest_is_still_fetched(tmp_path):
    uri = memory_artifact({GOOD: b"{}", "sub/dir/w.bin": b"123", "a..b": b"x"}, [GOOD, "sub/dir/w.bin", "a..b"])
    dest = store.fetch_folder(uri, cache_root=tmp_path / "cache")
    assert (dest / "sub/dir/w.bin").read_bytes() == b"123" and dest.parent == tmp_path / "cache"


def test_local_artifacts_never_hand_out_a_file_from_outside(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("key")
    src = tmp_path / "src"
    src.mkdir()
    (src / GOOD).write_text("{}")
    (src / "weights.bin").symlink_to(secret)
    uri = str(tmp_path / "store/loops/x/round-1/model")
    # Publishing would copy the secret into the store: refused, and nothing is published.
    with pytest.raises(integrity.UnsafeManifest, match="weights.bin") as e:
        store.publish_folder(src, uri, {"kind": "model"})
    assert "symlink" in str(e.value) and not store.is_published(uri)
    # A published local artifact in which someone swapped a file for a symlink: reads are refused.
    (src / "weights.bin").unlink()
    (src / "weights.bin").write_bytes(b"w")
    store.publish_folder(src, uri, {"kind": "model"})
    assert store.fetch_folder(uri) == tmp_path / "store/loops/x/round-1/model"
    (tmp_path / "store/loops/x/round-1/model/weights.bin").unlink()
    (tmp_path / "store/loops/x/round-1/model/weights.bin").symlink_to(secret)
    with pytest.raises(integrity.UnsafeManifest, match="weights.bin"):
        store.read_manifest(uri)
    with pytest.raises(integrity.UnsafeManifest):
        store.fetch_folder(uri)
    # ... and so is an extra, unlisted one (a model loader opens whatever the folder holds).
    (tmp_path / "store/loops/x/round-1/model/weights.bin").unlink()
    (tmp_path / "store/loops/x/round-1/model/weights.bin").write_bytes(b"w")
    (tmp_path / "store/loops/x/round-1/model/tokenizer.json").symlink_to(secret)
    with pytest.raises(integrity.UnsafeManifest, match="tokenizer.json"):
        store.fetch_folder(uri)


@pytest.mark.parametrize("loop_id", ["../x", "..", ".", "a/b", "/abs", ".hidden", "x\\..", "", "a b", "-rf"])
def test_unsafe_loop_ids_are_refused(tmp_path, loop_id):
    if loop_id == "":  # "" means "no loop" (store-wide paths), not a loop id
        assert Layout(str(tmp_path)).catalog() == f"{tmp_path}/catalog"
        return
    with pytest.raises(integrity.UnsafePath, match="loop id"):
        Layout(str(tmp_path), loop_id)


def test_ids_that_become_paths_are_checked(tmp_path):
    root = str(tmp_path)
    assert Layout(root, "demo-f03bfe2bb7").round(1, "model") == f"{root}/loops/demo-f03bfe2bb7/round-1/model"
    entry = "demo-f03bfe2bb7-r1-1a2b3c4d"
    assert Layout(root).catalog_entry(entry) == f"{root}/catalog/{entry}.json"
    for bad in ("../../x", "a/b", ".."):
        with pytest.raises(integrity.UnsafePath, match="catalog id"):
            Layout(root).catalog_entry(bad)
        with pytest.raises(integrity.UnsafePath, match="catalog id"):
            Layout(root).sft(bad, {})
    with pytest.raises(ValueError, match="unknown round artifact"):
        Layout(root, "demo-f03bfe2bb7").round(1, "eval-../../x")
    with pytest.raises(TypeError):
        Layout(root, "demo-f03bfe2bb7").round("1/../..", "model")
    with pytest.raises(integrity.UnsafePath, match="bootstrap hash"):
        Layout(root, bootstrap_hash="../x")


def test_catalog_and_status_skip_or_refuse_names_they_did_not_write(tmp_path):
    root = str(tmp_path)
    (tmp_path / "catalog").mkdir()
    (tmp_path / "catalog" / ".x.json").write_text("{}")
    good = {"id": "demo-f03bfe2bb7-r1-1a2b3c4d", "uri": "u", "sha256": "ab" * 32, "rows": 1}
    (tmp_path / "catalog" / f"{good['id']}.json").write_text(json.dumps({**good, "id": "../../sft-elsewhere"}))
    assert catalog.ids(root) == [good["id"]]
    with pytest.raises(integrity.UnsafePath, match="sft-elsewhere"):  # an entry naming another id is refused
        catalog.get(root, good["id"])
    (tmp_path / "loops" / "demo-f03bfe2bb7").mkdir(parents=True)
    (tmp_path / "loops" / ".. x").mkdir()
    assert status.loop_ids(root) == ["demo-f03bfe2bb7"]


def test_status_reads_rounds_back_by_the_layouts_folder_names(tmp_path):
    at = Layout(str(tmp_path), "demo-f03bfe2bb7")
    assert at.loop() == f"{Layout(str(tmp_path)).loops()}/demo-f03bfe2bb7"
    for name in (Layout.round_name(10), Layout.round_name(2), "round-x", "round-3.old", "notes"):
        (tmp_path / "loops" / "demo-f03bfe2bb7" / name).mkdir(parents=True)
    assert status.rounds(at) == [2, 10]  # anything else in the loop's prefix is no round's
    assert at.round(2, "model").split("/")[-2] == Layout.round_name(2) == "round-2"
    assert Layout.round_number(Layout.round_name(7)) == 7 and Layout.round_number("round-") is None
