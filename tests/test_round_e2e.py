"""The loop through real services: Prefect server, MLflow server with S3 artifacts, an s3:// store,
vLLM generation, SFT and PRM training on a real tiny model."""
import os
import re
from collections import defaultdict
from html.parser import HTMLParser

import datasets
import mlflow
import pytest

from browser import assert_not_blank, render_app  # tests/browser.py

from components.evaluation import bestofk
from components.evaluation.trace_report import REPORT
from components.artifacts import store, tracking
from components.artifacts.layout import Layout
from tests.expect import assert_reported, first_error_f1, prm_f1
from tests.procs import stray_files


@pytest.fixture(scope="module")
def s3_cfg(s3, mlflow_server, tiny_model_uri, tiny_model_dir):
    from components.checks import load_config

    # With V-STaR's DPO verifier too (off in smoke.yaml: ~10 s a round the other tests need not pay).
    # Rounds as short as they get (as in tests/test_faults.py): what is tested is the loop on S3 and MLflow.
    cfg = load_config("configs/smoke.yaml", [
        f"store_uri={s3.uri('e2e')}", f"tracking_uri={mlflow_server}", "rounds=2", "dpo.enabled=true", "dpo.epochs=2",
        "family.eval.per_level=5", "eval.sampled_per_level=2", "curriculum.problems=24"])
    # Reuse the session's bootstrap, with its figures (G_0's size: what compare counts FLOPs by):
    # publishing it where this loop looks also exercises S3 publishing.
    store.publish_folder(tiny_model_dir, Layout.of(cfg).bootstrap(),
                         {"kind": "model", "metrics": store.read_manifest(tiny_model_uri)["metrics"]})
    return cfg


@pytest.fixture(scope="module")
def loop_result(s3_cfg, prefect_server):
    from flows.self_improve import self_improve

    return self_improve(s3_cfg)


def test_two_rounds_publish_to_s3(loop_result, s3_cfg):
    r1, r2 = loop_result["rounds"][1:]
    assert r1["filtered_uri"].startswith("s3://vstar-test/e2e/loops/")
    # round 2 generated with round 1's model and filtered... and the models differ from the bootstrap
    assert store.read_manifest(r2["model_uri"])["parent"] == r1["model_uri"]
    assert store.read_manifest(r1["model_uri"])["sha256"] != store.read_manifest(r2["model_uri"])["sha256"]
    # V-STaR's verifier starts from, and is measured against, G_SFT (here G_0) in every round, not G_n
    g0 = loop_result["rounds"][0]["model_uri"]
    assert [store.read_manifest(r["dpo_uri"])["reference"] for r in (r1, r2)] == [g0, g0]
    # A user reads the filtered data straight from S3 with plain `datasets`.
    manifest = store.read_manifest(r1["filtered_uri"])
    ds = datasets.load_dataset("parquet", data_files=f"{r1['filtered_uri']}/data.parquet", split="train",
                               storage_options=store.storage_options(r1["filtered_uri"]))
    assert len(ds) == manifest["rows"] == r1["filter"]["kept"] > 0
    assert all(ds["correct"]) and all(min(s) >= s3_cfg.filter.threshold for s in ds["step_scores"])
    # Everything in the bucket belongs to a published artifact: no Prefect results, nothing half-written.
    assert stray_files(s3_cfg.store_uri) == []


