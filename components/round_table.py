"""The loop's stages declared once, in the order a loop first runs them: plain data, from which the
stage names (`recompute`), a round's artifacts, `vstar status`'s rows, the verifiers a round trains
and the selectors evaluation compares are all derived. It imports nothing of the project, so the
config checks, the stages, the tasks and the flows can all read it.

Adding a verifier (or a generator-training method): write its module under components/stages/ (a
`STAGE` and `run`; a verifier also a `score(samples, ctx)` for evaluation, components/evaluation/scorers.py),
its config section (with `enabled`) in RunConfig, and one row here. tests/test_round_table.py adds a
toy verifier that way and sees it trained, scored and compared.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass

# The run() arguments of a verifier trained on the outcomes of every trace generated in rounds 1..n
# (tasks/train.py trains each such row of the table with them).
ON_GENERATED = ("generator_uri", "generated_uris")


@dataclass(frozen=True)
class Row:
    name: str  # the stage's name: its Prefect task, what `recompute` names, its STAGE.name
    module: str  # the stage module (components/stages: STAGE, run, and merge where shardable)
    artifact: str  # what it publishes (components/artifacts/layout.py): in a round's folder, or the loop's
    inputs: tuple[str, ...] = ()  # the URIs its run() reads: its `*_uri` / `*_uris` parameters
    section: str | None = None  # the config section whose `enabled` switches it (None: always runs)
    verifier: str | None = None  # the verifier it trains: its name in evaluation and the round's result
    selectors: tuple[str, ...] = ()  # its headline best-of-k scores (evaluation's others are in MLflow)
    scorer: str | None = None  # "module:function" scoring samples with the trained verifier at evaluation
    in_round: bool = True  # run by every round (False: once for the loop, before round 1)
    # A way to train the generator (train_generator.method): a round runs the one its config names for
    # it (RunConfig.train_generator.method_of); they publish the same artifact, whose manifest says which.
    method: str | None = None

    @property
    def key(self) -> str:
        """Its metrics' key in a round's result (flows/round.py): the verifier's name, else the stage's."""
        return self.verifier or self.name

    def enabled(self, cfg) -> bool:
        return self.section is None or getattr(cfg, self.section).enabled

    def stage(self):
        """Its stage module, imported on first use (this table imports nothing of the project)."""
        return importlib.import_module(self.module)


_S = "components.stages."
_V = "components.evaluation.scorers:"
ROWS: list[Row] = [
    Row("prepare-data", _S + "data", "data", in_round=False),
    Row("bootstrap", _S + "bootstrap", "bootstrap", in_round=False),
    Row("train-judge", _S + "judge", "judge", ("generator_uri",), in_round=False),
    Row("import-labels", _S + "labels", "labels", ("model_uri",), in_round=False),
    Row("generate", _S + "generate", "candidates", ("model_uri",)),
    Row("score", _S + "score", "scored", ("model_uri", "candidates_uri", "prm_uri", "judge_uri", "dpo_uri")),
    Row("filter", _S + "filter", "filtered", ("scored_uri",)),
    Row("sft", _S + "sft", "model", ("model_uri", "kept_uris"), method="sft"),
    Row("grpo", _S + "grpo", "model", ("model_uri", "candidates_uri", "verifier_uris"), method="grpo"),
    Row("train-prm", _S + "prm", "prm", ("generator_uri", "scored_uris", "previous_prm_uri"), "prm", "prm",
        ("prm_min", "prm_calc"), _V + "prm"),
    Row("train-orm", _S + "orm", "orm", ON_GENERATED, "orm", "orm", ("orm",), _V + "orm"),
    Row("train-dpo", _S + "dpo", "dpo", ON_GENERATED, "dpo", "dpo", ("dpo", "implicit_min"), _V + "dpo"),
    Row("evaluate", _S + "evaluate", "eval", ("model_uri", "prm_uri", "verifier_uris"), selectors=("confidence", "calc")),
    Row("trace-report", _S + "report", "report", ("scored_uri", "filtered_uri", "prm_uri")),
]


def names() -> tuple[str, ...]:
    """Every stage's name, in the order a loop first runs them."""
    return tuple(r.name for r in ROWS)


def round_rows() -> list[Row]:
    """The stages of a round, in the order it runs them."""
    return [r for r in ROWS if r.in_round]


def artifacts() -> tuple[str, ...]:
    """What a round publishes, in the order its stages run."""
    return tuple(dict.fromkeys(r.artifact for r in round_rows()))


def verifiers() -> list[Row]:
    """The stages that train a verifier, in the order a round runs them."""
    return [r for r in ROWS if r.verifier]


def on_generated() -> list[Row]:
    """The verifiers trained on every trace generated in rounds 1..n (the ORM, the DPO verifier, a new
    one): tasks/train.py trains them alike, evaluation gets them by name (the PRM has its own inputs)."""
    return [r for r in verifiers() if r.inputs == ON_GENERATED]


def publishing(artifact: str, manifest: dict) -> Row:
    """The row that made a round's published `artifact`: the generator's by its manifest's `method`."""
    rows = [r for r in round_rows() if r.artifact == artifact]
    return next((r for r in rows if r.method and r.method == manifest.get("method", "sft")), rows[0])


def by_module(module: str) -> Row:
    found = [r for r in ROWS if r.module == module]
    if not found:
        raise LookupError(f"{module} is no stage of the round table (components/round_table.py)")
    return found[0]


def selectors() -> tuple[str, ...]:
    """The headline best-of-k selectors after the vote: each verifier's, then evaluation's own."""
    return tuple(s for r in ROWS for s in r.selectors)


def differences() -> tuple[str, ...]:
    """The paired differences `vstar compare` shows: the verifiers' first selectors with each other,
    each verifier's first selector with its others (a PRM against the same PRM with a calculator),
    and every selector with the vote."""
    first = [r.selectors[0] for r in verifiers()]
    pairs = [f"{a}-{b}" for i, a in enumerate(first) for b in first[i + 1:]]
    pairs += [f"{r.selectors[0]}-{s}" for r in verifiers() for s in r.selectors[1:]]
    return (*pairs, *(f"{s}-vote" for s in selectors()))
