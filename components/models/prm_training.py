"""Training a PRM (components/models/prm.py: the model and its input format): from a generator's
backbone with a new step tag and head, or from an earlier PRM, on per-step labels (floats P(good),
None = unlabelled), with a tenth of the problems held back for its quality and for the step
threshold saved in its format file (`prm.calibrate`); and the held-out ranking metrics (AUROC) that
the DPO verifier's training reports too.
"""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Callable

from components.labeling.quality import calibrate_threshold, fingerprints
from components.models import packing
from components.models.causal_lm import ensure_pad_token, fit
from components.models.hardware import CPU, Placement
from components.models.prm import (FORMAT_FILE, LABEL_CONVENTION, POSITIVE, STEP_TAG, _encode, check_separator,
                                   check_tag, load_format, step_probs)

WARMUP_RATIO = 0.05


def _init_model(init_dir: Path, step_separator: str = "\n", placement: Placement = CPU):
    """A PRM dir continues as is; a causal-LM dir gives its backbone, a new tag token and a fresh head.
    Weights stay float32 for training (the placement autocasts)."""
    from transformers import AutoConfig, AutoModelForTokenClassification, AutoTokenizer

    tok = ensure_pad_token(AutoTokenizer.from_pretrained(str(init_dir)))
    if (init_dir / FORMAT_FILE).is_file():
        fmt = load_format(init_dir)
        check_tag(tok, fmt, str(init_dir))
        check_separator(fmt, step_separator, str(init_dir))
        model = AutoModelForTokenClassification.from_pretrained(str(init_dir), **placement.train_load_args())
        return model, tok, fmt
    tok.add_special_tokens({"additional_special_tokens": [STEP_TAG]})
    config = AutoConfig.from_pretrained(str(init_dir), num_labels=2, id2label={0: "bad", 1: "good"},
                                        label2id={"bad": 0, "good": 1})
    # No dropout before the head: the tiny models here underfit rather than overfit, and without it a
    # tag's logits depend only on the tokens before it (in training too), whatever follows or pads.
    config.classifier_dropout = 0.0
    config.pad_token_id = tok.pad_token_id
    try:
        model = AutoModelForTokenClassification.from_pretrained(str(init_dir), config=config,
                                                                **placement.train_load_args())
    except ValueError as e:  # transformers names the configuration class it has no head for
        raise ValueError(f"{init_dir}: transformers has no token-classification model for model_type "
                         f"{config.model_type!r}, so no PRM can be built on it: {e}") from None
    model.resize_token_embeddings(len(tok))  # the tag's row is drawn around the old embeddings' mean
    fmt = {"step_tag": STEP_TAG, "step_tag_id": tok.convert_tokens_to_ids(STEP_TAG),
           "template": "{step}" + STEP_TAG + step_separator, "step_separator": step_separator,
           "label_convention": LABEL_CONVENTION, "positive_class": POSITIVE}
    return model, tok, fmt


def _clean_labels(ex: dict, soft: bool) -> list[float]:
    """Floats in [0, 1], NaN = unlabeled. Never int(): a Monte Carlo 0.7 must stay 0.7."""
    labels = ex["labels"]
    if len(labels) != len(ex["steps"]):
        raise ValueError(f"{len(labels)} labels for {len(ex['steps'])} steps: {ex['prompt']!r}")
    out = [math.nan if y is None else float(y) for y in labels]
    for y in out:
        if math.isnan(y):
            continue
        if not 0.0 <= y <= 1.0:
            raise ValueError(f"label {y} outside [0, 1] (labels are P(good)): {ex['prompt']!r}")
        if not soft and y not in (0.0, 1.0):
            raise ValueError(f"soft=False needs labels 0 or 1, got {y}: binarise upstream "
                             f"(e.g. Math-Shepherd hard: y > 0) or train with soft=True")
    return out


def _heldout_prompts(prompts: list[str], fraction: float, seed: int) -> set[str]:
    """A deterministic slice of the distinct prompts: all traces of one problem fall on one side."""
    distinct = sorted(set(prompts), key=lambda p: hashlib.sha256(f"{seed}\x00{p}".encode()).hexdigest())
    n = min(len(distinct) - 1, int(round(fraction * len(distinct)))) if fraction > 0 else 0
    return set(distinct[: max(0, n)])


