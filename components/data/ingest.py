"""Reading user data (jsonl, json lines or parquet at any fsspec URI) so that bad input never
passes silently: a file-level fault (not found, empty, not UTF-8, wrong parquet columns) is an error
naming the URI; a row-level fault (malformed JSON, missing or empty field, wrong type) names the URI,
line and field and is either raised (strict) or quarantined and counted (lenient, the default).
"""
from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from typing import Any, Iterator

import fsspec


INDEX = re.compile(r"\[\d+\]")


class BadInput(ValueError):
    """Input that cannot be used, with where it is: `uri:line: field: reason`."""


@dataclass
class Rejected:
    uri: str
    line: int  # 1-based line of a jsonl file, 1-based row of a parquet file
    field: str | None
    reason: str
    raw: str  # the row as read (truncated), so the quarantine file is enough to fix the input


def where(uri: str, line: int | None = None, field: str | None = None) -> str:
    return uri + (f":{line}" if line is not None else "") + (f": {field}" if field else "")


class Quarantine:
    """Collects rejected rows of one input. Strict: the first rejection raises instead."""

    def __init__(self, uri: str, strict: bool = False):
        self.uri, self.strict = uri, strict
        self.rejected: list[Rejected] = []
        self.accepted = 0

    def reject(self, line: int, field: str | None, reason: str, raw: Any = "") -> None:
        msg = f"{where(self.uri, line, field)}: {reason}"
        if self.strict:
            raise BadInput(msg)
        text = raw if isinstance(raw, str) else json.dumps(raw, default=str)
        self.rejected.append(Rejected(self.uri, line, field, reason, text[:2000]))

    def counts(self) -> dict[str, int]:
        return {"rows_read": self.accepted + len(self.rejected), "rows_accepted": self.accepted,
                "rows_quarantined": len(self.rejected)}

    def reasons(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.rejected:
            # Nested fields count together whatever their index: label.steps[3].rating -> label.steps[].rating
            key = INDEX.sub("[]", r.field or "row") + ": " + r.reason.split(":")[0]
            out[key] = out.get(key, 0) + 1
        return out

    def write(self, dest_uri: str) -> str | None:
        """One jsonl line per rejected row at dest_uri (written whole, then renamed where possible)."""
        if not self.rejected:
            return None
        body = "".join(json.dumps(asdict(r)) + "\n" for r in self.rejected)
        fs, path = fsspec.core.url_to_fs(dest_uri)
        fs.makedirs(fs._parent(path), exist_ok=True)
        fs.pipe_file(path, body.encode())
        return dest_uri


def _open_bytes(uri: str) -> bytes:
    try:
        with fsspec.open(uri, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise BadInput(f"{uri}: file not found") from None
    except IsADirectoryError:
        raise BadInput(f"{uri}: is a directory, expected a jsonl or parquet file") from None


def read_records(uri: str, q: Quarantine, columns: list[str] | None = None) -> Iterator[tuple[int, dict]]:
    """(line number, record) for every row that parses as a JSON object. Parquet by extension;
    `columns` are required parquet columns (a missing one is a file-level error)."""
    data = _open_bytes(uri)
    if not data.strip():
        raise BadInput(f"{uri}: file is empty")
    if uri.endswith(".parquet"):
        yield from _parquet_rows(uri, data, columns)
        return
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise BadInput(f"{uri}:{line}: not UTF-8 (byte {e.start}: {data[e.start:e.start + 1]!r})") from None
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            q.reject(i, None, f"malformed JSON: {e.msg} at column {e.colno}", line)
            continue
        if not isinstance(rec, dict):
            q.reject(i, None, f"expected a JSON object, got {type(rec).__name__}", line)
            continue
        yield i, rec


def _parquet_rows(uri: str, data: bytes, columns: list[str] | None) -> Iterator[tuple[int, dict]]:
    import io

    import pyarrow.parquet as pq

    try:
        table = pq.read_table(io.BytesIO(data))
    except Exception as e:  # pyarrow raises ArrowInvalid and friends for a file that is not parquet
        raise BadInput(f"{uri}: not a readable parquet file ({e})") from None
    missing = [c for c in columns or [] if c not in table.column_names]
    if missing:
        raise BadInput(f"{uri}: parquet file lacks column(s) {', '.join(missing)}; "
                       f"it has {', '.join(table.column_names)}")
    for i, rec in enumerate(table.to_pylist(), 1):
        yield i, rec


def field(rec: dict, name: str, line: int, q: Quarantine, kind: type = str) -> Any:
    """rec[name] if present, non-empty and of `kind`; else the row is rejected and None returned."""
    if name not in rec or rec[name] is None:
        q.reject(line, name, "missing field", rec)
        return None
    value = rec[name]
    if kind is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, kind):
        q.reject(line, name, f"expected {kind.__name__}, got {type(value).__name__}", rec)
        return None
    if kind in (str, list, dict) and not (value.strip() if kind is str else value):
        q.reject(line, name, "empty field", rec)
        return None
    return value


def estimate_tokens(text: str) -> int:
    """Characters: the fallback when no tokenizer is at hand. An upper bound for every tokenizer
    here (the tiny model's splits each non-digit character, BPE merges them), so no problem that is
    too long passes; the generate stage, which has the tokenizer, counts exactly."""
    return len(text)


def reject_long(problems: list, count_tokens, limit: int, q: Quarantine, field_name: str = "question") -> list:
    """Problems whose prompt fits in `limit` tokens; the others are quarantined (or raise, strict)
    at their input line. `count_tokens(text) -> int`, None for the character estimate."""
    count = count_tokens or estimate_tokens
    kept = []
    for p in problems:
        n = count(p.prompt)
        if n > limit:
            how = "tokens" if count_tokens else "characters (no tokenizer: counted as tokens)"
            q.reject(p.meta.get("line", 0), field_name, f"too long: {n} {how}, limit {limit}", p.prompt)
            q.accepted -= 1  # it was counted as accepted when read
        else:
            kept.append(p)
    return kept
