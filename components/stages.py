"""The stages of a round as plain functions: config and store URIs in, a published artifact and a
metrics dict out. Each runs in its own child process (components.isolation), so arguments and
results are JSON. Prefect tasks wrap these; tests call them directly.
"""
from __future__ import annotations

import json
import os
import random
import tempfile
import time
from pathlib import Path

from components import store
from components.config import RunConfig
from components.families import Problem, get_family


def _cfg(config: dict) -> RunConfig:
    return RunConfig.model_validate(config)


def _threads() -> None:
    import torch

    torch.set_num_threads(max(1, len(os.sched_getaffinity(0))))


# ------------------------------------------------------------------------------------------ bootstrap

def bootstrap(config: dict, out_uri: str) -> dict:
    """Train a tokenizer and a small Llama from scratch on gold solutions of the bootstrap split."""
    from components.tiny_model import build_model, n_params, train_tokenizer
    from components.training import train_causal_lm

    _threads()
    cfg = _cfg(config)
    fam = get_family(cfg.family, cfg.seed)
    t0 = time.perf_counter()
    problems = fam.problems("bootstrap")
    pairs = [(p.prompt, fam.gold_solution(p)) for p in problems]
    # The tokenizer sees every split's prompts: its vocabulary must cover harder problems too.
    corpus = [p + c for p, c in pairs] + [p.prompt for s in ("train", "eval") for p in fam.problems(s)]
    with tempfile.TemporaryDirectory() as tmp:
        tok = train_tokenizer(corpus, tmp)
        model = build_model(cfg.model, tok, cfg.seed)
        losses: list[tuple[int, float]] = []

        def log(step: int, m: dict) -> None:
            losses.append((step, m["train_loss"]))
            print(f"step {step} loss {m['train_loss']:.4f} lr {m['lr']:.2e} "
                  f"{time.perf_counter() - t0:.0f}s", flush=True)

        stats = train_causal_lm(model, tok, pairs, cfg.bootstrap, cfg.seed, log=log)
        model.save_pretrained(tmp)
        metrics = {"params": n_params(model), "examples": len(pairs), "train_seconds": stats["seconds"],
                   "loss_first": stats["loss_first"], "loss_last": stats["loss_last"],
                   "seconds": time.perf_counter() - t0}
        store.publish_folder(tmp, out_uri, {"kind": "model", "bootstrap_hash": cfg.bootstrap_hash(),
                                            "metrics": metrics, "loss_curve": losses})
    return metrics


# ----------------------------------------------------------------------------------------- generation

def _lora_base(folder: Path) -> str | None:
    """The base model URI of a LoRA adapter folder, None for a full checkpoint."""
    marker = folder / "adapter_base.json"
    return json.loads(marker.read_text())["base_uri"] if marker.exists() else None


class _Generator:
    """The round's generator: a full checkpoint, or a LoRA adapter served on its base (never merged)."""

    def __init__(self, cfg: RunConfig, model_uri: str):
        from components.generation import load_backend

        folder = store.fetch_folder(model_uri)
        base_uri = _lora_base(folder)
        self.lora = None
        if base_uri:
            from components.sft import vllm_lora_request

            base = store.fetch_folder(base_uri)
            self.backend = load_backend(cfg.generation.backend, str(base), cfg.generation, cfg.model.max_positions,
                                        enable_lora=True, max_lora_rank=cfg.sft.lora.r if cfg.sft.lora else 8)
            self.lora = vllm_lora_request(str(folder))
        else:
            self.backend = load_backend(cfg.generation.backend, str(folder), cfg.generation, cfg.model.max_positions)

    def generate(self, prompts, sampling):
        if self.lora is None:
            return self.backend.generate(prompts, sampling)
        return self.backend.generate(prompts, sampling, lora_request=self.lora)


def round_problems(cfg: RunConfig, fam, target: int | None, round_idx: int) -> list[Problem]:
    """The train problems a round samples: the curriculum's target level plus a share one easier."""
    pool = fam.problems("train")
    if not cfg.curriculum.enabled or target is None:
        return pool
    rng = random.Random(f"{cfg.seed}/round-{round_idx}")
    c = cfg.curriculum
    n_easy = int(c.problems * c.easier_share)
    at = [p for p in pool if p.difficulty == target]
    easier = [p for p in pool if p.difficulty == target - 1]
    return rng.sample(at, min(c.problems - n_easy, len(at))) + rng.sample(easier, min(n_easy, len(easier)))


def _problem_row(p: Problem) -> dict:
    return {"problem_id": p.id, "prompt": p.prompt, "answer": p.answer, "difficulty": p.difficulty}


