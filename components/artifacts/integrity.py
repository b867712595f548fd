"""Whether published bytes can be trusted: a manifest's file names stay inside its artifact's folder,
its digests are sha256s, one per listed file, and the files read back are the ones it recorded.

Manifests come from the store, which a shared bucket lets others write, and files are damaged on disk
or in transit: components/artifacts/store.py checks every manifest it reads and every file it hands
out with these, and digests every folder it publishes. Pure checks over a folder and its names; the
store's URIs and filesystems stay in store.py.
"""
from __future__ import annotations

import hashlib
import re
from pathlib import Path


class UnsafePath(ValueError):
    """A name from the store (or from a user) that would make a path outside where it belongs."""


class UnsafeManifest(UnsafePath):
    """A manifest whose file names (or sha256) would reach outside its artifact's folder, or whose digests
    are not one sha256 per listed file."""


class CorruptArtifact(ValueError):
    """Published bytes that are not what was published: a manifest that is not JSON, or a file whose sha256
    differs from the one its manifest recorded (damaged on disk or in transit, or changed since)."""


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


def check_manifest(manifest: object, where: str) -> dict:
    """`manifest` (read from `where`) if its file names are safe and its sha256 and digests well formed,
    else UnsafeManifest naming what is wrong."""
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files", []), list):
        raise UnsafeManifest(f"{where}: not a manifest (an object with a list of files)")
    for name in manifest.get("files", []):
        check_name(name, where)
    if "sha256" in manifest and not (isinstance(manifest["sha256"], str) and _SHA256.fullmatch(manifest["sha256"])):
        raise UnsafeManifest(f"{where}: sha256 {manifest['sha256']!r:.80} is not 64 hex digits")
    if "digests" in manifest:  # absent from manifests published before per-file digests: still readable
        _check_digests(manifest["digests"], manifest.get("files", []), where)
    return manifest


def _check_digests(digests: object, files: list, where: str) -> None:
    if not isinstance(digests, dict) or set(digests) != set(files):
        got = sorted(map(str, digests)) if isinstance(digests, dict) else type(digests).__name__
        raise UnsafeManifest(f"{where}: digests {got!r:.200} do not map exactly the listed files to their sha256")
    for name, digest in digests.items():
        if not (isinstance(digest, str) and _SHA256.fullmatch(digest)):
            raise UnsafeManifest(f"{where}: digest of {name!r} {digest!r:.80} is not 64 hex digits")


def check_inside(folder: Path, names, where: str) -> None:
    """UnsafeManifest for the first of `names` in a local `folder` that is a symlink to a file elsewhere."""
    root = folder.resolve()
    for name in names:
        target = (folder / name).resolve()
        if not target.is_relative_to(root):
            raise UnsafeManifest(f"{where}: {name!r} is a symlink to {target}, outside {root}")


def _under(folder: str, name: str) -> str:
    """`name` (a checked relative path: no empty part, no leading '/') in `folder`, as store.join spells it."""
    return f"{folder.rstrip('/')}/{name}"


def digests(fs, folder: str, names: list[str]) -> tuple[str, dict[str, str]]:
    """The artifact's sha256 (over names and bytes, in order) and each file's, reading each file once."""
    overall, each = hashlib.sha256(), {}
    for name in names:
        overall.update(name.encode())
        one = hashlib.sha256()
        with fs.open(_under(folder, name), "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                overall.update(chunk)
                one.update(chunk)
        each[name] = one.hexdigest()
    return overall.hexdigest(), each


def verify(fs, folder: str, manifest: dict, uri: str, names: list[str]) -> bool:
    """CorruptArtifact naming the first of `names` (under `folder`, published at `uri`) whose sha256 differs from
    the manifest's; False when the manifest records nothing to compare them with."""
    want = manifest.get("digests")
    if want is None and (names != manifest["files"] or "sha256" not in manifest):
        return False  # an older manifest's one sha256 covers all its files together, not a subset
    overall, each = digests(fs, folder, names)
    for name in names if want is not None else ():  # a damaged file first, by name
        if each[name] != want[name]:
            raise CorruptArtifact(f"{_under(uri, name)}: corrupt file, sha256 {each[name]} but its manifest "
                                  f"recorded {want[name]} (damaged or changed since it was published)")
    if want is not None and names == manifest["files"] and overall != manifest.get("sha256", overall):
        # Each file matches but the whole does not: the manifest names another artifact's digest, which
        # would put these files in that one's cache entry (cache/<sha256[:16]>).
        raise CorruptArtifact(f"{uri}: corrupt manifest, its files' sha256 is {overall} but its manifest recorded "
                              f"{manifest['sha256']} (another artifact's digest, or changed since it was published)")
    if want is None and overall != manifest["sha256"]:  # which file changed is unknown: name them (a few)
        shown = ", ".join(_under(uri, n) for n in names[:4]) + (", ..." if len(names) > 4 else "")
        raise CorruptArtifact(f"{uri}: corrupt artifact, sha256 of its files ({shown}) is {overall} but its "
                              f"manifest recorded {manifest['sha256']} (damaged or changed since it was published)")
    return True
