"""Step-label quality, ProcessBench style (Zheng et al. 2024, arXiv 2412.06559).

A labeller names the earliest wrong step of each trace, or -1 when it finds none. Accuracy is taken
separately on traces that contain an error (the exact index must match) and on traces that do not
(-1 must be predicted); F1 is their harmonic mean, so a labeller that calls everything correct scores 0.
"""
from __future__ import annotations


def first_error_f1(predicted: list[int], gold: list[int | None]) -> dict[str, float]:
    """Traces whose gold is unknown (None: a family without an exact step check) are left out."""
    if len(predicted) != len(gold):
        raise ValueError(f"{len(predicted)} predictions for {len(gold)} gold labels")
    # A labeller's None (no verdict) is neither "no error" nor any step: wrong on both sides.
    known = [(10**9 if p is None else p, g) for p, g in zip(predicted, gold) if g is not None]
    err = [(p, g) for p, g in known if g >= 0]
    ok = [(p, g) for p, g in known if g < 0]
    acc_err = sum(p == g for p, g in err) / len(err) if err else float("nan")
    acc_ok = sum(p < 0 for p, _ in ok) / len(ok) if ok else float("nan")
    if err and ok:
        f1 = 2 * acc_err * acc_ok / (acc_err + acc_ok) if acc_err + acc_ok else 0.0
    else:  # one side empty: F1 is undefined, report the side that exists
        f1 = acc_err if err else acc_ok
    return {"f1": f1, "acc_erroneous": acc_err, "acc_correct": acc_ok,
            "n_erroneous": float(len(err)), "n_correct": float(len(ok))}

