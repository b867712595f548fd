"""File-backed problem families: problems read from jsonl or parquet at any fsspec URI.

`custom` is the general one (field mapping and verifier from config); `gsm8k` and `math` are the
same machinery with their own default fields, reference-answer rules and step checks. Rows that
cannot be used are quarantined and counted per split (`fam.quarantine`), or raise in strict mode.

    prompt      <question>\n
    completion  one step per line, ending with an answer line (`#### N`, `Answer: x`, `\\boxed{x}`)

These families have no exact step truth: first_error is None ("no gold") and step_labels are None
unless the family has a cheap partial check (gsm8k's calculator annotations).

How answers are read from text and checked against a reference (numbers, markers, \\boxed{},
math-verify) lives in components/data/families/answers.py, shared with gsm8k and math.
"""
from __future__ import annotations

import hashlib
import json
import re

from components.artifacts import store
from components.artifacts.layout import QUARANTINE, Layout
from components.config import ConfigError
from components.config_sections import FamilyConfig
from components.data.families import Problem, answer_end, register
from components.data.families.answers import (ANSWER_LINE, NUMBER, _mv_timeout, check_reference, last_boxed,
                                              marked_answer, math_equal, math_parse, normalize_number,
                                              numbers_equal, split_answer_steps)
from components.data.ingest import BadInput, Quarantine, field, read_records, reject_long

# ---------------------------------------------------------------------------------- the family

KNOWN_FIELDS = ("question", "answer", "solution", "id", "level")


@register("custom")
class FileFamily:
    """Problems from files. Subclasses set FIELDS (our name -> default column), VERIFIER, and may
    override raw_answer() (where a row's answer is) and step_labels()."""
    exact_steps = False  # no step truth, or a partial one (gsm8k's calculator annotations)
    FIELDS = {"question": "question", "answer": "answer"}
    OPTIONAL = ("level",)  # read when present, never a reason to reject a row
    VERIFIER = "numeric"

    def __init__(self, cfg: FamilyConfig, seed: int = 0):
        self.cfg, self.seed, self.data = cfg, seed, cfg.data
        unknown = sorted(set(cfg.data.fields) - set(KNOWN_FIELDS))
        if unknown:
            raise ConfigError(f"family.data.fields: unknown name(s) {', '.join(unknown)}; "
                              f"known: {', '.join(KNOWN_FIELDS)}")
        self.fields = {**self.FIELDS, **cfg.data.fields}
        self.verifier = cfg.data.verifier or self.VERIFIER
        self.quarantine: dict[str, Quarantine] = {}
        self._splits: dict[str, list[Problem]] = {}

    # ---- loading ---------------------------------------------------------------------------------

    def problems(self, split: str) -> list[Problem]:
        if split not in ("bootstrap", "train", "eval"):
            raise ValueError(f"unknown split {split!r}; expected one of bootstrap, train, eval")
        if split not in self._splits:
            if split == "bootstrap":  # train problems whose reference solution G_0 learns from
                out = [p for p in self.problems("train") if p.meta.get("solution")][: self.data.bootstrap_size]
            else:
                out = self._load(split)
                if split == "eval":
                    out = out[: self.data.eval_size]
            self._splits[split] = out
        return list(self._splits[split])

    def _load(self, split: str) -> list[Problem]:
        uri = self.data.train_uri if split == "train" else self.data.eval_uri
        if not uri:
            raise BadInput(f"family.data.{split}_uri: not set; family {self.cfg.name!r} reads its problems from a file")
        q = self.quarantine[split] = Quarantine(uri, self.data.strict)
        required = {k: c for k, c in self.fields.items() if k not in self.OPTIONAL}
        out: list[Problem] = []
        first_line: dict[str, int] = {}
        for line, rec in read_records(uri, q, columns=list(required.values())):
            values = {}
            for name, col in required.items():
                values[name] = field(rec, col, line, q)
                if values[name] is None:
                    break
            else:
                values.update({k: rec.get(c) for k, c in self.fields.items() if k in self.OPTIONAL})
                p = self._problem(values, rec, line, q)
                if p is None:
                    continue
                if p.id in first_line:  # the same id twice would mix two problems' samples and scores
                    what = "id" if "id" in self.fields else "question"
                    q.reject(line, self.fields[what], f"duplicated {what}: {p.id!r} also at line {first_line[p.id]}", rec)
                    continue
                first_line[p.id] = line
                q.accepted += 1
                out.append(p)
        if self.data.max_prompt_tokens:
            out = reject_long(out, None, self.data.max_prompt_tokens, q, self.fields["question"])
        if not out:
            raise BadInput(f"{uri}: no usable rows ({q.counts()['rows_quarantined']} quarantined: {q.reasons()})")
        return out

    def _problem(self, values: dict, rec: dict, line: int, q: Quarantine) -> Problem | None:
        ref = self.reference(values, rec, line, q)
        if ref is None:
            return None
        answer, solution = ref
        question = values["question"].strip()
        pid = str(values["id"]) if "id" in values else hashlib.sha1(question.encode()).hexdigest()[:12]
        meta = {"question": question, "solution": solution, "line": line, "uri": q.uri,
                **{k: v for k, v in values.items() if k not in ("question", "solution", "id", "answer")}}
        return Problem(id=pid, prompt=question + "\n", answer=answer, difficulty=self.difficulty(values, solution),
                       meta=json.loads(json.dumps(meta, default=str)))

    def raw_answer(self, values: dict) -> tuple[str | None, str, str]:
        """(the row's reference answer as written, the column it comes from, why it is None)."""
        return values["answer"], self.fields["answer"], ""

    def reference(self, values: dict, rec: dict, line: int, q: Quarantine) -> tuple[str, str | None] | None:
        """(canonical answer, reference solution or None), or None after rejecting the row."""
        raw, col, why = self.raw_answer(values)
        answer, why = check_reference(self.verifier, raw) if raw is not None else (None, why)
        if answer is None:
            q.reject(line, col, why, rec)
            return None
        return answer, values.get("solution")

    def difficulty(self, values: dict, solution: str | None) -> int:
        return max(1, len(self.solution_steps(solution))) if solution else 1

    # ---- reading completions ---------------------------------------------------------------------

    def solution_steps(self, solution: str) -> list[str]:
        """The reference solution's steps without its answer line."""
        return [s for s in split_answer_steps(solution, "\n") if not ANSWER_LINE.search(s)]

    def gold_solution(self, p: Problem) -> str:
        """The reference solution laid out as the model writes: its lines (how datasets write steps)
        joined by the step separator, ending with an answer line."""
        steps = split_answer_steps(p.meta.get("solution") or "", "\n")
        if not steps or not ANSWER_LINE.search(steps[-1]):
            steps.append(self.answer_line(p.answer))
        return self.steps_text(steps)

    def answer_line(self, answer: str) -> str:
        if self.cfg.prompt.answer_line:
            return self.cfg.prompt.answer_line.replace("{answer}", answer)
        return f"The answer is $\\boxed{{{answer}}}$." if self.verifier == "math_verify" else f"Answer: {answer}"

    def split_steps(self, completion: str) -> list[str]:
        """Non-empty steps (lines, or blocks with step_separator "\\n\\n"), right-stripped, up to and
        including the first answer line."""
        return split_answer_steps(completion, self.cfg.prompt.step_separator)

    def answer_end(self, completion: str) -> int | None:
        return answer_end(completion, self.cfg.prompt.step_separator, ANSWER_LINE.search)

    def extract_answer(self, completion: str) -> str | None:
        text = self.steps_text(self.split_steps(completion))
        ans = last_boxed(text) or marked_answer(text)
        if self.verifier != "numeric":
            return ans
        n = normalize_number(ans) if ans else None
        if n is None and self.data.last_number_fallback:
            nums = NUMBER.findall(text)
            n = normalize_number(nums[-1]) if nums else None
        return n

    def is_correct(self, p: Problem, completion: str) -> bool:
        if self.verifier == "math_verify":
            return math_equal(p.answer, self.steps_text(self.split_steps(completion)))
        ans = self.extract_answer(completion)
        if ans is None:
            return False
        return numbers_equal(ans, p.answer) if self.verifier == "numeric" else ans.strip() == p.answer

    def same_answer(self, a: str, b: str) -> bool:
        """By the family's verifier, as is_correct compares with the reference."""
        if self.verifier == "math_verify":
            from math_verify import verify

            pa, pb = math_parse(a, boxed=True), math_parse(b, boxed=True)
            return a.strip() == b.strip() or bool(pa and pb) and verify(pa, pb, timeout_seconds=_mv_timeout())
        if self.verifier == "numeric":
            return numbers_equal(a, b)
        return a.strip() == b.strip()

    def first_error(self, p: Problem, completion: str) -> None:
        return None  # no exact step truth for problems from files

    def step_labels(self, p: Problem, completion: str) -> list[int | None]:
        return [None] * len(self.split_steps(completion))

    def prefix_text(self, p: Problem, steps: list[str], i: int) -> str:
        return p.prompt + self.steps_text(steps[: i + 1])

    def steps_text(self, steps: list[str]) -> str:
        return "".join(s + self.cfg.prompt.step_separator for s in steps)


