"""Prefect's persisted stage results in the object store: plain JSON, and only ever read as such.

Prefect pickles results by default, and a stored record names its own serializer (and the `json` one
imports any class a record names), so anyone who can write to a shared bucket could plant a record
that a worker unpickles on its next cache lookup, even one whose tasks ask for JSON. So results are
written with `SafeJSON` (the json module, no object hooks, no options a record could set), and the
storage blocks below hand Prefect a record only once it is checked to be exactly such a JSON record:
anything else is refused before Prefect parses it. Prefect reads a refused record as a cache miss (the
stage then finds its published output in the store and is skipped), so tampering costs a re-check,
never code run. Flows' own results are not persisted (flows/self_improve.py: stored).
"""
from __future__ import annotations

import json
import logging
from typing import Any

from pydantic import Field
from prefect.filesystems import LocalFileSystem, RemoteFileSystem
from prefect._internal.compatibility.async_dispatch import async_dispatch
from prefect.serializers import Serializer

SERIALIZER = "vstar-json"


class UnsafeResult(ValueError):
    """A stored Prefect result that is not a plain JSON record written by `SafeJSON`."""


class SafeJSON(Serializer):
    """JSON with no hooks: a result comes back as dicts, lists, strings, numbers, booleans, None
    (a tuple comes back as a list)."""

    type: str = Field(default=SERIALIZER, frozen=True)

    def dumps(self, obj: Any) -> bytes:
        return json.dumps(obj, default=_plain).encode()

    def loads(self, blob: bytes) -> Any:
        return json.loads(blob)


def _plain(obj: Any) -> Any:
    if hasattr(obj, "item") and callable(obj.item):  # numpy/torch scalars in metrics
        return obj.item()
    raise TypeError(f"a stage result must be plain JSON; got {type(obj).__name__}: {obj!r:.80}")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict:
    # Python keeps the last of duplicate keys, pydantic's parser may not: refuse rather than guess.
    keys = [k for k, _ in pairs]
    if len(keys) != len(set(keys)):
        raise UnsafeResult(f"duplicate keys {sorted(k for k in set(keys) if keys.count(k) > 1)}")
    return dict(pairs)


def checked_record(content: bytes, where: str) -> bytes:
    """`content` re-encoded from what was checked (so Prefect parses exactly that), if it is a record
    `{"metadata": {..., "serializer": {"type": "vstar-json"}}, "result": "<json text>"}`. Anything else
    is refused, old-style records too (`{"data": ...}` would default to pickle)."""
    try:
        try:
            record = json.loads(content, object_pairs_hook=_unique_keys)
        except UnsafeResult:
            raise
        except ValueError:  # UnicodeDecodeError (a raw pickle starts with 0x80) and JSONDecodeError
            raise UnsafeResult("not JSON (a pickle?)") from None
        if not isinstance(record, dict) or set(record) != {"metadata", "result"}:
            keys = sorted(record) if isinstance(record, dict) else type(record).__name__
            raise UnsafeResult(f"not a result record (keys {keys}, not [metadata, result])")
        meta, text = record["metadata"], record["result"]
        if not isinstance(meta, dict) or meta.get("serializer") != {"type": SERIALIZER}:
            found = meta.get("serializer") if isinstance(meta, dict) else None
            raise UnsafeResult(f"serializer {found!r}, not {{'type': {SERIALIZER!r}}}")
        if not isinstance(text, str):
            raise UnsafeResult(f"result is {type(text).__name__}, not JSON text")
        json.loads(text)
    except UnsafeResult as e:
        raise UnsafeResult(f"refusing Prefect result {where}: {e}") from None
    except ValueError as e:
        raise UnsafeResult(f"refusing Prefect result {where}: result is not JSON: {e}") from None
    return json.dumps({"metadata": meta, "result": text}).encode()


def _refused(e: UnsafeResult) -> None:
    from prefect import get_run_logger
    from prefect.exceptions import MissingContextError

    try:
        get_run_logger().warning("%s", e)
    except MissingContextError:
        logging.getLogger(__name__).warning("%s", e)


class _Checked:
    """Reads of result records go through `checked_record` (Prefect reads only through read_path)."""

    def _check(self, path: str, content: bytes) -> bytes:
        try:
            return checked_record(content, f"{self.basepath}/{path}")
        except UnsafeResult as e:
            _refused(e)
            raise

    async def aread_path(self, path: str) -> bytes:
        return self._check(path, await super().aread_path(path))

    @async_dispatch(aread_path)
    def read_path(self, path: str) -> bytes:
        return self._check(path, super().read_path(path, _sync=True))


class SafeLocalResults(_Checked, LocalFileSystem):
    """Prefect results in a local store folder, read back as checked JSON only."""

    _block_type_name = "vstar Local Results"
    _block_type_slug = "vstar-local-results"


class SafeRemoteResults(_Checked, RemoteFileSystem):
    """Prefect results under an fsspec URI (s3://), read back as checked JSON only."""

    _block_type_name = "vstar Remote Results"
    _block_type_slug = "vstar-remote-results"
