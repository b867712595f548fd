"""LLM-as-judge step labels (ProcessBench protocol: Zheng et al. 2024, arXiv 2412.06559).

A judge reads the problem and the numbered steps and names the first wrong one (`first_error` mode),
or says yes/no for each step given the earlier ones (`per_step` mode). Verdicts are parsed strictly:
one the parser cannot read is counted and leaves the trace unlabelled (None), never read as correct.

Judges sit behind one call, `complete(prompts, max_tokens, temperature) -> list[str | None]` (None: the
prompt did not fit the judge's context): the clients, a local checkpoint or a remote endpoint, are in
components/labeling/judge_clients.py. With no instruct model on CPU, the loop trains a tiny judge of
its own on gold solutions with planted errors (`judge_examples`, `train_judge`).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from components.config_scoring import JudgeConfig
from components.runtime.log import get_logger
from components.labeling.step_labels import from_first_error

log = get_logger(__name__)

# A template the char-level tiny model can read: every character is in its vocabulary (digits, spaces,
# newlines, `+-*%^=` and the word `Answer:`), and prompts stay far below its 128 positions. Use with
# step_line=TINY_STEP_LINE and none_verdict="-1".
TINY_FIRST_ERROR_TEMPLATE = "{problem}\n{steps}\n=="
TINY_STEP_LINE = "{index} {step}"
TINY_JUDGE = {"first_error_template": TINY_FIRST_ERROR_TEMPLATE, "step_line": TINY_STEP_LINE, "none_verdict": "-1"}


# ------------------------------------------------------------------------------------------ prompts

def numbered_steps(cfg: JudgeConfig, steps: list[str]) -> str:
    return "\n".join(cfg.step_line.format(index=i + 1, step=s) for i, s in enumerate(steps))


def judge_prompt(cfg: JudgeConfig, problem_text: str, steps: list[str]) -> str:
    """`first_error` mode: one prompt per trace, steps numbered from 1."""
    return cfg.first_error_template.format(problem=problem_text.strip(), steps=numbered_steps(cfg, steps))


def per_step_prompts(cfg: JudgeConfig, problem_text: str, steps: list[str]) -> list[str]:
    """`per_step` mode: one prompt per step, with the steps before it as context."""
    return [cfg.per_step_template.format(problem=problem_text.strip(), steps=numbered_steps(cfg, steps[:i]),
                                         index=i + 1, step=s) for i, s in enumerate(steps)]


# ------------------------------------------------------------------------------------------ parsing

_NONE = r"none|no\s+errors?|no\s+incorrect\s+steps?|all\s+(?:the\s+)?(?:steps\s+are\s+)?correct"
# The verdict must open the first line (after markdown and a short lead-in) and be followed by the end
# of the line, punctuation or "is": "57+5=62" or "1 57+5=62" (a base model babbling the task's own
# format) must not read as "step 57" or "step 1".
_FIRST_ERROR = re.compile(
    r"^[\s*_`#>]*(?:verdict\s*:\s*)?"
    r"(?:the\s+)?(?:first\s+)?(?:(?:incorrect|wrong|erroneous)\s+step\s+is\s*:?\s*)?"
    r"(?:(?:step|paragraph)\s*#?\s*)?"
    rf"(?P<v>-?\d+|{_NONE})[*_`]*\s*(?:$|[.,;:!)\]]|is\b|was\b)", re.I)
_BOXED = re.compile(rf"\\boxed\{{\s*(?P<v>-?\d+|{_NONE})\s*\}}", re.I)
_STEP_VERDICT = re.compile(
    r"^[\s*_`#>]*(?:verdict\s*:\s*)?(?:(?P<yes>yes|correct|right|true)|(?P<no>no|incorrect|wrong|false))\b"
    r"|^\s*(?:(?P<plus>\+)|(?P<minus>-))\s*$", re.I)  # Math-Shepherd's +/- step tags


def _first_line(text: str | None) -> str:
    return next((line for line in (text or "").splitlines() if line.strip()), "")


def parse_first_error(text: str | None, n_steps: int) -> int | None:
    """0-based index of the first wrong step from a 1-based verdict; -1 for none/no error/all correct
    (or -1, ProcessBench's convention); None when unreadable or out of range (0, > n_steps)."""
    m = _BOXED.search(text or "") or _FIRST_ERROR.match(_first_line(text))
    if not m:
        return None
    v = m.group("v")
    if not re.fullmatch(r"-?\d+", v) or int(v) == -1:
        return -1
    k = int(v)
    return k - 1 if 1 <= k <= n_steps else None


def parse_step_verdict(text: str | None) -> bool | None:
    """True for yes/correct/right/true/+, False for no/incorrect/wrong/false/-, None otherwise."""
    m = _STEP_VERDICT.match(_first_line(text))
    if not m:
        return None
    return bool(m.group("yes") or m.group("plus"))


# ------------------------------------------------------------------------------------------ judging

@dataclass
class JudgeResult:
    first_error: int | None  # 0-based; -1 = no wrong step; None = no usable verdict
    labels: list[int | None]  # 1 before the first error, 0 from it on; all None when unlabelled
    scores: list[float | None]
    raw: str  # the judge's answer (per_step: the answers joined by " | ")


def _result(first_error: int | None, n: int, raw: str) -> JudgeResult:
    s = from_first_error(n, first_error)
    return JudgeResult(first_error, s.labels, s.scores, raw)


def _per_step_first_error(verdicts: list[bool | None]) -> int | None:
    """The first step judged wrong; None if a verdict before it is unreadable (nothing is known past it)."""
    for i, v in enumerate(verdicts):
        if v is None:
            return None
        if not v:
            return i
    return -1


def judge_traces(cfg: JudgeConfig, client, problems_text: list[str], steps: list[list[str]]):
    """Judge each trace. Returns (results, stats) with stats judge_calls, judge_unparseable (verdicts
    that could not be read), judge_too_long (prompts over the judge's context), judge_unlabelled
    (traces left without labels) and judge_tokens (None when the client does not know)."""
    if len(problems_text) != len(steps):
        raise ValueError(f"{len(problems_text)} problems for {len(steps)} step lists")
    if cfg.mode == "first_error":
        groups = [[judge_prompt(cfg, p, s)] if s else [] for p, s in zip(problems_text, steps)]
    else:
        groups = [per_step_prompts(cfg, p, s) for p, s in zip(problems_text, steps)]
    flat = [q for g in groups for q in g]
    tokens0 = getattr(client, "tokens", None)
    answers = client.complete(flat, cfg.max_tokens, cfg.temperature) if flat else []
    tokens1 = getattr(client, "tokens", None)
    results, unparseable, too_long, at = [], [], 0, 0
    for g, s in zip(groups, steps):
        outs, at = answers[at : at + len(g)], at + len(g)
        too_long += sum(o is None for o in outs)
        if not s:  # nothing to label (an empty completion)
            results.append(_result(None, 0, ""))
            continue
        if cfg.mode == "first_error":
            fe = None if outs[0] is None else parse_first_error(outs[0], len(s))
            bad = [o for o in outs if o is not None and fe is None]
        else:
            verdicts = [None if o is None else parse_step_verdict(o) for o in outs]
            fe = _per_step_first_error(verdicts)
            bad = [o for o, v in zip(outs, verdicts) if o is not None and v is None]
        unparseable += bad
        results.append(_result(fe, len(s), " | ".join(o or "" for o in outs)))
    if unparseable:
        log.warning("judge: %d of %d verdicts unreadable (traces left unlabelled), e.g. %s",
                    len(unparseable), len(flat), [u[:60] for u in unparseable[:3]])
    stats = {"judge_calls": len(flat), "judge_unparseable": len(unparseable), "judge_too_long": too_long,
             "judge_unlabelled": sum(bool(r.labels) and r.labels[0] is None for r in results),
             "judge_tokens": None if tokens0 is None or tokens1 is None else tokens1 - tokens0}
    return results, stats
