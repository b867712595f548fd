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
    if cfg.model.init_uri:
        return _import_model(cfg.model.init_uri, out_uri, cfg)
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


def _import_model(src: str, out_uri: str, cfg: RunConfig) -> dict:
    """G_0 is a given pretrained model: copy its folder into the store, published like a bootstrap."""
    import fsspec

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        fs, path = fsspec.core.url_to_fs(src)
        if not fs.isdir(path):
            raise FileNotFoundError(f"model.init_uri: {src} is not a folder holding a model")
        fs.get(path.rstrip("/") + "/", tmp, recursive=True)
        if not Path(tmp, "config.json").exists():
            raise FileNotFoundError(f"model.init_uri: {src} has no config.json (expected a Hugging Face model folder)")
        metrics = {"imported": 1, "seconds": time.perf_counter() - t0}
        store.publish_folder(tmp, out_uri, {"kind": "model", "source": src, "bootstrap_hash": cfg.bootstrap_hash(),
                                            "metrics": metrics})
    return metrics


def prepare_data(config: dict, out_uri: str) -> dict:
    """A file-backed family's problems, published per split with their quarantine files beside them."""
    from components.families.custom import publish_problems

    cfg = _cfg(config)
    counts = publish_problems(get_family(cfg.family, cfg.seed), cfg.store_uri)
    store.write_rows([], out_uri, {"stage": "prepare_data", "metrics": counts})  # the marker a rerun skips on
    return counts


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


def _tokenizer(model_uri: str):
    from transformers import AutoTokenizer

    folder = store.fetch_folder(model_uri)
    return AutoTokenizer.from_pretrained(str(store.fetch_folder(_lora_base(folder)) if _lora_base(folder) else folder))


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

    from components.ingest import Quarantine, reject_long

    cfg = _cfg(config)
    fam = get_family(cfg.family, cfg.seed)
    g = cfg.generation
    # A problem whose prompt leaves no room for a solution in the model's context is quarantined.
    q = Quarantine(f"{cfg.family.name}:train")
    tok = _tokenizer(model_uri)
    problems = reject_long(round_problems(cfg, fam, target, round_idx), lambda t: len(tok(t).input_ids),
                           cfg.model.max_positions - g.max_tokens, q, field_name="prompt")
    q.write(store.join(out_uri, "quarantine.jsonl"))
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
    metrics = {"target_ops": target or 0, "problems": len(problems), "too_long_quarantined": len(q.rejected),
               "traces": len(rows), "correct": sum(r["correct"] for r in rows),
            "accuracy": sum(r["correct"] for r in rows) / max(1, len(rows)), "tokens": n_tokens,
            "tokens_per_s": n_tokens / max(t_gen, 1e-9), "engine_load_s": t_load, "seconds": time.perf_counter() - t0}
    store.write_rows(rows, out_uri, {"stage": "generate", "round": round_idx, "model": model_uri, "metrics": metrics})
    return metrics


# ------------------------------------------------------------------------------------------- scoring

def _engines(cfg: RunConfig, model_uri: str, prm_uri: str | None, judge_uri: str | None, seed: int):
    from components.scoring import Engines

    def prm():
        from components.prm import load_scorer

        if not prm_uri:
            raise ValueError("this label source needs a PRM and none is published yet")
        return load_scorer(cfg.prm.scorer, str(store.fetch_folder(prm_uri)), cfg.model.max_positions + 64)

    def judge():
        from components.judge import make_judge_client

        j = cfg.scoring.judge
        uri = j.model_uri or judge_uri
        if j.backend == "local" and not uri:
            raise ValueError("scoring.judge: a local judge needs judge.model_uri or a judge trained by the loop")
        return make_judge_client(j, model_dir=str(store.fetch_folder(uri)) if j.backend == "local" else None,
                                 gen_cfg=cfg.generation, max_positions=cfg.model.max_positions)

    return Engines(lambda: _Generator(cfg, model_uri), judge, prm, seed)