def test_mlflow_parent_has_child_runs_with_eval_metrics(loop_result, s3_cfg):
    client = mlflow.MlflowClient(s3_cfg.tracking_uri)
    parent = client.get_run(loop_result["parent_run_id"])
    assert parent.data.params["generation/k"] == str(s3_cfg.generation.k)
    assert parent.info.status == "FINISHED" and parent.info.end_time  # not "Running" forever in the UI
    assert "final/pass1_all" in parent.data.metrics
    assert {a.path for a in client.list_artifacts(parent.info.run_id, "summary")} >= {"summary/rounds.png",
                                                                                      "summary/rounds.md"}
    children = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    by_round = {c.data.tags["vstar.round"]: c for c in children}
    assert set(by_round) == {"0", "1", "2"} and {c.info.status for c in children} == {"FINISHED"}
    for n in ("1", "2"):
        m = by_round[n].data.metrics
        r = loop_result["rounds"][int(n)]
        assert m["generate/traces"] == r["generate"]["problems"] * s3_cfg.generation.k
        assert m["filter_traces/kept"] == r["filter"]["kept"]
        scored = store.read_rows(r["filtered_uri"].replace("filtered", "scored"))
        assert_reported(m, "score/label_f1", first_error_f1([x["label_first_error"] for x in scored],
                                                            [x["gold_first_error"] for x in scored]))
        assert {"evaluate/pass1_n1", "evaluate/maj_at_k_all", "evaluate/bestofk_prm_min_all", "evaluate/prm_f1"} <= set(m)
        # Every selector on one pool (k = 1..N) with its interval, PRM against ORM paired; the plot beside.
        n_pool = s3_cfg.eval.k
        for sel in ("vote", "prm_min", "orm", "dpo", "dpo_likelihood", "implicit_min", "implicit_mean", "confidence",
                    "calc", "prm_calc",
                    "weighted_vote/prm_min", "weighted_vote/calc", "pass_at_k"):
            assert m[f"evaluate/bok/{sel}/k{n_pool}/lo"] <= m[f"evaluate/bok/{sel}/k{n_pool}"] <= m[f"evaluate/bok/{sel}/k{n_pool}/hi"]
        assert m["evaluate/bok/vote/k1"] == pytest.approx(m["evaluate/bok/random/k1"])
        assert f"evaluate/bok_diff/prm_min-orm/k{n_pool}" in m and m["train_orm/examples"] > 0
        assert f"evaluate/bok_diff/prm_min-dpo/k{n_pool}" in m and m["train_dpo/pairs"] > 0
        # What each costs: FLOPs to generate and to score a sample, and to train the verifiers.
        assert m["evaluate/cost/generate_flops_per_sample"] > 0 and m["train_orm/train_flops"] > 0
        assert 0 < m["evaluate/cost/orm/score_flops_per_sample"] == m["evaluate/cost/prm_min/score_flops_per_sample"]
        assert m["evaluate/cost/calc/score_flops_per_sample"] == 0  # the calculator: no model
        # the PRM's first-error F1 on the evaluation's sampled pool, alone and with the calculator, as
        # published (the greedy rows beside them carry no PRM scores: counted, they read as "no error")
        from components.data.families import get_family

        fam = get_family(s3_cfg.family, s3_cfg.seed)  # the calculator's verdicts recomputed from each completion
        sampled = [{**x, "calc_labels": fam.calculator_labels(fam.split_steps(x["completion"]))}
                   for x in store.read_rows(Layout.of(s3_cfg).round(int(n), "eval")) if x["kind"] == "sample"]
        assert_reported(m, "evaluate/prm_f1", prm_f1(sampled))
        assert_reported(m, "evaluate/prm_calc_f1", prm_f1(sampled, calculator=True))
        # ...and at the threshold the PRM's training chose on its held-back traces (saved with it)
        from components.models import prm

        t = prm.load_format(store.fetch_folder(store.read_manifest(Layout.of(s3_cfg).round(int(n), "eval"))["prm"]))["threshold"]
        assert t == m["train_prm/calibrated_threshold"]
        assert_reported(m, "evaluate/prm_f1_calibrated", prm_f1(sampled, threshold=t))
        # ...and the DPO verifier's, read as an implicit PRM: sigmoid(q_t) per step, the last q_t its reward
        assert all(len(x["implicit_scores"]) == len(fam.split_steps(x["completion"])) for x in sampled)
        assert all(bestofk.sigmoid(x["scores"]["dpo"]) == pytest.approx(x["implicit_scores"][-1])
                   for x in sampled if x["implicit_scores"])
        assert_reported(m, "evaluate/implicit_f1", prm_f1(sampled, key="implicit_scores"))
        # The DPO verifier reads each sample twice at the generator's size: itself and its reference.
        assert m["evaluate/cost/dpo/score_flops_per_sample"] == pytest.approx(2 * m["evaluate/cost/generate_flops_per_sample"])
        assert m["train_dpo/train_flops"] > 0
        # PRM-guided beam search beside best-of-k at the same generated tokens.
        solved = m["evaluate/beam/accuracy"] * m["evaluate/bok_problems"]  # a count of the pool's problems
        assert solved == pytest.approx(round(solved)) and m["evaluate/beam/tokens_per_problem"] > 0
        # read off the curves where the search's budget lies within the pool, else not reported
        assert ("evaluate/beam/bestofk_prm_min_equal_tokens" in m) == (m["evaluate/beam/k_equal_tokens"] <= n_pool)
        # ...and at the same FLOPs, the PRM's reading of every partial trace counted
        k_compute = m["evaluate/beam/k_equal_compute_bestofk_prm_min"]
        assert ("evaluate/beam/bestofk_prm_min_equal_compute" in m) == (k_compute <= n_pool)
        assert k_compute > 0 and m["evaluate/beam/flops_per_problem"] > 0
        assert "eval/bestofk.png" in {a.path for a in client.list_artifacts(by_round[n].info.run_id, "eval")}
        curve = client.get_metric_history(by_round[n].info.run_id, "train_generator/loss")
        assert len(curve) == len(r["sft"]["loss_curve"]) >= 1  # the SFT loss curve, step by step
        inputs = by_round[n].inputs.dataset_inputs
        assert any(d.dataset.source and r["filtered_uri"] in d.dataset.source for d in inputs)


