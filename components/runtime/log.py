"""One logger for library code: `log = get_logger(__name__)` in any component or stage.

Loggers live under "vstar". A stage running in a child process (components/runtime/isolation.py) writes
them to its log file; in the flow's own process Prefect's console handler shows them, and tasks add
Prefect's run logger on top (tasks/common.py)."""
from __future__ import annotations

import logging
import sys

from components.redact import RedactFilter

ROOT = "vstar"
_FORMAT = "%(asctime)s | %(levelname)-7s | %(name)s - %(message)s"


def get_logger(name: str) -> logging.Logger:
    root = logging.getLogger(ROOT)
    if not root.handlers:  # once per process; Prefect configures its own loggers, not this one
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter(_FORMAT, "%H:%M:%S"))
        handler.addFilter(RedactFilter())  # a URI in a message may carry credentials
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        root.propagate = False
    return logging.getLogger(f"{ROOT}.{name.removeprefix('components.')}")
