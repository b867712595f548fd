"""Which code made a published artifact: the package version and a hash of the stage's own code.

A stage's code is its module plus every `components` module it imports, directly or through others
(read from the source, lazy imports inside functions included): a fix to Monte Carlo scoring changes
the hash of `score` and of nothing that does not import it. Every manifest a stage publishes carries
`code` (store.stamped), so a rerun or `vstar status` can tell an artifact made by other code (stale)
from one this checkout would make.
"""
from __future__ import annotations

import ast
import hashlib
from contextvars import ContextVar
from contextlib import contextmanager
from functools import lru_cache
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the checkout: `components/` lives here
PACKAGE = "vstar-flow"


def _file(module: str) -> Path | None:
    base = ROOT.joinpath(*module.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _imports(path: Path) -> set[str]:
    """The `components` modules a file imports (`from components.x import y` counts y when y is a module)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("components")}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("components"):
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names if _file(f"{node.module}.{a.name}")}
    return found


@lru_cache(maxsize=None)
def closure(module: str) -> tuple[Path, ...]:
    """The files of `module` and of every `components` module it reaches, sorted."""
    seen: dict[str, Path] = {}
    todo = [module]
    while todo:
        name = todo.pop()
        path = _file(name)
        if name in seen or path is None:
            continue
        seen[name] = path
        todo += sorted(_imports(path) - set(seen))
    return tuple(sorted(set(seen.values())))


@lru_cache(maxsize=None)
def code_version(module: str) -> dict:
    """{"package": version, "hash": 12 hex digits over the module's code closure}."""
    digest = hashlib.sha256()
    for path in closure(module):
        digest.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes() + b"\0")
    try:
        version = metadata.version(PACKAGE)
    except metadata.PackageNotFoundError:
        version = "unknown"
    return {"package": version, "hash": digest.hexdigest()[:12]}


# The code of the stage publishing in this thread or process: put into every manifest written meanwhile.
CURRENT: ContextVar[dict | None] = ContextVar("vstar_code", default=None)


@contextmanager
def stamped(module: str):
    """Manifests published inside the block record `module`'s code version."""
    token = CURRENT.set({"module": module, **code_version(module)})
    try:
        yield
    finally:
        CURRENT.reset(token)


def is_stale(manifest: dict, module: str) -> bool | None:
    """True when the manifest was made by other code than this checkout's `module`; None when it does
    not say (published before manifests recorded code)."""
    made = manifest.get("code")
    if not made:
        return None
    return made.get("hash") != code_version(module)["hash"]
