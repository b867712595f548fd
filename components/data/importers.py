"""Existing step labels (PRM800K and Math-Shepherd formats) imported into the project's trace schema,
and our scored traces exported to those formats.

Schemas as published: PRM800K in the openai/prm800k README (one labelled solution per jsonl line),
Math-Shepherd in the peiyi9979/Math-Shepherd dataset card (`input` with a ` ки` tag after every
step, `label` the same text with `+` or `-` in place of each tag). Every row is validated; a bad row
is quarantined with its line and reason (or raises in strict mode), never dropped unseen.

PRM800K trace rules (one trace per line):
- Each step follows `chosen_completion`, or `human_completion` (a labeller's own +1 step, phase 1)
  when that is null. A chosen completion rated -1 is the first error: it ends the trace, later
  steps are after the error and are left out.
- A step with neither chosen nor human completion is where labelling stopped: in phase 2's
  found_error it holds the rated alternatives of the erroneous step, so the first completion rated
  -1 (the pre-generated step) ends the trace as its error; with no -1 there (give_up) the trace ends
  before that step.
- finish_reason: solution, found_error and give_up rows keep their rated steps (give_up: a correct
  but unfinished prefix); bad_problem rows are quarantined (the labeller reported the problem as
  broken), as are rows with a flagged step on the trace (the labeller did not know how to rate it).
- Ratings: +1 -> 1, -1 -> 0, 0 (neutral) by the `neutral` setting: correct -> 1 (Qwen, OpenR),
  wrong -> 0 (TRL's converter), skip -> None (an unlabelled step the PRM trainer leaves out). A null
  rating (it occurs in the released data, openai/prm800k issue 15) is an unlabelled step: None.
"""
from __future__ import annotations

import hashlib
import json
import re
from typing import Any, Callable

import fsspec

from components.config_scoring import LabelsConfig
from components.data.ingest import BadInput, Quarantine, read_records

__all__ = ["import_labels", "write_prm800k", "write_math_shepherd", "IMPORTERS", "EXPORTERS", "BadInput"]

TAG = "ки"  # Math-Shepherd's step tag
FINISH_REASONS = ("solution", "found_error", "give_up", "bad_problem")
NEUTRAL = {"correct": 1, "wrong": 0, "skip": None}
STEP_PREFIX = re.compile(r"^\s*[Ss]tep \d+:\s*")  # Math-Shepherd numbers its steps; our steps are bare
ANSWER = re.compile(r"(?:#\s*Answer\s*:?|Answer:)\s*(.+?)\s*$", re.S)  # PRM800K "# Answer\n\n5", arith "Answer: 5"


class _Bad(Exception):
    """A row-level fault: the dotted field it is in and why."""

    def __init__(self, field: str | None, reason: str):
        super().__init__(reason)
        self.field, self.reason = field, reason


# ---------------------------------------------------------------------------------------- the trace

def make_trace(problem: str, steps: list[str], labels: list[int | None], answer: str | None,
               correct: bool | None, uri: str, line: int) -> dict:
    """One row of the project's trace schema (what stages.train_prm reads)."""
    prompt = problem.strip() + "\n"
    first = next((i for i, y in enumerate(labels) if y == 0), -1)
    return {"problem_id": hashlib.sha1(prompt.encode()).hexdigest()[:12],  # as the arith family names its problems
            "prompt": prompt, "answer": answer, "completion": "\n".join(steps) + "\n", "steps": steps,
            "step_labels": labels, "step_scores": [None if y is None else float(y) for y in labels],
            "label_source": "labels", "label_first_error": first,
            "gold_first_error": None,  # human labels are not the exact step check
            "correct": correct, "difficulty": len(steps), "source_line": line, "source_uri": uri}


