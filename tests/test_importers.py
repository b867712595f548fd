"""Importing human step labels (PRM800K, Math-Shepherd) from fixture files written to the published
schemas, with their broken rows; exporting our traces to both formats and reading them back."""
import hashlib
import json
import re
from pathlib import Path

import pytest

from components.data import importers
from components.stages import labels as labels_stage
from components.stages import prm as prm_stage
from components.artifacts import store
from components.config_scoring import LabelsConfig
from components.data.importers import import_labels, write_math_shepherd, write_prm800k
from components.data.ingest import BadInput

FIX = Path(__file__).parent / "fixtures" / "labels"
PRM, SHEP = str(FIX / "prm800k.jsonl"), str(FIX / "math_shepherd.jsonl")

# line -> (field, start of the reason) of every broken row in the fixtures
PRM_BAD = {8: (None, "malformed JSON"), 9: ("label", "missing field"),
           10: ("label.steps[1].completions[0].rating", "rating not -1, 0, 1 or null: got 2"),
           11: ("label.steps[2].chosen_completion", "chosen index out of range: 3 with 1"),
           12: ("label.steps", "empty field"), 13: ("label.finish_reason", "bad_problem"),
           14: ("label.steps[1].completions[0].flagged", "flagged"),
           15: ("label.finish_reason", "unknown finish_reason: 'timeout'"),
           16: (None, "expected a JSON object, got list")}
SHEP_BAD = {4: ("label", "step tag counts differ"), 5: ("label", "label still has step tags: 2"),
            6: ("label", "not + or -: step 1 has '?'"), 7: ("input", "missing field"),
            8: ("input", "no 'Step 1' before the first step tag"), 9: (None, "malformed JSON"),
            10: ("input", "no step tag")}


def by_line(rows):
    return {r["source_line"]: r for r in rows}


def quarantined(q):
    return {r.line: (r.field, r.reason) for r in q.rejected}


def assert_quarantine(q, expected):
    got = quarantined(q)
    assert set(got) == set(expected)
    for line, (field, reason) in expected.items():
        assert got[line][0] == field and got[line][1].startswith(reason), (line, got[line])


# ------------------------------------------------------------------------------------------ PRM800K

def test_prm800k_rows_follow_the_chosen_path_and_bad_rows_are_quarantined(tmp_path):
    rows, q = import_labels(PRM, LabelsConfig(format="prm800k"))
    r = by_line(rows)
    assert sorted(r) == [1, 2, 3, 4, 5, 6]
    one = r[1]
    assert one["prompt"] == "What is $2+3\\cdot 4$?\n"
    assert one["problem_id"] == hashlib.sha1(one["prompt"].encode()).hexdigest()[:12]
    assert one["steps"] == ["I need to multiply before adding.", "$3\\cdot 4 = 12$.",
                            "So $2 + 12 = 14$.\n\n# Answer\n\n14"]
    assert one["completion"] == "\n".join(one["steps"]) + "\n"
    assert (one["step_labels"], one["step_scores"], one["label_first_error"]) == ([1, 1, 1], [1.0, 1.0, 1.0], -1)
    assert (one["correct"], one["answer"], one["difficulty"], one["label_source"], one["gold_first_error"]) == \
        (True, "14", 3, "labels", None)
    assert one["source_uri"] == PRM
    # found_error in phase 2: the unchosen last step's -1 completion is the first error and ends the trace
    assert r[2]["steps"][-1].startswith("So the greatest common factor is") and len(r[2]["steps"]) == 3
    assert (r[2]["step_labels"], r[2]["label_first_error"], r[2]["correct"]) == ([1, 1, 0], 2, None)
    # phase 1: the labeller's own step stands in for an all -1 step; \frac{5}{2} matches \frac52
    assert r[3]["steps"][1] == "Dividing top and bottom by $2$ gives $\\frac{5}{2}$."
    assert (r[3]["step_labels"], r[3]["correct"]) == ([1, 1, 1], True)
    # give_up keeps its rated steps only
    assert (len(r[4]["steps"]), r[4]["step_labels"], r[4]["correct"]) == (2, [1, 1], None)
    # a chosen -1 ends the trace: the step after it is gone
    assert (r[5]["steps"], r[5]["step_labels"], r[5]["label_first_error"]) == \
        (["Subtract $3$ from both sides: $x = 5 + 3$."], [0], 0)
    # a null rating is an unlabelled step
    assert (r[6]["step_labels"], r[6]["step_scores"], r[6]["correct"]) == ([None, 1], [None, 1.0], True)

    assert_quarantine(q, PRM_BAD)
    assert q.counts() == {"rows_read": 15, "rows_accepted": 6, "rows_quarantined": 9}
    assert q.reasons()["label.steps[].completions[].rating: rating not -1, 0, 1 or null"] == 1
    out = q.write(str(tmp_path / "quarantine.jsonl"))
    written = [json.loads(x) for x in Path(out).read_text().splitlines()]
    assert [w["line"] for w in written] == sorted(PRM_BAD) and all(w["raw"] and w["uri"] == PRM for w in written)


