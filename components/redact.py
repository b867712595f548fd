"""Credentials out of whatever is shown or logged: `redact(text)` masks, in every URI of a text, the
password of its user-info (`s3://KEY:SECRET@bucket` -> `s3://KEY:***@bucket`; a user-info without one,
often a token, goes whole: `https://***@host`) and the values of query or fragment parameters that
carry credentials (`?X-Amz-Signature=***`, `sig=`, `token=`, `key=` ...), plus `Bearer` tokens and
`Authorization:` headers. Scheme, host and path stay readable. Only what is displayed goes through
it: connections keep the real values (config fields are never rewritten).
"""
from __future__ import annotations

import logging
import re
from typing import Any, Iterable, TypeVar

MASK = "***"
T = TypeVar("T")

# Parameter names that carry credentials: presigned S3 (X-Amz-Signature, -Credential, -Security-Token),
# GCS (X-Goog-Signature), Azure SAS (sig), OAuth/API tokens, keys, passwords. Over-matching only
# hides a harmless value from a display.
_SENSITIVE = re.compile(r"sig|token|key|secret|pass|pwd|credential|auth|session|cookie", re.I)
_URI = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<rest>[^\s'\"<>`]+)")
# `KEY:SECRET@bucket`: the password runs to the last @ before the query, since cloud secrets hold
# unescaped `/` and `+` (a path with ":...@" in it is over-masked, never shown).
_USER_PASSWORD = re.compile(r"^(?P<user>[^/@:?#\s]*):(?P<password>[^?#\s]*)@")
_PARAM = re.compile(r"(?P<key>[^&;=?#]+)=(?P<value>[^&;#)]*)")
_HEADERS = [
    (re.compile(r"(?i)\b((?:proxy-)?authorization|x-api-key|api[-_]?key|x-amz-security-token)(['\"]?\s*[:=]\s*['\"]?)"
                r"((?:bearer|basic|token)\s+)?[^\s'\",}&;#]+"), rf"\1\2\3{MASK}"),
    (re.compile(r"(?i)\b(bearer\s+)(?!\*\*\*)[A-Za-z0-9._~+/=-]{4,}"), rf"\1{MASK}"),
]


def _params(part: str) -> str:
    return _PARAM.sub(lambda m: f"{m['key']}={MASK}" if _SENSITIVE.search(m["key"]) and m["value"] else m[0], part)


def redact_uri(uri: str) -> str:
    """One URI (or path: returned as it is when it has no `scheme://`)."""
    m = _URI.fullmatch(uri)
    if not m:
        return uri
    scheme, rest = m["scheme"], m["rest"]
    cut = min((i for i in (rest.find("?"), rest.find("#")) if i >= 0), default=len(rest))
    head, tail = rest[:cut], rest[cut:]
    up = _USER_PASSWORD.match(head)
    if up:
        head = f"{up['user']}:{MASK}@" + head[up.end():]
    else:
        authority = re.split(r"[/]", head, maxsplit=1)[0]
        if "@" in authority:  # user-info with no password: a token as user name
            head = f"{MASK}@" + head[authority.rfind("@") + 1:]
    return scheme + head + _params(tail)


def redact(text: T, secrets: Iterable[str | None] = ()) -> T:
    """`text` with every URI's credentials, bearer tokens, authorization headers and the literal
    `secrets` (e.g. an API key read from the environment) masked; None and non-strings as they are."""
    if not isinstance(text, str) or not text:
        return text
    out = _URI.sub(lambda m: redact_uri(m[0]), text)
    for pattern, repl in _HEADERS:
        out = pattern.sub(repl, out)
    for s in secrets:
        if s and len(s) >= 4:  # a one-letter "secret" would mask half the text
            out = out.replace(s, MASK)
    return out


def redact_tree(obj: Any) -> Any:
    """Every string in nested dicts / lists / tuples redacted (a config's model_dump)."""
    if isinstance(obj, dict):
        return {k: redact_tree(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(redact_tree(v) for v in obj)
    return redact(obj)


class RedactFilter(logging.Filter):
    """A logging filter that redacts each record's message (and literal secrets added to it)."""

    def __init__(self, secrets: Iterable[str | None] = ()):
        super().__init__()
        self.secrets = {s for s in secrets if s}

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        clean = redact(msg, self.secrets)
        if clean != msg:
            record.msg, record.args = clean, ()
        return True


def protect_loggers(names: Iterable[str], secrets: Iterable[str | None] = ()) -> None:
    """Redact what these loggers log, e.g. httpx's INFO line "HTTP Request: POST <url>", which shows
    a URL's user-info password. One filter per logger (added once); `secrets` accumulate."""
    for name in names:
        lg = logging.getLogger(name)
        f = next((f for f in lg.filters if isinstance(f, RedactFilter)), None)
        if f is None:
            lg.addFilter(f := RedactFilter())
        f.secrets.update(s for s in secrets if s)
