"""Reading answers out of text, for the file-backed families (components/data/families/custom.py,
gsm8k, math): numbers in canonical form, answer markers and \\boxed{}, the answer line that ends a
trace, and the verifiers (numeric, math-verify, exact) that check a reference answer and compare
an answer with it.
"""
from __future__ import annotations

import math
import re
import threading
from decimal import Decimal, InvalidOperation

# ------------------------------------------------------------------------------ answers and numbers

NUMBER = re.compile(r"-?\$?\s?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|-?\$?\.\d+")
# Answer markers, strongest first: the first kind present wins, its last occurrence is the answer.
MARKERS = [re.compile(p, re.I | re.M) for p in (
    r"####\s*(.+)$", r"\bthe (?:final )?answer is\s*:?\s*(.+)$", r"^\s*answer\s*:\s*(.+)$")]
# A line that ends the trace: a marker that opens it ("So the answer is 72."), or `####`, `\boxed`
# anywhere. Not "the answer is" mid-sentence: GSM8K's own solutions use it in a working step.
ANSWER_LINE = re.compile(r"####|\\boxed|\\fbox|^\W*(?:so,?\s+)?the (?:final )?answer is\b|^\W*answer\s*:", re.I)


def normalize_number(text: str, whole: bool = False) -> str | None:
    """The first number in `text` in canonical form, or None: `$1,080.00 dollars` -> `1080`,
    `18.0` -> `18`, `-0.50` -> `-0.5`. Currency signs, thousands commas and trailing units go.
    whole: `text` must be just the number (units after it allowed): `x=5` and `1/2` are None."""
    m = NUMBER.search(text)
    if not m or whole and (text[: m.start()].strip() or re.search(r"\d", text[m.end():])):
        return None
    try:
        d = Decimal(m.group().replace("$", "").replace(",", "").replace(" ", ""))
    except InvalidOperation:
        return None
    return str(int(d)) if d == d.to_integral_value() else format(d.normalize(), "f")


def numbers_equal(a: str | float, b: str | float, tol: float = 1e-6) -> bool:
    return math.isclose(float(a), float(b), rel_tol=tol, abs_tol=tol)


def last_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...} (balanced braces), None if there is none or it is unclosed."""
    from latex2sympy2_extended.math_normalization import extract_boxed_content

    if "\\boxed" not in text and "\\fbox" not in text:
        return None
    content = extract_boxed_content(text, mode="last")
    return content.strip() if content != text and content.strip() else None


def marked_answer(text: str) -> str | None:
    """What follows the strongest answer marker present (its last occurrence), trailing '.' removed."""
    for pattern in MARKERS:
        found = pattern.findall(text)
        if found:
            return found[-1].strip().rstrip(".").strip() or None
    return None


def split_answer_steps(text: str, sep: str) -> list[str]:
    """Non-empty steps of `text` split on `sep`, right-stripped, up to and including the first
    answer line: what a model writes after its answer is not part of the trace."""
    steps = []
    for block in text.split(sep):
        block = block.strip("\n").rstrip()
        if block.strip():
            steps.append(block)
            if ANSWER_LINE.search(block):
                break
    return steps


# ------------------------------------------------------------------------------------- verifiers

def _mv_timeout() -> int | None:
    # math-verify times out with signal.alarm, which only the main thread may use: elsewhere (Prefect
    # task threads) it runs without a timeout instead of raising.
    return 5 if threading.current_thread() is threading.main_thread() else None


def math_parse(text: str, boxed: bool = False) -> list:
    from math_verify import parse

    return parse(f"\\boxed{{{text}}}" if boxed else text, parsing_timeout=_mv_timeout())


def math_equal(reference: str, completion: str) -> bool:
    from math_verify import verify

    gold, pred = math_parse(reference, boxed=True), math_parse(completion)
    return bool(gold and pred) and verify(gold, pred, timeout_seconds=_mv_timeout())


def check_reference(verifier: str, answer: str) -> tuple[str | None, str]:
    """(canonical reference answer, '') or (None, why it is unusable with this verifier)."""
    if verifier == "numeric":
        n = normalize_number(answer, whole=True)
        return (n, "") if n is not None else (None, f"not a number: {answer[:80]!r}")
    if verifier == "math_verify":
        return (answer, "") if math_parse(answer, boxed=True) else (None, f"math-verify cannot parse: {answer[:80]!r}")
    return answer.strip(), ""
