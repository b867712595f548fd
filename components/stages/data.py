"""A file-backed family's problems, published per split with their quarantine files beside them."""
from __future__ import annotations

from components.config import RunConfig
from components.data.families import get_family
from components.data.families.custom import publish_problems
from components.artifacts import store
from components.artifacts.layout import Layout
from components.stages import Stage

STAGE = Stage.of(__name__, metrics="prepare_data")


def run(cfg: RunConfig, out_uri: str) -> dict:
    counts = publish_problems(get_family(cfg.family, cfg.seed), Layout.of(cfg))
    store.write_rows([], out_uri, {"stage": "prepare_data", "metrics": counts})  # the marker a rerun skips on
    return counts
