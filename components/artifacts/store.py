"""Object store through fsspec: a local path by default, s3://bucket/prefix through s3fs.

Every artifact (dataset or model) is a folder with a `manifest.json` written last. Readers trust only
published manifests, so a stage that dies half-way leaves nothing that looks complete: an old manifest is
removed first, the files are written, and the manifest is put last (one PUT, atomic on S3; os.replace
locally). Every manifest read and every file handed out is checked against what was published
(components/artifacts/integrity.py). S3 endpoint and keys come from the environment (AWS_ENDPOINT_URL,
AWS_*), never from config.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
import time
import uuid
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import fsspec
from fsspec.core import url_to_fs

from components.artifacts import integrity

MANIFEST = "manifest.json"


class NotPublished(FileNotFoundError):
    """The artifact has no published manifest (never written, or its writer died)."""


_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
_LOCAL = fsspec.filesystem("file")


def join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/")] + [p.strip("/") for p in parts if p])


def fs_for(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    return url_to_fs(uri)


def is_local(uri: str) -> bool:
    return "://" not in uri or uri.startswith("file://")


def storage_options(uri: str) -> dict:
    """What `datasets` needs to reach the same store (a fresh dict each call: datasets mutates it)."""
    if uri.startswith("s3://") and os.environ.get("AWS_ENDPOINT_URL"):
        return {"client_kwargs": {"endpoint_url": os.environ["AWS_ENDPOINT_URL"]}}
    return {}


def _transient() -> tuple[type[BaseException], ...]:
    """Errors that an endpoint going away for a moment raises: OSError, and botocore's connection
    errors (not OSErrors) when the store is S3."""
    try:
        from botocore.exceptions import ConnectionError as BotoConnectionError, HTTPClientError
    except ImportError:
        return (OSError,)
    return (OSError, BotoConnectionError, HTTPClientError)


def retry(fn, *args, attempts: int = 4, **kw):
    """Transient store errors (endpoint restarting, throttling) are retried with backoff."""
    for i in range(attempts):
        try:
            return fn(*args, **kw)
        except (FileNotFoundError, PermissionError, ValueError):
            raise
        except _transient() as e:
            if isinstance(e, OSError) and e.errno in _NO_SPACE:  # a full disk does not clear up in 4 s of backoff
                target = next((a for a in reversed(args) if isinstance(a, str)), "")
                raise OSError(e.errno, f"no space left on the store's disk ({fn.__name__} {target}): {e}") from e
            if i == attempts - 1:
                raise OSError(f"object store unreachable after {attempts} attempts with backoff "
                              f"({fn.__name__} {args[0] if args else ''}): {e}") from e
            time.sleep(0.5 * 2**i)


def _check_manifest(manifest: object, uri: str) -> dict:
    where = join(uri, MANIFEST)
    integrity.check_manifest(manifest, where)
    if is_local(uri):  # a symlink in a local artifact must not hand a reader a file from elsewhere
        integrity.check_inside(Path(fs_for(uri)[1]), manifest.get("files", []), where)
    return manifest


def read_manifest(uri: str) -> dict:
    fs, path = fs_for(uri)
    mpath = join(path, MANIFEST)
    # The manifest is the commit point another process may have written a moment ago: never answer
    # from this process's listing cache (s3fs: a folder listed before its manifest was written read
    # as unpublished for as long as the process lived).
    fs.invalidate_cache(path)
    try:
        with fs.open(mpath, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise NotPublished(f"{uri}: no published {MANIFEST}") from None
    try:
        manifest = json.loads(raw)
    except ValueError as e:  # JSONDecodeError, or UnicodeDecodeError for bytes that are not text at all
        raise integrity.CorruptArtifact(f"{join(uri, MANIFEST)}: corrupt manifest, not valid JSON ({len(raw)} "
                                        f"bytes: {e}); the artifact cannot be read until it is published again") from e
    return _check_manifest(manifest, uri)


def is_published(uri: str) -> bool:
    try:
        read_manifest(uri)
        return True
    except NotPublished:
        return False


def _put_manifest(fs, path: str, manifest: dict) -> None:
    body = json.dumps(manifest, indent=1, sort_keys=True)
    target = join(path, MANIFEST)
    if isinstance(fs, fsspec.implementations.local.LocalFileSystem):
        tmp = f"{target}.{uuid.uuid4().hex}.tmp"
        try:
            Path(tmp).write_text(body)
            os.replace(tmp, target)
        except OSError:
            Path(tmp).unlink(missing_ok=True)  # a full disk would leave a partial one behind
            raise
    else:
        retry(fs.pipe_file, target, body.encode())


# What the stage publishing in this thread or process records in every manifest it writes meanwhile:
# {"code": its code version, "inputs": its inputs' digests}. Set by code_version.stamped; kept here so
# that the store needs nothing above it.
STAMP: ContextVar[dict | None] = ContextVar("vstar_code", default=None)

_REPLICA = False


def replica() -> None:
    """This process is a replica (a data-parallel rank other than 0, components/runtime/child.py): it
    reads the store and publishes nothing, so its stage's artifact is published once, by rank 0."""
    global _REPLICA
    _REPLICA = True