def score(config: dict, model_uri: str, candidates_uri: str, out_uri: str, round_idx: int,
          prm_uri: str | None = None, judge_uri: str | None = None) -> dict:
    """Per-step labels from the configured source, plus the label-quality report: every source in use
    (the primary, `scoring.also`, the MC audit sample) against gold and against each other."""
    from components.scoring import Batch, quality, run_source

    cfg = _cfg(config)
    fam = get_family(cfg.family, cfg.seed)
    rows = store.read_rows(candidates_uri)
    t0 = time.perf_counter()
    problems = {p.id: p for p in fam.problems("train")}
    batch = Batch(fam, [problems[r["problem_id"]] for r in rows], [r["completion"] for r in rows])
    source = cfg.scoring.label_source
    if source in ("prm", "prm+mc") and not prm_uri:
        source = cfg.scoring.first_round_source  # round 1 has no PRM yet
    engines = _engines(cfg, model_uri, prm_uri, judge_uri, cfg.generation.seed + 1000 * round_idx + 7)
    primary, stats = run_source("prm" if source == "prm+mc" else source, batch, cfg, engines)
    # Per row, what its labels came from; a PRM's scores (`labels` too: a PRM trained on them) say "prm".
    origin = ["prm" if source in ("prm", "prm+mc", "labels") else source] * len(rows)
    if source in ("prm", "prm+mc"):  # prm+mc: MC only where the PRM is unsure
        lo, hi = cfg.scoring.prm_unsure
        unsure = [i for i, s in enumerate(primary) if s.scores and lo < min(s.scores) < hi]
        if unsure and source == "prm+mc":
            mc, stats = run_source("mc", batch.subset(unsure), cfg, engines)
            for i, lab in zip(unsure, mc):
                primary[i], origin[i] = lab, "mc"
        stats["prm_unsure"] = len(unsure)
    by_source = {source: primary}
    for extra in cfg.scoring.also:
        if extra != source:
            by_source[extra], st = run_source(extra, batch, cfg, engines)
            stats.update({f"{extra}/{k}": v for k, v in st.items()})  # e.g. mc_binary/mc_rollouts
    gold_fe = [r["gold_first_error"] for r in rows]
    report = quality(by_source, gold_fe)
    if cfg.scoring.audit_mc and source != "mc" and "mc" not in by_source:
        # Label quality of Monte Carlo on a sample, even when filtering does not use it.
        audit = random.Random(engines.seed).sample(range(len(rows)), min(cfg.scoring.audit_mc, len(rows)))
        mc, st = run_source("mc", batch.subset(audit), cfg, engines)
        stats.update({f"audit_{k}": v for k, v in st.items()})  # audit_mc_rollouts, ...
        sub = {"mc": mc, source: [primary[i] for i in audit]}
        sub.update({k: [v[i] for i in audit] for k, v in by_source.items() if k != source})
        report.update({f"audit_{k}": v for k, v in quality(sub, [gold_fe[i] for i in audit]).items()
                       if k.startswith("mc/") or k.startswith("agree/")})
        for r in rows:
            r.setdefault("mc_scores", None)  # a column for every row: only the sample has values
        for i, lab in zip(audit, mc):
            rows[i]["mc_scores"] = lab.scores
    for name, labels in by_source.items():
        for r, lab in zip(rows, labels):
            r[f"{name.replace('+', '_')}_scores"] = lab.scores
            r[f"{name.replace('+', '_')}_first_error"] = lab.first_error
    for r, steps, lab, o in zip(rows, batch.steps, primary, origin):
        r.update(steps=steps, step_scores=lab.scores, step_labels=lab.labels, label_first_error=lab.first_error,
                 label_source=o)
    metrics = {**stats, **{f"quality/{k}": v for k, v in report.items()}, "traces": len(rows),
               "steps": sum(len(s) for s in batch.steps), "seconds": time.perf_counter() - t0}
    primary_q = {k.split("/", 1)[1]: v for k, v in report.items() if k.startswith(source.replace("+", "_") + "/")}
    metrics.update({f"label_{k}": v for k, v in primary_q.items() if k in ("f1", "acc_erroneous", "acc_correct")})
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


def _decontaminate(cfg: RunConfig, fam, items: list) -> tuple[list, dict]:
    """Training items whose problem overlaps an evaluation problem are dropped, and counted."""
    from components.decontam import counts, decontaminate

    kept, dropped = decontaminate(items, [p.prompt for p in fam.problems("eval")], cfg.decontam)
    return kept, counts(dropped, kept)


