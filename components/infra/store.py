"""Object store through fsspec: a local path by default, s3://bucket/prefix through s3fs.

Every artifact (dataset or model) is a folder with a `manifest.json` written last. Readers trust only
published manifests, so a stage that dies half-way leaves nothing that looks complete: an old manifest is
removed first, the files are written, and the manifest is put last (one PUT, atomic on S3; os.replace
locally). S3 endpoint and keys come from the environment (AWS_ENDPOINT_URL, AWS_*), never
from config.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import fsspec
from fsspec.core import url_to_fs

from components.infra import code_version

MANIFEST = "manifest.json"


class NotPublished(FileNotFoundError):
    """The artifact has no published manifest (never written, or its writer died)."""


class UnsafePath(ValueError):
    """A name from the store (or from a user) that would make a path outside where it belongs."""


class UnsafeManifest(UnsafePath):
    """A manifest whose file names (or sha256) would reach outside its artifact's folder."""


_DRIVE = re.compile(r"^[A-Za-z]:")
_SHA256 = re.compile(r"[0-9a-f]{64}")


def check_name(name: object, where: str) -> str:
    """`name` if it is a relative POSIX path that stays inside its folder, else UnsafeManifest naming it:
    manifests come from the store, which a shared bucket lets others write."""
    parts = name.split("/") if isinstance(name, str) else []
    if (not parts or "\\" in name or "\0" in name or _DRIVE.match(name)
            or any(p in ("", ".", "..") for p in parts)):
        raise UnsafeManifest(f"{where}: unsafe file name {name!r} (a manifest may list only relative paths "
                             f"inside the artifact: no '..', '.', empty parts, leading '/', backslash or drive)")
    return name


def _check_manifest(manifest: object, uri: str) -> dict:
    where = join(uri, MANIFEST)
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files", []), list):
        raise UnsafeManifest(f"{where}: not a manifest (an object with a list of files)")
    for name in manifest.get("files", []):
        check_name(name, where)
    if "sha256" in manifest and not (isinstance(manifest["sha256"], str) and _SHA256.fullmatch(manifest["sha256"])):
        raise UnsafeManifest(f"{where}: sha256 {manifest['sha256']!r:.80} is not 64 hex digits")
    if is_local(uri):  # a symlink in a local artifact must not hand a reader a file from elsewhere
        _check_inside(Path(fs_for(uri)[1]), manifest.get("files", []), where)
    return manifest


def _check_inside(folder: Path, names, where: str) -> None:
    root = folder.resolve()
    for name in names:
        target = (folder / name).resolve()
        if not target.is_relative_to(root):
            raise UnsafeManifest(f"{where}: {name!r} is a symlink to {target}, outside {root}")


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
            if i == attempts - 1:
                raise OSError(f"object store unreachable after {attempts} attempts with backoff "
                              f"({fn.__name__} {args[0] if args else ''}): {e}") from e
            time.sleep(0.5 * 2**i)


def read_manifest(uri: str) -> dict:
    fs, path = fs_for(uri)
    mpath = join(path, MANIFEST)
    try:
        with fs.open(mpath, "r") as f:
            manifest = json.load(f)
    except FileNotFoundError:
        raise NotPublished(f"{uri}: no published {MANIFEST}") from None
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
        Path(tmp).write_text(body)
        os.replace(tmp, target)
    else:
        retry(fs.pipe_file, target, body.encode())


def publish_folder(local_dir: str | Path, uri: str, meta: dict[str, Any]) -> dict:
    """Copy a finished local folder to `uri` and publish it; returns the manifest."""
    local_dir = Path(local_dir)
    # A folder fetched from the store carries its old manifest: the new one replaces it, last.
    files = sorted(p.relative_to(local_dir).as_posix() for p in local_dir.rglob("*")
                   if p.is_file() and p.relative_to(local_dir) != Path(MANIFEST))
    _check_inside(local_dir, files, f"publishing {local_dir} to {uri}")  # never publish a file from elsewhere
    digest = hashlib.sha256()
    for name in files:
        digest.update(name.encode())
        with open(local_dir / name, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    fs, path = fs_for(uri)
    if retry(fs.exists, join(path, MANIFEST)):
        retry(fs.rm, join(path, MANIFEST))  # unpublish first: a reader never sees an old manifest over new files
    retry(fs.makedirs, path, exist_ok=True)
    for name in files:  # each object PUT is atomic on S3; the set of them counts only once the manifest is there
        fs.makedirs(fs._parent(join(path, name)), exist_ok=True)
        retry(fs.put_file, str(local_dir / name), join(path, name))
    manifest = {"files": files, "sha256": digest.hexdigest(), "uri": uri,
                "published_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **meta}
    if code_version.CURRENT.get() and "code" not in manifest:  # which code made it (a stage publishing)
        manifest["code"] = code_version.CURRENT.get()
    _put_manifest(fs, path, manifest)
    return manifest


def fetch_folder(uri: str, cache_root: str | Path = ".vstar/cache") -> Path:
    """A local folder holding the published artifact at `uri` (the folder itself when local)."""
    manifest = read_manifest(uri)
    if is_local(uri):  # readers (from_pretrained) may open any file here, listed or not
        folder = Path(fs_for(uri)[1])
        _check_inside(folder, [p.relative_to(folder).as_posix() for p in folder.rglob("*")], join(uri, MANIFEST))
        return folder
    dest = Path(cache_root) / manifest["sha256"][:16]
    if (dest / MANIFEST).exists():
        return dest
    fs, path = fs_for(uri)
    Path(cache_root).mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=cache_root))
    for name in manifest["files"]:  # names and sha256 checked by read_manifest: all land under tmp
        (tmp / name).parent.mkdir(parents=True, exist_ok=True)
        retry(fs.get, join(path, name), str(tmp / name))
    (tmp / MANIFEST).write_text(json.dumps(manifest))
    try:
        os.replace(tmp, dest)
    except OSError:  # another process fetched it first
        pass
    return dest


# ---------------------------------------------------------------- datasets (parquet through `datasets`)

def _datasets():
    import datasets

    datasets.disable_progress_bars()  # per-call bars for small tables only clutter stage logs
    return datasets


def write_rows(rows: list[dict], uri: str, meta: dict[str, Any] | None = None) -> dict:
    """Publish rows as one parquet file plus a manifest with the row count."""
    datasets = _datasets()

    with tempfile.TemporaryDirectory() as tmp:
        ds = datasets.Dataset.from_list(rows) if rows else datasets.Dataset.from_dict({})
        ds.to_parquet(str(Path(tmp) / "data.parquet"))
        return publish_folder(tmp, uri, {"rows": len(rows), "kind": "dataset", **(meta or {})})


def read_dataset(uri: str):
    """The published dataset at `uri` as a `datasets.Dataset`."""
    datasets = _datasets()

    manifest = read_manifest(uri)
    if manifest.get("rows", 0) == 0:
        return datasets.Dataset.from_dict({})
    files = [join(uri, f) for f in manifest["files"] if f.endswith(".parquet")]
    return datasets.load_dataset("parquet", data_files=files, split="train",
                                 storage_options=storage_options(uri))


def read_rows(uri: str) -> list[dict]:
    return read_dataset(uri).to_list()