def answer_matches(steps: list[str], truth: str | None) -> bool | None:
    """The last step's final answer against the ground truth; None when either is unknown."""
    m = ANSWER.search(steps[-1]) if steps else None
    if truth is None or not m:
        return None
    got, want = m.group(1).strip(), str(truth).strip()
    if got.strip("$ .") == want.strip("$ ."):
        return True
    try:  # equivalent forms ("40,\!000" vs "40000", "\frac12" vs "0.5")
        from math_verify import parse, verify

        return bool(verify(parse(f"${want}$"), parse(f"${got}$")))
    except Exception:  # math_verify's timeouts need the main thread: elsewhere the answer stays unknown
        return None


# ----------------------------------------------------------------------------------------- PRM800K

def _get(obj: dict, key: str, path: str, kind: type | tuple, required: bool = True) -> Any:
    value = obj.get(key)
    if value is None or not required and value == "":
        if required:
            raise _Bad(path, "missing field")
        return None
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise _Bad(path, f"expected {names}, got {type(value).__name__}")
    if isinstance(value, (str, list)) and not (value.strip() if isinstance(value, str) else value):
        raise _Bad(path, "empty field")
    return value


def _prm800k_step(step: Any, at: str) -> tuple[list[dict], int | None, str | None]:
    """A validated step: its completions, the chosen index (or None) and the human step text (or None)."""
    if not isinstance(step, dict):
        raise _Bad(at, f"expected object, got {type(step).__name__}")
    completions = step.get("completions") or []
    if not isinstance(completions, list):
        raise _Bad(f"{at}.completions", f"expected list, got {type(completions).__name__}")
    for j, c in enumerate(completions):
        where = f"{at}.completions[{j}]"
        if not isinstance(c, dict):
            raise _Bad(where, f"expected object, got {type(c).__name__}")
        _get(c, "text", f"{where}.text", str)
        rating = c.get("rating")
        if rating is not None and (isinstance(rating, bool) or rating not in (-1, 0, 1)):
            raise _Bad(f"{where}.rating", f"rating not -1, 0, 1 or null: got {json.dumps(rating)}")
        if c.get("flagged") is not None and not isinstance(c["flagged"], bool):
            raise _Bad(f"{where}.flagged", f"flagged not true, false or null: got {json.dumps(c['flagged'])}")
    chosen = _get(step, "chosen_completion", f"{at}.chosen_completion", int, required=False)
    if chosen is not None and not 0 <= chosen < len(completions):
        raise _Bad(f"{at}.chosen_completion",
                   f"chosen index out of range: {chosen} with {len(completions)} completion(s)")
    human = step.get("human_completion")
    if isinstance(human, dict):  # phase 1 stores the labeller's step as an object with its text
        human = _get(human, "text", f"{at}.human_completion.text", str)
    elif human is not None and not (isinstance(human, str) and human.strip()):
        raise _Bad(f"{at}.human_completion", f"not an object with text, a string or null: {json.dumps(human)}")
    return completions, chosen, human


def read_prm800k(rec: dict, neutral: str) -> tuple[str, list[str], list[int | None], str | None]:
    """(problem, steps, labels, ground truth) of one PRM800K line, by the rules in the module doc."""
    question = _get(rec, "question", "question", dict)
    problem = _get(question, "problem", "question.problem", str)
    truth = _get(question, "ground_truth_answer", "question.ground_truth_answer", (str, int, float), required=False)
    label = _get(rec, "label", "label", dict)
    reason = _get(label, "finish_reason", "label.finish_reason", str)
    if reason not in FINISH_REASONS:
        raise _Bad("label.finish_reason", f"unknown finish_reason: {reason!r} (known: {', '.join(FINISH_REASONS)})")
    if reason == "bad_problem":
        raise _Bad("label.finish_reason", "bad_problem: the labeller reported the problem as broken")
    raw_steps = _get(label, "steps", "label.steps", list)
    parsed = [_prm800k_step(s, f"label.steps[{i}]") for i, s in enumerate(raw_steps)]  # the whole row is checked
    steps, labels = [], []
    for i, (completions, chosen, human) in enumerate(parsed):
        if chosen is None and human is not None:
            steps.append(human)
            labels.append(1)  # a labeller's own step is a +1 step by construction
            continue
        if chosen is None:  # labelling stopped here: its first -1 alternative is the error, if any
            chosen = next((j for j, c in enumerate(completions) if c.get("rating") == -1), None)
            if chosen is None:
                break
        c = completions[chosen]
        if c.get("flagged"):
            raise _Bad(f"label.steps[{i}].completions[{chosen}].flagged",
                       "flagged: the labeller could not rate this step")
        rating = c.get("rating")
        steps.append(c["text"])
        labels.append(None if rating is None else {1: 1, -1: 0, 0: NEUTRAL[neutral]}[rating])
        if rating == -1:
            break  # the first error: later steps come after it
    if not steps:
        raise _Bad("label.steps", "no rated step: the first step has no chosen completion")
    return problem, steps, labels, None if truth is None else str(truth)


