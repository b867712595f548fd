"""Where everything lives in the object store: one object names every path of a loop, and both the
stage that writes a path and the one that reads it ask it. Nothing else builds a store path.

    <store>/bootstrap/<bootstrap hash>/model             G_0, shared by every loop that would train the same one
    <store>/bootstrap/<bootstrap hash>/judge-<key>       the judge a loop trains (bootstrap + judge settings)
    <store>/converted/<file sha256>/model                a GGUF checkpoint (model.init_uri) as a Hugging Face folder
    <store>/backbones/<backbone hash>/model              a verifier's own backbone, made here or copied from a folder
    <store>/data/<family hash>/<split>                   problems read from files, quarantine.jsonl beside them
    <store>/labels/<import hash>                         imported human step labels
    <store>/loops/<loop id>/round-<n>/<artifact>         candidates, scored, filtered, model, prm, eval, report
    <artifact>.shards/<i>-of-<n>                         a sharded stage's parts, until the artifact is published
    <store>/catalog/<dataset id>.json                    catalogued filtered datasets
    <store>/sft/<dataset id>/<key>                       `vstar sft` models
"""
from __future__ import annotations

import operator
import re
from dataclasses import dataclass

from components import round_table
from components.artifacts.integrity import UnsafePath
from components.artifacts.store import join
from components.config import RunConfig, stable_hash

# The rows a stage refused (bad input, a prompt too long), beside the artifact it published.
QUARANTINE = "quarantine.jsonl"
_ROUND = re.compile(r"round-(\d+)$")  # the name of a round's folder (Layout.round_name), read back

# Loop ids (`demo-f03bfe2bb7`), catalog ids (`demo-f03bfe2bb7-r1-1a2b3c4d`) and hashes become one path
# component each; they also come from users and from store listings and entries, so they are checked.
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,199}")


def is_safe_id(value: object) -> bool:
    return isinstance(value, str) and bool(_ID.fullmatch(value))


def safe_id(value: object, what: str) -> str:
    """`value` if it is one safe path component: letters, digits, '_', '.', '-', starting with a letter or digit."""
    if not is_safe_id(value):
        raise UnsafePath(f"unsafe {what} {value!r:.120}: expected letters, digits, '_', '.', '-' "
                         f"starting with a letter or digit, e.g. demo-f03bfe2bb7")
    return value


@dataclass(frozen=True)
class Layout:
    root: str  # the store URI
    loop_id: str = ""
    bootstrap_hash: str = ""

    def __post_init__(self):
        if self.loop_id:
            safe_id(self.loop_id, "loop id")
        if self.bootstrap_hash:
            safe_id(self.bootstrap_hash, "bootstrap hash")

    @classmethod
    def of(cls, cfg: RunConfig) -> "Layout":
        return cls(cfg.store_uri, cfg.loop_id(), cfg.bootstrap_hash())

    # ------------------------------------------------------------------ shared by loops
    def bootstrap(self) -> str:
        return join(self.root, "bootstrap", self.bootstrap_hash[:12], "model")

    def trained_judge(self, judge_settings: dict) -> str:
        """The judge a loop trains: it depends on the bootstrap and the judge settings only."""
        key = stable_hash({"bootstrap": self.bootstrap_hash, "judge": judge_settings})
        return join(self.root, "bootstrap", self.bootstrap_hash[:12], f"judge-{key[:10]}")

    def converted(self, sha256: str) -> str:
        """A GGUF file converted to a Hugging Face folder, named by the file's digest: shared by every
        loop (and store user) that starts from the same file."""
        return join(self.root, "converted", safe_id(sha256[:16], "file digest"), "model")

    def backbone(self, settings: dict) -> str:
        """A verifier's own backbone (`*.backbone`) made here from scratch, or a folder copied in, named
        by what makes it (its settings, or the folder's digest): shared by every loop that names it."""
        return join(self.root, "backbones", stable_hash(settings)[:12], "model")

    def data(self, family: dict, split: str) -> str:
        """Problems of a file-backed family (its config dumped) per split; `ready` marks them all published."""
        return join(self.root, "data", stable_hash(family)[:12], split)

    def labels(self, settings: dict) -> str:
        return join(self.root, "labels", stable_hash(settings)[:12])

    def catalog(self) -> str:
        return join(self.root, "catalog")

    def catalog_entry(self, dataset_id: str) -> str:
        return join(self.root, "catalog", f"{safe_id(dataset_id, 'catalog id')}.json")

    def sft(self, dataset_id: str, settings: dict) -> str:
        """A model `vstar sft` trained on a catalogued dataset with these settings."""
        return join(self.root, "sft", safe_id(dataset_id, "catalog id"), stable_hash(settings)[:10])

    # ------------------------------------------------------------------ one loop's rounds
    def loops(self) -> str:
        """The prefix under which every loop of the store is published, a folder per loop id."""
        return join(self.root, "loops")

    def loop(self) -> str:
        """The prefix under which the loop's rounds are published."""
        return join(self.loops(), self.loop_id)

    @staticmethod
    def round_name(n: int) -> str:
        """Round n's folder under its loop's prefix."""
        return f"round-{operator.index(n)}"

    @staticmethod
    def round_number(name: str) -> int | None:
        """n for round n's folder (the last part of its path), None for anything else in a loop's prefix."""
        m = _ROUND.match(name)
        return int(m.group(1)) if m else None

    def round(self, n: int, artifact: str) -> str:
        """Round n's artifact; `eval-<hash>` names a re-evaluation beside `eval`."""
        known = round_table.artifacts()  # what a round publishes, in the order its stages run
        if artifact not in known and not (artifact.startswith("eval-") and is_safe_id(artifact)):
            raise ValueError(f"unknown round artifact {artifact!r}; known: {', '.join(known)}")
        return join(self.loop(), self.round_name(n), artifact)

    def generator(self, n: int) -> str:
        """G_n: the bootstrap for n = 0, else round n's model."""
        return self.bootstrap() if n == 0 else self.round(n, "model")

    @staticmethod
    def shard(artifact_uri: str, i: int, n: int) -> str:
        """Part i (0-based) of n of a sharded stage's artifact: published on its own, so a rerun skips
        the finished parts; removed once the artifact they make up is published."""
        return f"{artifact_uri.rstrip('/')}.shards/{operator.index(i) + 1}-of-{operator.index(n)}"