def publish_folder(local_dir: str | Path, uri: str, meta: dict[str, Any]) -> dict:
    """Copy a finished local folder to `uri` and publish it; returns the manifest."""
    if _REPLICA:
        return {**meta}
    local_dir = Path(local_dir)
    # A folder fetched from the store carries its old manifest: the new one replaces it, last.
    files = sorted(p.relative_to(local_dir).as_posix() for p in local_dir.rglob("*")
                   if p.is_file() and p.relative_to(local_dir) != Path(MANIFEST))
    integrity.check_inside(local_dir, files, f"publishing {local_dir} to {uri}")  # no file from elsewhere
    sha256, digests = integrity.digests(_LOCAL, str(local_dir), files)
    fs, path = fs_for(uri)
    if retry(fs.exists, join(path, MANIFEST)):
        retry(fs.rm, join(path, MANIFEST))  # unpublish first: a reader never sees an old manifest over new files
    try:
        retry(fs.makedirs, path, exist_ok=True)
        for name in files:  # each object PUT is atomic on S3; the set of them counts only once the manifest is there
            fs.makedirs(fs._parent(join(path, name)), exist_ok=True)
            retry(fs.put_file, str(local_dir / name), join(path, name))
        manifest = {"files": files, "sha256": sha256, "digests": digests, "uri": uri,
                    "published_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **meta}
        for key, value in (STAMP.get() or {}).items():  # a stage publishing: its code, inputs
            manifest.setdefault(key, value)
        _put_manifest(fs, path, manifest)
    except OSError as e:
        if e.errno not in _NO_SPACE:
            raise
        _remove_quietly(fs, [join(path, name) for name in files])  # give the space back: unpublished either way
        raise OSError(e.errno, f"{uri}: disk full (no space left on the store's device) while publishing "
                               f"{len(files)} file(s) from {local_dir}; nothing was published") from e
    return manifest


def _remove_quietly(fs, paths: list[str]) -> None:
    """Best effort: the caller is already failing with the error that matters."""
    for p in paths:
        try:
            fs.rm(p)
        except _transient():
            pass


_VERIFIED: set[tuple] = set()  # local artifacts (uri, published_at, sha256) whose files matched in this process


def fetch_folder(uri: str, cache_root: str | Path = ".vstar/cache") -> Path:
    """A local folder holding the published artifact at `uri` (the folder itself when local), its listed files
    checked against their manifest's sha256 (CorruptArtifact naming the file)."""
    manifest = read_manifest(uri)
    if is_local(uri):  # readers (from_pretrained) may open any file here, listed or not
        folder = Path(fs_for(uri)[1])
        everything = [p.relative_to(folder).as_posix() for p in folder.rglob("*")]
        integrity.check_inside(folder, everything, join(uri, MANIFEST))
        # Read in place, so checked in place. Hashing (~1 GB/s) costs about what loading the weights does, but a
        # stage fetches the same model several times (tokenizer, serving): once per process per published version.
        # A file damaged after that check is not seen by this process; a republish is checked anew.
        key = (uri, manifest.get("published_at"), manifest.get("sha256"))
        if key not in _VERIFIED:
            integrity.verify(_LOCAL, str(folder), manifest, uri, manifest["files"])
            _VERIFIED.add(key)
        return folder
    dest = Path(cache_root) / manifest["sha256"][:16]
    if (dest / MANIFEST).exists():  # trusted: only a download whose files matched their digests is moved here
        return dest
    fs, path = fs_for(uri)
    Path(cache_root).mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=cache_root))
    try:
        for name in manifest["files"]:  # names and sha256 checked by read_manifest: all land under tmp
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            retry(fs.get, join(path, name), str(tmp / name))
        # Checked before the move: the cache holds checked files only.
        integrity.verify(_LOCAL, str(tmp), manifest, uri, manifest["files"])
        (tmp / MANIFEST).write_text(json.dumps(manifest))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # a failed or corrupt download leaves nothing in the cache
        raise
    try:
        os.replace(tmp, dest)
    except OSError:  # another process fetched it first
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