def generate(config: dict, model_uri: str, out_uri: str, round_idx: int, target: int | None = None) -> dict:
    """k samples per round problem, each with its outcome and its gold first error."""
    from components.generation import Sampling

    cfg = _cfg(config)
    fam = get_family(cfg.family, cfg.seed)
    problems = round_problems(cfg, fam, target, round_idx)
    g = cfg.generation
    t0 = time.perf_counter()
    backend = _Generator(cfg, model_uri)
    t_load = time.perf_counter() - t0
    outs = backend.generate([p.prompt for p in problems], Sampling(
        n=g.k, temperature=g.temperature, top_p=g.top_p, max_tokens=g.max_tokens, seed=g.seed + 1000 * round_idx))
    t_gen = time.perf_counter() - t0 - t_load
    rows = []
    for p, samples in zip(problems, outs):
        for j, s in enumerate(samples):
            rows.append({**_problem_row(p), "sample": j, "completion": s.text, "token_ids": s.token_ids,
                         "cumulative_logprob": s.cumulative_logprob, "finish_reason": s.finish_reason,
                         "correct": fam.is_correct(p, s.text), "gold_first_error": fam.first_error(p, s.text)})
    n_tokens = sum(len(r["token_ids"]) for r in rows)
    metrics = {"target_ops": target or 0, "problems": len(problems), "traces": len(rows), "correct": sum(r["correct"] for r in rows),
            "accuracy": sum(r["correct"] for r in rows) / max(1, len(rows)), "tokens": n_tokens,
            "tokens_per_s": n_tokens / max(t_gen, 1e-9), "engine_load_s": t_load, "seconds": time.perf_counter() - t0}
    store.write_rows(rows, out_uri, {"stage": "generate", "round": round_idx, "model": model_uri, "metrics": metrics})
    return metrics


# ------------------------------------------------------------------------------------------- scoring

def score(config: dict, model_uri: str, candidates_uri: str, out_uri: str, round_idx: int,
          prm_uri: str | None = None) -> dict:
    """Per-step scores from the configured label source, with their quality against gold labels."""
    from components import montecarlo
    from components.metrics import first_error_f1

    cfg = _cfg(config)
    fam = get_family(cfg.family, cfg.seed)
    rows = store.read_rows(candidates_uri)
    t0 = time.perf_counter()
    problems = {p.id: p for p in fam.problems("train")}
    items = [(problems[r["problem_id"]], r["completion"]) for r in rows]
    source = cfg.scoring.label_source
    if source.startswith("prm") and not prm_uri:
        source = cfg.scoring.first_round_source  # round 1 has no PRM yet
    seed = cfg.generation.seed + 1000 * round_idx + 7
    engine: list = []  # started on first use: gold and PRM scoring need no generator

    def mc(idx: list[int]) -> dict:
        engine or engine.append(_Generator(cfg, model_uri))
        results, st = montecarlo.estimate(fam, engine[0], [items[i] for i in idx], cfg.scoring.mc,
                                          cfg.generation.max_tokens, seed)
        for i, res in zip(idx, results):
            rows[i].update(step_scores=res.scores, step_labels=res.hard, label_first_error=res.first_error,
                           label_source="mc")
        return st

    stats: dict = {}
    if source == "gold":  # the exact step check of a verifiable family
        for r, (p, c) in zip(rows, items):
            labels = fam.step_labels(p, c)
            r.update(step_scores=[float(y) for y in labels], step_labels=labels,
                     label_first_error=r["gold_first_error"], label_source="gold")
    elif source == "mc":
        stats = mc(list(range(len(rows))))
    else:  # "prm" or "prm+mc": the previous round's PRM, MC where the PRM is unsure
        from components.prm import first_error_from_scores, load_scorer

        scorer = load_scorer(cfg.prm.scorer, str(store.fetch_folder(prm_uri)), cfg.model.max_positions + 64)
        scores = scorer.score([p.prompt for p, _ in items], [fam.split_steps(c) for _, c in items])
        for r, sc in zip(rows, scores):
            r.update(step_scores=sc, step_labels=[int(x >= 0.5) for x in sc],
                     label_first_error=first_error_from_scores(sc), label_source="prm")
        lo, hi = cfg.scoring.prm_unsure
        unsure = [i for i, sc in enumerate(scores) if sc and lo < min(sc) < hi]
        if source == "prm+mc" and unsure:
            stats = mc(unsure)
        stats["prm_unsure"] = len(unsure)
    if cfg.scoring.audit_mc and source != "mc":
        # Label quality of Monte Carlo on a sample, even when filtering does not use it.
        audit = random.Random(seed).sample(range(len(rows)), min(cfg.scoring.audit_mc, len(rows)))
        saved = [dict(rows[i]) for i in audit]
        stats.update({f"audit_{k}": v for k, v in mc(audit).items()})  # audit_mc_rollouts, ...
        q = first_error_f1([rows[i]["label_first_error"] for i in audit], [rows[i]["gold_first_error"] for i in audit])
        stats.update({f"audit_mc_{k}": v for k, v in q.items()})
        for i, old in zip(audit, saved):
            rows[i] = old
    for r in rows:
        r["steps"] = fam.split_steps(r["completion"])
    quality = first_error_f1([r["label_first_error"] for r in rows], [r["gold_first_error"] for r in rows])
    metrics = {**stats, **{f"label_{k}": v for k, v in quality.items()}, "traces": len(rows),
               "steps": sum(len(r["steps"]) for r in rows), "seconds": time.perf_counter() - t0}
    store.write_rows(rows, out_uri, {"stage": "score", "round": round_idx, "metrics": metrics, "label_source": source})
    return metrics


