"""Existing human step labels (PRM800K / Math-Shepherd) in the trace schema, decontaminated against
the evaluation problems; rejected rows land in quarantine.jsonl beside the dataset."""
from __future__ import annotations

from components.config import RunConfig
from components.data.decontam import decontaminate
from components.data.families import get_family
from components.data.importers import import_labels
from components.infra import store
from components.stages import Stage

STAGE = Stage("import-labels", reads=(), publishes="labels", metrics="import_labels")


def run(cfg: RunConfig, out_uri: str) -> dict:
    lab = cfg.scoring.labels
    rows, q = import_labels(lab.uri, lab)
    fam = get_family(cfg.family, cfg.seed)
    rows, dropped = decontaminate(rows, fam.problems("eval"), cfg.decontam)
    q.write(store.join(out_uri, "quarantine.jsonl"))  # before the manifest: published means complete
    metrics = {**q.counts(), "decontam_dropped": len(dropped), "traces": len(rows),
               "steps": sum(len(r["steps"]) for r in rows),
               "unlabelled_steps": sum(y is None for r in rows for y in r["step_labels"])}
    store.write_rows(rows, out_uri, {"stage": "import_labels", "source": lab.uri, "format": lab.format,
                                     "quarantine": q.reasons(), "metrics": metrics})
    return metrics
