import json
import re

import pytest

from components.config_sections import EvalSplitConfig, FamilyConfig, SplitConfig
from components.data.families import FAMILIES, Problem, get_family
from components.data.families.arith import APPLY, Arith, make_problem

SMALL = FamilyConfig(
    operations=["add", "sub", "mul", "mod10", "max", "mul0"],
    bootstrap=SplitConfig(min_ops=1, max_ops=3, size=3000),
    train=SplitConfig(min_ops=4, max_ops=5, size=300),
    eval=EvalSplitConfig(min_ops=1, max_ops=6, per_level=40),
)

# 12 +5 *3 -4 %10 ^40: values 12 -> 17 -> 51 -> 47 -> 7 -> 40
P = make_problem(12, [["+", 5], ["*", 3], ["-", 4], ["%", 10], ["^", 40]])
GOLD = ["12+5=17", "17*3=51", "51-4=47", "47%10=7", "7^40=40", "Answer: 40"]


def text(lines):
    return "".join(line + "\n" for line in lines)


@pytest.fixture(scope="module")
def fam():
    return Arith(SMALL, seed=0)


def all_splits(f):
    return {s: f.problems(s) for s in ("bootstrap", "train", "eval")}


# ---- registry --------------------------------------------------------------------------------------

def test_registry():
    assert FAMILIES["arith"] is Arith
    assert isinstance(get_family(SMALL, seed=3), Arith)
    with pytest.raises(ValueError, match=r"'nope'.*arith"):
        get_family(FamilyConfig(name="nope"))


def test_make_problem():
    assert P.prompt == "12 +5 *3 -4 %10 ^40\n"
    assert (P.answer, P.difficulty) == ("40", 5)
    assert re.fullmatch(r"[0-9a-f]{12}", P.id) and P.id == make_problem(12, P.meta["ops"]).id
    assert json.loads(json.dumps(P.meta)) == P.meta
    assert hash(P) == hash(make_problem(12, P.meta["ops"]))  # usable in sets despite the dict meta


# ---- splits ----------------------------------------------------------------------------------------

def test_deterministic_per_seed():
    a, b, c = all_splits(Arith(SMALL, 0)), all_splits(Arith(SMALL, 0)), all_splits(Arith(SMALL, 1))
    assert a == b
    for s in a:
        assert [p.prompt for p in a[s]] != [p.prompt for p in c[s]]


def test_sizes_levels_and_order(fam):
    sp = all_splits(fam)
    assert len(sp["bootstrap"]) == 3000 and len(sp["train"]) == 300 and len(sp["eval"]) == 6 * 40
    assert [p.difficulty for p in sp["eval"]] == [lvl for lvl in range(1, 7) for _ in range(40)]
    assert {p.difficulty for p in sp["train"]} == {4, 5}
    assert {p.difficulty for p in sp["bootstrap"]} == {1, 2, 3}
    assert len({p.prompt for p in sp["train"]}) == 300
    assert len({p.prompt for p in sp["eval"]}) == 240


def test_splits_disjoint(fam):
    sp = all_splits(fam)
    boot, train, ev = ({p.prompt for p in sp[s]} for s in ("bootstrap", "train", "eval"))
    assert not boot & train and not boot & ev and not train & ev
    # would fail without the exclusion: 1-3 op eval prompts are easy to redraw in bootstrap
    cfg = SMALL.model_copy(update={"bootstrap": SplitConfig(min_ops=1, max_ops=1, size=20000)})
    f = Arith(cfg, 0)
    assert not {p.prompt for p in f.problems("bootstrap")} & {p.prompt for p in f.problems("eval")}


def test_values_in_range_and_prompt_format(fam):
    for p in fam.problems("bootstrap") + fam.problems("train") + fam.problems("eval"):
        value = p.meta["start"]
        assert 0 <= value <= 99
        for sym, c in p.meta["ops"]:
            assert (sym, c) == ("%", 10) or (sym == "^" and 10 <= c <= 99) or (sym == "*" and c in range(10)) \
                or (sym in "+-" and 1 <= c <= 9)
            value = APPLY[sym](value, c)
            assert 0 <= value <= 99
        assert str(value) == p.answer and p.difficulty == len(p.meta["ops"])
        assert re.fullmatch(r"\d+( [-+*%^]\d+)+\n", p.prompt)


