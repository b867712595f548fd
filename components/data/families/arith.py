"""The `arith` family: a start value and a chain of small ops, solved one line per op.

    prompt      57 +5 %10 ^40\n
    completion  57+5=62\n62%10=2\n2^40=40\nAnswer: 40\n

Difficulty = number of ops. Every intermediate value stays in [0, max_value]. `%10`, `^c` (max with
c) and `*0` forget their input, so a wrong step before them can still reach the right answer: that
is what lets outcome-only filtering keep flawed traces while the step check (first_error) rejects them.
"""
from __future__ import annotations

import hashlib
import operator
import random
import re

from components.config_sections import FamilyConfig
from components.data.families import Problem, answer_end, register

APPLY = {"+": operator.add, "-": operator.sub, "*": operator.mul, "%": operator.mod, "^": max}
ANSWER = "Answer:"
# Built in this order, each excluding the prompts of those before it: the model never trains on an eval
# prompt, and bootstrap never hands out the gold solution of a train problem.
SPLITS = ("eval", "train", "bootstrap")
# Draws in a row that may fail (duplicate or excluded prompt) before a split is taken to be exhausted:
# with it every split ends after at most size * (MAX_MISSES + 1) draws, even when the space is tiny.
MAX_MISSES = 2000


def make_problem(start: int, ops: list[list]) -> Problem:
    """A Problem from its start value and ops, e.g. make_problem(57, [["+", 5], ["%", 10]])."""
    ops = [[sym, int(c)] for sym, c in ops]
    value = start
    for sym, c in ops:
        value = APPLY[sym](value, c)
    prompt = " ".join([str(start)] + [f"{sym}{c}" for sym, c in ops]) + "\n"
    return Problem(id=hashlib.sha1(prompt.encode()).hexdigest()[:12], prompt=prompt, answer=str(value),
                   difficulty=len(ops), meta={"start": start, "ops": ops})


def _applied(sym: str, a: int, c: int) -> int | None:
    """`a<sym>c` as a generator's step states it; None where it is undefined (`%0`): never its result."""
    try:
        return APPLY[sym](a, c)
    except ZeroDivisionError:
        return None


def gold_lines(p: Problem) -> list[str]:
    """The gold steps: one `a<op>c=r` line per op, then the answer line."""
    lines, value = [], p.meta["start"]
    for sym, c in p.meta["ops"]:
        result = APPLY[sym](value, c)
        lines.append(f"{value}{sym}{c}={result}")
        value = result
    return lines + [f"{ANSWER} {value}"]


# A step as the model writes it: `a<op>c=r` (what the calculator below recomputes).
EQUATION = re.compile(r"(\d+)([-+*%^])(\d+)=(\d+)")


def _parse_answer(line: str) -> str | None:
    m = re.fullmatch(r"Answer:\s*(-?\d+)\s*", line)
    return str(int(m.group(1))) if m else None