def test_each_stage_shows_its_progress_in_the_prefect_ui(loop_result, s3_cfg, prefect_server):
    """A progress artifact per isolated stage, keyed by what it publishes, at 100% once it finished."""
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    key = f"loops-{loop_result['loop_id']}-"
    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(like_=key)))
    by_key = {a.key: a for a in arts}
    for n in (1, 2):
        for artifact, stage in (("candidates", "generate"), ("scored", "score"), ("model", "sft"), ("eval", "evaluate")):
            a = by_key.get(f"{key}round-{n}-{artifact}")
            assert a is not None and a.type == "progress", (n, artifact, sorted(by_key))
            assert a.data == 100.0 and a.description.startswith(f"{stage}: ") and "100%" in a.description, a


class MlflowPage(HTMLParser):
    """What a rendered MLflow UI page shows, by the UI's data-testid attributes: the text, the links
    ((href, text)) and the attributes of each such element, and the page's iframes."""
    VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}

    def __init__(self, dom: str):
        super().__init__()
        self.text: dict[str, str] = defaultdict(str)
        self.links: dict[str, list[tuple[str, str]]] = defaultdict(list)
        self.attrs: dict[str, list[dict]] = defaultdict(list)
        self.iframes: list[dict] = []
        self._open: list[tuple[str, str | None]] = []  # (tag, data-testid) of the open elements
        self._link: list[str] | None = None
        self.feed(dom)

    def handle_starttag(self, tag, attrs):
        a = {k: v or "" for k, v in attrs}
        if tag == "iframe":
            self.iframes.append(a)
        if a.get("data-testid"):
            self.attrs[a["data-testid"]].append(a)
        if tag == "a":
            self._link = [a.get("href", ""), ""]
        if tag not in self.VOID:
            self._open.append((tag, a.get("data-testid")))

    def handle_endtag(self, tag):
        if tag == "a" and self._link:
            for tid in {t for _, t in self._open if t}:
                self.links[tid].append((self._link[0], self._link[1].strip()))
            self._link = None
        for i in range(len(self._open) - 1, -1, -1):
            if self._open[i][0] == tag:
                del self._open[i:]
                break

    def handle_data(self, data):
        for tid in {t for _, t in self._open if t}:
            self.text[tid] += data
        if self._link is not None:
            self._link[1] += data