def test_all_op_kinds_drawn_and_only_allowed_ones(fam):
    syms = {f"{s}{c}" if c in (0, 10) else s for p in fam.problems("bootstrap") for s, c in p.meta["ops"]}
    assert syms >= {"+", "-", "*", "%10", "^", "*0"}
    only = Arith(SMALL.model_copy(update={"operations": ["add", "mul0"]}), 0)
    ops = {(s, c == 0) for p in only.problems("eval") for s, c in p.meta["ops"]}
    assert ops == {("+", False), ("*", True)}


def test_exhausted_space_terminates():
    # mod10 only: exactly 100 one-op prompts (one per start value) and 100 two-op ones
    cfg = FamilyConfig(operations=["mod10"], bootstrap=SplitConfig(min_ops=1, max_ops=2, size=50),
                       train=SplitConfig(min_ops=1, max_ops=1, size=10),
                       eval=EvalSplitConfig(min_ops=1, max_ops=2, per_level=10**6))
    f = Arith(cfg, 0)
    assert len(f.problems("eval")) == 200
    assert f.problems("train") == [] and f.problems("bootstrap") == []
    # no valid op at all from start 0 (sub only): draws fail, still terminates
    f = Arith(cfg.model_copy(update={"operations": ["sub"]}), 0)
    assert all(p.meta["start"] >= 1 for p in f.problems("eval"))


def test_unknown_split(fam):
    with pytest.raises(ValueError, match="test"):
        fam.problems("test")


# ---- gold solutions --------------------------------------------------------------------------------

def test_gold_solution_text():
    assert Arith(SMALL).gold_solution(P) == text(GOLD)


def test_gold_solutions_pass(fam):
    for p in fam.problems("eval") + fam.problems("train"):
        gold = fam.gold_solution(p)
        assert fam.first_error(p, gold) == -1 and fam.is_correct(p, gold)
        assert fam.step_labels(p, gold) == [1] * (p.difficulty + 1)
        assert re.fullmatch(r"(\d+[-+*%^]\d+=\d+\n)+Answer: \d+\n", gold)


# ---- planted errors --------------------------------------------------------------------------------

def planted(**edits):
    lines = list(GOLD)
    for i, line in sorted(edits.items(), reverse=True):
        lines[int(i[1:])] = line
    return lines


@pytest.mark.parametrize("lines, expected", [
    (GOLD, -1),
    (planted(s2="51-4=46"), 2),                                   # arithmetic slip
    (planted(s0="12-5=7"), 0),                                    # wrong op
    (planted(s0="12+6=18"), 0),                                   # wrong constant
    (planted(s3="48%10=8"), 3),                                   # wrong carried value
    (GOLD[:1] + GOLD[2:], 1),                                     # skipped op
    (GOLD[:5] + ["40+1=41"] + GOLD[5:], 5),                       # extra step before the answer
    (GOLD[:2] + ["51+0=51"] + GOLD[2:], 2),                       # extra step in the middle
    (planted(s0="12+="), 0),                                      # malformed
    (planted(s1="abc"), 1),
    (planted(s4="="), 4),
    (planted(s2="51 - 4 = 47"), 2),                               # spaces are not the format
    (GOLD[:5], None),                                             # missing answer line: no wrong step
    (GOLD[:2], None),                                             # truncated (issue #12: was 2, past the last step)
    ([], None),                                                   # empty completion
    (["Answer: 40"], 0),                                          # answer without the work
    (planted(s5="Answer: 41"), 5),                                # wrong answer line
    (planted(s5="Answer: 40abc"), 5),                             # garbage on the answer line
    (planted(s5="Answer:"), 5),
    (planted(s5="Answer: 040"), -1),                              # answers are compared as integers
    (GOLD + ["zzz", "1+1=3"], -1),                                # anything after the answer is ignored
    (GOLD[:3] + ["", "   "] + GOLD[3:], -1),                      # blank lines are not steps
])
def test_first_error(lines, expected):
    f = Arith(SMALL)
    assert f.first_error(P, text(lines)) == expected


def test_step_labels():
    f = Arith(SMALL)
    assert f.step_labels(P, text(planted(s2="51-4=46"))) == [1, 1, 0, 0, 0, 0]
    assert f.step_labels(P, text(GOLD[:5])) == [1] * 5  # incomplete: present steps are all right
    assert f.step_labels(P, text(GOLD + ["junk"])) == [1] * 6
    assert f.step_labels(P, "") == []


