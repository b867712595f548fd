"""The score stage with each label source, on real candidates from the tiny model."""
import pytest

from components import stages, store


@pytest.fixture(scope="module")
def scored_gold(smoke_cfg, tiny_model_uri, tmp_path_factory):
    base = tmp_path_factory.mktemp("sources")
    cfg = smoke_cfg.model_copy(update={"scoring": smoke_cfg.scoring.model_copy(update={"label_source": "gold"})})
    c = cfg.model_dump(mode="json")
    stages.generate(c, tiny_model_uri, f"{base}/candidates", 1, target=2)
    metrics = stages.score(c, tiny_model_uri, f"{base}/candidates", f"{base}/scored-gold", 1)
    return cfg, base, metrics


def test_gold_labels_are_exact_and_mc_audit_reports_its_quality(scored_gold, tiny_model_uri):
    cfg, base, metrics = scored_gold
    assert metrics["label_f1"] == 1.0  # the exact check is the bar
    audited = cfg.model_copy(update={"scoring": cfg.scoring.model_copy(update={"audit_mc": 20})})
    m = stages.score(audited.model_dump(mode="json"), tiny_model_uri, f"{base}/candidates", f"{base}/scored-audit", 1)
    assert 0.0 <= m["audit_mc_f1"] <= 1.0 and m["audit_mc_n_erroneous"] + m["audit_mc_n_correct"] == 20
    assert m["audit_mc_rollouts"] > 0 and "mc_rollouts" not in m  # counted as audit, not as labelling
    # the audit does not change the labels used for filtering
    rows = store.read_rows(f"{base}/scored-audit")
    assert {r["label_source"] for r in rows} == {"gold"}


def test_prm_and_prm_plus_mc_sources(scored_gold, tiny_model_uri):
    cfg, base, _ = scored_gold
    c = cfg.model_dump(mode="json")
    stages.train_prm(c, tiny_model_uri, f"{base}/prm", 1, [f"{base}/scored-gold"])
    for source in ("prm", "prm+mc"):
        cfg2 = cfg.model_copy(update={"scoring": cfg.scoring.model_copy(
            update={"label_source": source, "prm_unsure": (-1.0, 2.0)})})  # every trace counts as unsure
        m = stages.score(cfg2.model_dump(mode="json"), tiny_model_uri, f"{base}/candidates",
                         f"{base}/scored-{source}", 2, prm_uri=f"{base}/prm")
        rows = store.read_rows(f"{base}/scored-{source}")
        assert all(len(r["step_scores"]) == len(r["steps"]) for r in rows)
        assert m["prm_unsure"] == sum(1 for r in rows if r["steps"])
        # with an all-unsure band, prm+mc re-labels every trace by Monte Carlo; prm alone none
        expected = {"mc"} if source == "prm+mc" else {"prm"}
        assert {r["label_source"] for r in rows if r["steps"]} == expected
    # a PRM is never trained on its own labels
    with pytest.raises(ValueError, match="no labelled steps"):
        stages.train_prm(c, tiny_model_uri, f"{base}/prm2", 2, [f"{base}/scored-prm"])
