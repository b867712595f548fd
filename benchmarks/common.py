"""What the loop benchmarks share: the percent cell and the JSON file they write beside their table."""
from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path


def pct(x) -> str:
    return "-" if x is None or x != x else f"{100 * x:.0f}%"


def write_results(out: str, config: str, overrides: list[str], results: dict) -> None:
    """The run's results with what they were measured on (machine, date, config and overrides)."""
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps({"config": config, "overrides": overrides,
                                     "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
                                     "date": time.strftime("%Y-%m-%d %H:%M"), "results": results}, indent=1))
    print(f"results: {out}")
