"""What round n consumes, derived from the store alone: so any round can be (re)run by number,
from a schedule, a manual trigger or a crashed run, without passing state between flow runs."""
from __future__ import annotations

from dataclasses import dataclass

from components import store
from components.config import RunConfig
from components.evaluation import next_difficulty


@dataclass
class RoundInputs:
    generator_uri: str  # G_{n-1}: round n-1's model, the bootstrap for n = 1
    prm_uri: str | None  # PRM_{n-1}, None for n = 1 or when the PRM is off
    target: int | None  # curriculum level for round n
    kept_uris: list[str]  # filtered data of rounds 1..n-1 (round n's own is added by the flow)
    scored_uris: list[str]


def round_inputs(cfg: RunConfig, n: int) -> RoundInputs:
    loop = cfg.loop_id()
    if n < 1:
        raise ValueError(f"round numbers start at 1 (round 0 is the bootstrap), got {n}")
    prev = n - 1
    generator = (store.bootstrap_uri(cfg.store_uri, cfg.bootstrap_hash()) if prev == 0
                 else store.round_uri(cfg.store_uri, loop, prev, "model"))
    if not store.is_published(generator):
        raise store.NotPublished(f"round {n} needs round {prev}'s generator, not published at {generator}")
    prm = store.round_uri(cfg.store_uri, loop, prev, "prm") if prev > 0 and cfg.prm.enabled else None
    if prm and not store.is_published(prm):
        raise store.NotPublished(f"round {n} needs round {prev}'s PRM, not published at {prm}")
    target = None
    if cfg.curriculum.enabled:
        metrics = store.read_manifest(store.round_uri(cfg.store_uri, loop, prev, "eval")).get("metrics", {})
        pass1 = {int(k[len("pass1_n"):]): v for k, v in metrics.items() if k.startswith("pass1_n")}
        target = next_difficulty(pass1, cfg.curriculum.promote_at, cfg.family.train.min_ops, cfg.family.train.max_ops)
    earlier = range(1, n)
    return RoundInputs(generator, prm, target,
                       [store.round_uri(cfg.store_uri, loop, r, "filtered") for r in earlier],
                       [store.round_uri(cfg.store_uri, loop, r, "scored") for r in earlier])
