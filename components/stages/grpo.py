"""G_n by reinforcement learning (train_generator.method: grpo): GRPO from G_{n-1} on the problems this
round sampled (generate's candidates, decontaminated as SFT's data is), rewarded by the weighted sum
of `grpo.rewards` (components/evaluation/rewards.py) with round n-1's verifiers. Published as SFT's
G_n is (a model, or a LoRA adapter on G_0's base), so every later stage reads it alike. The reward is
watched against the truth: its mean, the share right, and how many of the samples it ranks highest the
exact check calls flawed, in the metrics and the one-line summary."""
from __future__ import annotations

import time

from components.artifacts import store
from components.config import RunConfig
from components.data.decontam import against_eval
from components.data.prompting import family_of
from components.evaluation.rewards import Rewarder
from components.models import grpo, serving
from components.runtime.log import get_logger
from components.stages import Stage
from components.stages.training import train_and_publish

log = get_logger(__name__)
STAGE = Stage.of(__name__, accelerator=True, isolated=True, metrics="train_generator",
                 summary=("{problems:,} problems", "{steps:,} steps", "reward {reward_first:.2f} -> {reward_last:.2f}",
                          "right {right:.0%}", "high-reward flawed {high_reward_flawed:.0%}", "{mean_tokens:.0f} tok"))


def run(cfg: RunConfig, out_uri: str, model_uri: str, round_idx: int, candidates_uri: str,
        verifier_uris: dict[str, str]) -> dict:
    fam, g = family_of(cfg), cfg.grpo
    t0 = time.perf_counter()
    rows, dropped = against_eval(store.read_rows(candidates_uri), fam, cfg.decontam)
    by_id = {p.id: p for p in fam.problems("train")}
    problems = list({r["problem_id"]: by_id[r["problem_id"]] for r in rows}.values())[:g.max_problems]
    rewarder = Rewarder(cfg, fam, {p.prompt: p for p in problems}, verifier_uris)
    base_uri = serving.base_of(model_uri)
    adapter = store.fetch_folder(model_uri) if model_uri != base_uri else None
    base_dir = store.fetch_folder(base_uri)
    # A verifier's reward costs a forward pass of it per completion (~2 x its params x the tokens); the
    # implicit PRM's, two: the DPO verifier's and its reference's, of one size.
    verifier_params = sum((2 if section == "dpo" else 1) * serving.param_count(store.fetch_folder(u))
                          for section, u in verifier_uris.items())

    def metrics(stats: dict) -> dict:
        tokens, gen_params = stats["tokens"], serving.param_count(base_dir)
        # Per generated token: sampling it (~2 P), the policy's update pass (~6 P: forward and backward),
        # the reference's forward where the KL term needs one (~2 P), the verifiers' forward (~2 P_v).
        flops = {"flops_rollouts": 2.0 * gen_params * tokens,
                 "flops_update": (6.0 + 2.0 * (g.beta > 0)) * gen_params * tokens,
                 "flops_reward": 2.0 * verifier_params * tokens}
        curve = stats["log_history"]
        return {"problems": len(problems), **dict(dropped), "steps": stats["steps"], "train_tokens": tokens,
                "train_seconds": stats["seconds"], **rewarder.watch(), **flops, "train_flops": sum(flops.values()),
                "loss_first": stats["loss_first"], "loss_last": stats["loss_last"],
                "kl_last": curve[-1].get("kl", 0.0) if curve else 0.0,
                "mean_tokens": sum(h.get("completions/mean_length", 0.0) for h in curve) / max(1, len(curve)),
                "zero_std_groups": sum(h.get("frac_reward_zero_std", 0.0) for h in curve) / max(1, len(curve)),
                "reward_curve": [(h["step"], h["reward"]) for h in curve if "reward" in h]}

    out = train_and_publish(
        out_uri, {"kind": "lora" if (adapter or g.lora) else "model", "round": round_idx, "parent": model_uri,
                  "data": [candidates_uri], "method": "grpo", "rewards": g.rewards, "verifiers": verifier_uris},
        lambda folder, log: grpo.grpo(base_dir, folder, [p.prompt for p in problems], rewarder,
                                      num_generations=g.num_generations, batch_size=g.batch_size, epochs=g.epochs,
                                      lr=g.lr, beta=g.beta, max_completion_length=g.max_tokens or cfg.generation.max_tokens,
                                      temperature=cfg.generation.temperature, lora=g.lora,
                                      seed=cfg.seed + cfg.generation.seed + round_idx,  # GRPO samples: generation's seed too
                                      adapter_dir=adapter, base_uri=base_uri, placement=serving.placement(cfg),
                                      warmup_ratio=g.warmup_ratio, log=log),
        t0, metrics)
    if out.get("hacked"):  # said, never silent: the reward rose, the answers did not
        log.warning("round %d: GRPO's reward rose %.2f -> %.2f while its samples' share right went %.0f%% -> %.0f%%%s: "
                    "the policy learned what the reward pays for; compare held-out pass@1 before trusting G_%d",
                    round_idx, out["reward_first"], out["reward_last"], 100 * out["right_first"], 100 * out["right_last"],
                    f" and {100 * out['high_reward_flawed']:.0f}% of its top-reward samples are flawed"
                    if "high_reward_flawed" in out else "", round_idx)
    if out["zero_std_groups"] >= 0.9:  # said, never silent: G_n is nearly G_{n-1}
        log.warning("round %d: %.0f%% of GRPO's groups got one reward for every completion (advantage 0: nothing "
                    "to learn from); try a graded reward (prm, orm, implicit), more grpo.num_generations or a "
                    "higher generation.temperature", round_idx, 100 * out["zero_std_groups"])
    return out
