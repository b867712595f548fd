"""What the loop benchmarks share: their config, the percent cell and the JSON file they write beside their table."""
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


def config_or_exit(path: str, overrides: list[str]):
    """The benchmark's config; a bad one ends the run with the loader's message (file, field), no traceback."""
    from components.checks import load_config
    from components.config import ConfigError

    try:
        return load_config(path, overrides)
    except ConfigError as e:
        raise SystemExit(str(e)) from None


def write_report(out: str | Path, report: dict, print_table) -> dict:
    """A benchmark's report: its JSON at `out`, its table printed, the path said."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    print_table(report)
    print(f"results: {out}")
    return report
