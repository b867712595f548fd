"""Step-label quality, ProcessBench style (Zheng et al. 2024, arXiv 2412.06559).

A labeller names the earliest wrong step of each trace, or -1 when it finds none. Accuracy is taken
separately on traces that contain an error (the exact index must match) and on traces that do not
(-1 must be predicted); F1 is their harmonic mean, so a labeller that calls everything correct scores 0.
Where one side is empty (every trace correct, or every trace wrong) F1 is undefined and reported as
NaN (MLflow then logs no value): the one side's accuracy would hand an always-"no error" labeller 1.0.
"""
from __future__ import annotations

import itertools

from components.labeling.step_labels import first_error_from_scores


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
    else:  # one side empty: F1 is undefined; the side that exists is in its acc_*
        f1 = float("nan")
    return {"f1": f1, "acc_erroneous": acc_err, "acc_correct": acc_ok,
            "n_erroneous": float(len(err)), "n_correct": float(len(ok))}


def quality(by_source: dict[str, list], gold_first_errors: list[int | None]) -> dict[str, float]:
    """Per source: first-error F1 vs gold on traces where gold is known (and the source answered);
    per pair of sources: how often they name the same first error, and agree step by step."""
    out: dict[str, float] = {}
    by_source = {k.replace("+", "_"): v for k, v in by_source.items()}  # MLflow metric names: no "+"
    for name, labels in by_source.items():
        pairs = [(s.first_error, g) for s, g in zip(labels, gold_first_errors) if g is not None]
        answered = [(p, g) for p, g in pairs if p is not None]
        out[f"{name}/unlabelled_traces"] = float(sum(s.first_error is None for s in labels))
        if pairs:
            # An unanswered trace counts against the source: "no verdict" is not "no error".
            q = first_error_f1([p for p, _ in pairs], [g for _, g in pairs])
            out.update({f"{name}/f1": q["f1"], f"{name}/acc_erroneous": q["acc_erroneous"],
                        f"{name}/acc_correct": q["acc_correct"], f"{name}/answered": len(answered) / len(pairs)})
    for a, b in itertools.combinations(sorted(by_source), 2):
        both = [(x, y) for x, y in zip(by_source[a], by_source[b]) if x.first_error is not None and y.first_error is not None]
        steps = [(u, v) for x, y in zip(by_source[a], by_source[b]) for u, v in zip(x.labels, y.labels)
                 if u is not None and v is not None]
        if both:
            out[f"agree/{a}_vs_{b}/first_error"] = sum(x.first_error == y.first_error for x, y in both) / len(both)
        if steps:
            out[f"agree/{a}_vs_{b}/steps"] = sum(u == v for u, v in steps) / len(steps)
    return {k: v for k, v in out.items() if v == v}  # undefined (NaN) values are left out, as MLflow does


def fingerprint(prompt: str) -> str:
    """A short hash of a problem's prompt."""
    import hashlib

    return hashlib.sha256(prompt.encode()).hexdigest()[:16]


def fingerprints(prompts) -> list[str]:
    """The distinct problems (prompts) a threshold was calibrated on, hashed: saved with it, so whoever
    uses it can tell whether it is being measured on the problems that chose it."""
    return sorted({fingerprint(p) for p in prompts})


def refuse_leak(calibrated_on: list[str], prompts, where: str) -> None:
    """A threshold chosen on some problems and then measured on them reports the F1 it was picked
    for, not one it would reach on new problems: refuse, naming the artifact and the overlap."""
    prompts, chosen_on = list(dict.fromkeys(prompts)), set(calibrated_on)
    leaked = [p for p in prompts if fingerprint(p) in chosen_on]
    if leaked:
        raise ValueError(f"{where}: its step threshold was calibrated on {len(leaked)} of the {len(prompts)} "
                         f"problems it is now measured on (e.g. {leaked[0][:80]!r}); a threshold is chosen on "
                         f"traces held back from those it is used on: evaluate on problems it never saw")


def calibrate_threshold(scores: list[list[float]], gold: list[int | None], default: float = 0.5,
                        min_each: int = 5) -> dict[str, float]:
    """The step threshold (a step is wrong when its score is below it) that maximises first-error F1
    on these labelled traces, which must be held back from the ones the threshold is then used on.
    Ties go to the threshold nearest `default`; with fewer than `min_each` traces on either side
    (erroneous, correct) F1 says too little to move it, and `default` stays (`calibrated: 0`).
    Returns threshold, f1 at it, f1_default, and the counts the choice rests on."""
    def f1_at(t: float) -> float:
        return first_error_f1([first_error_from_scores(s, t) for s in scores], gold)["f1"]

    base = first_error_f1([first_error_from_scores(s, default) for s in scores], gold)
    out = {"threshold": default, "f1": base["f1"], "f1_default": base["f1"], "calibrated": 0.0,
           "n_erroneous": base["n_erroneous"], "n_correct": base["n_correct"]}
    points = sorted({x for s in scores for x in s})
    if min(base["n_erroneous"], base["n_correct"]) < min_each or not points:
        return out
    # Only the scores themselves change a verdict ("s < t" flips as t passes s): each distinct score,
    # and one above them all (every step wrong), are every threshold that behaves differently.
    if len(points) > 512:  # bounded work on a large held-back set: evenly spaced ranks of the scores
        points = sorted({points[i * (len(points) - 1) // 511] for i in range(512)})
    candidates = points + [points[-1] + 1e-6]
    f1, best = max(((f1_at(t), t) for t in candidates), key=lambda x: (x[0], -abs(x[1] - default)))
    if f1 > base["f1"]:
        out.update(threshold=float(best), f1=f1, calibrated=1.0)
    return out