@pytest.mark.parametrize("neutral, labels, first", [("correct", [1, 1, 0], 2), ("wrong", [0, 1, 0], 0),
                                                   ("skip", [None, 1, 0], 2)])
def test_prm800k_neutral_setting(neutral, labels, first):
    r = by_line(import_labels(PRM, LabelsConfig(format="prm800k", neutral=neutral))[0])
    assert (r[2]["step_labels"], r[2]["label_first_error"]) == (labels, first)
    assert r[1]["step_labels"] == [1, 1, 1]  # no neutral step: no change


# ------------------------------------------------------------------------------------ Math-Shepherd

def test_math_shepherd_rows_and_quarantine():
    rows, q = import_labels(SHEP, LabelsConfig(format="math_shepherd"))
    r = by_line(rows)
    assert sorted(r) == [1, 2, 3]
    assert r[1]["prompt"].startswith("If Buzz bought a pizza") and r[1]["prompt"].endswith("the waiter ate?\n")
    assert r[1]["steps"][0] == "The total ratio representing the pizza is 5+8 = <<5+8=13>>13."  # "Step 1:" dropped
    assert r[1]["steps"][-1] == "The waiter ate 52 slices of the pizza. The answer is: 52"
    assert (r[1]["step_labels"], r[1]["label_first_error"], r[1]["correct"]) == ([1, 0, 0, 0, 0], 1, False)
    assert (r[2]["step_labels"], r[2]["correct"], r[2]["difficulty"]) == ([1, 1], True, 2)
    assert r[3]["steps"] == ["I know that $\\sqrt{16} = 4$.", "So $36 \\times 4 = 144$.",
                             "And $\\sqrt{144} = 12$. The answer is: 12"]
    assert_quarantine(q, SHEP_BAD)
    assert q.counts() == {"rows_read": 10, "rows_accepted": 3, "rows_quarantined": 7}