# ---------------------------------------------------------------- datasets (parquet through `datasets`)

def _datasets():
    import datasets

    datasets.disable_progress_bars()  # per-call bars for small tables only clutter stage logs
    return datasets


def write_rows(rows: list[dict], uri: str, meta: dict[str, Any] | None = None) -> dict:
    """Publish rows as one parquet file plus a manifest with the row count. Every key of any row is a
    column (None where a row lacks it): `datasets.Dataset.from_list` takes its columns from the first
    row alone and drops, silently, a key only later rows carry (evaluate's sampled rows follow greedy
    ones that have no verifier scores)."""
    datasets = _datasets()

    columns = list(dict.fromkeys(k for r in rows for k in r))
    with tempfile.TemporaryDirectory() as tmp:
        ds = (datasets.Dataset.from_list([{k: r.get(k) for k in columns} for r in rows]) if rows
              else datasets.Dataset.from_dict({}))
        ds.to_parquet(str(Path(tmp) / "data.parquet"))
        return publish_folder(tmp, uri, {"rows": len(rows), "kind": "dataset", **(meta or {})})


def read_dataset(uri: str):
    """The published dataset at `uri` as a `datasets.Dataset`, read from the bytes published there now.
    Not through `datasets.load_dataset`: its cache (the machine's, shared by every process) keys a
    remote file by its path when the filesystem reports no version, so an artifact published again at
    the same URI read back as the first version."""
    datasets = _datasets()
    import pyarrow  # loaded by datasets already
    import pyarrow.parquet as pq

    manifest = read_manifest(uri)
    if manifest.get("rows", 0) == 0:
        return datasets.Dataset.from_dict({})
    names = [f for f in manifest["files"] if f.endswith(".parquet")]
    # Small files: checking them first names a bit flip or a truncation, where pyarrow names no file (or
    # reads a flipped value without noticing).
    fs, path = fs_for(uri)
    checked = integrity.verify(fs, path, manifest, uri, names)
    try:
        tables = []
        for name in names:
            with fs.open(join(path, name), "rb") as f:
                tables.append(pq.read_table(f))
        # In memory: the features `to_parquet` wrote into the schema come back with the table.
        return datasets.Dataset(pyarrow.concat_tables(tables, promote_options="default"))
    except pyarrow.ArrowException as e:
        if checked:  # the bytes are those published: not a corrupt file
            raise
        files = ", ".join(join(uri, n) for n in names)
        raise integrity.CorruptArtifact(f"{files}: cannot be read as parquet ({e}); corrupt or truncated since it "
                                        f"was published? (its manifest records no digest to check)") from e


def read_rows(uri: str) -> list[dict]:
    return read_dataset(uri).to_list()

