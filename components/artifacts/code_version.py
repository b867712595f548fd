"""Which code made a published artifact: the package version and a hash of the stage's own code.

A stage's code is its module plus every `components` module it imports, directly or through others
(read from the source, lazy imports inside functions included), the child entry that runs it
(components/runtime/isolation.py and what it imports), and the versions of the libraries that compute
(LIBRARIES: torch, transformers, vLLM, TRL, ...): a fix to Monte Carlo scoring changes the hash of
`score` and of nothing that does not import it; a transformers upgrade changes every stage's. Every manifest a stage publishes carries
`code`, and the digests of the `inputs` it was made from (`stamped`), so a rerun or `vstar status` can
tell an artifact made by other code (stale) from one this checkout would make, and one made from
inputs that have been made again since (out of date) from a current one.
"""
from __future__ import annotations

import ast
import hashlib
from contextlib import contextmanager
from functools import lru_cache
from importlib import metadata
from pathlib import Path

from components.artifacts import store

ROOT = Path(__file__).resolve().parents[2]  # the checkout: `components/` lives here
PACKAGE = "vstar-flow"
ENTRY = "components.runtime.isolation"  # what runs every stage in its child process (with child, warm)
# The installed distributions whose version can change what a stage computes (pyproject pins them).
LIBRARIES = ("torch", "transformers", "tokenizers", "accelerate", "peft", "trl", "vllm", "datasets",
             "safetensors", "gguf", "math-verify", "numpy")


def libraries() -> dict[str, str]:
    out = {}
    for name in LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "absent"
    return out


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


# Declarations every stage imports but none computes from: the round table names the stages, their
# artifacts and the selectors of verifiers; a row added for a new verifier (which, switched on, names
# a new loop) must not mark every published stage of every loop stale.
DECLARATIONS = ("components.round_table",)


@lru_cache(maxsize=None)
def closure(module: str) -> tuple[Path, ...]:
    """The files of `module` and of every `components` module it reaches (DECLARATIONS aside), sorted."""
    seen: dict[str, Path] = {}
    todo = [module]
    while todo:
        name = todo.pop()
        path = _file(name)
        if name in seen or path is None or name in DECLARATIONS:
            continue
        seen[name] = path
        todo += sorted(_imports(path) - set(seen))
    return tuple(sorted(set(seen.values())))


@lru_cache(maxsize=None)
def code_version(module: str) -> dict:
    """{"package": version, "hash": 12 hex digits over the module's code closure, its entry's and the
    LIBRARIES' versions, "libraries": those versions}."""
    digest = hashlib.sha256()
    for path in sorted(set(closure(module)) | set(closure(ENTRY))):
        digest.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes() + b"\0")
    libs = libraries()
    digest.update(repr(sorted(libs.items())).encode())
    try:
        version = metadata.version(PACKAGE)
    except metadata.PackageNotFoundError:
        version = "unknown"
    return {"package": version, "hash": digest.hexdigest()[:12], "libraries": libs}


@contextmanager
def stamped(module: str, inputs: dict[str, str | None] | None = None):
    """Manifests published inside the block record `module`'s code version and `inputs` (input_digests)."""
    token = store.STAMP.set({"code": {"module": module, **code_version(module)},
                             **({"inputs": inputs} if inputs is not None else {})})
    try:
        yield
    finally:
        store.STAMP.reset(token)


def input_digests(kwargs: dict) -> dict[str, str | None]:
    """{uri: sha256 of its published manifest, or None} for a stage's inputs: its `*_uri` and `*_uris`
    arguments (not `out_uri`; `*_uris` a list, or a dict of name -> URI). Recorded in what the stage
    publishes, so a rerun can tell that an input was made again since (a recomputed stage) and that
    this output is out of date."""
    uris = [u for k, v in sorted(kwargs.items()) if k != "out_uri" and k.endswith(("_uri", "_uris"))
            for u in (v if isinstance(v, (list, tuple)) else v.values() if isinstance(v, dict) else [v])
            if isinstance(u, str) and u]
    out = {}
    for uri in uris:
        try:
            out[uri] = store.read_manifest(uri).get("sha256")
        except store.NotPublished:  # e.g. a pretrained checkpoint folder: not the store's to track
            out[uri] = None
    return out


def is_stale(manifest: dict, module: str) -> bool | None:
    """True when the manifest was made by other code than this checkout's `module`; None when it does
    not say (published before manifests recorded code)."""
    made = manifest.get("code")
    if not made:
        return None
    return made.get("hash") != code_version(module)["hash"]
