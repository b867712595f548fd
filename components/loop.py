"""What round n consumes, derived from the store alone: so any round can be (re)run by number,
from a schedule, a manual trigger or a crashed run, without passing state between flow runs."""
from __future__ import annotations

from dataclasses import dataclass, field

from components import round_table
from components.config import RunConfig
from components.config_training import REWARDS
from components.data.curriculum import next_difficulty
from components.artifacts import store
from components.artifacts.layout import Layout
from components.labeling import sources


@dataclass
class RoundInputs:
    generator_uri: str  # G_{n-1}: round n-1's model, the bootstrap for n = 1
    prm_uri: str | None  # PRM_{n-1}, None for n = 1 or when the PRM is off
    target: int | None  # curriculum level for round n
    kept_uris: list[str]  # filtered data of rounds 1..n-1 (round n's own is added by the flow)
    scored_uris: list[str]  # scored data of rounds 1..n-1, plus imported human labels when configured
    judge_uri: str | None = None
    generated_uris: list[str] = ()  # scored data of rounds 1..n-1 alone: every generated trace (the ORM's)
    target_why: str = ""  # how the curriculum chose `target`
    dpo_uri: str | None = None  # DPO_{n-1} where the label source reads it (the implicit PRM), else None
    # Round n-1's verifiers a GRPO round's rewards read (config section -> URI); empty in an SFT round
    reward_uris: dict[str, str] = field(default_factory=dict)


def round_inputs(cfg: RunConfig, n: int) -> RoundInputs:
    if n < 1:
        raise ValueError(f"round numbers start at 1 (round 0 is the bootstrap), got {n}")
    at, prev = Layout.of(cfg), n - 1
    generator = at.generator(prev)
    if not store.is_published(generator):
        raise store.NotPublished(f"round {n} needs round {prev}'s generator, not published at {generator}")
    # A source that trains on imported labels has a PRM in round 0 too: the one trained on them alone.
    has_prm = (prev > 0 or sources.prm0_from_imports(cfg)) and cfg.prm.enabled
    prm = at.round(prev, "prm") if has_prm else None
    if prm and not store.is_published(prm):
        raise store.NotPublished(f"round {n} needs round {prev}'s PRM, not published at {prm}")
    target, why = None, "curriculum off: every train problem"
    if cfg.curriculum.enabled:
        metrics = store.read_manifest(at.round(prev, "eval")).get("metrics", {})
        per_level = lambda name: {int(k[len(name):]): v for k, v in metrics.items()  # noqa: E731
                                  if k.startswith(name) and k[len(name):].isdigit()}
        target, why = next_difficulty(per_level("pass1_n"), cfg.curriculum.promote_at, cfg.family.train.min_ops,
                                      cfg.family.train.max_ops, per_level("pass_at_k_n"))
    earlier = range(1, n)
    imported = [labels_uri(cfg)] if labels_uri(cfg) else []
    generated = [at.round(r, "scored") for r in earlier]
    dpo = at.round(prev, "dpo") if prev > 0 and sources.SOURCES[cfg.scoring.label_source].uses == "dpo" else None
    if dpo and not store.is_published(dpo):
        raise store.NotPublished(f"round {n} needs round {prev}'s DPO verifier, not published at {dpo}")
    return RoundInputs(generator, prm, target, [at.round(r, "filtered") for r in earlier], imported + generated,
                       judge_uri(cfg), generated, why, dpo, reward_uris(cfg, n, prm))


def reward_uris(cfg: RunConfig, n: int, prm_uri: str | None) -> dict[str, str]:
    """The verifiers of round n-1 that round n's GRPO rewards read, by config section (the config's
    checks made sure round n-1 trains them: components/checks.py)."""
    if cfg.train_generator.method_of(n) != "grpo":
        return {}
    artifact = {r.section: r.artifact for r in round_table.verifiers()}
    out = {}
    for section in {REWARDS[name] for name in cfg.grpo.rewards} - {None}:
        uri = prm_uri if section == "prm" else Layout.of(cfg).round(n - 1, artifact[section])
        if not uri or not store.is_published(uri):
            raise store.NotPublished(f"round {n}'s GRPO reward needs round {n - 1}'s {section} verifier, "
                                     f"not published at {uri}")
        out[section] = uri
    return dict(sorted(out.items()))


def judge_uri(cfg: RunConfig) -> str | None:
    """The judge model when a source in use needs one: given in config, or the one the loop trains
    (shared like the bootstrap). None for a remote judge."""
    j = cfg.scoring.judge
    if not sources.needs_judge(cfg) or j.backend != "local":
        return None
    return j.model_uri or Layout.of(cfg).trained_judge(j.model_dump(mode="json", exclude={"remote"}))


def labels_uri(cfg: RunConfig) -> str | None:
    """Imported human step labels, published once per (source file, import settings); a labelling
    budget's once per (budget, G_0, sampling settings): its traces are G_0's."""
    lab = cfg.scoring.labels
    if lab.budget:
        return Layout.of(cfg).labels({**lab.model_dump(mode="json"), "bootstrap": cfg.bootstrap_hash(),
                                      "generation": cfg.generation.model_dump(mode="json")})
    return Layout.of(cfg).labels(lab.model_dump(mode="json")) if lab.uri else None


def last_round(cfg: RunConfig) -> int:
    """The highest round whose evaluation (a round's last stage) is published: 0 after the bootstrap
    alone, -1 when the loop has not started."""
    at, n = Layout.of(cfg), -1
    while store.is_published(at.round(n + 1, "eval")):
        n += 1
    return n


def learned_nothing(cfg: RunConfig, n: int, generated: dict, kept: dict, sft: dict) -> str | None:
    """One line for a round whose SFT kept too little to train (G_n = G_{n-1}): what was generated and
    right, what was kept, and what to try. None for a round that trained."""
    if not sft.get("unchanged"):
        return None
    tries = [] if cfg.rationalize.enabled else ["rationalize.enabled=true (STaR: the answer as a hint for failed problems)"]
    tries += ["easier problems (family.train.min_ops, curriculum.promote_at)",
              f"more samples (generation.k={cfg.generation.k * 2})"]
    if cfg.filter.mode == "step":
        tries.append("a looser filter (filter.threshold, filter.mode=outcome)")
    hinted = (f", {generated.get('rationalized', 0):,} rationalized of {generated['rationalize_samples']:,} hinted"
              if "rationalize_samples" in generated else "")
    return (f"round {n} learned nothing: {generated.get('traces', 0):,} samples on {generated.get('problems', 0):,} "
            f"problems, {generated.get('correct', 0):,} right{hinted}; {kept.get('kept', 0):,} kept, "
            f"{sft.get('kept_examples', 0):,} after decontamination (sft.min_kept {cfg.sft.min_kept}): "
            f"G_{n} is G_{n - 1}, unchanged. Try: {'; '.join(tries)}")
