"""DPO_n, V-STaR's verifier: the round's generator G_n trained with DPO on (right, wrong) solution pairs
of every problem generated in rounds 1..n (V-STaR keeps all iterations' data), G_n its reference
policy; it scores a solution by DPO's implicit reward beta * log(pi_dpo / pi_G_n)
(components/models/dpo.py). What it buys against the PRM, the ORM and the vote is measured on the same
held-out pool by evaluate (components/evaluation/bestofk.py)."""
from __future__ import annotations

import tempfile
import time

from components.config import RunConfig
from components.data.decontam import against_eval
from components.data.prompting import family_of
from components.infra import store
from components.models import dpo, serving
from components.models.sft import adapter_base
from components.stages import Stage

STAGE = Stage("train-dpo", reads=("candidates", "model"), publishes="dpo", accelerator=True, data_parallel=True, isolated=True,
              metrics="train_dpo",
              summary=("{pairs:,} pairs", "loss {loss_first:.3f} -> {loss_last:.3f}",
                       "held-out pairs ranked right {heldout_pair_accuracy:.0%}"))


def run(cfg: RunConfig, out_uri: str, generator_uri: str, round_idx: int, generated_uris: list[str]) -> dict:
    t0 = time.perf_counter()
    rows = [r for u in generated_uris for r in store.read_rows(u)]
    rows, dropped = against_eval(rows, family_of(cfg), cfg.decontam)
    d = cfg.dpo
    pairs = dpo.preference_pairs(rows, d.pairs_per_problem, seed=cfg.seed + round_idx)[: d.max_pairs]
    if not pairs:
        raise ValueError(f"round {round_idx}: no problem has both a right and a wrong solution in {generated_uris}: "
                         f"no preference pairs to train the DPO verifier on")
    folder = store.fetch_folder(generator_uri)
    base = adapter_base(folder)
    curve: list = []
    with tempfile.TemporaryDirectory() as tmp:
        stats = dpo.train_dpo(folder, tmp, pairs, beta=d.beta, epochs=d.epochs, lr=d.lr, batch_size=d.batch_size,
                              seed=cfg.seed + round_idx, base_dir=store.fetch_folder(base) if base else None,
                              log=lambda step, m: curve.append((step, m["train_loss"])),
                              placement=serving.placement(cfg))
        metrics = {**{k: v for k, v in stats.items() if isinstance(v, (int, float))}, **dropped, "pairs": len(pairs),
                   "problems": len({p["prompt"] for p in pairs}), "seconds": time.perf_counter() - t0,
                   "loss_curve": curve}
        # The reference is part of the verifier: its score is a ratio to exactly this model.
        store.publish_folder(tmp, out_uri, {"kind": "dpo", "round": round_idx, "data": generated_uris,
                                            "reference": generator_uri, "metrics": metrics})
    return metrics