@register("arith")
class Arith:
    exact_steps = True  # first_error below is the exact check

    def __init__(self, cfg: FamilyConfig, seed: int = 0):
        self.cfg, self.seed = cfg, seed
        self._splits: dict[str, list[Problem]] = {}

    # ---- problem generation ----------------------------------------------------------------------

    def _choices(self, a: int) -> list[tuple[str, range]]:
        """(symbol, valid constants) for each allowed op kind that can keep `a` in range."""
        m = self.cfg.max_value
        kinds = {
            "add": ("+", range(1, min(9, m - a) + 1)),
            "sub": ("-", range(1, min(9, a) + 1)),
            "mul": ("*", range(2, 10 if a == 0 else min(9, m // a) + 1)),
            "mod10": ("%", range(10, 11)),
            "max": ("^", range(10, m + 1)),
            "mul0": ("*", range(0, 1)),
        }
        return [kinds[k] for k in dict.fromkeys(self.cfg.operations) if len(kinds[k][1])]

    def _draw(self, rng: random.Random, n_ops: int) -> Problem | None:
        """A random problem with n_ops ops: kind uniform among valid kinds, then constant uniform.
        None when some value has no valid op (only possible with a restricted `operations`)."""
        start = value = rng.randint(0, self.cfg.max_value)
        ops = []
        for _ in range(n_ops):
            choices = self._choices(value)
            if not choices:
                return None
            sym, consts = rng.choice(choices)
            c = rng.choice(consts)
            ops.append([sym, c])
            value = APPLY[sym](value, c)
        return make_problem(start, ops)

    def _collect(self, rng, levels, size, exclude: set[str], distinct: bool) -> list[Problem]:
        """Up to `size` problems with ops drawn uniformly from `levels`, none of whose prompts is in
        `exclude`. Stops early after MAX_MISSES failed draws in a row: the space is used up."""
        out, seen, misses = [], set(), 0
        while len(out) < size and misses <= MAX_MISSES:
            p = self._draw(rng, rng.choice(levels))
            if p is None or p.prompt in exclude or (distinct and p.prompt in seen):
                misses += 1
                continue
            misses = 0
            out.append(p)
            seen.add(p.prompt)
        return out

    def problems(self, split: str) -> list[Problem]:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
        if split not in self._splits:
            taken = {p.prompt for s in SPLITS[: SPLITS.index(split)] for p in self.problems(s)}
            rng = random.Random(f"arith/{self.seed}/{split}")  # str seeds hash stably across processes
            c = getattr(self.cfg, split)
            if split == "eval":
                out = [p for level in range(c.min_ops, c.max_ops + 1)
                       for p in self._collect(rng, [level], c.per_level, taken, distinct=True)]
            else:
                levels = list(range(c.min_ops, c.max_ops + 1))
                out = self._collect(rng, levels, c.size, taken, distinct=split == "train")
            self._splits[split] = out
        return list(self._splits[split])  # a copy: callers may shuffle it without touching the cache

    def set_aside(self, n: int) -> list[Problem]:
        """`n` problems at the train split's lengths, none of them in any split: what a labelling
        budget is spent on (deterministic given the config, seed and n)."""
        taken = {p.prompt for s in SPLITS for p in self.problems(s)}
        rng = random.Random(f"arith/{self.seed}/set-aside")
        return self._collect(rng, list(range(self.cfg.train.min_ops, self.cfg.train.max_ops + 1)), n, taken, distinct=True)

    # ---- reading completions ---------------------------------------------------------------------

    def gold_solution(self, p: Problem) -> str:
        return self.steps_text(gold_lines(p))

    def split_steps(self, completion: str) -> list[str]:
        """Non-empty lines, right-stripped, up to and including the first answer line."""
        steps = []
        for line in completion.split("\n"):
            line = line.rstrip()
            if not line:
                continue
            steps.append(line)
            if line.startswith(ANSWER):
                break  # whatever the model writes after its answer is not part of the trace
        return steps

    def extract_answer(self, completion: str) -> str | None:
        steps = self.split_steps(completion)
        return _parse_answer(steps[-1]) if steps and steps[-1].startswith(ANSWER) else None

    def is_correct(self, p: Problem, completion: str) -> bool:
        return self.extract_answer(completion) == p.answer

    def same_answer(self, a: str, b: str) -> bool:
        return a == b  # extract_answer already normalises (`040` -> `40`)

    def first_error(self, p: Problem, completion: str) -> int | None:
        """Gold step label: the index of the first wrong step, -1 if the whole trace is right.

        Step j < n_ops must equal the gold line exactly: earlier steps were right, so the value
        carried in must be the gold one. Step n_ops must be the answer line with the gold answer
        (normalised, so `Answer: 040` is right). A trace that is right as far as it goes but ends
        early (cut off, or no answer line) has no wrong step and no answer: None, "no first error to
        name". ProcessBench-style F1 leaves it out (an index past the last step is one no labeller can
        predict, and -1 would call an unfinished trace right); step_labels marks its present steps right.
        """
        gold = gold_lines(p)
        steps = self.split_steps(completion)
        for j, line in enumerate(steps):
            # j never exceeds n_ops: split_steps stops at the answer line, and a non-answer line
            # at n_ops (an extra step) is already wrong here.
            ok = (line == gold[j]) if j < len(gold) - 1 else (_parse_answer(line) == p.answer)
            if not ok:
                return j
        return -1 if len(steps) == len(gold) else None

    def step_labels(self, p: Problem, completion: str) -> list[int]:
        n, err = len(self.split_steps(completion)), self.first_error(p, completion)
        return [1] * n if err is None or err < 0 else [1] * err + [0] * (n - err)

    def calculator_labels(self, steps: list[str]) -> list[int | None]:
        """What a calculator sees, reading the trace alone (no problem, no answer): a step is wrong when
        its result is not what `a<op>c` computes (or `a<op>c` is undefined: `%0`), or when it starts
        from another value than the result before it, or when the answer line is not the last result;
        every step after it too. A line
        that is no equation (e.g. `64=64`) is left unchecked (None). It cannot tell whether a step
        applies the op the problem asks for next: a skipped, repeated or misread op passes."""
        labels: list[int | None] = []
        last, failed = None, False
        for line in steps:
            if failed:
                labels.append(0)
                continue
            m, answer = EQUATION.fullmatch(line), _parse_answer(line) if line.startswith(ANSWER) else None
            if m:
                a, sym, c, r = int(m[1]), m[2], int(m[3]), int(m[4])
                failed = _applied(sym, a, c) != r or (last is not None and a != last)
                last = r
            elif answer is not None and last is not None:
                failed = int(answer) != last
            else:
                labels.append(None)
                last = None  # what the next step should start from is unknown now
                continue
            labels.append(0 if failed else 1)
        return labels

    def prefix_text(self, p: Problem, steps: list[str], i: int) -> str:
        return p.prompt + self.steps_text(steps[: i + 1])

    def steps_text(self, steps: list[str]) -> str:
        return "".join(s + "\n" for s in steps)

    def answer_end(self, completion: str) -> int | None:
        return answer_end(completion, "\n", lambda line: line.startswith(ANSWER))
