"""Bad input never passes silently: a clear error naming the URI, line and field (strict, and for
file-level faults always), or a quarantine file beside the published dataset plus counts (lenient)."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from components.config_sections import DataConfig, FamilyConfig
from components.data.families import get_family
from components.artifacts.layout import Layout
from components.data.families.custom import publish_problems
from components.data.ingest import BadInput

GOOD = [{"question": f"Tom has {i} apples and buys 3 more. How many does he have?",
         "answer": f"Tom has {i}+3 = <<{i}+3={i + 3}>>{i + 3} apples.\n#### {i + 3}"} for i in range(4)]
DUP = dict(GOOD[0])

# (case, jsonl line, field named in the error, reason) for the gsm8k family (no id column).
ROW_CASES = [
    ("malformed JSON", '{"question": "Tom has", "answer": ', None, "malformed JSON"),
    ("not an object", "[1, 2, 3]", None, "expected a JSON object, got list"),
    ("missing field", json.dumps({"question": "How many?"}), "answer", "missing field"),
    ("null field", json.dumps({"question": None, "answer": "#### 3"}), "question", "missing field"),
    ("empty field", json.dumps({"question": "  ", "answer": "#### 3"}), "question", "empty field"),
    ("wrong type", json.dumps({"question": ["How many?"], "answer": "#### 3"}), "question", "expected str, got list"),
    ("no answer line", json.dumps({"question": "How many?", "answer": "He has 3."}), "answer", "no final answer line"),
    ("non-numeric answer", json.dumps({"question": "Who?", "answer": "It is Tom.\n#### Tom"}), "answer", "not a number"),
    ("duplicated question", json.dumps(DUP), "question", "duplicated question"),
]


def write(path: Path, lines: list[str]) -> str:
    path.write_text("".join(line + "\n" for line in lines))
    return str(path)


def gsm8k(uri: str, **data):
    return get_family(FamilyConfig(name="gsm8k", data=DataConfig(train_uri=uri, eval_uri=uri, **data)))


def test_lenient_quarantines_every_bad_row_and_counts_it(tmp_path):
    lines = [json.dumps(g) for g in GOOD[:2]] + [c[1] for c in ROW_CASES] + [""] + [json.dumps(g) for g in GOOD[2:]]
    inputs = tmp_path / "in"
    inputs.mkdir()
    uri = write(inputs / "train.jsonl", lines)
    fam = gsm8k(uri)
    assert [p.answer for p in fam.problems("train")] == ["3", "4", "5", "6"]
    q = fam.quarantine["train"]
    # Nothing dropped uncounted: every non-blank line is either accepted or quarantined.
    assert q.counts() == {"rows_read": 4 + len(ROW_CASES), "rows_accepted": 4, "rows_quarantined": len(ROW_CASES)}
    for line, (case, _, fld, reason), r in zip(range(3, 3 + len(ROW_CASES)), ROW_CASES, q.rejected, strict=True):
        assert (r.line, r.field) == (line, fld) and reason in r.reason, case
        assert r.uri == uri and r.raw

    counts = publish_problems(fam, Layout(str(tmp_path / "store")))
    assert counts["train/rows_quarantined"] == len(ROW_CASES)
    assert counts["train/quarantined/answer: not a number"] == 1
    assert counts["train/quarantined/row: malformed JSON"] == 1
    quarantine = next((tmp_path / "store/data").iterdir()) / "train/quarantine.jsonl"
    written = [json.loads(line) for line in quarantine.read_text().splitlines()]
    assert [(w["line"], w["field"]) for w in written] == [(r.line, r.field) for r in q.rejected]
    assert sorted(p.name for p in inputs.iterdir()) == ["train.jsonl"]  # never written beside the input


@pytest.mark.parametrize("case, line, fld, reason", ROW_CASES, ids=[c[0] for c in ROW_CASES])
def test_strict_names_uri_line_and_field(tmp_path, case, line, fld, reason):
    uri = write(tmp_path / "train.jsonl", [json.dumps(GOOD[0]), line])
    with pytest.raises(BadInput) as err:
        gsm8k(uri, strict=True).problems("train")
    assert str(err.value).startswith(f"{uri}:2: " + (f"{fld}: " if fld else ""))
    assert reason in str(err.value)


def test_duplicated_ids_in_a_custom_file(tmp_path):
    rows = [{"uid": "a", "q": "One plus one?", "a": "2"}, {"uid": "b", "q": "Two plus two?", "a": "4"},
            {"uid": "a", "q": "Three plus three?", "a": "6"}]
    uri = write(tmp_path / "c.jsonl", [json.dumps(r) for r in rows])
    data = {"train_uri": uri, "fields": {"id": "uid", "question": "q", "answer": "a"}}
    fam = get_family(FamilyConfig(name="custom", data=DataConfig(**data)))
    assert [p.id for p in fam.problems("train")] == ["a", "b"]
    (r,) = fam.quarantine["train"].rejected
    assert (r.line, r.field) == (3, "uid") and r.reason == "duplicated id: 'a' also at line 1"
    with pytest.raises(BadInput, match=re.escape(f"{uri}:3: uid: duplicated id")):
        get_family(FamilyConfig(name="custom", data=DataConfig(strict=True, **data))).problems("train")


def test_non_numeric_answer_where_a_number_is_expected(tmp_path):
    uri = write(tmp_path / "c.jsonl", [json.dumps({"question": "Pick one.", "answer": "x = 5"}),
                                       json.dumps({"question": "Count them.", "answer": "$12"})])
    fam = get_family(FamilyConfig(name="custom", data=DataConfig(train_uri=uri)))
    assert [p.answer for p in fam.problems("train")] == ["12"]
    assert fam.quarantine["train"].rejected[0].reason == "not a number: 'x = 5'"


def test_problems_longer_than_the_context(tmp_path):
    long_q = {"question": "Tom counts apples. " * 40 + "How many?", "answer": "#### 3"}
    uri = write(tmp_path / "t.jsonl", [json.dumps(GOOD[0]), json.dumps(long_q)])
    fam = gsm8k(uri, max_prompt_tokens=64)
    assert len(fam.problems("train")) == 1
    assert fam.quarantine["train"].counts() == {"rows_read": 2, "rows_accepted": 1, "rows_quarantined": 1}
    with pytest.raises(BadInput, match=re.escape(f"{uri}:2: question: too long")):
        gsm8k(uri, max_prompt_tokens=64, strict=True).problems("train")


@pytest.mark.parametrize("strict", [False, True])
def test_file_level_faults_are_errors_naming_the_uri(tmp_path, strict):
    empty = write(tmp_path / "empty.jsonl", [])
    blank = write(tmp_path / "blank.jsonl", ["", "   "])
    latin1 = tmp_path / "latin1.jsonl"
    latin1.write_bytes((json.dumps(GOOD[0]) + "\n").encode() + '{"question": "Café?", "answer": "#### 1"}\n'.encode("latin-1"))
    cases = [(empty, "file is empty"), (blank, "file is empty"), (str(latin1), ":2: not UTF-8"),
             (str(tmp_path / "missing.jsonl"), "file not found"), (str(tmp_path), "is a directory")]
    for uri, msg in cases:
        with pytest.raises(BadInput, match=re.escape(f"{uri}") + ".*" + re.escape(msg)):
            gsm8k(uri, strict=strict).problems("train")
    all_bad = write(tmp_path / "bad.jsonl", ["{nope", "[]"])
    with pytest.raises(BadInput, match=re.escape(all_bad) + (": no usable rows" if not strict else ":1: malformed JSON")):
        gsm8k(all_bad, strict=strict).problems("train")


def test_parquet_with_the_wrong_columns_or_not_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    wrong = tmp_path / "wrong.parquet"
    pq.write_table(pa.Table.from_pylist([{"question": "Q?", "solution": "#### 1"}]), wrong)
    with pytest.raises(BadInput, match=re.escape(f"{wrong}: parquet file lacks column(s) answer; it has question, solution")):
        gsm8k(str(wrong)).problems("train")
    fake = tmp_path / "fake.parquet"
    fake.write_text(json.dumps(GOOD[0]))
    with pytest.raises(BadInput, match=re.escape(f"{fake}: not a readable parquet file")):
        gsm8k(str(fake)).problems("train")


def test_config_faults_are_named(tmp_path):
    fam = get_family(FamilyConfig(name="gsm8k", data=DataConfig(train_uri=write(tmp_path / "t.jsonl", [json.dumps(GOOD[0])]))))
    with pytest.raises(BadInput, match="family.data.eval_uri: not set"):
        fam.problems("eval")
    with pytest.raises(ValueError, match="family.data.fields: unknown name.*questoin"):
        get_family(FamilyConfig(name="custom", data=DataConfig(fields={"questoin": "q"})))
