"""The round declared once (components/round_table.py, issue #34): every stage module keeps to the
stage contract and reads what its row says; a new verifier is its module, its config section and one
row of the table, and is then trained, scored and compared like the PRM, the ORM and the DPO verifier."""
from __future__ import annotations

import inspect
import json
from pathlib import Path

import pytest

from components import round_table
from components.checks import load_config
from components.config import RunConfig
from components.config_sections import Strict
from components.artifacts import code_version, store
from components.stages import ShardableStage, Stage, StageModule
from components.stages.training import train_and_publish

ROOT = Path(__file__).resolve().parents[1]


def test_every_stage_keeps_the_contract_and_reads_what_its_row_says():
    for row in round_table.ROWS:
        stage = row.stage()
        assert isinstance(stage, StageModule), row.module
        assert (stage.STAGE.name, stage.STAGE.publishes) == (row.name, row.artifact)
        assert isinstance(stage, ShardableStage) == stage.STAGE.shardable, row.module
        uris = [p for p in inspect.signature(stage.run).parameters
                if p.endswith(("_uri", "_uris")) and p != "out_uri"]
        assert sorted(uris) == sorted(row.inputs), f"{row.name}: run() reads {uris}, its row says {row.inputs}"


def test_the_config_is_the_ground_floor():
    """config*.py import nothing of the project but each other and the redaction of URIs (a leaf), so
    a stage's code closure no longer takes in every registry the config once asked at validation."""
    for path in sorted((ROOT / "components").glob("config*.py")):
        imported = {m for m in _imports(path) if m.startswith("components")}
        above = {m for m in imported if not m.startswith("components.config") and not m.endswith(".redact")}
        assert not above, f"{path.name} imports {above}"
    filter_code = {p.relative_to(ROOT).as_posix() for p in code_version.closure("components.stages.filter")}
    score_code = {p.relative_to(ROOT).as_posix() for p in code_version.closure("components.stages.score")}
    # A Monte Carlo fix marks `score` stale, and not `filter`, which never runs it.
    assert "components/labeling/montecarlo.py" in score_code
    assert "components/labeling/montecarlo.py" not in filter_code
    assert not {p for p in filter_code if p.startswith(("components/data/families", "components/labeling/sources"))}
    # Every stage reads the round table; a row added for a new verifier marks none of them stale.
    assert not any(p == "components/round_table.py" for m in round_table.ROWS for p in
                   (q.relative_to(ROOT).as_posix() for q in code_version.closure(m.module)))


def test_a_registry_rule_is_checked_by_the_loader_with_its_field(tmp_path):
    from components.config import ConfigError

    bad = tmp_path / "bad.yaml"
    bad.write_text("family: {name: arith}\nscoring: {label_source: prm, first_round_source: judge_x}\n")
    with pytest.raises(ConfigError) as e:
        load_config(bad)
    assert f"{bad}: scoring.first_round_source: unknown label source 'judge_x'" in str(e.value)
    assert RunConfig.model_validate({"scoring": {"label_source": "judge_x"}})  # the typed config alone: no registry


# ------------------------------------------------------------------------------ a toy verifier
# Everything a new verifier needs: this module (a stage that trains it and a scorer), a config section
# and one row of the round table. It ranks a sample by how close its number of steps is to the mean of
# the right traces it trained on.

STAGE = Stage("train-toy", "toy", metrics="train_toy", summary=("{traces:,} traces",))


class ToyConfig(Strict):
    enabled: bool = True


class ToyRun(RunConfig):
    toy: ToyConfig = ToyConfig()


def run(cfg, out_uri: str, generator_uri: str, round_idx: int, generated_uris: list[str]) -> dict:
    rows = [r for u in generated_uris for r in store.read_rows(u)]
    right = [len(r["steps"]) for r in rows if r["correct"]]

    def train(folder: str, log) -> dict:
        (Path(folder) / "toy.json").write_text(json.dumps({"mean_steps": sum(right) / max(1, len(right))}))
        log(1, {"train_loss": 0.0})
        return {"traces": len(rows)}
    return train_and_publish(out_uri, {"kind": "toy", "round": round_idx, "data": generated_uris}, train, 0.0)


def score(samples: list[dict], ctx) -> dict[str, list[float]]:
    mean = json.loads((store.fetch_folder(ctx.models["toy"]) / "toy.json").read_text())["mean_steps"]
    ctx.flops["toy"] = 0.0
    return {"toy": [-abs(len(ctx.family.split_steps(s["completion"])) - mean) for s in samples]}


TOY = round_table.Row("train-toy", __name__, "toy", round_table.ON_GENERATED, "toy", "toy", ("toy",), f"{__name__}:score")


@pytest.fixture
def toy_registered(monkeypatch):
    rows = list(round_table.ROWS)
    rows.insert(rows.index(next(r for r in rows if r.name == "evaluate")), TOY)
    monkeypatch.setattr(round_table, "ROWS", rows)


def test_a_new_verifier_is_its_module_its_section_and_one_row(toy_registered, smoke_cfg, smoke_family, tiny_model_uri,
                                                              tmp_path, prefect_server):
    from prefect import flow

    from components.evaluation import report
    from components.artifacts.layout import Layout
    from components.stages import evaluate
    from tests.test_verifiers import outcome_rows
    from tasks.train import train_verifiers

    base = smoke_cfg.model_dump()
    cfg = ToyRun.model_validate({**base, "store_uri": str(tmp_path / "store"), "orm": {**base["orm"], "enabled": False},
                                 "generation": {**base["generation"], "backend": "transformers"},
                                 "eval": {**base["eval"], "beam": {"enabled": False}}})
    assert "train-toy" in round_table.names() and "toy" in round_table.artifacts()
    generated = store.join(cfg.store_uri, "generated")
    store.write_rows(outcome_rows(smoke_family, smoke_family.problems("bootstrap")[:40], seed=0), generated, {})

    @flow
    def a_round():  # the verifiers a round trains: flows/round.py calls this
        return train_verifiers(cfg, tiny_model_uri, [generated], 1, None)

    trained = a_round()
    assert list(trained) == ["toy"]  # the ORM is off; the DPO verifier off by default
    uri, metrics = trained["toy"]
    assert uri == Layout.of(cfg).round(1, "toy") and metrics["traces"] == 40
    assert store.read_manifest(uri)["code"]["module"] == __name__

    ev = evaluate.run(cfg, str(tmp_path / "eval"), tiny_model_uri, "eval", verifier_uris={"toy": uri})
    n = int(ev["bok_pool"])
    assert f"bok/toy/k{n}" in ev and f"bok_diff/toy-vote/k{n}" in ev  # scored, and against the vote

    headers, rows = report.verifier_rows({"toy-loop": [{"round": 1, "evaluate": ev}]})
    assert "toy" in headers and rows[0][headers.index("toy")].endswith("]")  # compared: its accuracy [interval]
    headers, _ = report.verifier_rows({"toy-loop": [{"round": 1, "evaluate": ev}]}, differences=True)
    assert "toy-vote" in headers


def _imports(path: Path) -> set[str]:
    import ast

    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
    return out
