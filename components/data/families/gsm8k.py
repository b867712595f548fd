"""The `gsm8k` family: grade-school word problems, GSM8K jsonl (`question`, `answer` = solution lines
ending in `#### N`).

    prompt      Natalia sold clips to 48 of her friends in April, ... How many clips ...?\n
    completion  Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n ... \n#### 72\n

Gold solutions keep the calculator annotations `<<48/2=24>>`: a model trained on them writes them
too, and every annotated step it writes can then be labelled by the cheap check below (89% of
GSM8K train reference steps carry one). Difficulty = number of reference steps.
"""
from __future__ import annotations

import ast
import math
import operator
import re

from components.data.families import Problem, register
from components.data.families.answers import NUMBER, normalize_number, numbers_equal
from components.data.families.custom import FileFamily

FINAL = re.compile(r"^####\s*(.*?)\s*$", re.M)
# The number written right after `>>` (not the `3` of `3/4`: a fraction is not checked against it).
ANNOTATION = re.compile(r"<<([^<>]*)>>(?:(" + NUMBER.pattern + r")(?!\d|[.,/]\d)(\s?%)?)?")
_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
        ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.USub: operator.neg, ast.UAdd: operator.pos}


def calculate(expr: str) -> float | None:
    """Value of an arithmetic expression (numbers, + - * / // %, parentheses), None if it is anything
    else. No eval(): the text comes from a model. Powers are left out so no input can be huge."""
    def ev(node):
        if isinstance(node, ast.Constant) and type(node.value) in (int, float):
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](ev(node.left), ev(node.right))
        if isinstance(node, ast.UnaryOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](ev(node.operand))
        raise ValueError(f"not arithmetic: {ast.dump(node)}")

    try:
        return float(ev(ast.parse(expr.replace(",", "").replace("$", "").strip(), mode="eval").body))
    except (SyntaxError, ValueError, ZeroDivisionError, TypeError, OverflowError):
        return None


def check_annotation(inner: str, shown: str | None = None, percent: bool = False) -> bool | None:
    """Is `<<inner>>` (e.g. `48/2=24`) right? None when it cannot be checked (no `=`, not arithmetic).
    A value that is not whole may be shown rounded or truncated to the digits it shows, as people and
    models write it (`<<10/3=3.33>>`, `<<2/3=0.66>>`, not `<<10/3=3.4>>`), and as a whole count either
    way (`<<7/2=3>>` boxes filled, `<<7/2=4>>` boxes needed). A whole value must be written exactly
    (`<<48/2=25>>` is wrong). `shown`, the number written right after
    `>>`, must equal the result (`percent`: it is followed by `%` and may show a share of 1 as a
    percent, `<<1/2=0.5>>50%`, as well as `<<100-15=85>>85%`): a
    step that misquotes its own calculator is wrong too."""
    expr, sep, result = inner.rpartition("=")
    value, r = (calculate(expr), calculate(result)) if sep else (None, None)
    if value is None or r is None:
        return None
    plain = normalize_number(result, whole=True)  # a plain number shows its precision, `3/4` is exact
    if plain is None or "/" in result or numbers_equal(value, r) or numbers_equal(value, round(value)):
        ok = numbers_equal(value, r)  # a fraction, or a whole value: nothing to round
    else:
        scale = 10 ** len(plain.partition(".")[2])
        ways = ((math.floor, math.ceil) if scale == 1 else  # a whole count, down or up
                (lambda x: math.floor(x + 0.5), math.trunc))  # decimals: rounded half up, or cut off
        ok = any(numbers_equal(f(value * scale) / scale, r) for f in ways)
    if shown is not None and normalize_number(shown) is not None:
        quoted = float(normalize_number(shown))  # with `%`: in percent (`<<..=75>>75%`) or as a share of 1
        ok = ok and (numbers_equal(quoted, r) or percent and numbers_equal(quoted / 100, r))
    return ok


def annotation_labels(steps: list[str]) -> list[int | None]:
    """1: every annotation in the step checks out and none failed before; 0: the first step with a
    wrong annotation and every step after it; None: nothing to check (unannotated or uncheckable)."""
    labels: list[int | None] = []
    failed = False
    for step in steps:
        checks = [check_annotation(inner, shown or None, bool(pct)) for inner, shown, pct in ANNOTATION.findall(step)]
        failed = failed or False in checks
        labels.append(0 if failed else 1 if checks and all(c is True for c in checks) else None)
    return labels


@register("gsm8k")
class GSM8K(FileFamily):
    FIELDS = {"question": "question", "solution": "answer"}
    VERIFIER = "numeric"

    def raw_answer(self, values: dict) -> tuple[str | None, str, str]:
        if "answer" in values:  # an answer column of its own, when the config maps one
            return super().raw_answer(values)
        finals = FINAL.findall(values["solution"])
        return (finals[-1] if finals else None), self.fields["solution"], "no final answer line: expected '#### N'"

    def step_labels(self, p: Problem, completion: str) -> list[int | None]:
        return annotation_labels(self.split_steps(completion))

    def calculator_labels(self, steps: list[str]) -> list[int | None]:
        """The same check as step_labels: it only ever read the trace's own calculator annotations."""
        return annotation_labels(steps)
