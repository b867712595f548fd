"""The per-round HTML trace report: why each trace was kept or rejected, and the page as headless
Chromium (Debian's `chromium`, started here) renders it."""
from html.parser import HTMLParser

import pytest
from PIL import Image, ImageStat

from browser import chromium, evaluate  # tests/browser.py

from components.models import prm_training
from components.stages import filter as filter_stage
from components.stages import score
from components.artifacts import store
from components.artifacts.layout import Layout
from components.config_scoring import FilterConfig
from components.data.families.arith import APPLY
from components.labeling.filtering import select
from components.evaluation.trace_report import REPORT, reasons, render, trace_report


class Traces(HTMLParser):
    """Per <section class="trace ...">: its classes, data attributes and the text of each table row."""

    def __init__(self, text: str):
        super().__init__()
        self.traces: list[dict] = []
        self._cells: list[str] | None = None
        self._text: list[str] | None = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "section" and "trace" in (a.get("class") or "").split():
            self.traces.append({"class": a["class"].split(), "problem": a.get("data-problem"),
                                "sample": a.get("data-sample"), "rows": []})
        elif self.traces and tag == "tr":
            self._cells = []
            self.traces[-1]["rows"].append(self._cells)
        elif self._cells is not None and tag in ("td", "th"):
            self._text = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._text is not None:
            self._cells.append("".join(self._text).strip())
            self._text = None

    def handle_data(self, data):
        if self._text is not None:
            self._text.append(data)


def candidates(fam, n_problems: int) -> list[dict]:
    """Per problem: the gold trace, one wrong at its first step (a later op may forget the error and
    still reach the right answer), one with a wrong answer line, and the gold trace again."""
    def wrong_first_step(p):
        value, lines = p.meta["start"], []
        for j, (sym, c) in enumerate(p.meta["ops"]):
            r = APPLY[sym](value, c) + (j == 0)
            lines.append(f"{value}{sym}{c}={r}")
            value = r
        return fam.steps_text(lines + [f"Answer: {value}"])

    rows = []
    for p in fam.problems("train")[:n_problems]:
        gold = fam.gold_solution(p)
        wrong_answer = gold.replace(f"Answer: {p.answer}", f"Answer: {int(p.answer) + 1}")
        for j, c in enumerate([gold, wrong_first_step(p), wrong_answer, gold]):
            rows.append({"problem_id": p.id, "prompt": p.prompt, "answer": p.answer, "difficulty": p.difficulty,
                         "sample": j, "completion": c, "correct": fam.is_correct(p, c),
                         "gold_first_error": fam.first_error(p, c)})
    return rows


def scored_round(cfg, fam, n_problems: int) -> tuple[str, str, dict]:
    """A round's scored (gold step labels, by the real score stage) and filtered datasets."""
    uri = lambda stage: Layout.of(cfg).round(1, stage)  # noqa: E731
    store.write_rows(candidates(fam, n_problems), uri("candidates"))
    score.run(cfg, uri("scored"), "unused: gold labels need no model", uri("candidates"), 1)
    stats = filter_stage.run(cfg, uri("filtered"), uri("scored"), 1)
    return uri("scored"), uri("filtered"), stats


def row(pid, completion, correct, scores, **kw):
    return {"problem_id": pid, "completion": completion, "correct": correct, "step_scores": scores, **kw}


def test_reasons_say_why_each_trace_was_kept_or_rejected():
    rows = [row("a", "good", True, [1.0, 0.9]), row("a", "good", True, [1.0, 0.9]),
            row("a", "lucky", True, [1.0, 0.2]), row("a", "other", True, [0.8, 1.0]),
            row("b", "wrong", False, [1.0, 1.0], answer="7")]
    cfg = FilterConfig(mode="step", aggregate="min", threshold=0.5, max_per_problem=1)
    why = reasons(rows, cfg)
    assert why == ["kept: right answer, min step score 0.90 >= 0.5",
                   "rejected: duplicate of a kept trace of the same problem",
                   "rejected: min step score 0.20 < threshold 0.5",
                   "rejected: over max_per_problem (1 kept already for this problem)",
                   "rejected: wrong answer (gold answer 7)"]
    assert sum(w.startswith("kept") for w in why) == len(select(rows, cfg)[0])
    outcome = reasons(rows, cfg.model_copy(update={"mode": "outcome", "max_per_problem": 3}))
    assert outcome[2] == "kept: right answer" and outcome[4].startswith("rejected: wrong answer")


