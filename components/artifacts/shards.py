"""A stage's work split by problem into shards, and the shards' parts put back together.

A shard is a contiguous block of the stage's problems (in the order the unsharded stage takes them),
so its rows, concatenated in shard order, are the rows the unsharded stage writes: with seeds per
prompt (components/models/generation.py) the artifact is the same, byte for byte. Each part is
published on its own (Layout.shard); the stage's `merge` publishes the artifact from them
(`gathered`), once.
Where the shards run (this machine, a Ray cluster) is tasks/shards.py's business.
"""
from __future__ import annotations

from dataclasses import dataclass
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


@dataclass
class Gathered:
    """A sharded stage's parts read back, in shard order: what every stage's `merge` starts from."""
    rows: list[dict]  # the parts' rows, concatenated: the rows of the unsharded stage
    manifests: list[dict]  # each part's manifest

    @property
    def metrics(self) -> list[dict]:
        """Each part's own metrics, without its `seconds` (the stage's wall time is the merge's to say)."""
        return [{k: v for k, v in m.get("metrics", {}).items() if k != "seconds"} for m in self.manifests]

    def total(self, key: str) -> float:
        return sum(m.get(key, 0) for m in self.metrics)

    @property
    def sharding(self) -> dict:
        """What a sharded stage records beside its own metrics: how many shards, and the slowest shard's
        own time (the stage's wall time beyond it is what sharding cost)."""
        return {"shards": len(self.manifests),
                "slowest_shard_s": max(m.get("metrics", {}).get("seconds", 0.0) for m in self.manifests)}


def gathered(parts: list[str], out_uri: str) -> Gathered:
    """The published parts' rows and manifests; their quarantined rows, in order, in one file beside
    the artifact at `out_uri` (none: no file), so the merged stage quarantines what the parts did."""
    rows, manifests, bodies = [], [], []
    for uri in parts:
        rows.extend(store.read_rows(uri))
        manifests.append(store.read_manifest(uri))
        fs, path = store.fs_for(store.join(uri, QUARANTINE))
        if fs.exists(path):
            bodies.append(fs.cat_file(path))
    if bodies:
        fs, path = store.fs_for(store.join(out_uri, QUARANTINE))
        fs.makedirs(fs._parent(path), exist_ok=True)
        fs.pipe_file(path, b"".join(bodies))
    return Gathered(rows, manifests)


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