# ------------------------------------------------------------------------------------ Math-Shepherd

def read_math_shepherd(rec: dict, neutral: str) -> tuple[str, list[str], list[int | None], str | None]:
    """(problem, steps, labels, None) of one Math-Shepherd record. `neutral` is unused: only + and -."""
    text = _get(rec, "input", "input", str)
    marked = _get(rec, "label", "label", str)
    n = text.count(TAG)
    if not n:
        raise _Bad("input", f"no step tag: no {TAG!r} in the input")
    if TAG in marked:
        raise _Bad("label", f"label still has step tags: {marked.count(TAG)} {TAG!r} where + or - belong")
    # With every tag as one character the label must line up with the input character by character.
    flat = text.replace(TAG, "\0")
    if len(marked) != len(flat):
        raise _Bad("label", f"step tag counts differ: the label has {len(marked)} characters where the input "
                            f"with its {n} step tags implies {len(flat)}")
    signs = [marked[i] for i, ch in enumerate(flat) if ch == "\0"]
    for k, s in enumerate(signs, 1):
        if s not in "+-":
            raise _Bad("label", f"not + or -: step {k} has {s!r} where the input has its step tag")
    at = next((i for i, (a, b) in enumerate(zip(flat, marked)) if a != b and a != "\0"), None)
    if at is not None:
        raise _Bad("label", f"label differs from input: at character {at} ({marked[at:at + 20]!r})")
    parts = text.split(TAG)
    if parts[-1].strip():
        raise _Bad("input", f"unlabelled text after the last step tag: {parts[-1].strip()[:40]!r}")
    head = re.search(r"[Ss]tep 1:", parts[0])
    if not head:
        raise _Bad("input", "no 'Step 1' before the first step tag: the question cannot be told from the first step")
    problem = parts[0][: head.start()]
    steps = [STEP_PREFIX.sub("", p).strip() for p in [parts[0][head.start():]] + parts[1:-1]]
    empty = [k for k, s in enumerate(steps, 1) if not s]
    if not problem.strip() or empty:
        raise _Bad("input", "empty question" if not problem.strip() else f"empty step: step {empty[0]}")
    return problem, steps, [1 if s == "+" else 0 for s in signs], None


IMPORTERS: dict[str, Callable[[dict, str], tuple]] = {"prm800k": read_prm800k, "math_shepherd": read_math_shepherd}
COLUMNS = {"prm800k": ["question", "label"], "math_shepherd": ["input", "label"]}  # required parquet columns