def test_render_puts_prm_mc_label_and_gold_side_by_side():
    r = row("p1", "1+1=2\n2*3=7\nAnswer: 7\n", False, [0.9, 0.6, 0.1], answer="6", prompt="1 +1 *3\n",
            difficulty=2, steps=["1+1=2", "2*3=7", "Answer: 7"], prm_scores=[0.8, 0.3, 0.2],
            mc_scores=[1.0, 0.5, None], label_source="mc", label_first_error=2, gold_first_error=1)
    page = render([r, {**r, "problem_id": "p2"}], title="t", per_difficulty=1, filter_cfg=FilterConfig())
    (t,) = Traces(page).traces  # per_difficulty=1: one of the two
    assert t["class"] == ["trace", "rejected"] and t["problem"] == "p1"
    header, *steps = t["rows"]
    assert header == ["#", "step", "PRM", "MC", "mc (filtered on)", "gold", "first error"]
    assert steps == [["1", "1+1=2", "0.80", "1.00", "0.90", "right", ""],
                     ["2", "2*3=7", "0.30", "0.50", "0.60", "wrong", "gold: first error"],
                     ["3", "Answer: 7", "0.20", "–", "0.10", "wrong", "mc labels: first error"]]
    assert "rejected: wrong answer (gold answer 6)" in page


# In the page: the right edges of the step tables' cells, the text the page shows (checkVisibility: false
# inside a closed <details>, past its summary), and the rendered prompts behind <details>.
LAYOUT = """(() => {
  const shown = [], walk = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  for (let n; (n = walk.nextNode());) {
    if (n.parentElement.checkVisibility()) shown.push(n.data);
  }
  const cells = [...document.querySelectorAll("table.steps tr")].map(tr => [...tr.cells].map(
    c => c.getBoundingClientRect().right));
  return {width: window.innerWidth, scroll: document.documentElement.scrollWidth, cells: cells, shown: shown.join(""),
          details: [...document.querySelectorAll("details")].map(d => [d.open, d.textContent])};
})()"""


def test_long_steps_wrap_and_the_problem_shows_not_the_chat_template(tmp_path):
    question = "Natalia sold clips to 48 of her friends in April, and then she sold half as many in May. How many?"
    prompt = (f"<|im_start|>system\nPlease reason step by step.<|im_end|>\n<|im_start|>user\n{question}"
              "<|im_end|>\n<|im_start|>assistant\n")
    sentence = ("In May she sold half as many clips as the 48 she sold to her friends in April, which is 48 / 2 "
                "= 24 clips, so together over the two months she sold the clips of April and May combined. ") * 3
    steps = [sentence, "48+24=" + "".join(str(i) for i in range(200)), "Answer: 72"]  # ~500 chars without a space
    r = row("gsm-1", "\n".join(steps), True, [0.9, 0.8, 0.7], answer="72", prompt=prompt, question=question,
            difficulty=2, steps=steps, prm_scores=[0.9, 0.5, 0.4], mc_scores=[1.0, 0.5, 0.2], label_source="mc",
            label_first_error=1, gold_first_error=-1)
    page = render([r], title="gsm8k", per_difficulty=1, filter_cfg=FilterConfig())
    got = evaluate(tmp_path, page, LAYOUT, (1300, 1000))
    assert got["width"] == 1300 and got["scroll"] <= 1300, got["scroll"]  # no horizontal scrolling
    header, *cells = got["cells"]
    assert len(cells) == 3 and all(len(c) == 7 for c in [header, *cells])
    assert all(right <= 1300 for c in [header, *cells] for right in c), got["cells"]  # every score column on screen
    assert question in got["shown"] and "prompt as the model saw it" in got["shown"]
    assert "<|im_start|>" not in got["shown"]
    assert got["details"] == [[False, "prompt as the model saw it" + prompt]]  # the rendered prompt, on request
    assert "&lt;|im_start|&gt;system" in page  # escaped as HTML