# ------------------------------------------------------------------------------------------ filtering

def filter_traces(config: dict, scored_uri: str, out_uri: str, round_idx: int) -> dict:
    from components.filtering import select

    cfg = _cfg(config)
    rows = store.read_rows(scored_uri)
    kept, stats = select(rows, cfg.filter)
    store.write_rows(kept, out_uri, {"stage": "filter", "round": round_idx, "filter": cfg.filter.model_dump(),
                                     "label_source": cfg.scoring.label_source, "source": scored_uri,
                                     "metrics": stats})
    return stats


# ------------------------------------------------------------------------------------------ evaluation

def evaluate(config: dict, model_uri: str, out_uri: str, tag: str, prm_uri: str | None = None) -> dict:
    """On the held-out split (never trained on): greedy pass@1 per difficulty; on a subset, k samples
    per problem for maj@k and best-of-k ranked by the PRM, and the PRM's first-error F1 vs gold."""
    from components.evaluation import prm_first_error_f1, sampled_metrics
    from components.generation import Sampling

    cfg = _cfg(config)
    fam = get_family(cfg.family, cfg.seed)
    problems = fam.problems("eval")
    t0 = time.perf_counter()
    gen = _Generator(cfg, model_uri)
    outs = gen.generate([p.prompt for p in problems], Sampling(n=1, temperature=0.0, max_tokens=cfg.generation.max_tokens))
    rows = [{**_problem_row(p), "kind": "greedy", "sample": 0, "completion": o[0].text,
             "correct": fam.is_correct(p, o[0].text), "gold_first_error": fam.first_error(p, o[0].text)}
            for p, o in zip(problems, outs)]
    levels = sorted({p.difficulty for p in problems})
    subset = [p for n in levels for p in [q for q in problems if q.difficulty == n][: cfg.eval.sampled_per_level]]
    e = cfg.eval
    sampled = gen.generate([p.prompt for p in subset], Sampling(n=e.k, temperature=e.temperature,
                                                                max_tokens=cfg.generation.max_tokens, seed=cfg.seed + 99))
    samples = [{**_problem_row(p), "kind": "sample", "sample": j, "completion": s.text, "gold": p.answer,
                "answer": fam.extract_answer(s.text), "correct": fam.is_correct(p, s.text),
                "gold_first_error": fam.first_error(p, s.text), "prm_scores": []}
               for p, o in zip(subset, sampled) for j, s in enumerate(o)]
    if prm_uri:
        from components.prm import load_scorer

        scorer = load_scorer(cfg.prm.scorer, str(store.fetch_folder(prm_uri)), cfg.model.max_positions + 64)
        for smp, sc in zip(samples, scorer.score([s["prompt"] for s in samples],
                                                 [fam.split_steps(s["completion"]) for s in samples])):
            smp["prm_scores"] = sc
    metrics: dict = {}
    for n in levels:
        at = [r for r in rows if r["difficulty"] == n]
        metrics[f"pass1_n{n}"] = sum(r["correct"] for r in at) / len(at)
        groups = [[s for s in samples if s["problem_id"] == p.id] for p in subset if p.difficulty == n]
        metrics.update({f"{k}_n{n}": v for k, v in sampled_metrics(groups, bool(prm_uri)).items()})
    metrics["pass1_all"] = sum(r["correct"] for r in rows) / len(rows)
    metrics.update({f"{k}_all": v for k, v in sampled_metrics(
        [[s for s in samples if s["problem_id"] == p.id] for p in subset], bool(prm_uri)).items()})
    if prm_uri:
        metrics.update({f"prm_{k}": v for k, v in prm_first_error_f1(samples).items()})
    metrics["seconds"] = time.perf_counter() - t0
    for r in rows:
        r.update(gold=r["answer"], answer=fam.extract_answer(r["completion"]), prm_scores=[])
    store.write_rows(rows + samples, out_uri, {"stage": "evaluate", "tag": tag, "model": model_uri,
                                               "prm": prm_uri, "metrics": metrics})
    return metrics


