"""The score stage with each label source, on real candidates from the tiny model."""
import pytest

from components.stages import generate
from components.stages import judge as judge_stage
from components.stages import labels as labels_stage
from components.stages import prm as prm_stage
from components.stages import score
from components.artifacts import store
from components.artifacts.layout import Layout
from tests.expect import agreement, assert_reported, reported_f1


@pytest.fixture(scope="module")
def scored_gold(smoke_cfg, tiny_model_uri, tmp_path_factory):
    base = tmp_path_factory.mktemp("sources")
    cfg = smoke_cfg.model_copy(update={"scoring": smoke_cfg.scoring.model_copy(update={"label_source": "gold"})})
    c = cfg
    generate.run(c, f"{base}/candidates", tiny_model_uri, 1, target=2)
    metrics = score.run(c, f"{base}/scored-gold", tiny_model_uri, f"{base}/candidates", 1)
    return cfg, base, metrics


def test_gold_labels_are_exact_and_mc_audit_reports_its_quality(scored_gold, tiny_model_uri):
    cfg, base, metrics = scored_gold
    assert metrics["label_f1"] == 1.0  # the exact check is the bar
    audited = cfg.model_copy(update={"scoring": cfg.scoring.model_copy(update={"audit_mc": 20})})
    m = score.run(audited, f"{base}/scored-audit", tiny_model_uri, f"{base}/candidates", 1)
    assert m["audit_mc_rollouts"] > 0 and "mc_rollouts" not in m  # counted as audit, not as labelling
    # the audit does not change the labels used for filtering
    rows = store.read_rows(f"{base}/scored-audit")
    # Its figures are those of the audited sample's own labels (recomputed here from the rows).
    sample = [r for r in rows if r["mc_first_error"] is not None]  # the audit's MC column: its sample only
    assert 0 < len(sample) <= 20
    assert_reported(m, "quality/audit_mc/f1", reported_f1(sample, "mc"))
    assert_reported(m, "quality/audit_agree/gold_vs_mc/first_error", agreement(sample, "gold", "mc"))
    assert {r["label_source"] for r in rows} == {"gold"}


def test_prm_and_prm_plus_mc_sources(scored_gold, tiny_model_uri):
    cfg, base, _ = scored_gold
    c = cfg
    prm_stage.run(c, f"{base}/prm", tiny_model_uri, 1, [f"{base}/scored-gold"])
    for source in ("prm", "prm+mc"):
        cfg2 = cfg.model_copy(update={"scoring": cfg.scoring.model_copy(
            update={"label_source": source, "prm_unsure": (-1.0, 2.0)})})  # every trace counts as unsure
        m = score.run(cfg2, f"{base}/scored-{source}", tiny_model_uri, f"{base}/candidates", 2, prm_uri=f"{base}/prm")
        rows = store.read_rows(f"{base}/scored-{source}")
        assert all(len(r["step_scores"]) == len(r["steps"]) for r in rows)
        assert m["prm_unsure"] == sum(1 for r in rows if r["steps"])
        # with an all-unsure band, prm+mc re-labels every trace by Monte Carlo; prm alone none
        expected = {"mc"} if source == "prm+mc" else {"prm"}
        assert {r["label_source"] for r in rows if r["steps"]} == expected
    # a PRM is never trained on its own labels
    with pytest.raises(ValueError, match="no labelled steps"):
        prm_stage.run(c, f"{base}/prm2", tiny_model_uri, 2, [f"{base}/scored-prm"])


