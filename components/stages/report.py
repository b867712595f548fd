"""The round's HTML trace report: what the filter saw and why it decided, with PRM scores beside."""
from __future__ import annotations

from components.config import RunConfig
from components.evaluation.trace_report import trace_report
from components.stages import Stage

STAGE = Stage.of(__name__,
              isolated=True, metrics="trace_report", summary=("{report_traces:,} traces shown",))


def run(cfg: RunConfig, out_uri: str, scored_uri: str, filtered_uri: str, round_idx: int,
        prm_uri: str | None = None) -> dict:
    return trace_report(cfg, scored_uri, filtered_uri, out_uri, round_idx, prm_uri=prm_uri)