# -------------------------------------------------------------------------------------------- training

def _read_all(uris: list[str]) -> list[dict]:
    return [r for u in uris for r in store.read_rows(u)]


def train_generator(config: dict, model_uri: str, out_uri: str, round_idx: int, kept_uris: list[str]) -> dict:
    """SFT the generator on kept traces (newest round first), plus replayed bootstrap gold data."""
    from components.sft import sft

    cfg = _cfg(config)
    fam = get_family(cfg.family, cfg.seed)
    t0 = time.perf_counter()
    pairs, seen = [], set()
    for r in _read_all(kept_uris if cfg.sft.keep_history else kept_uris[-1:]):
        if (r["prompt"], r["completion"]) not in seen:
            seen.add((r["prompt"], r["completion"]))
            pairs.append((r["prompt"], r["completion"]))
    if not pairs:
        raise ValueError(f"round {round_idx}: no kept traces to train on in {kept_uris}")
    pairs = pairs[: cfg.sft.max_examples]
    rng = random.Random(f"{cfg.seed}/sft/{round_idx}")
    boot = fam.problems("bootstrap")
    gold = rng.sample(boot, min(int(len(pairs) * cfg.sft.replay_gold), len(boot)))
    data = pairs + [(p.prompt, fam.gold_solution(p)) for p in gold]
    rng.shuffle(data)
    # LoRA: each round trains a fresh adapter on the same base
    base_uri = _lora_base(store.fetch_folder(model_uri)) or model_uri
    folder = store.fetch_folder(base_uri)
    curve: list = []
    with tempfile.TemporaryDirectory() as tmp:
        lora = cfg.sft.lora.model_dump() if cfg.sft.lora else None
        stats = sft(str(folder), tmp, data, epochs=cfg.sft.epochs, lr=cfg.sft.lr, batch_size=cfg.sft.batch_size,
                    seed=cfg.seed + round_idx, lora=lora, log=lambda step, m: curve.append((step, m["train_loss"])),
                    warmup_ratio=cfg.sft.warmup_ratio)
        if lora:
            Path(tmp, "adapter_base.json").write_text(json.dumps({"base_uri": base_uri}))
        metrics = {"examples": len(data), "kept_examples": len(pairs), "replay_examples": len(gold),
                   "loss_first": stats["loss_first"], "loss_last": stats["loss_last"], "steps": stats["steps"],
                   "seconds": time.perf_counter() - t0, "loss_curve": curve}
        store.publish_folder(tmp, out_uri, {"kind": "lora" if lora else "model", "round": round_idx,
                                            "parent": model_uri, "data": kept_uris, "metrics": metrics})
    return metrics


def train_prm(config: dict, generator_uri: str, out_uri: str, round_idx: int, scored_uris: list[str],
              previous_prm_uri: str | None = None) -> dict:
    """Train the PRM on the scored steps of every round so far (V-STaR keeps all iterations' data).
    Steps labelled by a PRM itself are left out: a PRM does not learn from its own guesses."""
    from components import prm

    cfg = _cfg(config)
    t0 = time.perf_counter()
    rows = [r for r in _read_all(scored_uris) if r.get("label_source", "mc") != "prm" and r["steps"]]
    rng = random.Random(f"{cfg.seed}/prm/{round_idx}")
    rng.shuffle(rows)
    soft = cfg.prm.soft
    examples = [{"prompt": r["prompt"], "steps": r["steps"],
                 "labels": [None if x is None else float(x) for x in (r["step_scores"] if soft else r["step_labels"])]}
                for r in rows[: cfg.prm.max_examples]]
    if not examples:
        raise ValueError(f"round {round_idx}: no labelled steps to train the PRM on in {scored_uris}")
    if cfg.prm.init_from == "previous" and previous_prm_uri:
        init = store.fetch_folder(previous_prm_uri)
    else:
        init = store.fetch_folder(_lora_base(store.fetch_folder(generator_uri)) or generator_uri)
    curve: list = []
    with tempfile.TemporaryDirectory() as tmp:
        stats = prm.train_prm(str(init), tmp, examples, epochs=cfg.prm.epochs, lr=cfg.prm.lr,
                              batch_size=cfg.prm.batch_size, seed=cfg.seed + round_idx, soft=soft,
                              log=lambda step, m: curve.append((step, m["train_loss"])))
        metrics = {**{k: v for k, v in stats.items() if isinstance(v, (int, float))},
                   "examples": len(examples), "seconds": time.perf_counter() - t0, "loss_curve": curve}
        store.publish_folder(tmp, out_uri, {"kind": "prm", "round": round_idx, "data": scored_uris,
                                            "metrics": metrics})
    return metrics
