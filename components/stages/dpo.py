"""DPO_n, V-STaR's verifier (Hosseini et al. 2024, arXiv 2402.06457, §3 and Algorithm 1): G_SFT, the
generator fine-tuned on the original SFT data, trained further with DPO on (right, wrong) solution pairs
of every problem generated in rounds 1..n (V-STaR keeps all iterations' data, D_VER), G_SFT its
reference policy; it scores a solution by DPO's implicit reward beta * log(pi_dpo / pi_G_SFT)
(components/models/dpo.py). Here G_SFT is G_0, the bootstrap model trained on the bootstrap split's
gold (`dpo.init: sft`, the default); an imported G_0 was never fine-tuned here, so it stands in as
is (a deviation, said in the stage's manifest). `dpo.init: generator` starts from, and refers to,
the round's G_n instead (this project's earlier rule); `dpo.backbone` from a model of its own (made
here or pretrained, published in the store), which is then its reference. What it buys against the PRM, the ORM and the
vote is measured on the same held-out pool by evaluate (components/evaluation/bestofk.py)."""
from __future__ import annotations

import time

from components.config import RunConfig
from components.data.decontam import against_eval
from components.data.prompting import family_of
from components.artifacts import store
from components.artifacts.layout import Layout
from components.labeling.sources import GUESSES
from components.models import dpo, serving
from components.models.sft import adapter_base
from components.stages import Stage
from components.stages.training import scalars, train_and_publish

STAGE = Stage.of(__name__, accelerator=True, data_parallel=True, isolated=True,
              metrics="train_dpo",
              summary=("{pairs:,} pairs", "loss {loss_first:.3f} -> {loss_last:.3f}",
                       "held-out pairs ranked right {heldout_pair_accuracy:.0%}",
                       "implicit PRM F1 {heldout_implicit_f1:.2f} at 0.5, {heldout_implicit_f1_calibrated:.2f} at {implicit_threshold:.3g}"))


def calibration_traces(rows: list[dict]) -> list[dict]:
    """The traces whose first error the round's label source named (a learned verifier's guesses left
    out, as the PRM leaves them out of its training): the implicit PRM's threshold is chosen on those of
    problems the verifier does not train on (components/models/dpo.py)."""
    return [{"prompt": r["prompt"], "completion": r["completion"], "steps": r["steps"], "first_error": r["label_first_error"]}
            for r in rows if r.get("label_first_error") is not None and r.get("label_source") not in GUESSES]


def run(cfg: RunConfig, out_uri: str, generator_uri: str, round_idx: int, generated_uris: list[str]) -> dict:
    t0 = time.perf_counter()
    rows = [r for u in generated_uris for r in store.read_rows(u)]
    rows, dropped = against_eval(rows, family_of(cfg), cfg.decontam)
    d = cfg.dpo
    pairs = dpo.preference_pairs(rows, d.pairs_per_problem, seed=cfg.seed + round_idx)[: d.max_pairs]
    if not pairs:
        raise ValueError(f"round {round_idx}: no problem has both a right and a wrong solution in {generated_uris}: "
                         f"no preference pairs to train the DPO verifier on")
    init = d.init
    if d.backbone.enabled:  # a model of its own, published: the reference its scores are ratios to
        from components.stages.bootstrap import backbone

        init_uri, init = backbone(cfg, d.backbone, "dpo.backbone")
    else:
        init_uri = Layout.of(cfg).generator(0) if d.init == "sft" else generator_uri
    imported = init == "sft" and store.read_manifest(init_uri).get("metrics", {}).get("imported")
    folder_in = store.fetch_folder(init_uri)
    base = adapter_base(folder_in)
    # The reference is part of the verifier: its score is a ratio to exactly this model.
    manifest = {"kind": "dpo", "round": round_idx, "data": generated_uris, "reference": init_uri, "init": init,
                **({"init_note": "G_0 was imported, not fine-tuned on gold: it stands in for V-STaR's G_SFT"}
                   if imported else {})}
    return train_and_publish(
        out_uri, manifest,
        lambda folder, log: dpo.train_dpo(
            folder_in, folder, pairs, beta=d.beta, epochs=d.epochs, lr=d.lr, batch_size=d.batch_size,
            seed=cfg.seed + round_idx, base_dir=store.fetch_folder(base) if base else None, log=log,
            placement=serving.placement(cfg), calibration=calibration_traces(rows), warmup_ratio=d.warmup_ratio),
        t0, lambda stats: {**scalars(stats), **dropped, "pairs": len(pairs), "problems": len({p["prompt"] for p in pairs})})