def test_a_calibrated_prm_labels_steps_at_the_threshold_its_training_chose(scored_gold, tiny_model_uri, tmp_path):
    """`prm.calibrate`: a step is wrong below the PRM's own calibrated threshold (saved with it), and
    its scores are centred there so the filter reads them at 0.5; off, the fixed 0.5."""
    import json
    import shutil
    import statistics

    from components.labeling.step_labels import centred, first_error_from_scores
    from components.models import prm

    cfg, base, _ = scored_gold
    if not store.is_published(f"{base}/prm"):
        prm_stage.run(cfg, f"{base}/prm", tiny_model_uri, 1, [f"{base}/scored-gold"])
    plain = with_scoring(cfg, label_source="prm")
    score.run(plain, f"{base}/scored-prm-fixed", tiny_model_uri, f"{base}/candidates", 2, prm_uri=f"{base}/prm")
    raw = {(r["problem_id"], r["sample"]): r for r in store.read_rows(f"{base}/scored-prm-fixed") if r["steps"]}
    assert all(r["label_first_error"] == first_error_from_scores(r["step_scores"]) for r in raw.values())
    # A PRM whose training chose the median of these scores: most first errors move.
    t = statistics.median(x for r in raw.values() for x in r["step_scores"])
    folder = tmp_path / "prm-t"
    shutil.copytree(store.fetch_folder(f"{base}/prm"), folder)
    fmt = prm.load_format(folder)
    (folder / prm.FORMAT_FILE).write_text(json.dumps({**fmt, "threshold": t}))
    store.publish_folder(folder, f"{base}/prm-t", {"kind": "prm"})
    on = plain.model_copy(update={"prm": plain.prm.model_copy(update={"calibrate": {"enabled": True}})})
    on = type(plain).model_validate(on.model_dump())
    m = score.run(on, f"{base}/scored-prm-t", tiny_model_uri, f"{base}/candidates", 2, prm_uri=f"{base}/prm-t")
    assert m["prm_threshold"] == t
    rows = [r for r in store.read_rows(f"{base}/scored-prm-t") if r["steps"]]
    assert len(rows) == len(raw)
    moved = 0
    for r in rows:
        before = raw[(r["problem_id"], r["sample"])]
        assert r["label_first_error"] == first_error_from_scores(before["step_scores"], t)
        assert r["step_scores"] == pytest.approx([centred(x, t) for x in before["step_scores"]])
        assert r["step_labels"] == [int(x >= t) for x in before["step_scores"]]
        moved += r["label_first_error"] != before["label_first_error"]
    assert moved > 0


def test_the_implicit_prm_labels_steps_having_learnt_from_outcomes_alone(scored_gold, tiny_model_uri):
    """`implicit`: the DPO verifier of the round before (trained on right-vs-wrong pairs only) labels
    each step by sigmoid(q_t) against the threshold its training calibrated on labelled traces of the
    problems it did not train on; a PRM never trains on those labels; round 1 (no verifier yet) falls
    back; a config that turns the DPO verifier off is refused naming the field."""
    from components.checks import load_config
    from components.config import ConfigError
    from components.evaluation.bestofk import sigmoid
    from components.labeling.step_labels import first_error_from_scores
    from components.models import dpo, serving
    from components.stages import dpo as dpo_stage

    cfg, base, _ = scored_gold
    on = type(cfg).model_validate({**cfg.model_dump(), "dpo": {"enabled": True},
                                   "scoring": {**cfg.scoring.model_dump(), "label_source": "implicit",
                                               "first_round_source": "gold"}})
    m = dpo_stage.run(on, f"{base}/dpo", tiny_model_uri, 1, [f"{base}/scored-gold"])
    t = dpo.step_threshold(store.fetch_folder(f"{base}/dpo"))
    assert m["calibration_traces"] > 0 and t == m["implicit_threshold"]  # chosen on the gold labels' traces

    got = score.run(on, f"{base}/scored-implicit", tiny_model_uri, f"{base}/candidates", 2, dpo_uri=f"{base}/dpo")
    assert got["implicit_threshold"] == t
    rows = [r for r in store.read_rows(f"{base}/scored-implicit") if r["steps"]]
    assert {r["label_source"] for r in rows} == {"implicit"}
    q = serving.dpo_verifier_scores(on, f"{base}/dpo", [r["prompt"] for r in rows], [r["completion"] for r in rows],
                                    [r["steps"] for r in rows]).steps
    assert [r["label_first_error"] for r in rows] == [first_error_from_scores([sigmoid(x) for x in qs], t) for qs in q]
    assert len({r["label_first_error"] for r in rows}) > 1  # it does tell traces apart
    with pytest.raises(ValueError, match="no labelled steps"):  # a verifier's guesses train no PRM
        prm_stage.run(on, f"{base}/prm-implicit", tiny_model_uri, 2, [f"{base}/scored-implicit"])
    first = score.run(on, f"{base}/scored-implicit-1", tiny_model_uri, f"{base}/candidates", 1)
    assert store.read_manifest(f"{base}/scored-implicit-1")["label_source"] == "gold"
    assert "implicit_threshold" not in first
    with pytest.raises(ConfigError, match="dpo.enabled must be true"):
        load_config("configs/smoke.yaml", ["scoring.label_source=implicit"])


