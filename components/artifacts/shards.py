"""A stage's work split by problem into shards, and the shards' parts put back together.

A shard is a contiguous block of the stage's problems (in the order the unsharded stage takes them),
so its rows, concatenated in shard order, are the rows the unsharded stage writes: with seeds per
prompt (components/models/generation.py) the artifact is the same, byte for byte. Each part is
published on its own (Layout.shard); the stage's `merge` publishes the artifact from them, once.
Where the shards run (this machine, a Ray cluster) is tasks/shards.py's business.
"""
from __future__ import annotations

from typing import Sequence, TypeVar

from components.artifacts import store
from components.artifacts.layout import QUARANTINE

T = TypeVar("T")


def part(items: Sequence[T], shard: Sequence[int] | None) -> list[T]:
    """Shard (i, n)'s block of `items`: the i-th of n nearly equal contiguous blocks; all of them for None."""
    if shard is None:
        return list(items)
    i, n = shard
    if not 0 <= i < n:
        raise ValueError(f"shard {i} of {n}: expected 0 <= i < n")
    return list(items[i * len(items) // n:(i + 1) * len(items) // n])


def gather(parts: list[str]) -> tuple[list[dict], list[dict]]:
    """The published parts' rows, concatenated in order, and each part's manifest."""
    rows, manifests = [], []
    for uri in parts:
        rows.extend(store.read_rows(uri))
        manifests.append(store.read_manifest(uri))
    return rows, manifests


def sharding_metrics(manifests: list[dict]) -> dict:
    """What a sharded stage records beside its own metrics: how many shards, and the slowest shard's
    own time (the stage's wall time beyond it is what sharding cost)."""
    return {"shards": len(manifests),
            "slowest_shard_s": max(m.get("metrics", {}).get("seconds", 0.0) for m in manifests)}


def gather_quarantine(parts: list[str], out_uri: str) -> None:
    """The parts' quarantined rows, in order, in one file beside the artifact (none: no file)."""
    bodies = []
    for uri in parts:
        fs, path = store.fs_for(store.join(uri, QUARANTINE))
        if fs.exists(path):
            bodies.append(fs.cat_file(path))
    if bodies:
        fs, path = store.fs_for(store.join(out_uri, QUARANTINE))
        fs.makedirs(fs._parent(path), exist_ok=True)
        fs.pipe_file(path, b"".join(bodies))


def remove(parts: list[str]) -> None:
    """The parts, once the artifact they make up is published (manifest first: never half a part)."""
    for uri in parts:
        fs, path = store.fs_for(uri)
        if fs.exists(path):
            manifest = store.join(path, store.MANIFEST)
            if fs.exists(manifest):
                fs.rm(manifest)
            fs.rm(path, recursive=True)
    if parts:  # the now empty <artifact>.shards folder
        fs, path = store.fs_for(parts[0].rsplit("/", 1)[0])
        if fs.exists(path) and not fs.ls(path):
            fs.rm(path, recursive=True)