def train_generator(config: dict, model_uri: str, out_uri: str, round_idx: int, kept_uris: list[str]) -> dict:
    """SFT the generator on kept traces (newest round first), plus replayed bootstrap gold data."""
    from components.sft import sft

    cfg = _cfg(config)
    fam = get_family(cfg.family, cfg.seed)
    t0 = time.perf_counter()
    pairs, seen = [], set()
    rows, dropped = _decontaminate(cfg, fam, _read_all(kept_uris if cfg.sft.keep_history else kept_uris[-1:]))
    for r in rows:
        if (r["prompt"], r["completion"]) not in seen:
            seen.add((r["prompt"], r["completion"]))
            pairs.append((r["prompt"], r["completion"]))
    if not pairs:  # nothing passed the filter (or decontamination): G_n = G_{n-1}, said loudly
        print(f"round {round_idx}: no kept traces to train on in {kept_uris}; the generator is unchanged", flush=True)
        metrics = {"examples": 0, "kept_examples": 0, "unchanged": 1, **dropped, "seconds": time.perf_counter() - t0}
        src = store.read_manifest(model_uri)
        store.publish_folder(store.fetch_folder(model_uri), out_uri, {
            "kind": src.get("kind", "model"), "round": round_idx, "parent": model_uri, "data": kept_uris,
            "unchanged": True, "metrics": metrics})
        return metrics
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
        metrics = {"examples": len(data), "kept_examples": len(pairs), "replay_examples": len(gold), **dropped,
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
    from components.loop import labels_uri

    if labels_uri(cfg) and not cfg.scoring.labels.with_generated:
        scored_uris = [u for u in scored_uris if u == labels_uri(cfg)]  # imported human labels only
    # A PRM does not learn from a PRM's guesses.
    rows = [r for r in _read_all(scored_uris) if r.get("label_source", "mc") != "prm" and r["steps"]]
    rows, dropped = _decontaminate(cfg, get_family(cfg.family, cfg.seed), rows)
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
        metrics = {**{k: v for k, v in stats.items() if isinstance(v, (int, float))}, **dropped,
                   "examples": len(examples), "seconds": time.perf_counter() - t0, "loss_curve": curve}
        store.publish_folder(tmp, out_uri, {"kind": "prm", "round": round_idx, "data": scored_uris,
                                            "metrics": metrics})
    return metrics


# ------------------------------------------------------------------------- label sources' own models

def train_judge(config: dict, generator_uri: str, out_uri: str) -> dict:
    """A small generative judge (no instruct model on CPU): the bootstrap generator fine-tuned on the
    family's gold traces with planted errors -> " <first wrong step>" or " none". Its first-error F1
    on held-out planted traces goes into the manifest: whatever it is, it is measured."""
    from components import judge

    cfg = _cfg(config)
    fam = get_family(cfg.family, cfg.seed)
    j = cfg.scoring.judge
    t0 = time.perf_counter()
    rng = random.Random(f"{cfg.seed}/judge")
    pool = fam.problems("bootstrap")
    held_out = judge.planted_traces(fam, pool[:300], 300, rng)  # problems the judge never trains on
    examples = judge.judge_examples(fam, pool[300:], j.train_examples, rng, j)
    curve: list = []
    with tempfile.TemporaryDirectory() as tmp:
        stats = judge.train_judge(str(store.fetch_folder(generator_uri)), tmp, examples, j.train, cfg.seed,
                                  log=lambda step, m: curve.append((step, m["train_loss"])))
        client = judge.make_judge_client(j.model_copy(update={"backend": "local"}), model_dir=tmp,
                                         gen_cfg=cfg.generation, max_positions=cfg.model.max_positions)
        quality = judge.judge_accuracy(j, client, fam, [p for p, _ in held_out], [c for _, c in held_out])
        metrics = {**{k: v for k, v in stats.items() if isinstance(v, (int, float))},
                   **{f"heldout_{k}": v for k, v in quality.items()}, "examples": len(examples),
                   "seconds": time.perf_counter() - t0, "loss_curve": curve}
        store.publish_folder(tmp, out_uri, {"kind": "judge", "parent": generator_uri, "metrics": metrics})
    return metrics


def import_labels(config: dict, out_uri: str) -> dict:
    """Existing human step labels (PRM800K / Math-Shepherd) in the trace schema, decontaminated
    against the evaluation problems; rejected rows land in quarantine.jsonl beside the dataset."""
    from components.decontam import decontaminate
    from components.importers import import_labels as read_labels

    cfg = _cfg(config)
    lab = cfg.scoring.labels
    rows, q = read_labels(lab.uri, lab)
    fam = get_family(cfg.family, cfg.seed)
    rows, dropped = decontaminate(rows, [p.prompt for p in fam.problems("eval")], cfg.decontam)
    q.write(store.join(out_uri, "quarantine.jsonl"))  # before the manifest: published means complete
    metrics = {**q.counts(), "decontam_dropped": len(dropped), "traces": len(rows),
               "steps": sum(len(r["steps"]) for r in rows),
               "unlabelled_steps": sum(y is None for r in rows for y in r["step_labels"])}
    store.write_rows(rows, out_uri, {"stage": "import_labels", "source": lab.uri, "format": lab.format,
                                     "quarantine": q.reasons(), "metrics": metrics})
    return metrics


def trace_report(config: dict, scored_uri: str, filtered_uri: str, out_uri: str, round_idx: int,
                 prm_uri: str | None = None) -> dict:
    from components.trace_report import trace_report as report

    return report(config, scored_uri, filtered_uri, out_uri, round_idx, prm_uri=prm_uri)
