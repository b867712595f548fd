"""Decontamination: training problems that overlap evaluation problems are dropped before any SFT or
PRM training, and every drop is counted with its reason.

A train problem is dropped when its normalised text equals an eval problem's (`exact`), or when the
share of its word n-grams that occur in some eval problem reaches the threshold (`ngram`). Eval
n-grams go into one dict (n-gram -> eval problems), so the cost is linear in the total text, not
train x eval pairs. A text shorter than n words has one n-gram: all of its words.
"""
from __future__ import annotations

import re
from collections import Counter
from typing import Any

from components.config_sections import DecontamConfig

_PUNCT = re.compile(r"[^\w\s+\-*/%^=<>]|_")
_OPS = re.compile(r"([+\-*/%^=<>])")


def normalize(text: str) -> str:
    """Lowercase, punctuation to spaces, whitespace collapsed: `Hello,  World!` -> `hello world`.
    Math operators stay, as words of their own: `57 +5` and `57 -5` are different problems."""
    return " ".join(_OPS.sub(r" \1 ", _PUNCT.sub(" ", text.lower())).split())


def ngrams(norm: str, n: int) -> set[tuple[str, ...]]:
    words = norm.split()
    if len(words) < n:
        return {tuple(words)} if words else set()
    return {tuple(words[i: i + n]) for i in range(len(words) - n + 1)}


def _text_and_id(item: Any) -> tuple[str, str | None]:
    """Accepts a str, a Problem (question in meta, else prompt) or a row dict (prompt/question/text)."""
    if isinstance(item, str):
        return item, None
    if isinstance(item, dict):
        # "question" first: a row's prompt may be rendered (template, chat, worked examples).
        text = item.get("question") or item.get("prompt") or item.get("text") or ""
        return text, item.get("problem_id") or item.get("id")
    return (getattr(item, "meta", {}) or {}).get("question") or item.prompt, item.id


def decontaminate(train: list, eval_items: list, cfg: DecontamConfig) -> tuple[list, list[dict]]:
    """(kept train items in order, dropped: one dict per drop with `text` or `problem_id`, `reason`
    ("exact" | "ngram"), `overlap` (share of the train item's n-grams found in eval) and
    `eval_match` (id, else text, of the eval problem sharing the most n-grams))."""
    if not cfg.enabled:
        return list(train), []
    evals = [_text_and_id(e) for e in eval_items]
    exact: dict[str, int] = {}
    index: dict[tuple[str, ...], list[int]] = {}
    for j, (text, _) in enumerate(evals):
        norm = normalize(text)
        exact.setdefault(norm, j)
        for g in ngrams(norm, cfg.ngram):
            index.setdefault(g, []).append(j)

    kept, dropped = [], []
    for item in train:
        text, pid = _text_and_id(item)
        norm = normalize(text)
        grams = ngrams(norm, cfg.ngram)
        hits = Counter(j for g in grams for j in index.get(g, ()))
        overlap = sum(g in index for g in grams) / len(grams) if grams else 0.0
        if norm in exact:
            reason, match = "exact", exact[norm]
        elif grams and overlap >= cfg.threshold:
            reason, match = "ngram", hits.most_common(1)[0][0]
        else:
            kept.append(item)
            continue
        eval_text, eval_id = evals[match]
        dropped.append({**({"problem_id": pid} if pid is not None else {"text": text}), "reason": reason,
                        "overlap": round(overlap, 4), "eval_match": eval_id if eval_id is not None else eval_text})
    return kept, dropped


def counts(dropped: list[dict], kept: list) -> dict[str, int]:
    """Metrics for MLflow: kept, dropped, dropped per reason."""
    by_reason = Counter(d["reason"] for d in dropped)
    return {"decontam/kept": len(kept), "decontam/dropped": len(dropped),
            **{f"decontam/dropped_{r}": by_reason.get(r, 0) for r in ("exact", "ngram")}}


def against_eval(items: list, family, cfg: DecontamConfig) -> tuple[list, dict[str, int]]:
    """Training items whose problem overlaps one of the family's evaluation problems are dropped
    (and counted): what every training stage does before it trains."""
    kept, dropped = decontaminate(items, family.problems("eval"), cfg)
    return kept, counts(dropped, kept)


def bootstrap_split(family, cfg: DecontamConfig) -> tuple[list, dict[str, int]]:
    """The bootstrap split less what overlaps evaluation (and its counts): G_0's gold solutions, the
    tokenizer's corpus, the judge's planted traces and SFT's replayed gold all come from it, so none
    of them may carry an evaluation problem (GSM8K's train and test files hold near-duplicates)."""
    return against_eval(family.problems("bootstrap"), family, cfg)