def test_mlflow_ui_shows_the_loop_its_rounds_and_their_trace_reports(loop_result, s3_cfg, tmp_path):
    """The MLflow UI in headless Chromium, as a person opens it: the loop's parent run lists a child run
    per round, and each round's run lists (and previews) its trace report among its artifacts."""
    client = mlflow.MlflowClient(s3_cfg.tracking_uri)
    parent = client.get_run(loop_result["parent_run_id"])
    # The rounds' runs as the loop knows them, not as MLflow nests them: un-nested runs must fail below.
    rounds = {r["round"]: r["run_id"] for r in loop_result["rounds"]}
    names = {run_id: client.get_run(run_id).info.run_name for run_id in rounds.values()}
    assert names == {rounds[n]: f"{loop_result['loop_id']}/round-{n}" for n in range(s3_cfg.rounds + 1)}
    runs = f"{s3_cfg.tracking_uri}/#/experiments/{parent.info.experiment_id}/runs"

    png = tmp_path / "parent-run.png"
    page = MlflowPage(render_app(tmp_path, f"{runs}/{parent.info.run_id}", png))
    where = f"(page: {png.with_suffix('.html')}, {png})"
    assert page.text["runs-header"].strip() == parent.info.run_name == loop_result["loop_id"], where
    assert parent.info.run_id in page.text["key-value-Run ID"], where
    assert "Finished" in page.text["key-value-Status"], where
    children = {href.rsplit("/", 1)[-1]: name for href, name in page.links["key-value-Child runs"]}
    assert children == names, f"child runs on the parent's page {where}: {children}, expected {names}"
    assert_not_blank(png, (1400, 1000))

    for n in range(1, s3_cfg.rounds + 1):  # rounds 1.. publish a trace report; round 0 evaluates the bootstrap
        png = tmp_path / f"round-{n}-artifacts.png"
        page = MlflowPage(render_app(tmp_path, f"{runs}/{rounds[n]}/artifacts/report/{REPORT}", png))
        where = f"(page: {png.with_suffix('.html')}, {png})"
        assert page.text["runs-header"].strip() == names[rounds[n]], where
        tree = {a.get("artifact-name") for a in page.attrs["artifact-tree-node"]}
        assert {"report", REPORT} <= tree, f"artifact tree {where}: {tree}"
        # The selected file is shown: its path above the preview, the HTML itself in MLflow's iframe.
        assert any("mlflow-html-iframe" in f.get("class", "") for f in page.iframes), where
        assert_not_blank(png, (1400, 1000))


def test_rerun_skips_published_stages(loop_result, s3_cfg):
    """Same config, same loop: every stage is already published, nothing is recomputed."""
    from flows.self_improve import self_improve

    uri = Layout.of(s3_cfg).round(2, "model")
    before = store.read_manifest(uri)
    again = self_improve(s3_cfg)
    after = store.read_manifest(uri)
    assert before["published_at"] == after["published_at"] and before["sha256"] == after["sha256"]
    # The figures come back from the manifest (the run that made them logged its peak memory to MLflow).
    resources = ("peak_rss_mb", "used_gpu", "peak_gpu_mb")
    first = {k: v for k, v in loop_result["rounds"][2]["evaluate"].items() if k not in resources}
    assert again["rounds"][2]["evaluate"] == first