# ------------------------------------------------------------- the sources of the PRM literature

TINY_JUDGE = {"first_error_template": "{problem}\n{steps}\n==", "step_line": "{index} {step}",
              "none_verdict": "-1", "max_tokens": 4, "train_examples": 3000}


def with_scoring(cfg, **update):
    scoring = cfg.scoring.model_copy(update=update)
    return cfg.model_copy(update={"scoring": type(cfg.scoring).model_validate(scoring.model_dump())})


@pytest.fixture(scope="module")
def judge_uri(scored_gold, tiny_model_uri):
    from components.config_scoring import JudgeConfig
    from components.loop import judge_uri as trained_judge

    cfg, base, _ = scored_gold
    cfg = with_scoring(cfg, label_source="consensus", judge=JudgeConfig(**TINY_JUDGE))
    # Where a loop on this bootstrap keeps the judge it trains (shared like the bootstrap): the round
    # flow below finds it published and reuses it, as a second loop on the same G_0 would.
    uri = trained_judge(cfg)
    if not store.is_published(uri):  # (VSTAR_TEST_STORE: kept from an earlier session, like the bootstrap)
        m = judge_stage.run(cfg, uri, tiny_model_uri)
        # measured on held-out planted traces and recorded with the judge
        assert store.read_manifest(uri)["metrics"]["heldout_f1"] == m["heldout_f1"]
    assert store.read_manifest(uri)["metrics"]["heldout_judge_calls"] == 300
    return uri


def test_binary_search_mc_reports_quality_against_gold_and_mc(scored_gold, tiny_model_uri):
    cfg, base, _ = scored_gold
    cfg = with_scoring(cfg, label_source="mc_binary", also=["mc", "gold"])
    m = score.run(cfg, f"{base}/scored-bin", tiny_model_uri, f"{base}/candidates", 1)
    assert m["quality/gold/f1"] == 1.0  # the exact check against itself
    assert m["mc_estimates"] < m["mc/mc_estimates"]  # bisection estimates fewer prefixes than every step
    rows = store.read_rows(f"{base}/scored-bin")
    for src in ("mc_binary", "mc"):  # what was reported is what the published labels score
        assert_reported(m, f"quality/{src}/f1", reported_f1(rows, src))
    assert_reported(m, "quality/agree/mc_vs_mc_binary/first_error", agreement(rows, "mc", "mc_binary"))
    assert {r["label_source"] for r in rows} == {"mc_binary"}
    assert all(r["step_labels"] == [int(i < r["label_first_error"] or r["label_first_error"] < 0)
                                    for i in range(len(r["steps"]))] for r in rows if r["label_first_error"] is not None)


