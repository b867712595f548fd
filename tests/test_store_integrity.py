"""Bytes in the store that are not what was published: a manifest that is not JSON, a file damaged after
publishing (on disk or in transit), a disk that fills during a publish. Each fails with an error naming the
file and saying what is wrong, and none leaves something a reader would take for a published artifact."""
import errno
import hashlib
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from components.artifacts import integrity, store

REPO = Path(__file__).resolve().parent.parent


def folder_with(tmp_path, files: dict[str, bytes]) -> Path:
    folder = tmp_path / f"src-{uuid.uuid4().hex[:6]}"
    for name, body in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(body)
    return folder


FILES = {"config.json": b'{"x": 1}', "sub/weights.bin": bytes(range(256)) * 64}


@pytest.fixture
def remote(s3):
    """A fresh artifact URI on the real S3 server (moto): fetch_folder downloads from it."""
    return lambda: s3.uri(f"integrity-{uuid.uuid4().hex[:8]}/loops/x/round-1/model")


def rewrite_manifest(uri: str, change) -> None:
    fs, path = store.fs_for(uri)
    manifest = json.loads(fs.cat_file(store.join(path, store.MANIFEST)))
    change(manifest)
    fs.pipe_file(store.join(path, store.MANIFEST), json.dumps(manifest).encode())