def import_labels(uri: str, cfg: LabelsConfig) -> tuple[list[dict], Quarantine]:
    """Every valid row of a labels file (jsonl, or parquet by extension) at any fsspec URI as a trace.
    File-level faults (not found, empty, not UTF-8) raise BadInput; bad rows are quarantined, or raise
    BadInput naming `uri:line: field` when cfg.strict."""
    if cfg.format not in IMPORTERS:
        raise ValueError(f"unknown labels format {cfg.format!r}; known: {', '.join(IMPORTERS)}")
    read = IMPORTERS[cfg.format]
    q = Quarantine(uri, strict=cfg.strict)
    rows = []
    for line, rec in read_records(uri, q, columns=COLUMNS[cfg.format]):
        try:
            problem, steps, labels, truth = read(rec, cfg.neutral)
        except _Bad as e:
            q.reject(line, e.field, e.reason, rec)
            continue
        # Math-Shepherd's last label is its own outcome: MC from the full solution is its answer check.
        correct = answer_matches(steps, truth) if cfg.format == "prm800k" else labels[-1] == 1
        rows.append(make_trace(problem, steps, labels, truth, correct, uri, line))
        q.accepted += 1
    return rows, q


# ---------------------------------------------------------------------------------------- exporters

def _write_lines(records: list[dict], uri: str) -> str:
    fs, path = fsspec.core.url_to_fs(uri)
    fs.makedirs(fs._parent(path), exist_ok=True)
    fs.pipe_file(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode())
    return uri


def _problem(row: dict, i: int) -> str:
    problem = row["prompt"].rstrip("\n")
    if not problem.strip() or not row.get("steps"):
        raise ValueError(f"row {i}: a trace needs a prompt and at least one step")
    return problem


def write_prm800k(rows: list[dict], uri: str) -> str:
    """Scored traces (prompt, steps, step_labels) as PRM800K phase-2 lines: label 1 -> +1, 0 -> -1,
    None -> null rating; the trace stops at its first error as PRM800K's does (the full solution
    stays in question.pre_generated_steps). The ground truth comes from `gold` or `answer`."""
    out = []
    for i, r in enumerate(rows):
        problem, labels = _problem(r, i), r["step_labels"]
        first = next((k for k, y in enumerate(labels) if y == 0), None)
        kept = r["steps"] if first is None else r["steps"][: first + 1]
        reason = "found_error" if first is not None else "give_up" if r.get("correct") is False else "solution"
        truth = r.get("gold", r.get("answer"))
        out.append({
            "labeler": "vstar-export", "timestamp": None, "generation": None,
            "is_quality_control_question": False, "is_initial_screening_question": False,
            "question": {"problem": problem, "ground_truth_solution": None,
                         "ground_truth_answer": None if truth is None else str(truth),
                         "pre_generated_steps": list(r["steps"]), "pre_generated_answer": None,
                         "pre_generated_verifier_score": None},
            "label": {"steps": [{"completions": [{"text": s, "rating": None if y is None else 1 if y else -1,
                                                   "flagged": None}],
                                 "human_completion": None, "chosen_completion": 0}
                                for s, y in zip(kept, labels)],
                      "total_time": None, "finish_reason": reason}})
    return _write_lines(out, uri)


def write_math_shepherd(rows: list[dict], uri: str) -> str:
    """Scored traces as Math-Shepherd records: `question Step 1: s1 ки\\nStep 2: s2 ки`, and the label
    text with + (label 1) or - (label 0) per tag. Math-Shepherd has no unlabelled step: None raises."""
    out = []
    for i, r in enumerate(rows):
        problem, labels = _problem(r, i), r["step_labels"]
        if any(y is None for y in labels) or len(labels) != len(r["steps"]):
            raise ValueError(f"row {i}: Math-Shepherd needs a + or - for every step, got labels {labels}")
        if any(TAG in s for s in [problem, *r["steps"]]):
            raise ValueError(f"row {i}: the text contains the step tag {TAG!r}")
        body = [f"Step {k}: {s} " for k, s in enumerate(r["steps"], 1)]
        out.append({"input": problem + " " + "\n".join(b + TAG for b in body),
                    "label": problem + " " + "\n".join(b + ("+" if y else "-") for b, y in zip(body, labels)),
                    "task": r.get("task", "vstar")})
    return _write_lines(out, uri)


EXPORTERS: dict[str, Callable[[list[dict], str], str]] = {"prm800k": write_prm800k,
                                                          "math_shepherd": write_math_shepherd}