def test_judge_and_consensus_partial_labels_train_a_prm(scored_gold, judge_uri, tiny_model_uri):
    from components.config_scoring import JudgeConfig

    cfg, base, _ = scored_gold
    cfg = with_scoring(cfg, label_source="consensus", also=["judge", "gold"], judge=JudgeConfig(**TINY_JUDGE))
    c = cfg
    m = score.run(c, f"{base}/scored-cons", tiny_model_uri, f"{base}/candidates", 1, judge_uri=judge_uri)
    assert m["consensus_steps_compared"] > 0
    assert m["consensus_step_agreement"] == pytest.approx(m["consensus_steps_agreeing"] / m["consensus_steps_compared"])
    assert m["consensus_steps_kept"] <= m["consensus_steps_total"] == m["steps"]
    assert m["judge_calls"] > 0 and "judge_unparseable" in m
    rows = store.read_rows(f"{base}/scored-cons")
    for src in ("judge", "consensus"):
        assert_reported(m, f"quality/{src}/f1", reported_f1(rows, src))
    # a consensus label is the judge's label too (and MC's); elsewhere the step is left unlabelled
    for r in rows:
        assert all(y is None or jd == y for y, jd in zip(r["step_labels"], r["judge_scores"]))
    assert sum(y is None for r in rows for y in r["step_labels"]) == m["steps"] - m["consensus_steps_kept"]
    # the PRM trains on the labelled steps only
    prm = prm_stage.run(c, f"{base}/prm-cons", tiny_model_uri, 1, [f"{base}/scored-cons"])
    assert prm["examples"] > 0


def test_a_round_labelled_in_shards_is_the_round_labelled_whole(scored_gold, judge_uri, tiny_model_uri, prefect_server):
    """Scoring split by problem (#16), as the loop runs it: 3 uneven shards one after another on this
    machine (execution.engine=local), each in its own process, put together by `merge`. Consensus (its
    agreement a ratio), the generator's confidence (its threshold a quantile over the whole round) and
    an MC audit sample drawn over the whole round give the bytes and metrics of the unsharded stage."""
    from components.config_scoring import JudgeConfig
    from components.artifacts import code_version
    from tasks.shards import run_sharded

    cfg, base, _ = scored_gold
    cfg = with_scoring(cfg, label_source="consensus", also=["confidence", "gold"], audit_mc=30,
                       judge=JudgeConfig(**TINY_JUDGE))
    args = dict(model_uri=tiny_model_uri, candidates_uri=f"{base}/candidates", round_idx=1, judge_uri=judge_uri)
    whole = score.run(cfg, f"{base}/scored-whole", **args)
    local = cfg.model_copy(update={"execution": cfg.execution.model_copy(update={"engine": "local", "shards": 3})})
    merged = run_sharded(local, score, f"{base}/scored-sharded", args, code_version.input_digests(args))
    assert store.read_manifest(f"{base}/scored-sharded")["digests"] == store.read_manifest(f"{base}/scored-whole")["digests"]
    assert not store.fs_for(f"{base}/scored-sharded.shards")[0].exists(f"{base}/scored-sharded.shards")  # parts gone
    assert whole["audit_mc_rollouts"] > 0 and whole["confidence/confidence_threshold"] > 0
    assert merged.keys() - {"shards", "slowest_shard_s"} == whole.keys() and merged["shards"] == 3
    # What differs is the time, and how many engine calls did the work (one per shard and bisection level).
    same = lambda m: {k: v for k, v in m.items()  # noqa: E731
                      if k not in ("seconds", "shards", "slowest_shard_s") and not k.endswith("engine_calls")}
    assert same(merged) == pytest.approx(same(whole))
    assert merged["audit_mc_engine_calls"] == 3 * whole["audit_mc_engine_calls"]


def test_imported_human_labels_are_quarantined_and_train_a_prm(scored_gold, tiny_model_uri, tmp_path):
    """`labels` from a file: traces in PRM800K format (with a broken row) -> import with quarantine -> PRM_0."""
    from components.data.importers import write_prm800k

    cfg, base, _ = scored_gold
    gold_rows = [r for r in store.read_rows(f"{base}/scored-gold") if r["steps"]]
    src = str(tmp_path / "human.jsonl")
    write_prm800k(gold_rows, src)
    with open(src, "a") as f:
        f.write('{"label": {"steps": []}, "question": {"problem": "1 +1"}}\n{not json\n')
    cfg = with_scoring(cfg, label_source="labels", labels={"uri": src, "format": "prm800k"})
    from components.loop import labels_uri

    m = labels_stage.run(cfg, labels_uri(cfg))
    assert m["rows_quarantined"] == 2 and m["traces"] + m["decontam_dropped"] == len(gold_rows)
    assert len(store.read_rows(labels_uri(cfg))) == m["traces"]
    fs, path = store.fs_for(labels_uri(cfg))
    assert fs.cat(f"{path}/quarantine.jsonl").decode().count("\n") == 2  # beside the dataset, with reasons
    assert prm_stage.run(cfg, f"{base}/prm0-file", tiny_model_uri, 0, [labels_uri(cfg)])["examples"] > 0


