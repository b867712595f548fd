"""Decontamination: train problems that overlap eval problems are dropped, each with its reason."""
from __future__ import annotations

from pathlib import Path

import pytest

from components.config_sections import DataConfig, DecontamConfig, FamilyConfig
from components.data.decontam import counts, decontaminate, normalize
from components.data.families import get_family
from test_families_data import gsm8k_dir

ROOT = Path(__file__).resolve().parent.parent

EVAL = ["Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
        "How many clips did Natalia sell altogether in April and May?",
        "Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of babysitting."]


def test_normalize():
    assert normalize("  Weng earns $12,\tan HOUR!\n") == "weng earns 12 an hour"


def test_exact_match_after_normalisation_and_ngram_threshold():
    cfg = DecontamConfig(ngram=4, threshold=0.5)
    same = EVAL[0].upper().replace(",", " ,")  # case and punctuation differ only
    words = normalize(EVAL[1]).split()  # 15 words: 12 4-grams
    half = " ".join(words[:9] + ["zz", "yy", "xx", "ww", "vv", "uu"])  # first 6 of its 12 4-grams are eval's
    less = " ".join(words[:8] + ["zz", "yy", "xx", "ww", "vv", "uu", "tt"])  # 5 of 12
    fresh = "A baker sells 30 loaves a day. How many in a week?"
    kept, dropped = decontaminate([same, half, less, fresh], EVAL, cfg)
    assert kept == [less, fresh]
    assert dropped == [{"text": same, "reason": "exact", "overlap": 1.0, "eval_match": EVAL[0]},
                       {"text": half, "reason": "ngram", "overlap": 0.5, "eval_match": EVAL[1]}]
    assert counts(dropped, kept) == {"decontam/kept": 2, "decontam/dropped": 2,
                                     "decontam/dropped_exact": 1, "decontam/dropped_ngram": 1}


def test_rows_problems_short_texts_and_disabled():
    rows = [{"problem_id": "p1", "prompt": "Weng earns $12 an hour"}, {"problem_id": "p2", "prompt": "Short."}]
    kept, dropped = decontaminate(rows, [{"problem_id": "e1", "prompt": "short"}] + EVAL, DecontamConfig(ngram=8))
    # Shorter than n words: the whole text is its one n-gram ("weng earns 12 an hour" is in EVAL[1]
    # only as part of longer 8-grams, so it stays).
    assert kept == [rows[0]] and dropped == [{"problem_id": "p2", "reason": "exact", "overlap": 1.0, "eval_match": "e1"}]
    assert decontaminate(rows, ["short"], DecontamConfig(enabled=False)) == (rows, [])


@pytest.fixture(scope="module")
def gsm8k():
    d = gsm8k_dir()
    return get_family(FamilyConfig(name="gsm8k", data=DataConfig(
        train_uri=str(d / "train.jsonl"), eval_uri=str(d / "test.jsonl"))))


def test_real_gsm8k_train_against_test(gsm8k):
    train, test = gsm8k.problems("train"), gsm8k.problems("eval")
    planted = [test[5], test[900]]  # test problems slipped into train: exact, and lightly edited
    edited = planted[1].meta["question"].replace("?", " today?")
    extra = [{"problem_id": "copy", "prompt": planted[0].prompt.upper()}, {"problem_id": "edit", "prompt": edited}]
    kept, dropped = decontaminate(train + extra, test, DecontamConfig())  # ngram 8, threshold 0.5
    by_id = {d["problem_id"]: d for d in dropped}
    assert by_id["copy"]["reason"] == "exact" and by_id["copy"]["eval_match"] == planted[0].id
    assert by_id["edit"]["reason"] == "ngram" and by_id["edit"]["eval_match"] == planted[1].id
    assert len(kept) + len(dropped) == len(train) + 2
    test_ids = {p.id for p in test}
    for d in dropped:  # every drop names a test problem; an n-gram drop shares at least half its 8-grams
        assert d["eval_match"] in test_ids and (d["reason"] == "exact" or d["overlap"] >= 0.5)
    # The real overlap (GSM8K's own train vs test) is small but not zero: near-templated problems.
    real = [d for d in dropped if d["problem_id"] not in ("copy", "edit")]
    assert 0 < len(real) < 20


def test_nothing_g0_its_tokenizer_or_its_prompts_learn_from_is_an_evaluation_problem(tmp_path):
    """GSM8K test problems slipped into the train file's head, where the bootstrap split (G_0's gold,
    the judge's planted traces, SFT's replayed gold) and the worked examples come from: they are
    dropped and counted there too, and G_0's tokenizer never reads an evaluation problem (before, its
    corpus held every evaluation prompt)."""
    import json

    from components.checks import load_config
    from components.config_sections import PromptConfig
    from components.data.decontam import bootstrap_split
    from components.data.prompting import PromptedFamily
    from components.stages import bootstrap

    d = gsm8k_dir()
    test = (d / "test.jsonl").read_text().splitlines()[:200]
    planted = json.loads(test[7])
    planted["question"] += " (Prices are in €.)"  # a symbol only this evaluation problem has
    test[7] = json.dumps(planted)
    train = [test[5], test[7], *(d / "train.jsonl").read_text().splitlines()[:8]]
    (tmp_path / "train.jsonl").write_text("\n".join(train) + "\n")
    (tmp_path / "test.jsonl").write_text("\n".join(test) + "\n")
    assert "€" in planted["question"] and not any("€" in line for line in train[2:])
    cfg = load_config(ROOT / "configs/gsm8k.yaml", [
        f"family.data.train_uri={tmp_path}/train.jsonl", f"family.data.eval_uri={tmp_path}/test.jsonl",
        "family.data.bootstrap_size=6", "family.data.eval_size=200", "family.train.size=10",
        "model.hidden_size=16", "model.layers=1", "model.heads=2", "model.intermediate_size=32",
        "bootstrap.epochs=1", f"store_uri={tmp_path}/store"])
    fam = get_family(cfg.family, cfg.seed)
    questions = {p.meta["question"] for p in fam.problems("eval")}
    boot, dropped = bootstrap_split(fam, cfg.decontam)
    assert [p.meta["question"] for p in fam.problems("bootstrap")][:2] == [json.loads(test[5])["question"],
                                                                          planted["question"]]
    assert len(boot) == 4 and dropped["decontam/dropped_exact"] == 2 and not questions & {p.meta["question"] for p in boot}
    shots = PromptedFamily(fam, PromptConfig(shots=2), decontam=cfg.decontam).prompter.shots
    assert len(shots) == 2 and not any(q.strip() in questions for q, _ in shots)
    metrics = bootstrap.run(cfg, f"{tmp_path}/store/g0")
    assert metrics["examples"] == 4 and metrics["decontam/dropped"] == 2
    from transformers import AutoTokenizer

    from components.artifacts import store

    vocab = AutoTokenizer.from_pretrained(str(store.fetch_folder(f"{tmp_path}/store/g0"))).get_vocab()
    assert "€" not in vocab