def test_compare_reads_rounds_from_mlflow_server(loop_result, s3_cfg, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    out = tmp_path / "cmp.png"
    vstar = str(Path(sys.executable).parent / "vstar")
    res = subprocess.run([vstar, "compare", loop_result["loop_id"], "--tracking-uri", s3_cfg.tracking_uri,
                          "--out", str(out)], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "COLUMNS": "200"})
    assert res.returncode == 0, res.stdout + res.stderr
    rounds_table, rest = res.stdout.split("best-of-N on each round's evaluation pool")
    verifiers_table, differences_table = rest.split("paired differences of best-of-N")
    lines = [ln for ln in rounds_table.splitlines() if loop_result["loop_id"] in ln]
    assert len(lines) == 3  # rounds 0, 1, 2
    r1, r2 = (loop_result["rounds"][n]["evaluate"]["pass1_n1"] for n in (1, 2))
    assert f"{100 * r2:.0f}% ({'+' if r2 >= r1 else ''}{100 * (r2 - r1):.0f})" in lines[2]  # value and delta
    assert out.stat().st_size > 10_000  # a real plot, not an empty file
    # Which selector picks best from the same samples, with intervals; each round, the verifiers paired.
    head = next(ln for ln in verifiers_table.splitlines() if "prm_min" in ln)
    assert all(name in head for name in ("vote", "prm_min", "prm_calc", "orm", "dpo", "confidence", "calc")), verifiers_table
    rows = [ln for ln in verifiers_table.splitlines() if loop_result["loop_id"] in ln]
    assert len(rows) == 3 and all(re.search(r"\d+% \[\d+, \d+\]", ln) for ln in rows), verifiers_table
    head = next(ln for ln in differences_table.splitlines() if "prm_min-orm" in ln)
    assert all(name in head for name in ("prm_min-dpo", "orm-vote", "dpo-vote", "calc-vote")), differences_table
    differences_table, cost_table = differences_table.split("what each learned verifier cost and bought")
    # Every round, the bootstrap's too: the calculator needs no trained verifier.
    rows = [ln for ln in differences_table.splitlines() if loop_result["loop_id"] in ln]
    assert len(rows) == 3 and all(re.search(r"[+-]\d+ \[[+-]?\d+, [+-]?\d+\]", ln) for ln in rows), differences_table
    client = mlflow.MlflowClient(s3_cfg.tracking_uri)
    # The cost table: a row per round and verifier MLflow holds a training of, its FLOPs in TFLOPs.
    _, children = tracking.loop_runs(client, "vstar", loop_result["loop_id"])
    trained = {(c.data.tags["vstar.round"], sel, c.data.metrics[f"{stage}/train_flops"]) for c in children
               for sel, stage in (("prm_min", "train_prm"), ("orm", "train_orm"), ("dpo", "train_dpo"))
               if f"{stage}/train_flops" in c.data.metrics}
    cost_table, generator_table = cost_table.split("how each round trained its generator")
    cells = [[x.strip() for x in ln.split("│")[1:-1]] for ln in cost_table.splitlines() if loop_result["loop_id"] in ln]
    assert trained and {(c[1], c[2]) for c in cells} == {(r, sel) for r, sel, _ in trained}, cost_table
    assert all(f"{f / 1e12:.3g}" in [c[6] for c in cells if (c[1], c[2]) == (r, sel)] for r, sel, f in trained), cost_table
    # The Monte Carlo rollouts behind the labels, by G_0's size, which the loop's parent run holds (a "-"
    # in every compare before round 0 was given the bootstrap's figures).
    assert all(re.fullmatch(r"\d[\d.e+-]*", c[5]) for c in cells), cost_table
    # How each round trained G_n: SFT here, its examples and training TFLOPs, the round's pass@1.
    gen = [[x.strip() for x in ln.split("│")[1:-1]] for ln in generator_table.splitlines() if loop_result["loop_id"] in ln]
    assert [(c[1], c[2]) for c in gen] == [("1", "sft"), ("2", "sft")], generator_table
    assert all(c[3] == f"{int(loop_result['rounds'][int(c[1])]['sft']['examples']):,}" and c[-1].endswith("%")
               for c in gen), generator_table
    assert "compare/cmp.png" in {a.path for a in client.list_artifacts(loop_result["parent_run_id"], "compare")}
    missing = subprocess.run([vstar, "compare", "no-such-loop", "--tracking-uri", s3_cfg.tracking_uri],
                             capture_output=True, text=True, timeout=300)
    assert missing.returncode == 2 and "no-such-loop" in missing.stdout