def test_label_budget_is_spent_on_set_aside_problems_and_its_prm_scores_others(scored_gold, tiny_model_uri):
    """A labelling budget: G_0's traces on problems no round or evaluation uses, labelled once and
    imported as PRM800K; the PRM trained on them scores the round's (other) traces. Issue #12: the
    `labels` figures used to score the very traces their PRM was trained on."""
    from components.data.prompting import family_of
    from components.loop import labels_uri

    cfg, base, _ = scored_gold
    cfg = with_scoring(cfg, label_source="labels", labels={"budget": 90}, also=["gold"])
    uri = labels_uri(cfg)
    m = labels_stage.run(cfg, uri, tiny_model_uri)
    labelled = store.read_rows(uri)
    assert m["budget_traces"] == 90 and m["traces"] == len(labelled) > 0
    fs, path = store.fs_for(uri)
    assert fs.cat(f"{path}/labelled.prm800k.jsonl").decode().count("\n") == 90  # what an annotator returned
    fam = family_of(cfg)
    elsewhere = {p.prompt for split in ("bootstrap", "train", "eval") for p in fam.problems(split)}
    assert not {r["prompt"] for r in labelled} & elsewhere
    assert {r["gold_first_error"] for r in labelled} == {None}  # scoring never sees the exact check
    prm_stage.run(cfg, f"{base}/prm0", tiny_model_uri, 0, [uri])
    s = score.run(cfg, f"{base}/scored-labels", tiny_model_uri, f"{base}/candidates", 1, prm_uri=f"{base}/prm0")
    rows = store.read_rows(f"{base}/scored-labels")
    assert not {r["prompt"] for r in rows} & {r["prompt"] for r in labelled}
    assert {r["label_source"] for r in rows} == {"prm"}  # PRM guesses: never trained on again
    assert s["quality/gold/f1"] == 1.0
    assert_reported(s, "quality/labels/f1", reported_f1(rows, "labels"))


def test_confidence_labels_steps_from_the_generators_own_logprobs(scored_gold, tiny_model_uri):
    """`confidence`: one prefill pass, the step threshold at a quantile of the round's right answers."""
    cfg, base, _ = scored_gold
    cfg = with_scoring(cfg, label_source="confidence", confidence={"window": 1, "quantile": 0.25})
    m = score.run(cfg, f"{base}/scored-conf", tiny_model_uri, f"{base}/candidates", 1)
    rows = store.read_rows(f"{base}/scored-conf")
    assert m["confidence_threshold"] > 0 and m["confidence_tokens"] > 0  # DeepConf's: -mean top-k log P
    right = [r for r in rows if r["correct"] and r["steps"]]
    rejected = [r for r in right if min(s for s in r["step_scores"] if s is not None) < 0.5]
    assert 0.15 <= len(rejected) / len(right) <= 0.35  # a quarter of the right answers, by construction
    assert all(len(r["step_scores"]) == len(r["steps"]) for r in rows)
    assert_reported(m, "quality/confidence/f1", reported_f1(rows, "confidence"))


