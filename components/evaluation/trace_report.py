"""A round's traces as one self-contained HTML page: what the filter saw and why it decided.

Per difficulty, a sample of scored traces; each step is a row of cells coloured by score (red 0 ..
green 1): the PRM's, Monte Carlo's, the label source's that the filter used, and the gold label,
side by side, with the gold and the label's first error marked, and the trace kept or rejected with
the reason. Inline CSS only (no scripts, no external resources): it opens from an MLflow artifact.
"""
from __future__ import annotations

import html
import random
import tempfile
import time
from collections import Counter
from pathlib import Path

from components.artifacts import store
from components.redact import redact
from components.config import RunConfig
from components.config_scoring import FilterConfig
from components.labeling.filtering import aggregate, passes, select

REPORT = "report.html"

CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:16px 24px;color:#222;background:#fff}
h1{font-size:22px;margin:0 0 4px} h2{font-size:18px;margin:24px 0 8px;border-bottom:2px solid #ccc}
.meta{color:#555} .legend span{display:inline-block;padding:2px 8px;margin-right:2px}
table{border-collapse:collapse} td,th{border:1px solid #ccc;padding:2px 8px;text-align:left}
th{background:#f2f2f2} td.num{text-align:right;font-variant-numeric:tabular-nums;min-width:3em}
.trace{border:1px solid #bbb;border-left:8px solid #888;margin:12px 0;padding:6px 10px;border-radius:4px}
.trace.kept{border-left-color:#2e9d43} .trace.rejected{border-left-color:#c62828}
.trace h3{font-size:15px;margin:0 0 4px} .status{font-weight:700;padding:1px 6px;color:#fff;border-radius:3px}
.kept .status{background:#2e9d43} .rejected .status{background:#c62828}
.reason{margin:2px 0 6px} pre{margin:2px 0;font:13px ui-monospace,monospace;white-space:pre-wrap;overflow-wrap:anywhere}
details.prompt summary{color:#555;cursor:pointer;font-size:12px}
table.steps{table-layout:fixed;width:100%} col.n{width:3em} col.s{width:5em} col.l{width:8em} col.m{width:13em}
td.step{font:13px ui-monospace,monospace;white-space:pre-wrap;overflow-wrap:anywhere}
tr.label-error td.step{outline:3px dashed #6a1b9a}
tr.gold-error td.step{outline:3px solid #c62828}
.mark{font-size:12px;font-weight:700;color:#c62828} .mark.label{color:#6a1b9a}
"""


def _filter_cfg(cfg) -> FilterConfig:
    return cfg if isinstance(cfg, FilterConfig) else FilterConfig.model_validate(cfg)


def reasons(rows: list[dict], filter_cfg) -> list[str]:
    """Why each row was kept or rejected, starting with "kept" or "rejected", in filtering.select's terms.

    `rows` must be the whole round in filter order: the per-problem cap depends on the rows before."""
    cfg = _filter_cfg(filter_cfg)
    kept = {(r["problem_id"], r["completion"]) for r in select(rows, cfg)[0]}
    taken: set = set()
    out = []
    for r in rows:
        key = (r["problem_id"], r["completion"])
        score = f"{cfg.aggregate} step score {aggregate(r['step_scores'], cfg.aggregate):.2f}"
        if not r["correct"]:
            gold = f" (gold answer {r['answer']})" if r.get("answer") is not None else ""
            out.append(f"rejected: wrong answer{gold}")
        elif not passes(r, cfg):
            out.append(f"rejected: {score} < threshold {cfg.threshold:g}")
        elif key in kept and key not in taken:
            taken.add(key)
            out.append("kept: right answer" + ("" if cfg.mode == "outcome" else f", {score} >= {cfg.threshold:g}"))
        elif key in taken:
            out.append("rejected: duplicate of a kept trace of the same problem")
        else:
            out.append(f"rejected: over max_per_problem ({cfg.max_per_problem} kept already for this problem)")
    return out


def pick(rows: list[dict], per_difficulty: int, seed: int = 0) -> list[dict]:
    """A seeded sample of up to `per_difficulty` rows per difficulty, half kept and half rejected
    where there are enough of each (a report of only kept traces explains nothing)."""
    out = []
    for d in sorted({r["difficulty"] for r in rows}):
        at = [r for r in rows if r["difficulty"] == d]
        random.Random(f"{seed}/report/{d}").shuffle(at)
        kept, rejected = [r for r in at if r.get("kept")], [r for r in at if not r.get("kept")]
        n_kept = min(len(kept), max(per_difficulty - len(rejected), per_difficulty // 2))
        out += kept[:n_kept] + rejected[: per_difficulty - n_kept]
    return out


# ---------------------------------------------------------------------------------------- rendering

def _colour(s: float | None) -> str:
    if s is None:
        return "#eeeeee"
    s = min(1.0, max(0.0, float(s)))
    return f"hsl({120 * s:.0f},65%,{72 + 8 * abs(s - 0.5):.0f}%)"


def _cell(s: float | None) -> str:
    text = "–" if s is None else f"{float(s):.2f}"
    return f'<td class="num" style="background:{_colour(s)}">{text}</td>'


def _at(xs, i):
    return xs[i] if xs is not None and i < len(xs) else None


def _gold_labels(row: dict, n: int) -> list[int | None]:
    """Gold per step from the gold first error: right before it, wrong from it on (no gold: None)."""
    g = row.get("gold_first_error")
    if g is None:
        return [None] * n
    return [1 if g < 0 or i < g else 0 for i in range(n)]


def _trace(row: dict, idx: int) -> str:
    e = html.escape
    steps = row.get("steps") or []
    src = row.get("label_source") or "label"
    mc = row.get("mc_scores") or (row.get("step_scores") if str(src).startswith("mc") else None)
    gold, g_err, l_err = _gold_labels(row, len(steps)), row.get("gold_first_error"), row.get("label_first_error")
    kept = bool(row.get("kept"))
    body = []
    for i, step in enumerate(steps):
        marks = []
        if i == g_err == l_err and src != "gold":
            marks.append(f'<span class="mark">gold and {e(src)} labels: first error</span>')
        elif i == g_err:
            marks.append('<span class="mark">gold: first error</span>')
        elif i == l_err:
            marks.append(f'<span class="mark label">{e(src)} labels: first error</span>')
        g = gold[i]
        gold_cell = ('<td style="background:#eeeeee">no gold</td>' if g is None else
                     f'<td style="background:{_colour(g)}">{"right" if g else "wrong"}</td>')
        cls = " ".join(c for c, at in (("gold-error", g_err), ("label-error", l_err)) if i == at)
        body.append(f'<tr class="{cls}"><td class="num">{i + 1}</td>'
                    f'<td class="step">{e(step)}</td>{_cell(_at(row.get("prm_scores"), i))}{_cell(_at(mc, i))}'
                    f'{_cell(_at(row.get("step_scores"), i))}{gold_cell}<td>{" ".join(marks)}</td></tr>')
    if g_err is not None and g_err == len(steps):  # right as far as it goes, but stops early
        body.append(f'<tr><td colspan="7"><span class="mark">gold: first error = the missing step '
                    f'{len(steps) + 1} (the trace ends early)</span></td></tr>')
    # Fixed column widths: a long step (a GSM8K sentence, a formula without spaces) wraps in the step
    # column instead of pushing the score columns off the page.
    cols = ('<colgroup><col class="n"><col><col class="s"><col class="s"><col class="l"><col class="s">'
            '<col class="m"></colgroup>')
    head = ("<tr><th>#</th><th>step</th><th>PRM</th><th>MC</th>"
            f"<th>{e(src)} (filtered on)</th><th>gold</th><th>first error</th></tr>")
    # The problem as a reader wants it; the rendered prompt (chat template, worked examples) on request.
    question = row.get("question") or row["prompt"]
    rendered = ("" if question == row["prompt"] else '<details class="prompt"><summary>prompt as the model saw it'
                f'</summary><pre class="prompt">{e(row["prompt"])}</pre></details>')
    return (f'<section class="trace {"kept" if kept else "rejected"}" id="trace-{idx}" '
            f'data-problem="{e(str(row["problem_id"]))}" data-sample="{e(str(row.get("sample", "")))}">'
            f'<h3><span class="status">{"KEPT" if kept else "REJECTED"}</span> problem {e(str(row["problem_id"]))}'
            f' · {row["difficulty"]} ops · sample {e(str(row.get("sample", "-")))} · final answer '
            f'{"right" if row["correct"] else "wrong"}</h3>'
            f'<p class="reason">{e(row.get("reason") or "")}</p><pre class="question">{e(question)}</pre>{rendered}'
            f'<table class="steps">{cols}{head}{"".join(body)}</table></section>')


def render(rows: list[dict], *, title: str, per_difficulty: int, filter_cfg, totals: dict | None = None) -> str:
    """One self-contained HTML page: up to `per_difficulty` traces per difficulty, in the order given.

    Rows without `kept`/`reason` get them from `reasons(rows, filter_cfg)`, which is right only when
    `rows` is the whole round; `totals` ({difficulty: {"traces", "kept"}}) adds round-wide counts."""
    cfg = _filter_cfg(filter_cfg)
    if any("kept" not in r or "reason" not in r for r in rows):
        rows = [{**r, "kept": w.startswith("kept"), "reason": w} for r, w in zip(rows, reasons(rows, cfg))]
    e = html.escape
    rule = ("right final answer" if cfg.mode == "outcome" else
            f"right final answer and {cfg.aggregate} of step scores >= {cfg.threshold:g}")
    levels = sorted({r["difficulty"] for r in rows} | set(totals or {}))
    shown = {d: [r for r in rows if r["difficulty"] == d][:per_difficulty] for d in levels}
    summary = ["<table><tr><th>ops</th><th>traces in round</th><th>kept in round</th><th>shown</th>"
               "<th>shown kept</th></tr>"]
    for d in levels:
        t = (totals or {}).get(d, {})
        summary.append(f'<tr><td class="num">{d}</td><td class="num">{t.get("traces", "-")}</td>'
                       f'<td class="num">{t.get("kept", "-")}</td><td class="num">{len(shown[d])}</td>'
                       f'<td class="num">{sum(bool(r["kept"]) for r in shown[d])}</td></tr>')
    legend = "".join(f'<span style="background:{_colour(s)}">{s:.2f}</span>' for s in (0, .25, .5, .75, 1))
    parts, idx = [], 0
    for d in levels:
        if shown[d]:
            parts.append(f"<h2>{d} ops ({len(shown[d])} traces)</h2>")
        for r in shown[d]:
            parts.append(_trace(r, idx))
            idx += 1
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{e(title)}</title>'
            f"<style>{CSS}</style></head><body><h1>{e(title)}</h1>"
            f'<p class="meta">Filter: keep a trace with a {e(rule)}, at most {cfg.max_per_problem} distinct '
            f"traces per problem. Step scores are P(step is right): PRM = the process reward model, MC = "
            f"Monte Carlo rollouts, then the label source the filter used, and the exact gold check. "
            f"Generated {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.</p>"
            f'<p class="legend">score colour: {legend} <span style="background:#eeeeee">none</span></p>'
            f'{"".join(summary)}</table>{"".join(parts)}</body></html>')


# ------------------------------------------------------------------------------------------ the stage

def trace_report(cfg: RunConfig, scored_uri: str, filtered_uri: str, out_uri: str, round_idx: int,
                 prm_uri: str | None = None, per_difficulty: int = 6) -> dict:
    """Publish `report.html` for a round: a seeded sample of its scored traces per difficulty, kept or
    rejected as the published filtered data says, with the PRM's step scores when `prm_uri` is given."""
    rows = store.read_rows(scored_uri)
    # The filter settings the filtered data was made with (the config may have changed since).
    fcfg = _filter_cfg(store.read_manifest(filtered_uri).get("filter") or cfg.filter.model_dump())
    published = {(r["problem_id"], r["completion"]) for r in store.read_rows(filtered_uri)}
    why = reasons(rows, fcfg)
    recomputed = {(r["problem_id"], r["completion"]) for r, w in zip(rows, why) if w.startswith("kept")}
    if recomputed != published:
        raise ValueError(f"{redact(filtered_uri)}: {len(published)} kept traces, but its filter settings on "
                         f"{redact(scored_uri)} "
                         f"keep {len(recomputed)} ({len(recomputed ^ published)} differ): not made from these rows")
    for r, w in zip(rows, why):
        r.update(kept=w.startswith("kept"), reason=w)
    totals = {d: {"traces": n, "kept": sum(r["kept"] for r in rows if r["difficulty"] == d)}
              for d, n in Counter(r["difficulty"] for r in rows).items()}
    sample = pick(rows, per_difficulty, cfg.seed + round_idx)
    if prm_uri and sample:
        from components.models.serving import prm_scorer

        scorer = prm_scorer(cfg, prm_uri)
        for r, sc in zip(sample, scorer.score([r["prompt"] for r in sample], [r["steps"] for r in sample])):
            r["prm_scores"] = sc
    page = render(sample, title=f"{cfg.loop_id()} round {round_idx}: traces and their step scores",
                  per_difficulty=per_difficulty, filter_cfg=fcfg, totals=totals)
    metrics = {"report_traces": len(sample)}
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, REPORT).write_text(page, encoding="utf-8")
        store.publish_folder(tmp, out_uri, {"kind": "report", "stage": "trace_report", "round": round_idx,
                                            "scored": scored_uri, "filtered": filtered_uri, "prm": prm_uri,
                                            "metrics": metrics})
    return metrics
