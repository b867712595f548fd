"""Human step labels in the trace schema, decontaminated against the evaluation problems; rejected
rows land in quarantine.jsonl beside the dataset. They come from a file (PRM800K / Math-Shepherd), or
from a labelling budget spent here: G_0's traces on problems set aside for it, labelled by the exact
step check and written as PRM800K (`labelled.prm800k.jsonl` beside the dataset) before the import."""
from __future__ import annotations

import math
import time
from collections import deque

from components.config import RunConfig
from components.data.decontam import decontaminate
from components.data.families import get_family
from components.data.importers import import_labels, write_prm800k
from components.data.prompting import family_of
from components.infra import store
from components.models import serving
from components.models.generation import Sampling
from components.stages import Stage

STAGE = Stage("import-labels", reads=("model",), publishes="labels", accelerator=True, isolated=True,
              metrics="import_labels")


# G_0 samples this many times the budget, so that `balanced` finds right and wrong answers to pair
# at most lengths (sampling is cheap next to the labelling the budget stands for).
POOL = 6


def label_budget(cfg: RunConfig, model_uri: str, uri: str) -> dict:
    """Spend the budget: k samples from G_0 on problems set aside for labelling, `budget` of them
    chosen by `balanced`, labelled by the family's step check, written to `uri` in PRM800K format."""
    fam, g, budget = family_of(cfg), cfg.generation, cfg.scoring.labels.budget
    problems = fam.set_aside(math.ceil(POOL * budget / g.k))
    outs = serving.Generator(cfg, model_uri, fam).generate(
        [p.prompt for p in problems], Sampling(n=g.k, temperature=g.temperature, top_p=g.top_p,
                                               max_tokens=g.max_tokens, seed=g.seed + 4242))
    drawn = [(p, s.text) for p, samples in zip(problems, outs) for s in samples if fam.split_steps(s.text)]
    chosen = balanced([(p.difficulty, fam.is_correct(p, text)) for p, text in drawn], budget)
    rows = [{"prompt": p.prompt, "question": p.prompt, "gold": p.answer, "steps": fam.split_steps(text),
             "step_labels": fam.step_labels(p, text), "correct": fam.is_correct(p, text),
             "first_error": fam.first_error(p, text)} for p, text in (drawn[i] for i in chosen)]
    write_prm800k(rows, uri)
    return {"budget_traces": len(rows), "budget_problems": len({r["prompt"] for r in rows}),
            "budget_drawn": len(drawn), "budget_right_share": sum(r["correct"] for r in rows) / max(1, len(rows)),
            "budget_flawed_share": sum(r["first_error"] is not None and r["first_error"] >= 0 for r in rows) / max(1, len(rows))}


def balanced(traces: list[tuple[int, bool]], budget: int) -> list[int]:
    """Which traces to label, given each one's (difficulty, right answer): per difficulty as many
    right- as wrong-answer traces, levels taking turns, in drawing order; when the pairs run out, the
    rest in drawing order. Labelling the first traces drawn gave G_0's mostly wrong long traces
    (74-90% flawed), from which a PRM learns that a late step is a wrong one (docs/benchmarks.md)."""
    queues: dict[tuple[int, bool], deque[int]] = {}
    for i, key in enumerate(traces):
        queues.setdefault(key, deque()).append(i)
    levels = sorted({d for d, _ in traces})
    chosen: list[int] = []
    while len(chosen) < budget:
        pairs = [(queues[(d, True)].popleft(), queues[(d, False)].popleft()) for d in levels
                 if queues.get((d, True)) and queues.get((d, False))]
        if not pairs:
            break
        chosen += [i for pair in pairs for i in pair][: budget - len(chosen)]
    taken = set(chosen)
    chosen += [i for i in range(len(traces)) if i not in taken][: budget - len(chosen)]
    return sorted(chosen)


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
    q.write(store.join(out_uri, "quarantine.jsonl"))  # before the manifest: published means complete
    metrics = {**q.counts(), **spent, "decontam_dropped": len(dropped), "traces": len(rows),
               "steps": sum(len(r["steps"]) for r in rows),
               "unlabelled_steps": sum(y is None for r in rows for y in r["step_labels"]),
               "seconds": time.perf_counter() - t0}
    store.write_rows(rows, out_uri, {"stage": "import_labels", "source": source, "format": lab.format,
                                     "quarantine": q.reasons(), "metrics": metrics})
    return metrics
