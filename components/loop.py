"""What round n consumes, derived from the store alone: so any round can be (re)run by number,
from a schedule, a manual trigger or a crashed run, without passing state between flow runs."""
from __future__ import annotations

from dataclasses import dataclass

from components import store
from components.config import RunConfig, stable_hash
from components.evaluation import next_difficulty


@dataclass
class RoundInputs:
    generator_uri: str  # G_{n-1}: round n-1's model, the bootstrap for n = 1
    prm_uri: str | None  # PRM_{n-1}, None for n = 1 or when the PRM is off
    target: int | None  # curriculum level for round n
    kept_uris: list[str]  # filtered data of rounds 1..n-1 (round n's own is added by the flow)
    scored_uris: list[str]  # scored data of rounds 1..n-1, plus imported human labels when configured
    judge_uri: str | None = None


def round_inputs(cfg: RunConfig, n: int) -> RoundInputs:
    loop = cfg.loop_id()
    if n < 1:
        raise ValueError(f"round numbers start at 1 (round 0 is the bootstrap), got {n}")
    prev = n - 1
    generator = (store.bootstrap_uri(cfg.store_uri, cfg.bootstrap_hash()) if prev == 0
                 else store.round_uri(cfg.store_uri, loop, prev, "model"))
    if not store.is_published(generator):
        raise store.NotPublished(f"round {n} needs round {prev}'s generator, not published at {generator}")
    # With `labels`, round 0 has a PRM too: the one trained on the imported labels alone.
    has_prm0 = cfg.scoring.label_source == "labels"
    prm = store.round_uri(cfg.store_uri, loop, prev, "prm") if (prev > 0 or has_prm0) and cfg.prm.enabled else None
    if prm and not store.is_published(prm):
        raise store.NotPublished(f"round {n} needs round {prev}'s PRM, not published at {prm}")
    target = None
    if cfg.curriculum.enabled:
        metrics = store.read_manifest(store.round_uri(cfg.store_uri, loop, prev, "eval")).get("metrics", {})
        pass1 = {int(k[len("pass1_n"):]): v for k, v in metrics.items() if k.startswith("pass1_n")}
        target = next_difficulty(pass1, cfg.curriculum.promote_at, cfg.family.train.min_ops, cfg.family.train.max_ops)
    earlier = range(1, n)
    imported = [labels_uri(cfg)] if labels_uri(cfg) else []
    return RoundInputs(generator, prm, target,
                       [store.round_uri(cfg.store_uri, loop, r, "filtered") for r in earlier],
                       imported + [store.round_uri(cfg.store_uri, loop, r, "scored") for r in earlier],
                       judge_uri(cfg))


def uses_judge(cfg: RunConfig) -> bool:
    return bool({"judge", "consensus"} & {cfg.scoring.label_source, *cfg.scoring.also})


def judge_uri(cfg: RunConfig) -> str | None:
    """The judge model: given in config, or the one the loop trains (shared like the bootstrap:
    it depends on the bootstrap and the judge settings only). None for a remote judge."""
    j = cfg.scoring.judge
    if not uses_judge(cfg) or j.backend != "local":
        return None
    if j.model_uri:
        return j.model_uri
    key = stable_hash({"bootstrap": cfg.bootstrap_hash(), "judge": j.model_dump(mode="json", exclude={"remote"})})
    return store.join(cfg.store_uri, "bootstrap", cfg.bootstrap_hash()[:12], f"judge-{key[:10]}")


def labels_uri(cfg: RunConfig) -> str | None:
    """Imported human step labels, published once per (source file, import settings)."""
    lab = cfg.scoring.labels
    if not lab.uri:
        return None
    return store.join(cfg.store_uri, "labels", stable_hash(lab.model_dump(mode="json"))[:12])


def last_round(cfg: RunConfig) -> int:
    """The highest round whose evaluation (a round's last stage) is published: 0 after the bootstrap
    alone, -1 when the loop has not started."""
    n = -1
    while store.is_published(store.round_uri(cfg.store_uri, cfg.loop_id(), n + 1, "eval")):
        n += 1
    return n