def test_math_shepherd_parquet_like_the_published_dataset(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    lines = FIX.joinpath("math_shepherd.jsonl").read_text(encoding="utf-8").splitlines()[:3]
    pq.write_table(pa.Table.from_pylist([json.loads(x) for x in lines]), tmp_path / "train.parquet")
    rows, q = import_labels(str(tmp_path / "train.parquet"), LabelsConfig(format="math_shepherd"))
    local = import_labels(SHEP, LabelsConfig(format="math_shepherd"))[0]
    drop = ("source_uri",)
    assert [{k: v for k, v in x.items() if k not in drop} for x in rows] == \
        [{k: v for k, v in x.items() if k not in drop} for x in local]
    pq.write_table(pa.table({"input": ["x ки"]}), tmp_path / "nolabel.parquet")
    with pytest.raises(BadInput, match=r"nolabel.parquet: parquet file lacks column\(s\) label"):
        import_labels(str(tmp_path / "nolabel.parquet"), LabelsConfig(format="math_shepherd"))


# ----------------------------------------------------------------------------------- strict and files

@pytest.mark.parametrize("fmt, path, line", [("prm800k", PRM, n) for n in PRM_BAD] +
                         [("math_shepherd", SHEP, n) for n in SHEP_BAD])
def test_strict_mode_names_uri_line_and_field(tmp_path, fmt, path, line):
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    uri = str(tmp_path / "labels.jsonl")
    Path(uri).write_text("\n".join([lines[0], lines[line - 1]]) + "\n", encoding="utf-8")  # the bad row on line 2
    field, reason = (PRM_BAD if fmt == "prm800k" else SHEP_BAD)[line]
    with pytest.raises(BadInput) as e:
        import_labels(uri, LabelsConfig(format=fmt, strict=True))
    assert str(e.value).startswith(f"{uri}:2: " + (f"{field}: " if field else "") + reason)


def test_strict_fails_at_the_first_bad_row_of_a_file():
    with pytest.raises(BadInput, match=re.escape(f"{PRM}:8: malformed JSON")):
        import_labels(PRM, LabelsConfig(format="prm800k", strict=True))


@pytest.mark.parametrize("name, message", [("prm800k_latin1.jsonl", ":2: not UTF-8"),
                                           ("empty.jsonl", ": file is empty"),
                                           ("missing.jsonl", ": file not found")])
@pytest.mark.parametrize("strict", [False, True])
def test_file_level_faults_fail_even_when_lenient(name, message, strict):
    uri = str(FIX / name)
    with pytest.raises(BadInput, match=re.escape(uri + message)):
        import_labels(uri, LabelsConfig(format="prm800k", strict=strict))


def test_import_from_s3(s3):
    import fsspec

    fs = fsspec.filesystem("s3", skip_instance_cache=True)  # endpoint from AWS_ENDPOINT_URL, like the app
    for fmt, path in (("prm800k", PRM), ("math_shepherd", SHEP)):
        uri = s3.uri(f"labels/{Path(path).name}")
        fs.put_file(path, uri)
        rows, q = import_labels(uri, LabelsConfig(format=fmt))
        local_rows, local_q = import_labels(path, LabelsConfig(format=fmt))
        assert {r["source_uri"] for r in rows} == {uri}
        assert [{**r, "source_uri": None} for r in rows] == [{**r, "source_uri": None} for r in local_rows]
        assert quarantined(q) == quarantined(local_q) and q.counts() == local_q.counts()
    with pytest.raises(BadInput, match="file not found"):
        import_labels(s3.uri("labels/nope.jsonl"), LabelsConfig())


# -------------------------------------------------------------------------------------- round trips

def arith_traces(fam, n=12):
    """Scored traces like the score stage writes (gold labels): gold solutions, and every third one
    with a wrong step (a middle step, or the answer line)."""
    rows = []
    for i, p in enumerate(fam.problems("train")[:n]):
        steps = fam.split_steps(fam.gold_solution(p))
        if i % 3 == 1:
            k = len(steps) // 2
            steps[k] = re.sub(r"(\d+)$", lambda m: str(int(m.group(1)) + 1), steps[k])
        elif i % 3 == 2:
            steps[-1] = f"Answer: {int(p.answer) + 1}"
        completion = fam.steps_text(steps)
        rows.append({"problem_id": p.id, "prompt": p.prompt, "answer": p.answer, "completion": completion,
                     "steps": steps, "step_labels": fam.step_labels(p, completion),
                     "correct": fam.is_correct(p, completion)})
    return rows


def test_round_trip_prm800k(smoke_family, tmp_path):
    rows = arith_traces(smoke_family)
    rows[0]["step_labels"] = [None] + rows[0]["step_labels"][1:]  # an unlabelled step survives as a null rating
    uri = write_prm800k(rows, str(tmp_path / "out" / "labels.jsonl"))
    back, q = import_labels(uri, LabelsConfig(format="prm800k"))
    assert q.counts()["rows_quarantined"] == 0 and len(back) == len(rows)
    for a, b in zip(rows, back):
        cut = a["step_labels"].index(0) + 1 if 0 in a["step_labels"] else len(a["steps"])  # PRM800K stops at the error
        assert (b["problem_id"], b["prompt"]) == (a["problem_id"], a["prompt"])  # same id as the arith family's
        assert (b["steps"], b["step_labels"]) == (a["steps"][:cut], a["step_labels"][:cut])
        # the answer is checked only where the trace reaches one
        assert b["correct"] == (a["correct"] if b["steps"][-1].startswith("Answer:") else None)
    assert {b["correct"] for b in back} == {True, False, None}
    first = json.loads(Path(uri).read_text().splitlines()[0])
    assert first["label"]["steps"][0]["completions"][0]["rating"] is None
    assert first["label"]["finish_reason"] == "solution"


def test_round_trip_math_shepherd(smoke_family, tmp_path):
    rows = arith_traces(smoke_family)
    uri = write_math_shepherd(rows, str(tmp_path / "ms.jsonl"))
    back, q = import_labels(uri, LabelsConfig(format="math_shepherd"))
    assert q.counts()["rows_quarantined"] == 0
    assert [(b["problem_id"], b["steps"], b["step_labels"], b["correct"]) for b in back] == \
        [(a["problem_id"], a["steps"], a["step_labels"], a["step_labels"][-1] == 1) for a in rows]
    with pytest.raises(ValueError, match="row 0: Math-Shepherd needs a \\+ or - for every step"):
        write_math_shepherd([{**rows[0], "step_labels": [None] * len(rows[0]["steps"])}], str(tmp_path / "x.jsonl"))
    assert importers.EXPORTERS["math_shepherd"] is write_math_shepherd
    assert set(importers.IMPORTERS) == {"prm800k", "math_shepherd"}


def test_imported_traces_are_decontaminated_and_train_a_prm(smoke_cfg, smoke_family, tiny_model_uri, tmp_path):
    """The flow's path: the import stage drops traces of evaluation problems, then the PRM trains on the
    imported traces alone (with_generated: false) or together with generated ones (None labels included)."""
    from components.loop import labels_uri

    fam = smoke_family
    leaked = [{"prompt": p.prompt, "answer": p.answer, "steps": fam.split_steps(fam.gold_solution(p)),
               "step_labels": [1] * len(fam.split_steps(fam.gold_solution(p))), "correct": True}
              for p in fam.problems("eval")[:3]]
    source = write_prm800k(arith_traces(fam, n=24) + leaked, str(tmp_path / "labels.jsonl"))
    generated = str(tmp_path / "generated")
    store.write_rows([{**r, "label_source": "gold", "step_scores": [float(y) for y in r["step_labels"]]}
                      for r in arith_traces(fam, n=30)[24:]], generated)
    for with_generated, expected in ((False, 24), (True, 30)):
        labels = LabelsConfig(uri=source, neutral="skip", with_generated=with_generated)
        cfg = smoke_cfg.model_copy(update={"scoring": smoke_cfg.scoring.model_copy(update={"labels": labels})})
        c = cfg
        m = labels_stage.run(c, labels_uri(cfg))
        assert (m["rows_accepted"], m["decontam_dropped"], m["traces"]) == (27, 3, 24)
        assert not {r["prompt"] for r in store.read_rows(labels_uri(cfg))} & {r["prompt"] for r in leaked}
        m = prm_stage.run(c, str(tmp_path / f"prm-{with_generated}"), tiny_model_uri, 1, [labels_uri(cfg), generated])
        assert m["examples"] == expected