def test_the_calculator_overrules_a_source_on_a_slip_it_cannot_see(scored_gold, tiny_model_uri):
    """`scoring.calculator`: a right answer reached through a wrong multiplication is labelled wrong
    from that step on, whatever the generator's confidence says, and the step filter drops it. The
    slips are planted: the tiny model's own are down to sampling luck."""
    from components.data.families.arith import EQUATION
    from components.labeling.filtering import passes

    cfg, base, _ = scored_gold
    rows = store.read_rows(f"{base}/candidates")
    planted = []
    for r in rows:
        steps = r["completion"].split("\n")
        m = EQUATION.fullmatch(steps[0])
        if r["correct"] and r["gold_first_error"] == -1 and len(steps) >= 4 and m and len(planted) < 3:
            # the step's result off by one, the next step still starting from the true one: the answer stays right
            steps[0] = f"{m[1]}{m[2]}{m[3]}={int(m[4]) + 1}"
            r["completion"] = "\n".join(steps)
            r["gold_first_error"] = 0
            planted.append(r["completion"])
    assert len(planted) == 3, "the tiny model solves 3-op problems: its candidates hold right answers"
    store.write_rows(rows, f"{base}/candidates-slips", {"stage": "generate", "round": 1})
    cfg = with_scoring(cfg, label_source="confidence", confidence={"window": 1, "quantile": 0.25},
                       calculator={"enabled": True})
    m = score.run(cfg, f"{base}/scored-calc", tiny_model_uri, f"{base}/candidates-slips", 1)
    scored = store.read_rows(f"{base}/scored-calc")
    for r in (r for r in scored if r["completion"] in planted):
        assert r["correct"] and r["label_first_error"] == 0 and r["step_labels"][0] == 0 and r["step_scores"][0] == 0.0
        assert r["calc_first_error"] == 0  # the calculator's own verdict, beside the confidence's raw one
        assert not passes(r, cfg.filter)
    for r in (r for r in scored if r["calc_first_error"] == -1):  # where it finds nothing, the source stands
        assert list(r["step_labels"]) == list(r["confidence_labels"])
    assert m["label_f1"] == m["quality/confidence_calculator/f1"]  # what the filter uses is what is graded
    assert "quality/confidence/f1" in m and "quality/calc/f1" in m  # and each on its own
    assert m["calc/calc_traces_flagged"] >= 3  # stats of a source beside the primary: under its name


def test_every_source_runs_inside_the_round_flow(scored_gold, judge_uri, prefect_server, tmp_path):
    """One round of the loop whose filter uses a PRM trained on a labelling budget, while MC∧judge
    consensus (with the judge trained on this bootstrap, found published), binary-search MC and the
    generator's confidence are scored beside it for the label-quality report in MLflow."""
    import mlflow

    from components.checks import load_config
    from flows.self_improve import self_improve

    cfg = scored_gold[0]
    # A short round (the session's bootstrap: the family as it is), without the verifiers and beam search
    # the sources do not need; the transformers backend: the sources are tested here, not vLLM.
    cfg = load_config("configs/smoke.yaml", [
        f"store_uri={cfg.store_uri}", f"tracking_uri=sqlite:///{tmp_path}/mlflow.db", "generation.backend=transformers",
        "eval.sampled_per_level=2", "curriculum.problems=24", "orm.enabled=false", "eval.beam.enabled=false"])
    cfg = with_scoring(cfg, label_source="labels", labels={"budget": 80},
                       also=["consensus", "mc_binary", "confidence", "gold"], judge=TINY_JUDGE)
    judge_made = store.read_manifest(judge_uri)["published_at"]
    out = self_improve(cfg)
    r1 = out["rounds"][1]
    metrics = mlflow.MlflowClient(cfg.tracking_uri).get_run(r1["run_id"]).data.metrics
    rows = store.read_rows(r1["filtered_uri"].replace("filtered", "scored"))  # what MLflow got is what was published
    for src_name in ("labels", "consensus", "mc_binary", "confidence"):
        assert_reported(metrics, f"score/quality/{src_name}/f1", reported_f1(rows, src_name))
    assert_reported(metrics, "score/quality/agree/consensus_vs_labels/first_error", agreement(rows, "consensus", "labels"))
    assert metrics["score/consensus/judge_calls"] > 0 and metrics["score/mc_binary/mc_estimates"] > 0
    from components import loop

    assert loop.judge_uri(cfg) == judge_uri and store.read_manifest(judge_uri)["published_at"] == judge_made  # reused
    assert store.is_published(loop.labels_uri(cfg))
    assert store.is_published(Layout.of(cfg).round(0, "prm"))  # PRM_0 from human labels
