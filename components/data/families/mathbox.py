"""The `math` family: MATH-style competition problems (`problem`, `solution` with a `\\boxed{}`
answer, `level` "Level 3"), answers compared by math-verify (LaTeX parsed to sympy), never by
hand-written string rules. Named mathbox so that it cannot shadow the standard `math` module.

Difficulty = the MATH level (1-5), 1 when a row has none. The reference answer is an `answer`
column when the config maps one (MATH-500 has it), else the last \\boxed{} of the solution.
"""
from __future__ import annotations

import re

from components.data.families import register
from components.data.families.answers import last_boxed
from components.data.families.custom import FileFamily


@register("math")
class MATH(FileFamily):
    FIELDS = {"question": "problem", "solution": "solution", "level": "level"}
    VERIFIER = "math_verify"

    def raw_answer(self, values: dict) -> tuple[str | None, str, str]:
        if "answer" in values:  # MATH-500 has an answer column; MATH itself only the boxed solution
            return super().raw_answer(values)
        return last_boxed(values["solution"]), self.fields["solution"], "no \\boxed{} answer in the solution"

    def difficulty(self, values: dict, solution: str | None) -> int:
        m = re.search(r"\d+", str(values.get("level") or ""))  # "Level 3" or 3; MATH also has "Level ?"
        return int(m.group()) if m else 1