def test_round_report_renders_in_headless_chromium(smoke_cfg, smoke_family, tiny_model_dir, tmp_path):
    cfg = smoke_cfg.model_copy(update={"store_uri": str(tmp_path / "store"),
                                       "scoring": smoke_cfg.scoring.model_copy(update={"label_source": "gold"})})
    scored, filtered, stats = scored_round(cfg, smoke_family, 12)
    # A real PRM for the PRM column: the tiny generator with a step head, trained briefly on these labels.
    examples = [{"prompt": r["prompt"], "steps": r["steps"], "labels": r["step_scores"]}
                for r in store.read_rows(scored)]
    prm_training.train_prm(tiny_model_dir, tmp_path / "prm", examples, epochs=1, lr=1e-3, batch_size=16, seed=0,
                           soft=True, threads=1)
    prm_uri = store.join(cfg.store_uri, "prm")
    store.publish_folder(tmp_path / "prm", prm_uri, {"kind": "prm"})
    out = Layout.of(cfg).round(1, "report")
    per_difficulty = 4
    metrics = trace_report(cfg, scored, filtered, out, 1, prm_uri, per_difficulty)

    by_level = {}
    for r in store.read_rows(scored):
        by_level[r["difficulty"]] = by_level.get(r["difficulty"], 0) + 1
    expected = sum(min(per_difficulty, n) for n in by_level.values())
    assert metrics == {"report_traces": expected}
    page = store.fetch_folder(out) / REPORT
    text = page.read_text()
    assert "<script" not in text and "http" not in text and "<link" not in text  # self-contained

    traces = Traces(chromium(tmp_path, "--dump-dom", page.as_uri())).traces
    assert len(traces) == expected
    kept = {(r["problem_id"], str(r["sample"])) for r in store.read_rows(filtered)}
    assert stats["kept"] == len(kept) and 0 < stats["kept"] < stats["traces"]
    for t in traces:  # kept exactly when the published filtered data holds the trace
        assert ("kept" in t["class"]) == ((t["problem"], t["sample"]) in kept), t
        header, *steps = t["rows"]
        assert header[2] == "PRM" and all(0.0 <= float(s[2]) <= 1.0 for s in steps)  # every step scored
        assert header[4] == "gold (filtered on)" and all(s[5] in ("right", "wrong") for s in steps)
    assert {"kept", "rejected"} <= {c for t in traces for c in t["class"]}
    flawed = [t for t in traces if "wrong" in [s[5] for s in t["rows"][1:]]]
    assert flawed and all([s[6] for s in t["rows"][1:]].count("gold: first error") == 1 for t in flawed)

    png = tmp_path / "report.png"
    chromium(tmp_path, f"--screenshot={png}", "--window-size=1200,2000", page.as_uri())
    img = Image.open(png).convert("RGB")
    assert img.size == (1200, 2000)
    colours = img.getcolors(maxcolors=1 << 20)
    assert len(colours) > 200, f"screenshot {png} looks blank: {len(colours)} colours"
    assert max(ImageStat.Stat(img).stddev) > 20, f"screenshot {png} looks blank"


def test_report_refuses_filtered_data_from_other_rows(smoke_cfg, smoke_family, tmp_path):
    cfg = smoke_cfg.model_copy(update={"store_uri": str(tmp_path / "store"),
                                       "scoring": smoke_cfg.scoring.model_copy(update={"label_source": "gold"})})
    scored, filtered, _ = scored_round(cfg, smoke_family, 4)
    rows = store.read_rows(filtered)
    store.write_rows(rows[1:], filtered, {"filter": store.read_manifest(filtered)["filter"]})  # one kept trace missing
    with pytest.raises(ValueError, match="filtered.*not made from these rows"):
        trace_report(cfg, scored, filtered, str(tmp_path / "report"), 1)
