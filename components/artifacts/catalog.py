"""A catalog of published filtered datasets, kept in the object store itself.

One small JSON entry per dataset at `<store_uri>/catalog/<ID>.json`, written in one piece after the
dataset's manifest is published, so the catalog works for s3:// stores and across machines with no
extra service. ID = `<loop id>-r<round>-<first 8 of the dataset's sha256>`: short, readable, and
tied to the content, so an ID never silently names other rows (`load_filtered` checks the hash).
"""
from __future__ import annotations

import difflib
import json
import os
import time
import uuid
from pathlib import Path

from components.artifacts import integrity, store
from components.artifacts.layout import Layout, is_safe_id


class UnknownDataset(LookupError):
    """No catalog entry (or more than one) matches the ID asked for."""


def default_store() -> str:
    return os.environ.get("VSTAR_STORE", ".vstar/store")


def dataset_id(loop_id: str, round_idx: int, sha256: str) -> str:
    return f"{loop_id}-r{round_idx}-{sha256[:8]}"


def _put_json(uri: str, obj: dict) -> None:
    """The whole entry in one write: a reader sees the old entry or the new one, never half of one."""
    fs, path = store.fs_for(uri)
    body = json.dumps(obj, indent=1, sort_keys=True).encode()
    if store.is_local(uri):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        tmp = f"{path}.{uuid.uuid4().hex}.tmp"
        Path(tmp).write_bytes(body)
        os.replace(tmp, path)
    else:
        store.retry(fs.pipe_file, path, body)


def register(store_uri: str, dataset_uri: str, *, loop_id: str, round: int, filter: dict, label_source: str,
             parent_run_id: str | None, run_id: str | None, rows: int) -> dict:
    """Catalog the published dataset at `dataset_uri`; returns the entry (its "id" is the catalog ID)."""
    manifest = store.read_manifest(dataset_uri)  # NotPublished: only finished datasets are catalogued
    if manifest.get("rows") != rows:
        raise ValueError(f"{dataset_uri}: manifest says {manifest.get('rows')} rows, register was told {rows}")
    entry = {"id": dataset_id(loop_id, round, manifest["sha256"]), "loop_id": loop_id, "round": round,
             "uri": dataset_uri, "data_files": [store.join(dataset_uri, f) for f in manifest["files"]
                                                if f.endswith(".parquet")],
             "rows": rows, "filter": filter, "label_source": label_source, "sha256": manifest["sha256"],
             "parent_run_id": parent_run_id, "run_id": run_id, "published_at": manifest.get("published_at"),
             "registered_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    _put_json(Layout(store_uri).catalog_entry(entry["id"]), entry)
    return entry


def _read_entry(fs, path: str, uri: str) -> dict:
    try:
        with fs.open(path, "r") as f:
            entry = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{uri}: catalog entry is not valid JSON: {e}") from None
    missing = [k for k in ("id", "uri", "sha256", "rows") if k not in entry]
    if missing:
        raise ValueError(f"{uri}: catalog entry lacks field(s) {', '.join(missing)}")
    if entry["id"] != Path(path).name[: -len(".json")]:  # the id names paths (`vstar sft` output): only its own
        raise integrity.UnsafePath(f"{uri}: catalog entry says id {entry['id']!r:.120}, not its file's name")
    return entry


def ids(store_uri: str) -> list[str]:
    fs, path = store.fs_for(Layout(store_uri).catalog())
    fs.invalidate_cache(path)  # s3fs caches listings per process: entries registered elsewhere since
    if not fs.exists(path):
        return []
    names = (Path(p).name[: -len(".json")] for p in fs.glob(store.join(path, "*.json")))
    return sorted(n for n in names if is_safe_id(n))  # anything else was not written by `register`


def list_entries(store_uri: str) -> list[dict]:
    """Every catalog entry in the store, by loop then round."""
    out = []
    for id in ids(store_uri):
        uri = Layout(store_uri).catalog_entry(id)
        fs, path = store.fs_for(uri)
        out.append(_read_entry(fs, path, uri))
    return sorted(out, key=lambda e: (e.get("loop_id", ""), e.get("round", 0), e["id"]))


def get(store_uri: str, id: str) -> dict:
    """The entry for `id` (or for the one ID it is a prefix of); the error names close IDs."""
    known = ids(store_uri)
    matches = [id] if id in known else [k for k in known if k.startswith(id)]
    if len(matches) != 1:
        close = matches or difflib.get_close_matches(id, known, n=5, cutoff=0.5)
        what = "ambiguous" if matches else "unknown"
        hint = f"; did you mean: {', '.join(close)}" if close else ""
        raise UnknownDataset(f"{what} dataset id {id!r} in {Layout(store_uri).catalog()} "
                       f"({len(known)} entries){hint}")
    uri = Layout(store_uri).catalog_entry(matches[0])
    fs, path = store.fs_for(uri)
    return _read_entry(fs, path, uri)


def load_filtered(id: str, store_uri: str | None = None):
    """The catalogued dataset `id` as a `datasets.Dataset` (store: $VSTAR_STORE, else .vstar/store)."""
    store_uri = store_uri or default_store()
    entry = get(store_uri, id)
    now = store.read_manifest(entry["uri"])["sha256"]
    if now != entry["sha256"]:
        raise ValueError(f"catalog {entry['id']}: {entry['uri']} was republished since it was catalogued "
                         f"(sha256 {now[:8]}, catalogued {entry['sha256'][:8]}); its rows are not this dataset")
    return store.read_dataset(entry["uri"])