def damage(uri: str, name: str, how: str) -> None:
    """Flip bytes in the middle of a published file (same size), or cut it in half."""
    fs, path = store.fs_for(uri)
    body = bytearray(fs.cat_file(store.join(path, name)))
    if how == "flip":
        mid = len(body) // 2
        body[mid:mid + 8] = bytes(b ^ 0xFF for b in body[mid:mid + 8])
    else:
        body = body[:len(body) // 2]
    fs.pipe_file(store.join(path, name), bytes(body))


def files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


# ---------------------------------------------------------------- 1. a corrupt manifest names itself

@pytest.mark.parametrize("body", [b'{"files": ["config.json"], "sha2', b"\xff\xfe\x00\x9c garbage \x00\x01", b""],
                         ids=["truncated", "binary", "empty"])
@pytest.mark.parametrize("where", ["local", "s3"])
def test_a_corrupt_manifest_names_itself(tmp_path, body, where, remote):
    uri = str(tmp_path / "store/loops/x/round-1/model") if where == "local" else remote()
    store.publish_folder(folder_with(tmp_path, FILES), uri, {"kind": "model"})
    fs, path = store.fs_for(uri)
    fs.pipe_file(store.join(path, store.MANIFEST), body)
    for read in (store.read_manifest, store.is_published, store.fetch_folder, store.read_dataset):
        with pytest.raises(integrity.CorruptArtifact, match="corrupt manifest, not valid JSON") as e:
            read(uri)
        assert isinstance(e.value, ValueError) and store.join(uri, store.MANIFEST) in str(e.value), str(e.value)


# ---------------------------------------------------------------- 2. a digest per file

def test_publish_records_each_files_sha256(tmp_path):
    uri = str(tmp_path / "store/model")
    manifest = store.publish_folder(folder_with(tmp_path, FILES), uri, {"kind": "model"})
    want = {name: hashlib.sha256(body).hexdigest() for name, body in FILES.items()}
    assert manifest["digests"] == want == store.read_manifest(uri)["digests"]
    overall = hashlib.sha256()  # the overall sha256 is unchanged: names and bytes, in order
    for name in sorted(FILES):
        overall.update(name.encode() + FILES[name])
    assert manifest["sha256"] == overall.hexdigest()


@pytest.mark.parametrize("digests", [
    {"config.json": "ab" * 32},                                                       # a file without one
    {"config.json": "ab" * 32, "sub/weights.bin": "cd" * 32, "other": "ef" * 32},     # one for no file
    {"config.json": "ab" * 32, "sub/weights.bin": "AB" * 32},                         # not lower-case hex
    {"config.json": "ab" * 32, "sub/weights.bin": 7},
    ["ab" * 32, "cd" * 32],
], ids=["a-file-without", "one-for-no-file", "upper-case", "not-a-string", "not-a-map"])
def test_a_malformed_digest_map_is_refused(tmp_path, digests):
    uri = str(tmp_path / "store/model")
    store.publish_folder(folder_with(tmp_path, FILES), uri, {"kind": "model"})
    rewrite_manifest(uri, lambda m: m.update(digests=digests))
    with pytest.raises(integrity.UnsafeManifest, match="digest") as e:
        store.read_manifest(uri)
    assert store.join(uri, store.MANIFEST) in str(e.value)


def test_a_manifest_without_digests_is_still_read(tmp_path):
    uri, data = str(tmp_path / "store/model"), str(tmp_path / "store/data")
    store.publish_folder(folder_with(tmp_path, FILES), uri, {"kind": "model"})
    store.write_rows([{"a": 1}], data)
    for u in (uri, data):
        rewrite_manifest(u, lambda m: m.pop("digests"))
    assert (store.fetch_folder(uri) / "config.json").read_bytes() == FILES["config.json"]
    assert store.read_rows(data) == [{"a": 1}]


# ---------------------------------------------------------------- 3. fetched files are checked

@pytest.mark.parametrize("how", ["flip", "truncate"])
def test_a_damaged_remote_file_is_refused_and_nothing_cached(tmp_path, how, remote):
    uri, cache = remote(), tmp_path / "cache"
    manifest = store.publish_folder(folder_with(tmp_path, FILES), uri, {"kind": "model"})
    damage(uri, "sub/weights.bin", how)
    with pytest.raises(integrity.CorruptArtifact) as e:
        store.fetch_folder(uri, cache_root=cache)
    msg = str(e.value)
    fs, path = store.fs_for(uri)
    actual = hashlib.sha256(fs.cat_file(store.join(path, "sub/weights.bin"))).hexdigest()
    assert store.join(uri, "sub/weights.bin") in msg and manifest["digests"]["sub/weights.bin"] in msg
    assert actual in msg, msg
    assert files_under(cache) == [], "a corrupt download was left in the cache"


def test_a_damaged_remote_file_under_an_older_manifest_is_refused(tmp_path, remote):
    """Published before per-file digests: the overall sha256 still catches it (naming the artifact)."""
    uri, cache = remote(), tmp_path / "cache"
    manifest = store.publish_folder(folder_with(tmp_path, FILES), uri, {"kind": "model"})
    rewrite_manifest(uri, lambda m: m.pop("digests"))
    damage(uri, "config.json", "flip")
    with pytest.raises(integrity.CorruptArtifact, match="corrupt artifact") as e:
        store.fetch_folder(uri, cache_root=cache)
    assert uri in str(e.value) and manifest["sha256"] in str(e.value)
    assert files_under(cache) == []


def test_a_manifest_claiming_another_artifacts_digest_cannot_poison_the_cache(tmp_path, remote):
    """The overall sha256 names the cache entry (`cache/<sha[:16]>`): a manifest whose files match their
    own digests but whose sha256 is another artifact's would otherwise put its files where that one's
    readers look."""
    genuine, forged, cache = remote(), remote(), tmp_path / "cache"
    real = store.publish_folder(folder_with(tmp_path, FILES), genuine, {"kind": "model"})
    store.publish_folder(folder_with(tmp_path, {**FILES, "config.json": b'{"x": "forged"}'}), forged, {"kind": "model"})
    rewrite_manifest(forged, lambda m: m.update(sha256=real["sha256"]))
    with pytest.raises(integrity.CorruptArtifact, match=rf"{forged}: .*sha256 .* but its manifest recorded {real['sha256']}"):
        store.fetch_folder(forged, cache_root=cache)
    assert files_under(cache) == []
    assert (store.fetch_folder(genuine, cache_root=cache) / "config.json").read_bytes() == FILES["config.json"]


def test_an_intact_remote_artifact_is_fetched_once(tmp_path, monkeypatch, remote):
    uri, cache = remote(), tmp_path / "cache"
    store.publish_folder(folder_with(tmp_path, FILES), uri, {"kind": "model"})
    dest = store.fetch_folder(uri, cache_root=cache)
    assert (dest / "sub/weights.bin").read_bytes() == FILES["sub/weights.bin"]
    assert files_under(cache) == sorted(str(p.relative_to(cache)) for p in [dest, *dest.rglob("*")])
    monkeypatch.setattr(integrity, "digests", lambda *a: pytest.fail("a cached folder is checked again"))
    assert store.fetch_folder(uri, cache_root=cache) == dest  # verified when it was fetched


def test_a_damaged_local_file_is_refused_once_per_published_version(tmp_path, monkeypatch):
    uri = str(tmp_path / "store/model")
    store.publish_folder(folder_with(tmp_path, FILES), uri, {"kind": "model"})
    damage(uri, "sub/weights.bin", "flip")
    with pytest.raises(integrity.CorruptArtifact, match="corrupt file") as e:
        store.fetch_folder(uri)
    assert store.join(uri, "sub/weights.bin") in str(e.value)
    # Republished intact: checked (anew) at the first fetch, not at every one in this process.
    store.publish_folder(folder_with(tmp_path, FILES), uri, {"kind": "model", "again": True})
    calls = []
    digests = integrity.digests
    monkeypatch.setattr(integrity, "digests", lambda *a: calls.append(a) or digests(*a))
    assert store.fetch_folder(uri) == store.fetch_folder(uri) == tmp_path / "store/model"
    assert len(calls) == 1


# ---------------------------------------------------------------- 4. a corrupt parquet names itself

@pytest.mark.parametrize("how", ["flip", "truncate"])
@pytest.mark.parametrize("where", ["local", "s3"])
def test_a_damaged_parquet_names_itself(tmp_path, how, where, remote):
    uri = str(tmp_path / "store/filtered") if where == "local" else remote()
    store.write_rows([{"q": f"{i} + {i}", "ok": i % 2 == 0} for i in range(200)], uri)
    damage(uri, "data.parquet", how)
    with pytest.raises(integrity.CorruptArtifact, match="corrupt file") as e:
        store.read_rows(uri)
    assert store.join(uri, "data.parquet") in str(e.value)


def test_a_damaged_parquet_under_an_older_manifest_names_itself(tmp_path):
    uri = str(tmp_path / "store/filtered")
    store.write_rows([{"q": f"{i} + {i}"} for i in range(200)], uri)
    rewrite_manifest(uri, lambda m: m.pop("digests"))
    damage(uri, "data.parquet", "truncate")
    with pytest.raises(integrity.CorruptArtifact, match="corrupt artifact") as e:
        store.read_rows(uri)
    assert store.join(uri, "data.parquet") in str(e.value)
    # A manifest that records no digest at all: pyarrow's error, naming the file.
    rewrite_manifest(uri, lambda m: m.pop("sha256"))
    with pytest.raises(integrity.CorruptArtifact, match="cannot be read as parquet") as e:
        store.read_rows(uri)
    assert store.join(uri, "data.parquet") in str(e.value)


# ---------------------------------------------------------------- 5. a full disk

@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT])
def test_retry_does_not_wait_for_a_full_disk(code):
    calls = []

    def put_file(src, dst):
        calls.append(dst)
        raise OSError(code, os.strerror(code), dst)

    t0 = time.monotonic()
    with pytest.raises(OSError, match="no space left") as e:
        store.retry(put_file, "/tmp/x/data.parquet", "/store/loops/x/data.parquet")
    assert time.monotonic() - t0 < 0.4 and calls == ["/store/loops/x/data.parquet"]
    assert e.value.errno == code and e.value.__cause__.errno == code
    assert "/store/loops/x/data.parquet" in str(e.value)


