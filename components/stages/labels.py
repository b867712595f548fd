"""Human step labels in the trace schema, decontaminated against the evaluation problems; rejected
rows land in quarantine.jsonl beside the dataset. They come from a file (PRM800K / Math-Shepherd), or
from a labelling budget spent here: G_0's traces on problems set aside for it, labelled by the exact
step check and written as PRM800K (`labelled.prm800k.jsonl` beside the dataset) before the import."""
from __future__ import annotations

import math
import time

from components.config import RunConfig
from components.data.decontam import decontaminate
from components.data.families import get_family
from components.data.importers import import_labels, write_prm800k
from components.data.prompting import family_of
from components.artifacts import store
from components.artifacts.layout import QUARANTINE
from components.models import serving
from components.models.generation import Sampling
from components.stages import Stage

STAGE = Stage.of(__name__, accelerator=True, isolated=True,
              metrics="import_labels", summary=("{rows_accepted:,} of {rows_read:,} rows", "{rows_quarantined:,} quarantined",
                                                "{steps:,} steps"))


def label_budget(cfg: RunConfig, model_uri: str, uri: str) -> dict:
    """Spend the budget: k samples from G_0 on each set-aside problem, the first `budget` traces
    labelled by the family's step check, written to `uri` in PRM800K format."""
    fam, g, budget = family_of(cfg), cfg.generation, cfg.scoring.labels.budget
    problems = fam.set_aside(math.ceil(budget / g.k))
    outs = serving.Generator(cfg, model_uri, fam).generate(
        [p.prompt for p in problems], Sampling(n=g.k, temperature=g.temperature, top_p=g.top_p,
                                               max_tokens=g.max_tokens, seed=g.seed + 4242))
    rows = [{"prompt": p.prompt, "question": p.prompt, "gold": p.answer, "steps": fam.split_steps(s.text),
             "step_labels": fam.step_labels(p, s.text), "correct": fam.is_correct(p, s.text),
             "first_error": fam.first_error(p, s.text)}
            for p, samples in zip(problems, outs) for s in samples][:budget]
    rows = [r for r in rows if r["steps"]]  # an empty completion has no step to label
    write_prm800k(rows, uri)
    return {"budget_traces": len(rows), "budget_problems": len(problems),
            "budget_flawed_share": sum(r["first_error"] is not None and r["first_error"] >= 0 for r in rows) / max(1, len(rows))}


def run(cfg: RunConfig, out_uri: str, model_uri: str | None = None) -> dict:
    lab = cfg.scoring.labels
    t0 = time.perf_counter()
    spent: dict = {}
    source = lab.uri
    if lab.budget:
        if not model_uri:
            raise ValueError("scoring.labels.budget labels G_0's traces: the stage needs the bootstrap model")
        source = store.join(out_uri, "labelled.prm800k.jsonl")
        spent = label_budget(cfg, model_uri, source)
        lab = lab.model_copy(update={"format": "prm800k"})
    rows, q = import_labels(source, lab)
    fam = get_family(cfg.family, cfg.seed)
    rows, dropped = decontaminate(rows, fam.problems("eval"), cfg.decontam)
    q.write(store.join(out_uri, QUARANTINE))  # before the manifest: published means complete
    metrics = {**q.counts(), **spent, "decontam_dropped": len(dropped), "traces": len(rows),
               "steps": sum(len(r["steps"]) for r in rows),
               "unlabelled_steps": sum(y is None for r in rows for y in r["step_labels"]),
               "seconds": time.perf_counter() - t0}
    store.write_rows(rows, out_uri, {"stage": "import_labels", "source": source, "format": lab.format,
                                     "quarantine": q.reasons(), "metrics": metrics})
    return metrics