# ------------------------------------------------------------------------------------ publishing

def _metric_key(text: str) -> str:
    return re.sub(r"[^\w.\- :/]", "_", text)  # MLflow accepts only these in metric names


def publish_problems(fam, layout: Layout) -> dict[str, int]:
    """Publish each split's accepted problems where the store layout puts them, with the split's
    rejected rows in quarantine.jsonl beside them; returns counts per split and reason.
    Inputs may be read-only (shared data), so nothing is ever written next to an input file."""
    counts: dict[str, int] = {}
    for split in ("train", "eval", "bootstrap"):
        problems = fam.problems(split)
        uri = layout.data(fam.cfg.model_dump(mode="json"), split)
        q = getattr(fam, "quarantine", {}).get(split)
        split_counts = {"rows_published": len(problems)}
        if q is not None:  # bootstrap's rejects are train's: counted once, under train
            split_counts.update({**q.counts(), **{f"quarantined/{k}": v for k, v in q.reasons().items()}})
            fs, path = store.fs_for(uri)
            qpath = store.join(path, QUARANTINE)
            if fs.exists(qpath):
                fs.rm(qpath)  # a stale quarantine from an earlier publish would count twice
            q.write(store.join(uri, QUARANTINE))
        rows = [{"problem_id": p.id, "prompt": p.prompt, "answer": p.answer, "difficulty": p.difficulty,
                 "meta": json.dumps(p.meta)} for p in problems]
        store.write_rows(rows, uri, {"kind": "problems", "split": split, "counts": split_counts})
        counts.update({_metric_key(f"{split}/{k}"): v for k, v in split_counts.items()})
    return counts
