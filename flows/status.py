"""`vstar status`: where a loop stands, read from the three places that know: the store (what each
round has published, when, with which figures), the loop's lock and the Prefect API (whether a run
holds the loop now, which flow runs are running), and MLflow (how the loop's runs ended).

A published stage made by other code than this checkout's shows as `stale` (its manifest records the
code: components/artifacts/code_version.py). A stage of an unfinished round shows as `running` while a live holder keeps the loop, `failed` or
`killed` when the round's MLflow run ended so, `interrupted` when the run still says RUNNING but no
live process holds the loop (killed outright), else `not started`.
"""
from __future__ import annotations

from dataclasses import dataclass

from components.artifacts import code_version, store, tracking
from components.runtime import progress
from components.artifacts.layout import Layout, is_safe_id
from components import round_table

# Artifacts a config switches on or off (its section's `enabled`), and each round artifact's stage
# module, in the order a round runs them.
OPTIONAL = tuple(r.artifact for r in round_table.round_rows() if r.section)
BY_ARTIFACT = {a: round_table.publishing(a, {}).stage() for a in round_table.artifacts()}


@dataclass
class Row:
    round: int
    stage: str
    state: str  # published | stale (made by other code) | running | failed | killed | interrupted | not started
    when: str  # published at (UTC), or the round run's start
    figures: str  # the stage's summary line, without its name


def loop_ids(store_uri: str) -> list[str]:
    fs, path = store.fs_for(Layout(store_uri).loops())
    try:
        names = (p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(path, detail=False))
        return sorted(n for n in names if is_safe_id(n))  # anything else is no loop's (Layout refuses it)
    except FileNotFoundError:
        return []


def rounds(at: Layout) -> list[int]:
    fs, path = store.fs_for(at.loop())
    try:
        names = [p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(path, detail=False)]
    except FileNotFoundError:
        return []
    return sorted(n for n in map(Layout.round_number, names) if n is not None)


def _manifest(uri: str) -> dict | None:
    try:
        return store.read_manifest(uri)
    except store.NotPublished:
        return None


def _published_row(n: int, module, manifest: dict) -> Row:
    stage, metrics = module.STAGE, manifest.get("metrics", {})
    line = progress.summary(stage.name, metrics, stage.summary, metrics.get("seconds", 0))
    stale = code_version.is_stale(manifest, module.__name__)
    state = {True: f"stale: code {manifest.get('code', {}).get('hash')}", False: "published",
             None: "published (code not recorded)"}[stale]
    figures = line[len(stage.name):].strip()
    if manifest.get("unchanged"):  # a round that kept too little to train: its G_n is G_{n-1}
        figures = f"unchanged: G_{n} = G_{n - 1} ({metrics.get('kept_examples', 0):,} kept traces)  {figures}"
    return Row(n, stage.name, state, manifest.get("published_at", "?"), figures)


def round_rows(at: Layout, n: int, enabled: dict[str, bool | None] | None, run_status: str | None,
               holder_alive: bool | None, method: str | None = None) -> list[Row]:
    """Round n's stages: each published one, then the first one missing (if the round is unfinished).
    enabled: per OPTIONAL artifact, whether the loop's config switches it on; None (or left out): not
    known (the loop's config is not at hand), and a missing one is passed over. method: how the loop
    trains round n's G_n (train_generator.method_of), which names that stage while it is missing."""
    rows: list[Row] = []
    enabled = {a: (enabled or {}).get(a) for a in OPTIONAL}
    artifacts = ["eval"] if n == 0 else [a for a in BY_ARTIFACT if enabled.get(a) is not False]
    for artifact in artifacts:
        module = BY_ARTIFACT[artifact]
        manifest = _manifest(at.round(n, artifact))
        if manifest is not None:  # the generator's by how it was trained (its manifest says)
            rows.append(_published_row(n, round_table.publishing(artifact, manifest).stage(), manifest))
            continue
        if artifact in enabled and enabled[artifact] is None:
            continue
        if holder_alive:
            state = "running"
        elif run_status in ("FAILED", "KILLED"):
            state = run_status.lower()
        elif run_status == "RUNNING":
            state = "interrupted"
        else:
            state = "not started"
        if artifact == "model" and method:
            module = next(r for r in round_table.round_rows() if r.method == method).stage()
        rows.append(Row(n, module.STAGE.name, state, "", ""))
        break  # later stages wait for this one
    return rows


def generator_0(at: Layout) -> str | None:
    """G_0's URI as the loop's round-0 evaluation recorded it (None before that is published)."""
    manifest = _manifest(at.round(0, "eval"))
    return manifest.get("model") if manifest else None


def mlflow_runs(cfg, loop_id: str):
    """(parent run, {round: run}) of the loop, or None when MLflow has no such loop."""
    try:
        parent, children = tracking.loop_runs(tracking.client(cfg), cfg.experiment, loop_id)
    except ValueError:
        return None
    by_round = {int(r.data.tags.get(tracking.ROUND_TAG, -1)): r for r in children}
    return parent, by_round


def running_flow_runs() -> list[str]:
    """The flow runs the Prefect API says are running now: 'name (flow, since ...)'."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType
    from prefect.client.schemas.objects import StateType

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.RUNNING]))))
        flows = {f.id: f.name for f in client.read_flows()} if runs else {}
    return [f"{r.name} ({flows.get(r.flow_id, '?')}, since {r.start_time:%Y-%m-%d %H:%M:%S} UTC)" for r in runs]
