"""The loop's cross-round summary: a markdown table and a PNG plot of the key metrics over rounds."""
from __future__ import annotations

from pathlib import Path

from components import round_table


def key_metrics(rounds: list[dict]) -> tuple[list[int], dict[str, list[float | None]]]:
    """Per round: pass@1 at each difficulty, best-of-k by PRM vs vote, PRM F1, kept."""
    levels = sorted({int(k[len("pass1_n"):]) for r in rounds for k in r["evaluate"] if k.startswith("pass1_n")})
    cols: dict[str, list[float | None]] = {f"pass1_n{n}": [] for n in levels}
    for extra in ("maj_at_k_all", "bestofk_prm_min_all", "random_at_k_all", "prm_f1", "kept", "minutes"):
        cols[extra] = []
    for r in rounds:
        ev = r["evaluate"]
        for k in cols:
            if k == "kept":
                cols[k].append(r.get("filter", {}).get("kept"))
            elif k == "minutes":
                cols[k].append(sum(v.get("seconds", 0) for v in r.values() if isinstance(v, dict)) / 60)
            else:
                cols[k].append(ev.get(k))
    return levels, cols


def markdown_table(rounds: list[dict]) -> str:
    _, cols = key_metrics(rounds)
    head = "| round | " + " | ".join(cols) + " |"
    lines = [head, "|" + "---|" * (len(cols) + 1)]
    for i, r in enumerate(rounds):
        cells = []
        for k, v in cols.items():
            x = v[i]
            cells.append("-" if x is None or x != x else (f"{x:.0f}" if k == "kept" else f"{x:.2f}" if k in ("prm_f1", "minutes")
                                                 else f"{100 * x:.0f}%"))
        lines.append(f"| {r['round']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(rounds: list[dict], path: str | Path, title: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels, cols = key_metrics(rounds)
    x = [r["round"] for r in rounds]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for n in levels:
        a.plot(x, [100 * (v or 0) for v in cols[f"pass1_n{n}"]], marker="o", label=f"{n} ops")
    a.set(xlabel="round", ylabel="greedy pass@1 (%)", title="held-out accuracy by difficulty", ylim=(0, 102))
    a.legend(fontsize=8)
    for k, lab in (("bestofk_prm_min_all", "best-of-k by PRM (min)"), ("maj_at_k_all", "majority vote"),
                   ("random_at_k_all", "random sample")):
        ys = [None if v is None else 100 * v for v in cols[k]]
        if any(y is not None for y in ys):
            b.plot(x, ys, marker="o", label=lab)
    b.set(xlabel="round", ylabel="accuracy (%)", title="selecting among k samples", ylim=(0, 102))
    b.legend(fontsize=8)
    from matplotlib.ticker import MaxNLocator

    for ax in (a, b):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


# ------------------------------------------------------------------ comparing loops from MLflow

def rounds_from_runs(runs, parent=None) -> list[dict]:
    """Round dicts shaped like the flow's results, rebuilt from MLflow child runs ("stage/key" metrics);
    the loop's `parent` run holds the bootstrap's (G_0's size: what FLOPs are counted by), given to round 0."""
    out = []
    for run in sorted(runs, key=lambda r: int(r.data.tags["vstar.round"])):
        r: dict = {"round": int(run.data.tags["vstar.round"]), "run_id": run.info.run_id, "evaluate": {}}
        for key, v in run.data.metrics.items():
            stage, _, name = key.partition("/")
            r.setdefault("filter" if stage == "filter_traces" else stage, {})[name] = v
        out.append(r)
    boot = {k.partition("/")[2]: v for k, v in (parent.data.metrics.items() if parent else ()) if k.startswith("bootstrap/")}
    if boot and out and out[0]["round"] == 0:
        out[0]["bootstrap"] = {**boot, **out[0].get("bootstrap", {})}
    return out


def comparison_rows(loops: dict[str, list[dict]]) -> tuple[list[str], list[list[str]]]:
    """Rounds x key metrics for each loop, each value with its change since the loop's previous round."""
    levels = sorted({n for rounds in loops.values() for n in key_metrics(rounds)[0]})
    keys = [f"pass1_n{n}" for n in levels] + ["maj_at_k_all", "bestofk_prm_min_all", "prm_f1", "kept"]
    rows = []
    for loop, rounds in loops.items():
        _, cols = key_metrics(rounds)
        for i, r in enumerate(rounds):
            cells = [loop, str(r["round"])]
            for k in keys:
                v = cols.get(k, [None] * len(rounds))[i]
                prev = cols.get(k, [None] * len(rounds))[i - 1] if i else None
                pct = k not in ("prm_f1", "kept")
                fmt = (lambda x: f"{100 * x:.0f}%") if pct else (lambda x: f"{x:.2f}" if k == "prm_f1" else f"{x:.0f}")
                delta = "" if v is None or prev is None else f" ({'+' if v >= prev else ''}{(100 if pct else 1) * (v - prev):.{0 if pct or k == 'kept' else 2}f})"
                cells.append("-" if v is None or v != v else fmt(v) + delta)
            rows.append(cells)
    return ["loop", "round"] + keys, rows


def selectors() -> tuple[str, ...]:
    """The headline selectors (the rest are in MLflow): pass@k, the vote, then the round table's."""
    return ("pass_at_k", "vote", *round_table.selectors())


def verifier_rows(loops: dict[str, list[dict]], differences: bool = False) -> tuple[list[str], list[list[str]]]:
    """Per loop and round, on the round's evaluation pool of N samples per problem: each selector's
    best-of-N accuracy with its 95% interval, or (`differences`) the paired differences of the PRM,
    ORM and DPO verifier with each other and with the vote (evaluate's `bok/`, `bok_diff/` metrics)."""
    keys = {k for rounds in loops.values() for r in rounds for k in r["evaluate"]}
    names = ([d for d in round_table.differences() if any(k.startswith(f"bok_diff/{d}/") for k in keys)] if differences
             else [s for s in selectors() if any(k.startswith(f"bok/{s}/k") for k in keys)])
    rows = []
    for loop, rounds in loops.items():
        for r in rounds:
            ev = r["evaluate"]
            n = ev.get("bok_pool")
            if not n:
                continue
            n = int(n)

            def cell(key: str) -> str:
                if key not in ev:
                    return "-"
                f = "{:+.0f}" if differences else "{:.0f}"
                v, lo, hi = (f.format(100 * ev[key + end]) for end in ("", "/lo", "/hi"))
                return f"{v}{'' if differences else '%'} [{lo}, {hi}]"

            cells = [cell(f"{'bok_diff' if differences else 'bok'}/{s}/k{n}") for s in names]
            if any(c != "-" for c in cells):  # round 0 has no trained verifier to compare
                rows.append([loop, str(r["round"]), f"{n} x {int(ev.get('bok_problems', 0))}", *cells])
    return ["loop", "round", "pool x problems", *names], rows


COSTED = {"prm_min": "train_prm", "orm": "train_orm", "dpo": "train_dpo"}  # verifier selector -> the stage that trained it


def cost_rows(loops: dict[str, list[dict]]) -> tuple[list[str], list[list[str]]]:
    """Per loop, round and learned verifier (PRM, ORM, DPO verifier): its backbone's size, the labels it learned from, what those labels
    cost (Monte Carlo rollouts: 2 x generator params x rollout tokens, the same for a PRM and an ORM
    trained on the PRM's rows, `orm.labels: prm`; 0 for outcome labels), its training FLOPs, and what it bought: best-of-N
    over the vote on the round's pool, in points [95% interval], and points per training TFLOP. The DPO
    verifier's labels are its training pairs (two outcome labels each)."""
    rows = []
    for loop, rounds in loops.items():
        params = next((r["bootstrap"]["params"] for r in rounds if "params" in r.get("bootstrap", {})), None)
        for r in rounds:
            ev, n = r["evaluate"], r["evaluate"].get("bok_pool")
            rollout_tokens = r.get("score", {}).get("mc_rollout_tokens")
            label_flops = 2.0 * params * rollout_tokens if params and rollout_tokens else None
            for sel, stage in COSTED.items():
                trained = r.get(stage, {})
                if "train_flops" not in trained:
                    continue
                # Only a verifier trained on the step labels' rows (the PRM; the ORM under `orm.labels: prm`)
                # paid for the rollouts; outcome labels (the ORM's default, the DPO verifier's pairs) cost an
                # answer check.
                paid = label_flops if stage == "train_prm" or "prm_rows" in trained else 0.0
                key = f"bok_diff/{sel}-vote/k{int(n)}" if n else None
                gain = ev.get(key) if key else None
                cell = (f"{100 * gain:+.0f} [{100 * ev[key + '/lo']:+.0f}, {100 * ev[key + '/hi']:+.0f}]"
                        if gain is not None else "-")
                per = (f"{100 * gain / (trained['train_flops'] / 1e12):+.3g}" if gain is not None and trained["train_flops"]
                       else "-")
                rows.append([loop, str(r["round"]), sel, f"{trained['params'] / 1e6:.3g}M" if trained.get("params") else "-",
                             f"{int(trained.get('n_train_steps', trained.get('n_train', 0))):,}",
                             "-" if paid is None else f"{paid / 1e12:.3g}", f"{trained['train_flops'] / 1e12:.3g}",
                             cell, per])
    return ["loop", "round", "verifier", "backbone params", "labels learned", "label TFLOPs", "train TFLOPs",
            "best-of-N - vote (points)", "points / train TFLOP"], rows


def generator_rows(loops: dict[str, list[dict]]) -> tuple[list[str], list[list[str]]]:
    """Per loop and round, how G_n was trained (train_generator.method) and what that cost and bought:
    SFT's examples or GRPO's problems; GRPO's reward on the policy's own samples (first tenth of training
    -> last), the share of them right, and of those the reward ranked in its top quarter the share the
    exact check calls flawed (reward hacking shows as the reward rising while these do not follow);
    the round's kept flawed share (its filter); TFLOPs to sample the round's traces (2 x params x
    tokens) and to train G_n (SFT: ~6 x params x tokens; GRPO: its rollouts, updates and reward passes);
    and greedy held-out pass@1."""
    rows = []
    pct = lambda d, k: f"{100 * d[k]:.0f}%" if d.get(k) is not None else "-"  # noqa: E731
    for loop, rounds in loops.items():
        params = next((r["bootstrap"]["params"] for r in rounds if "params" in r.get("bootstrap", {})), None)
        for r in rounds:
            g = r.get("train_generator", {})
            if not g:
                continue
            grpo = "reward_mean" in g
            tokens = r.get("generate", {}).get("tokens")
            rows.append([loop, str(r["round"]), "grpo" if grpo else "sft",
                         f"{int(g.get('problems' if grpo else 'examples', 0)):,}",
                         f"{g['reward_first']:.2f} -> {g['reward_last']:.2f}" if grpo else "-",
                         pct(g, "right"), pct(g, "high_reward_flawed"), pct(r.get("filter", {}), "kept_flawed_share"),
                         f"{2.0 * params * tokens / 1e12:.3g}" if params and tokens else "-",
                         f"{g['train_flops'] / 1e12:.3g}" if g.get("train_flops") else "-",
                         pct(r["evaluate"], "pass1_all")])
    return ["loop", "round", "G_n by", "examples / problems", "reward", "policy right", "high-reward flawed",
            "kept flawed", "sample TFLOPs", "train TFLOPs", "pass@1"], rows


def plot_comparison(loops: dict[str, list[dict]], path: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for loop, rounds in loops.items():
        levels, cols = key_metrics(rounds)
        x = [r["round"] for r in rounds]
        if levels:
            axes[0].plot(x, [100 * (v or 0) for v in cols[f"pass1_n{levels[-1]}"]], marker="o", label=f"{loop} ({levels[-1]} ops)")
        axes[1].plot(x, [100 * (r["evaluate"].get("pass1_all") or 0) for r in rounds], marker="o", label=loop)
    axes[0].set(xlabel="round", ylabel="greedy pass@1 (%)", title="hardest held-out level", ylim=(0, 102))
    axes[1].set(xlabel="round", ylabel="greedy pass@1 (%)", title="all held-out levels", ylim=(0, 102))
    from matplotlib.ticker import MaxNLocator

    for a in axes:
        a.legend(fontsize=8)
        a.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