def _can_unshare() -> bool:
    try:
        return subprocess.run(["unshare", "-rm", "true"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


# Runs in a private mount namespace over a 256 KiB tmpfs at argv[1] (gone once it exits): publishes what does
# not fit over an older version that did, and reports what a reader then sees.
FILL = r"""
import json, shutil, sys, traceback
from pathlib import Path
from components.artifacts import store

disk, src = Path(sys.argv[1]), Path(sys.argv[2])
out = {}

def attempt(kind, uri, publish):
    try:
        publish()
        err = None
    except OSError as e:
        err = e
    chain, e, first = [], err, None
    while e is not None:
        chain.append(getattr(e, "errno", None))
        first, e = e, e.__cause__
    try:
        store.read_manifest(uri)
        read = "published"
    except store.NotPublished:
        read = "NotPublished"
    out[kind] = {"error": err and str(err), "errno": err and err.errno, "chain": chain, "read": read,
                 "failed_in": [f.name for f in traceback.extract_tb(first.__traceback__)] if first else [],
                 "published": store.is_published(uri), "files": sorted(str(p.relative_to(disk))
                                                                       for p in disk.rglob("*") if p.is_file())}

model, data, exact = (str(disk / "store" / n) for n in ("model", "data", "exact"))
store.publish_folder(src / "small", model, {"kind": "model"})
store.write_rows([{"h": "old"}], data)
assert store.is_published(model) and store.is_published(data)
attempt("publish_folder", model, lambda: store.publish_folder(src / "big", model, {"kind": "model"}))
attempt("write_rows", data, lambda: store.write_rows([{"h": h} for h in json.load(open(src / "rows.json"))], data))
# The files fit (the whole disk), the manifest does not.
attempt("manifest", exact, lambda: store.publish_folder(src / "exact", exact, {"kind": "model"}))
out["free"], out["total"] = shutil.disk_usage(disk).free, shutil.disk_usage(disk).total
print(json.dumps(out))
"""


@pytest.mark.skipif(not _can_unshare(), reason="`unshare -rm true` fails here: no user + mount namespaces "
                                                  "to make a tiny tmpfs without privileges")
def test_a_full_disk_fails_clearly_and_publishes_nothing(tmp_path):
    src, disk = tmp_path / "src", tmp_path / "disk"
    disk.mkdir()
    (src / "small").mkdir(parents=True)
    (src / "small/config.json").write_bytes(b'{"x": 0}')
    (src / "big").mkdir()
    (src / "big/config.json").write_bytes(b'{"x": 1}')
    for i in range(4):
        (src / f"big/weights-{i}.bin").write_bytes(os.urandom(256 << 10))  # 1 MiB in all, on a 256 KiB disk
    (src / "rows.json").write_text(json.dumps([os.urandom(32).hex() for _ in range(20000)]))  # ~1.3 MB parquet
    (src / "exact").mkdir()
    (src / "exact/weights.bin").write_bytes(os.urandom(256 << 10))
    run = subprocess.run(
        ["unshare", "-rm", "sh", "-c", 'mount -t tmpfs -o size=256k tmpfs "$1" && exec "$2" -c "$3" "$1" "$4"',
         "sh", str(disk), sys.executable, FILL, str(src)],
        capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    for kind, name in (("publish_folder", "model"), ("write_rows", "data"), ("manifest", "exact")):
        seen, uri = out[kind], str(disk / "store" / name)
        assert seen["error"], f"{kind}: published on a full disk?"
        assert uri in seen["error"] and "no space left" in seen["error"], seen["error"]
        assert "unreachable" not in seen["error"], "a full disk was retried as an outage"
        assert seen["errno"] == errno.ENOSPC and seen["chain"][-1] == errno.ENOSPC, seen["chain"]
        assert seen["read"] == "NotPublished" and not seen["published"]
        assert not [f for f in seen["files"] if f.startswith(f"store/{name}/")], f"{kind} left {seen['files']}"
    # There the file fitted and the (temporary) manifest did not: it is gone too (no files left above).
    assert "_put_manifest" in out["manifest"]["failed_in"], out["manifest"]
    assert out["free"] == out["total"], "the failed publishes did not give their space back"