@pytest.mark.parametrize("lines, expected", [
    (GOLD, [1, 1, 1, 1, 1, 1]),
    (planted(s1="17*3=41", s2="41-4=37"), [1, 0, 0, 0, 0, 0]),  # a slip: 17*3 is not 41
    (planted(s2="50-4=46"), [1, 1, 0, 0, 0, 0]),                 # starts from another value than 51
    (planted(s3="47%10=8", s4="8^40=40"), [1, 1, 1, 0, 0, 0]),   # absorbed by the max: the answer is right
    (planted(s5="Answer: 41"), [1, 1, 1, 1, 1, 0]),              # not the last result
    # What the calculator cannot see: a step that computes right but is not the problem's next op.
    (["12+5=17", "17*3=51", "51%10=1", "1^40=40", "Answer: 40"], [1, 1, 1, 1, 1]),
    (["12+5=17", "51=51", "51-4=47", "Answer: 47"], [1, None, 1, 1]),  # no equation: unchecked, no chain
    # An undefined step (a GRPO policy hacking a PRM's reward wrote `%0`; it crashed evaluation): wrong.
    (["12+5=17", "17%0=3", "3*2=6", "Answer: 6"], [1, 0, 0, 0]),
])
def test_the_calculator_recomputes_the_trace_alone(lines, expected):
    """`calculator_labels` reads the steps, never the problem: the `calc` source and scoring.calculator."""
    assert Arith(SMALL).calculator_labels(lines) == expected


def test_gold_label_source_names_the_familys_first_error():
    """The `gold` source once inferred -1 ("the trace is right") for a truncated trace from its all-right
    step labels, where the family says None (no first error to name)."""
    from components.labeling.sources import Batch, label

    f = Arith(SMALL)
    cases = [GOLD, planted(s2="51-4=46"), GOLD[:2], GOLD[:5]]
    labs, _ = label("gold", Batch(f, [P] * len(cases), [text(c) for c in cases]), None, None)
    assert [lab.first_error for lab in labs] == [-1, 2, None, None]
    assert labs[2].labels == [1, 1]  # its present steps are still right (the PRM may train on them)


def test_flawed_but_correct():
    f = Arith(SMALL)
    # slip before %10: 51-4=46, then carried on consistently, still 40 at the end thanks to ^40
    slip_before_mod = ["12+5=17", "17*3=51", "51-4=46", "46%10=6", "6^40=40", "Answer: 40"]
    # slip at %10 itself, erased by ^40
    slip_before_max = planted(s3="47%10=8", s4="8^40=40")
    for lines, err in ((slip_before_mod, 2), (slip_before_max, 3)):
        assert f.is_correct(P, text(lines)) and f.first_error(P, text(lines)) == err
    # %10 alone: 33 +9 %10 -> 2; a slip 33+9=52 gives 2 as well
    q = make_problem(33, [["+", 9], ["%", 10]])
    bad = "33+9=52\n52%10=2\nAnswer: 2\n"
    assert f.is_correct(q, bad) and f.first_error(q, bad) == 0
    # *0 forgets everything
    z = make_problem(5, [["*", 7], ["*", 0]])
    bad = "5*7=36\n36*0=0\nAnswer: 0\n"
    assert f.gold_solution(z) == "5*7=35\n35*0=0\nAnswer: 0\n"
    assert f.is_correct(z, bad) and f.first_error(z, bad) == 0


# ---- parsing ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("completion, answer", [
    ("1+1=2\nAnswer: 2\n", "2"),
    ("Answer: 007", "7"),
    ("Answer:7\n", "7"),
    ("Answer: 7  \n", "7"),
    ("Answer: 0", "0"),
    ("Answer: 7\nAnswer: 8\n", "7"),   # the first answer line counts
    ("1+1=2\n", None),
    ("", None),
    ("Answer: \n", None),
    ("Answer: seven\n", None),
    ("Answer: 7 8\n", None),
    ("Answer: 7.0\n", None),
    ("answer: 7\n", None),
    ("x Answer: 7\n", None),
])
def test_extract_answer(completion, answer):
    assert Arith(SMALL).extract_answer(completion) == answer


def test_split_steps_and_prefix():
    f = Arith(SMALL)
    steps = f.split_steps("12+5=17  \n\n17*3=51\r\nAnswer: 51\nafter\n")
    assert steps == ["12+5=17", "17*3=51", "Answer: 51"]
    assert f.steps_text(steps) == "12+5=17\n17*3=51\nAnswer: 51\n"
    assert f.prefix_text(P, steps, 0) == "12 +5 *3 -4 %10 ^40\n12+5=17\n"
    assert f.prefix_text(P, steps, 2) == P.prompt + f.steps_text(steps)


def test_problem_is_frozen():
    with pytest.raises(AttributeError):
        P.answer = "1"
    assert isinstance(P, Problem)
