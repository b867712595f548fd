"""File-backed families on real data: GSM8K lines from shared/data/gsm8k, MATH-style problems
checked by math-verify, and `custom` files (jsonl locally, parquet on a real S3 server)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from components.artifacts import store
from components.config_sections import DataConfig, FamilyConfig
from components.data.families import get_family
from components.artifacts.layout import Layout
from components.data.families.answers import ANSWER_LINE, normalize_number
from components.data.families.custom import publish_problems
from components.data.families.gsm8k import annotation_labels, check_annotation
from components.data.ingest import BadInput, Quarantine, reject_long

FIXTURES = Path(__file__).parent / "fixtures/data"


def gsm8k_dir() -> Path:
    """The real GSM8K files: ../shared beside the clone (CI), or /work/shared."""
    for d in (Path(__file__).resolve().parents[2] / "shared/data/gsm8k", Path("/work/shared/data/gsm8k")):
        if (d / "train.jsonl").is_file():
            return d
    raise FileNotFoundError("GSM8K not found at ../shared/data/gsm8k or /work/shared/data/gsm8k")


def family(name: str, **data) -> object:
    return get_family(FamilyConfig(name=name, data=DataConfig(**data)))


@pytest.fixture(scope="module")
def gsm8k():
    d = gsm8k_dir()
    return family("gsm8k", train_uri=str(d / "train.jsonl"), eval_uri=str(d / "test.jsonl"))


def real_line(n: int, split: str = "train") -> dict:
    with open(gsm8k_dir() / f"{split}.jsonl") as f:
        for i, line in enumerate(f, 1):
            if i == n:
                return json.loads(line)
    raise IndexError(n)


# ------------------------------------------------------------------------------------------- gsm8k

def test_gsm8k_reads_every_real_row_and_its_gold_solution_verifies(gsm8k):
    train, test = gsm8k.problems("train"), gsm8k.problems("eval")
    # Every non-blank line of the real files is accounted for, and none is bad.
    assert gsm8k.quarantine["train"].counts()["rows_read"] == len(gsm8k_dir().joinpath("train.jsonl").read_text().splitlines())
    assert len(train) == gsm8k.quarantine["train"].accepted and not gsm8k.quarantine["eval"].rejected
    assert len({p.id for p in train}) == len(train)
    for p in train + test:
        gold = gsm8k.gold_solution(p)
        assert gsm8k.is_correct(p, gold), gold
        # One step per reference line, ending at its answer line (`#### N`; in 2 rows an earlier
        # "The answer is 8." line, where the trace ends).
        assert ANSWER_LINE.search(gsm8k.split_steps(gold)[-1]) 
        ref_lines = [line.rstrip() for line in p.meta["solution"].splitlines() if line.strip()]
        assert gsm8k.split_steps(gold) == ref_lines[: len(gsm8k.split_steps(gold))]
        # Reference annotations all verify: the labeller never calls a real GSM8K step wrong.
        assert 0 not in gsm8k.step_labels(p, gold)


def test_gsm8k_problem_fields_from_a_real_line(gsm8k):
    p = gsm8k.problems("train")[0]
    row = real_line(1)
    assert p.prompt == row["question"] + "\n" and p.answer == "72"
    assert p.difficulty == 2  # two solution lines before `#### 72`
    assert gsm8k.gold_solution(p) == row["answer"] + "\n"  # annotations kept, one step per line
    assert gsm8k.first_error(p, gsm8k.gold_solution(p)) is None  # no exact step truth
    assert gsm8k.problems("bootstrap")[0] == p


def test_gsm8k_answer_with_thousands_comma_is_normalised(gsm8k):
    p = next(p for p in gsm8k.problems("train") if "," in p.meta["solution"].splitlines()[-1])
    raw = p.meta["solution"].splitlines()[-1][5:]
    assert "," not in p.answer and p.answer == raw.replace(",", "")
    steps = gsm8k.split_steps(p.meta["solution"])[:-1]
    assert gsm8k.is_correct(p, gsm8k.steps_text(steps + [f"The answer is ${raw}."]))


@pytest.mark.parametrize("final, expected", [
    ("#### 72", "72"), ("The answer is 72.", "72"), ("So the answer is $72.00", "72"), ("Answer: 72 clips", "72"),
    ("The final answer is: 72.0", "72"), ("She sold 72 clips in all.", "72")])
def test_gsm8k_extracts_the_answer_in_every_form(gsm8k, final, expected):
    p = gsm8k.problems("train")[0]
    steps = real_line(1)["answer"].splitlines()[:-1]
    marked = not final.startswith("She")
    # After an answer line the model's babble is not part of the trace (nor of its answer).
    completion = "\n".join(steps + [final] + ["Then 5 more pages, 99"] * marked) + "\n"
    assert gsm8k.extract_answer(completion) == expected
    assert gsm8k.is_correct(p, completion)
    assert gsm8k.split_steps(completion)[-1] == final


def test_gsm8k_marker_beats_numbers_and_fallback_is_configurable():
    d = gsm8k_dir()
    strict = family("gsm8k", train_uri=str(d / "train.jsonl"), eval_uri=str(d / "test.jsonl"),
                    last_number_fallback=False)
    steps = real_line(1)["answer"].splitlines()[:-1]
    p = strict.problems("train")[0]
    no_marker = "\n".join(steps) + "\n"  # ends "... 72 clips altogether": only the fallback finds 72
    assert strict.extract_answer(no_marker) is None and not strict.is_correct(p, no_marker)
    fam = family("gsm8k", train_uri=str(d / "train.jsonl"), eval_uri=str(d / "test.jsonl"))
    assert fam.extract_answer(no_marker) == "72"
    # A wrong `####` line is wrong even though the right number appears earlier.
    assert not fam.is_correct(p, no_marker + "#### 24\n")


@pytest.mark.parametrize("text, expected", [
    ("$1,080", "1080"), ("18.0", "18"), ("-0.50 dollars", "-0.5"), ("25%", "25"), ("  $ 7 ", "7"),
    ("1,000,000 people", "1000000"), (".5", "0.5"), ("no digits", None)])
def test_numeric_normalisation(text, expected):
    assert normalize_number(text) == expected


def test_numeric_reference_must_be_just_a_number():
    assert normalize_number("x = 5", whole=True) is None and normalize_number("1/2", whole=True) is None
    assert normalize_number("5 apples", whole=True) == "5"


def test_annotation_labels_on_real_steps():
    steps = real_line(1)["answer"].splitlines()  # Natalia: <<48/2=24>>24, <<48+24=72>>72, #### 72
    assert annotation_labels(steps) == [1, 1, None]
    wrong_first = [steps[0].replace("=24>>24", "=25>>25")] + steps[1:]
    assert annotation_labels(wrong_first) == [0, 0, 0]
    misquoted = [steps[0], steps[1].replace(">>72", ">>27")] + steps[2:]  # right calculator, wrong copy
    assert annotation_labels(misquoted) == [1, 0, 0]
    # Unannotated steps say nothing: unknown, not correct.
    plain = [s.split("<<")[0] + s.split(">>")[-1] if "<<" in s else s for s in steps]
    assert annotation_labels(plain) == [None, None, None]
    assert annotation_labels(["First think.", steps[1], "Then 2+2 = <<2+2=5>>5"]) == [None, 1, 0]


def test_annotation_check_rules():
    assert check_annotation("10/3=3.33") and check_annotation("3/4=3/4")  # rounded as shown; a fraction
    assert annotation_labels(["Use <<3/4=3/4>>3/4 cup."]) == [1]  # the `3` of `3/4` is not its copy
    assert check_annotation("10/3=3.4") is False and check_annotation("10/3=5") is False
    assert check_annotation("48/2=25") is False and check_annotation("7*3=20") is False  # whole values: exact
    assert check_annotation("2**100000=1") is None  # powers are not evaluated: no input can blow up
    assert check_annotation("apples=5") is None and check_annotation("48/2") is None
    assert check_annotation("1/0=1") is None


def test_long_problems_are_quarantined_with_their_line(gsm8k):
    problems = gsm8k.problems("eval")[:50]
    q = Quarantine("mem://eval.jsonl")
    q.accepted = len(problems)
    words = lambda text: len(text.split())  # noqa: E731  (a whitespace tokenizer)
    kept = reject_long(problems, words, 40, q)
    assert kept == [p for p in problems if words(p.prompt) <= 40] and 0 < len(kept) < len(problems)
    assert q.counts() == {"rows_read": 50, "rows_accepted": len(kept), "rows_quarantined": 50 - len(kept)}
    assert {r.line for r in q.rejected} == {p.meta["line"] for p in problems if p not in kept}
    assert all("too long" in r.reason and r.field == "question" for r in q.rejected)


def test_max_prompt_tokens_counts_characters_without_a_tokenizer():
    d = gsm8k_dir()
    fam = family("gsm8k", train_uri=str(d / "train.jsonl"), eval_uri=str(d / "test.jsonl"), max_prompt_tokens=240)
    kept = fam.problems("eval")
    q = fam.quarantine["eval"]
    assert all(len(p.prompt) <= 240 for p in kept) and len(kept) + len(q.rejected) == 1319
    assert q.reasons() == {"question: too long": len(q.rejected)} and q.rejected


def test_splits_sizes_and_publishing(tmp_path):
    d = gsm8k_dir()
    fam = family("gsm8k", train_uri=str(d / "train.jsonl"), eval_uri=str(d / "test.jsonl"),
                 bootstrap_size=100, eval_size=30)
    assert len(fam.problems("bootstrap")) == 100 and len(fam.problems("eval")) == 30
    counts = publish_problems(fam, Layout(str(tmp_path / "store")))
    assert counts["train/rows_accepted"] == 7473 and counts["eval/rows_published"] == 30
    assert counts["bootstrap/rows_published"] == 100
    base = next((tmp_path / "store/data").iterdir())
    rows = store.read_rows(str(base / "eval"))
    assert [r["problem_id"] for r in rows] == [p.id for p in fam.problems("eval")]
    assert not (base / "eval/quarantine.jsonl").exists()  # nothing was rejected


# -------------------------------------------------------------------------------------------- math

@pytest.fixture(scope="module")
def math_fam():
    uri = str(FIXTURES / "math_sample.jsonl")
    return family("math", train_uri=uri, eval_uri=uri)


def test_math_reads_boxed_answers_and_levels(math_fam):
    ps = math_fam.problems("train")
    assert [p.answer for p in ps] == ["\\frac{3}{4}", "\\sqrt{2}", "(4,3)", "6"]
    assert [p.difficulty for p in ps] == [1, 3, 2, 1]  # "Level ?" -> 1
    assert all(math_fam.is_correct(p, math_fam.gold_solution(p)) for p in ps)
    assert math_fam.first_error(ps[0], "x") is None and math_fam.step_labels(ps[0], "a\nb\n") == [None, None]


@pytest.mark.parametrize("i, completion, ok", [
    (0, "So the sum is $\\boxed{0.75}$.", True), (0, "The answer is $\\boxed{\\dfrac34}$", True),
    (0, "The answer is $\\boxed{\\frac{2}{3}}$", False), (1, "$x=\\boxed{2^{1/2}}$", True),
    (1, "$\\boxed{1.41}$", False), (2, "The pair is $\\boxed{(4, 3)}$.", True), (2, "$\\boxed{(3,4)}$", False),
    (3, "There are six.", False), (3, "Final answer: 6", True)])
def test_math_verify_decides_correctness(math_fam, i, completion, ok):
    assert math_fam.is_correct(math_fam.problems("train")[i], "Some work.\n" + completion + "\n") is ok


def test_math_answer_column_and_missing_box(tmp_path):
    rows = [{"problem": "1+1?", "solution": "It is two.", "answer": "2", "level": 5},
            {"problem": "2+2?", "solution": "It is four, no box."}]
    f = tmp_path / "m.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with_answer = family("math", train_uri=str(f), fields={"answer": "answer"})
    assert [p.answer for p in with_answer.problems("train")] == ["2"]
    assert with_answer.problems("train")[0].difficulty == 5  # an int level works too
    assert with_answer.quarantine["train"].reasons() == {"answer: missing field": 1}
    boxed = family("math", train_uri=str(f))
    with pytest.raises(BadInput, match=r"m\.jsonl: no usable rows"):
        boxed.problems("train")  # neither solution has a box
    assert boxed.quarantine["train"].reasons() == {"solution: no \\boxed{} answer in the solution": 2}


# ------------------------------------------------------------------------------------------ custom

CUSTOM_FIELDS = {"question": "prompt_text", "answer": "target", "solution": "work", "id": "uid"}


def test_custom_jsonl_with_field_mapping_and_verifiers():
    uri = str(FIXTURES / "custom_sample.jsonl")
    numeric = family("custom", train_uri=uri, eval_uri=uri, fields=CUSTOM_FIELDS)
    ps = numeric.problems("train")
    assert [p.id for p in ps] == ["q1", "q3"] and [p.answer for p in ps] == ["7", "1000"]
    assert numeric.quarantine["train"].reasons() == {"target: not a number": 1}  # "Paris"
    assert numeric.is_correct(ps[1], "Spend it.\nAnswer: $1,000.00\n") and ps[0].difficulty == 1
    exact = family("custom", train_uri=uri, eval_uri=uri, fields=CUSTOM_FIELDS, verifier="exact")
    paris = exact.problems("train")[1]
    assert exact.is_correct(paris, "Answer: Paris") and not exact.is_correct(paris, "Answer: paris.x")
    assert exact.gold_solution(paris) == "France's capital is Paris.\nAnswer: Paris\n"
    mv = family("custom", train_uri=uri, fields={**CUSTOM_FIELDS, "answer": "target"}, verifier="math_verify")
    assert mv.is_correct(mv.problems("train")[0], "3+4 is $\\boxed{7}$")


def test_custom_parquet_on_s3(s3, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [json.loads(line) for line in (FIXTURES / "custom_sample.jsonl").read_text().splitlines()]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "c.parquet")
    uri = s3.uri("data/custom.parquet")
    fs, path = store.fs_for(uri)
    fs.put_file(str(tmp_path / "c.parquet"), path)
    fam = family("custom", train_uri=uri, eval_uri=uri, fields=CUSTOM_FIELDS, verifier="exact")
    assert [p.id for p in fam.problems("eval")] == ["q1", "q2", "q3"]
    assert fam.problems("train")[0].meta["uri"] == uri
    # Publishing writes beside the store's copy, never beside the input.
    counts = publish_problems(fam, Layout(s3.uri("store")))
    assert counts["train/rows_read"] == 3 and fs.ls(fs._parent(path)) == [path]


def test_math_majority_vote_groups_equivalent_answers(math_fam):
    """Issue #12: maj@k compared raw strings, so `\\dfrac34` and `\\frac{3}{4}` split the vote and a
    right majority counted as wrong."""
    from components.evaluation.heldout import sampled_metrics

    p = math_fam.problems("train")[0]  # answer \frac{3}{4}
    texts = ["$\\boxed{\\dfrac34}$", "$\\boxed{\\frac{3}{4}}$", "$\\boxed{0.75}$", "$\\boxed{\\frac{2}{3}}$",
             "$\\boxed{\\frac{2}{3}}$"]
    group = [{"answer": math_fam.extract_answer(t), "correct": math_fam.is_correct(p, t), "prm_scores": []}
             for t in texts]
    assert sum(s["correct"] for s in group) == 3
    assert sampled_metrics([group], False, math_fam.same_answer)["maj_at_k"] == 1.0  # 3 equal answers vs 2
    assert math_fam.same_answer("\\dfrac34", "0.75") and not math_fam.same_answer("\\frac{2}{3}", "0.75")


def test_rounded_model_style_steps_are_not_flagged():
    """Steps as models (and people) write them: a whole count of a fraction (floor or ceiling),
    decimals cut off or rounded, a share shown as a percent. Flagging them taught the PRM and the
    calculator filter that right steps are wrong."""
    steps = ["Each box holds 2, so 7 cakes fill <<7/2=3>>3 boxes.",
             "To hold all 7 they need <<7/2=4>>4 boxes.",
             "Two thirds is <<2/3=0.66>>0.66 of the class; rounded, <<2/3=0.67>>0.67.",
             "Half of them is <<1/2=0.5>>50% of the class.",
             "Then <<0.25*3=0.75>>75 % are left."]
    assert annotation_labels(steps) == [1, 1, 1, 1, 1]
    assert check_annotation("7/2=3") and check_annotation("7/2=4") and not check_annotation("7/2=2")
    assert check_annotation("2/3=0.66") and check_annotation("2/3=0.67") and not check_annotation("2/3=0.65")
    assert annotation_labels(["Half is <<1/2=0.5>>5% of it."]) == [0]  # a percent that is not the result
    assert annotation_labels(["Half is <<1/2=0.5>>50 apples."]) == [0]  # no percent sign: 50 is not 0.5