def labelled_first_error(labels: list[float]) -> int | None:
    """A trace's first error by its labels (P(good) < 0.5), -1 for none; None when an unlabelled step
    (NaN) comes first, so the first error is not known."""
    for i, y in enumerate(labels):
        if math.isnan(y):
            return None
        if y < 0.5:
            return i
    return -1


def auroc(scores: list[float], positives: list[bool]) -> float:
    """Mann-Whitney AUROC with average ranks for ties; NaN when one class is absent."""
    n_pos = sum(positives)
    n_neg = len(positives) - n_pos
    if not n_pos or not n_neg:
        return math.nan
    order = sorted(range(len(scores)), key=lambda i: scores[i])
    ranks = [0.0] * len(scores)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and scores[order[j + 1]] == scores[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1  # 1-based average rank of the tie group
        i = j + 1
    rank_sum = sum(r for r, pos in zip(ranks, positives) if pos)
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def within_auroc(scores: list[float], positives: list[bool], groups: list) -> float:
    """P(a positive outranks a negative of the same group), ties counting half: how well a score ranks
    one problem's solutions, which is all best-of-k asks of it (a score need not be comparable across
    problems, and DPO's implicit reward is not). NaN when no group has both kinds."""
    by: dict = {}
    for s, y, g in zip(scores, positives, groups):
        by.setdefault(g, ([], []))[0 if y else 1].append(s)
    wins = total = 0.0
    for pos, neg in by.values():
        for a in pos:
            for b in neg:
                wins += 1.0 if a > b else 0.5 if a == b else 0.0
        total += len(pos) * len(neg)
    return wins / total if total else math.nan


def training_batch(items: list[tuple[list[int], list[tuple[int, float]]]], packed: bool, pad_id: int) -> dict:
    """(ids, [(tag position, label)]) per trace -> ids, packed or right-padded, and labels: the target
    P(good) at each labelled tag, -100 elsewhere (a float: a Monte Carlo 0.7 stays 0.7)."""
    targets = []
    for ids, pairs in items:
        row = [-100.0] * len(ids)
        for pos, y in pairs:
            row[pos] = y
        targets.append(row)
    return packing.layout([ids for ids, _ in items], targets, pad_id, -100.0, packed)


def tag_loss(logits, labels, w_bad: float = 1.0, positive_class: int = POSITIVE):
    """The weighted mean cross-entropy at the labelled tags against probability targets: for a soft y
    BCE on the logit difference, for y in {0, 1} exactly plain cross-entropy (one formula, and the
    float target is never rounded). Bad steps (y < 0.5) weigh `w_bad`."""
    import torch

    at = labels >= 0
    logits, y = logits[at].float(), labels[at].float()  # [labelled tags, 2], [labelled tags]
    target = torch.stack([1 - y, y], dim=-1) if positive_class == 1 else torch.stack([y, 1 - y], dim=-1)
    w = torch.where(y < 0.5, w_bad, 1.0)
    return (torch.nn.functional.cross_entropy(logits, target, reduction="none") * w).sum() / w.sum()


def train_prm(init_dir: str | Path, out_dir: str | Path, examples: list[dict], epochs: float, lr: float,
              batch_size: int, seed: int, soft: bool, heldout_fraction: float = 0.1,
              log: Callable[[int, dict], None] | None = None, threads: int | None = None,
              placement: Placement = CPU, step_separator: str = "\n", balance: bool = False,
              max_tokens_per_batch: int | None = None, warmup_ratio: float = WARMUP_RATIO) -> dict:
    """Train a PRM from a generator (causal LM) or a previous PRM dir; save model, tokenizer, format.

    examples: {"prompt", "steps", "labels"} with one label per step (float P(good), None = unlabeled),
    and optionally "first_error", the labeller's own verdict (a soft Monte Carlo label of a good step
    may be under 0.5), which the threshold is calibrated against; else the labels' first one under 0.5.
    soft=True: cross-entropy against [1-y, y]; soft=False: labels must be 0/1 (plain cross-entropy).
    balance: bad steps (y < 0.5) weigh n_good / n_bad in the loss, so the rare class counts as much as
    the common one (in the loop's data a trace has at most one first error and many good steps).
    """
    import torch
    from components.models.hardware import cpu_threads

    # All cores we may run on by default; `threads=1` is much faster when other work shares the cores
    # (measured here: tiny matmuls with 2 threads on 2 busy cores ran 5-10x slower than with 1).
    torch.set_num_threads(threads or cpu_threads())
    torch.manual_seed(seed)
    init_dir, out_dir = Path(init_dir), Path(out_dir)
    model, tok, fmt = _init_model(init_dir, step_separator, placement)

    labels = [_clean_labels(ex, soft) for ex in examples]
    held = _heldout_prompts([ex["prompt"] for ex in examples], heldout_fraction, seed)
    train_idx = [i for i, ex in enumerate(examples) if ex["prompt"] not in held]
    held_idx = [i for i, ex in enumerate(examples) if ex["prompt"] in held]
    # Per trace: ids, and the (tag position, label) pairs that are labeled; unlabeled tags are dropped here.
    data = []
    for i in train_idx:
        ids, pos = _encode(tok, fmt, examples[i]["prompt"], examples[i]["steps"])
        pairs = [(p, y) for p, y in zip(pos, labels[i]) if not math.isnan(y)]
        if pairs:
            data.append((ids, pairs))
    if not data:
        raise ValueError(f"no labeled steps to train on among {len(train_idx)} training traces "
                         f"(labels None/NaN mean unlabeled)")

    n_bad = sum(y < 0.5 for _, pairs in data for _, y in pairs)
    n_good = sum(len(pairs) for _, pairs in data) - n_bad
    w_bad = n_good / n_bad if balance and n_bad else 1.0

    def batch(items: list, packed: bool) -> dict:
        return training_batch(items, packed, tok.pad_token_id)

    def loss(outputs, labels, num_items_in_batch=None):
        return tag_loss(outputs.logits, labels, w_bad, fmt["positive_class"])

    stats = fit(model, data, batch, epochs, lr, batch_size, seed, warmup_ratio, log, placement=placement,
                compute_loss=loss, max_tokens_per_batch=max_tokens_per_batch)

    # Held-out quality, on labeled steps only; a soft label counts as positive when P(good) >= 0.5.
    probs = step_probs(model, tok, fmt, [examples[i]["prompt"] for i in held_idx],
                       [examples[i]["steps"] for i in held_idx], batch_size, placement=placement)
    flat = [(p, y) for i, ps in zip(held_idx, probs) for p, y in zip(ps, labels[i]) if not math.isnan(y)]
    acc = sum((p >= 0.5) == (y >= 0.5) for p, y in flat) / len(flat) if flat else math.nan
    # The step threshold that names the first error best on these held-back traces, against their
    # labels (never the traces it is then used on): saved with the checkpoint for `prm.calibrate`.
    gold = [examples[i]["first_error"] if "first_error" in examples[i] else labelled_first_error(labels[i]) for i in held_idx]
    cal = calibrate_threshold(probs, gold)
    fmt = {**fmt, "threshold": cal["threshold"], "threshold_heldout_f1": None if math.isnan(cal["f1"]) else cal["f1"],
           "calibrated_on": fingerprints(examples[i]["prompt"] for i in held_idx)}

    out_dir.mkdir(parents=True, exist_ok=True)
    model.to("cpu").save_pretrained(str(out_dir))
    tok.save_pretrained(str(out_dir))
    (out_dir / FORMAT_FILE).write_text(json.dumps(fmt, indent=2) + "\n")
    return {**stats, "heldout_auroc": auroc([p for p, _ in flat], [y >= 0.5 for _, y in flat]),
            "heldout_f1": cal["f1_default"], "heldout_f1_calibrated": cal["f1"], "calibrated_threshold": cal["threshold"],
            "heldout_erroneous": cal["n_erroneous"], "heldout_correct": cal["n_correct"],
            "heldout_step_accuracy": acc, "n_train": len(train_idx), "n_heldout": len(held_idx),
            "n_train_steps": sum(len(pairs) for _, pairs in data), "bad_step_weight": w_bad,
            "bad_step_share": n_bad / max(1, n_bad + n_good)}
