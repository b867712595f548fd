"""The typed sections of the run config (components/config.py composes them into RunConfig): data,
model, hardware, execution, generation, curriculum, evaluation. Scoring and filtering are in
config_scoring.py, generator and verifier training in config_training.py.

The config is the ground floor: these modules import nothing of the project. Rules that need a
registry (a family, a label source, a stage by name) are components/checks.py's, which the loaders call."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class OpsRange(Strict):
    min_ops: int = Field(1, ge=1, le=32)
    max_ops: int = Field(3, ge=1, le=32)

    @model_validator(mode="after")
    def _ordered(self):
        if self.min_ops > self.max_ops:
            raise ValueError(f"min_ops ({self.min_ops}) > max_ops ({self.max_ops})")
        return self


class SplitConfig(OpsRange):
    size: int = Field(600, ge=1)


class EvalSplitConfig(OpsRange):
    per_level: int = Field(100, ge=1)


class DataConfig(Strict):
    """Problems from files (gsm8k, math, custom families): jsonl or parquet at any fsspec URI.
    `fields` maps our names (question, answer, solution, id) to the file's column names."""
    train_uri: str | None = None
    eval_uri: str | None = None
    fields: dict[str, str] = {}
    verifier: Literal["numeric", "exact", "math_verify"] | None = None  # None: the family's own (math: math_verify)
    last_number_fallback: bool = True  # answer = last number in the text when no answer marker is found
    strict: bool = False  # a bad row fails the load (True) or is quarantined and counted (False)
    max_prompt_tokens: int | None = Field(None, ge=1)  # longer problems are rejected (None: model context)
    bootstrap_size: int | None = Field(None, ge=1)  # train problems whose reference solutions bootstrap G_0
    eval_size: int | None = Field(None, ge=1)  # first N eval problems (None: all)


class PromptConfig(Strict):
    """How a problem is put to the model, and how its answer is laid out. `style: chat` renders the
    problem with the chat template of the model's tokenizer (model.init_uri), after an optional
    system message; `plain` fills `template`. `shots` worked examples (reference solutions of the
    first bootstrap problems that overlap no evaluation problem, which then leave the train split) go before the problem: as text
    blocks, or as earlier user/assistant turns. The step separator and the answer line are part of
    the trace format: the PRM saves them and refuses to score traces laid out otherwise."""
    style: Literal["plain", "chat"] = "plain"
    template: str = "{problem}"  # {problem}: the family's problem text (ends in a newline)
    system: str | None = None
    shots: int = Field(0, ge=0, le=16)
    shot_separator: str = "\n"  # between plain-style worked examples
    step_separator: Literal["\n", "\n\n"] = "\n"
    answer_line: str | None = None  # e.g. "#### {answer}"; None: the family's own
    stop: list[str] = []  # extra stop strings for generation (e.g. "Question:" after k-shot prompts)
    stop_after_answer: bool = True  # a completion ends with its answer line: what follows is cut off

    @field_validator("template")
    @classmethod
    def _has_problem(cls, t: str) -> str:
        if "{problem}" not in t:
            raise ValueError("must contain {problem}")
        return t

    @property
    def renders(self) -> bool:
        """False when the model reads the family's problem text as it is (the tiny model's format)."""
        return self.style != "plain" or self.template != "{problem}" or self.shots > 0


class FamilyConfig(Strict):
    name: str = "arith"
    data: DataConfig = DataConfig()
    max_value: int = Field(99, ge=9, le=10**6)
    operations: list[Literal["add", "sub", "mul", "mod10", "max", "mul0"]] = [
        "add", "sub", "mul", "mod10", "max"]
    bootstrap: SplitConfig = SplitConfig(min_ops=1, max_ops=3, size=66000)
    train: SplitConfig = SplitConfig(min_ops=4, max_ops=4, size=600)
    eval: EvalSplitConfig = EvalSplitConfig(min_ops=1, max_ops=6, per_level=100)
    prompt: PromptConfig = PromptConfig()


class ModelConfig(Strict):
    """The tiny Llama trained from scratch. rope_factor >> 1 makes rotations negligible: measured
    here, standard RoPE never produced a genuine longer chain (../shared/notes/demo-feasibility.md)."""
    hidden_size: int = Field(128, ge=8)
    layers: int = Field(4, ge=1)
    heads: int = Field(4, ge=1)
    intermediate_size: int = Field(512, ge=8)
    max_positions: int = Field(256, ge=32)
    rope_factor: float = Field(1000.0, ge=1.0, le=10000.0)
    # A pretrained model (a Hugging Face folder at any fsspec URI or local path) to start from instead
    # of training the tiny one: it is published as G_0 and the fields above are ignored.
    init_uri: str | None = None

    @model_validator(mode="after")
    def _heads_divide(self):
        if self.hidden_size % self.heads:
            raise ValueError(f"hidden_size ({self.hidden_size}) must be divisible by heads ({self.heads})")
        return self


class HardwareConfig(Strict):
    """Where and in what precision every stage computes (components/models/hardware.py resolves it).
    `auto`: CUDA with bfloat16 when torch sees a GPU, else CPU with float32. Training keeps float32
    master weights and autocasts to `dtype`; vLLM and the transformers fallbacks load in `dtype`."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    gpu_memory_utilization: float = Field(0.85, gt=0, le=1)  # vLLM's share of the GPU (stages run one at a time)
    tensor_parallel_size: int = Field(1, ge=1)
    gradient_checkpointing: bool = False  # training: recompute activations, for models that do not fit
    # training: batches of similar lengths (transformers' LengthGroupedSampler idea), so less of each
    # batch is padding; off by default: it changes batch composition, hence results (docs/benchmarks.md)
    group_by_length: bool = False
    # training: padding-free packed batches (components/models/packing.py): the same loss and gradients
    # as padded ones, without computing on pads. auto: on where the attention runs packed rows in
    # linear memory (FlashAttention-2 or -4 varlen on CUDA); on forces it anywhere (sdpa then masks the pack
    # block-diagonally, quadratic in its length: slower than padding on a CPU, docs/benchmarks.md).
    packing: Literal["auto", "on", "off"] = "auto"
    # transformers' attn_implementation. auto: FlashAttention-2 where installed, else flash-attn-4 on
    # Hopper and later, else sdpa. flex_attention (torch's, compiled) skips the blocks a packed row's
    # mask removes: the choice for packing on a GPU without FlashAttention (not measured here yet).
    attention: Literal["auto", "sdpa", "eager", "flex_attention", "flash_attention_2", "flash_attention_4"] = "auto"
    # training a causal LM: the loss through TRL's chunked LM head, so float32 logits over the whole
    # vocabulary are never materialised (SFT through TRL always does this). auto: on with CUDA.
    fused_loss: Literal["auto", "on", "off"] = "auto"

    @field_validator("packing", "fused_loss", mode="before")
    @classmethod
    def _yaml_switch(cls, v):
        """YAML reads a bare on/off as true/false: take them as the words they were."""
        return {True: "on", False: "off"}.get(v, v) if isinstance(v, bool) else v


class ExecutionConfig(Strict):
    """Where the stages that split by problem (generate, score, evaluate) run their work: `local`, one
    shard after another on this machine, or `ray`, every shard at once as a Prefect task on a Ray
    cluster (prefect-ray's RayTaskRunner), each with its own engine on its own `gpus_per_shard`. A shard
    publishes on its own, so a failed one runs again alone (`retries`) and a rerun after a crash skips
    the finished ones; the stage publishes once, after all of them. Seeds are per prompt, so the
    artifacts do not depend on the sharding (a PRM's scores but for rounding: README "Scale out")."""
    engine: Literal["local", "ray"] = "local"
    # ray: the cluster to join ("ray://head:10001", "auto": the one on this machine); None starts a
    # temporary local cluster for the flow run.
    address: str | None = None
    shards: int = Field(1, ge=1, le=4096)
    gpus_per_shard: float = Field(0.0, ge=0)
    cpus_per_shard: float = Field(1.0, gt=0)
    retries: int = Field(2, ge=0, le=10)
    # Data-parallel training: every training stage (bootstrap, SFT, PRM, ORM, DPO, judge) runs as this
    # many processes under torchrun (DDP through transformers' Trainer / TRL: one per GPU; on a CPU
    # machine, gloo processes sharing its cores). Batch sizes stay global: each process takes
    # batch_size / train_processes of every batch, so a run takes the same optimizer steps.
    train_processes: int = Field(1, ge=1, le=64)


class TrainConfig(Strict):
    epochs: float = Field(1.0, gt=0)
    lr: float = Field(2e-3, gt=0, lt=1)
    batch_size: int = Field(64, ge=1)
    warmup_ratio: float = Field(0.05, ge=0, lt=1)
    # Batches sized in tokens instead of `batch_size` examples: each optimizer step takes sequences
    # up to this many tokens in all (global over data-parallel processes, as batch_size is). None: by
    # examples. A sequence longer than the budget is refused.
    max_tokens_per_batch: int | None = Field(None, ge=1)


class GenerationConfig(Strict):
    backend: str = "vllm"
    k: int = Field(8, ge=1, le=256)
    temperature: float = Field(0.8, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    max_tokens: int = Field(96, ge=1)
    seed: int = 0
    kv_cache_bytes: int = Field(256 * 2**20, ge=2**20)
    prefix_caching: bool = True


class CurriculumConfig(Strict):
    """Which train problems a round samples: one level past the longest chain the current generator
    already solves (greedy pass@1 >= promote_at), plus a share one level easier (Lee et al. 2025)."""
    enabled: bool = True
    promote_at: float = Field(0.8, gt=0, le=1)
    problems: int = Field(400, ge=1)
    easier_share: float = Field(0.25, ge=0, lt=1)


class BeamConfig(Strict):
    """PRM-guided step-level beam search on the evaluation pool's problems (when the round has a PRM),
    as search-and-learn runs it (components/evaluation/beam_search.py): N = width x expansions samples
    per step, reported beside best-of-k at the same generated tokens and at the same compute."""
    enabled: bool = False
    width: int = Field(4, ge=1)  # active beams kept after each step (N/M)
    expansions: int = Field(4, ge=1)  # next steps sampled per kept beam (M)
    max_steps: int = Field(12, ge=1)  # the last one generates to the end
    aggregate: Literal["min", "prod", "last", "mean"] = "min"  # a partial trace's score (sal's default: last)


class EvalConfig(Strict):
    k: int = Field(4, ge=1)
    sampled_per_level: int = Field(30, ge=1)  # problems per level that get k samples for maj@k / best-of-k
    temperature: float = Field(0.8, ge=0)
    beam: BeamConfig = BeamConfig()


# Measured on SmolLM2-135M-Instruct, 1-2-op arith in chat form, 160 samples each: this hint 16 right
# (no hint: 11); "Hint: the answer is N. Solve it step by step as if you had not been told." 10; "The
# answer is N. Show the steps that lead to N." 0 (docs/benchmarks.md "A real pretrained model").
RATIONALIZE_HINT = "{problem}\n(The final result is {answer}.)"


class RationalizeConfig(Strict):
    """STaR's rationalization (Zelikman et al. 2022, section 3.2), the cold start of a weak model: for a
    train problem of the round none of whose k samples is right, sample again with the reference
    answer in the prompt (`hint`: {problem} the family's problem text, {answer} its answer, rendered
    like any prompt), keep the samples that reach it, and give them back their prompt without the
    hint: they are scored and filtered like every other trace (rows: `rationalized: true`), and SFT
    trains on them as if produced without it. Evaluation problems never get a hint."""
    enabled: bool = False
    hint: str = RATIONALIZE_HINT
    k: int | None = Field(None, ge=1, le=256)  # samples per failed problem (None: generation.k)

    @field_validator("hint")
    @classmethod
    def _fields(cls, t: str) -> str:
        missing = [f for f in ("{problem}", "{answer}") if f not in t]
        if missing:
            raise ValueError(f"must contain {' and '.join(missing)}")
        return t


class DecontamConfig(Strict):
    """Training problems that overlap evaluation problems are dropped before SFT and PRM training:
    normalised exact match, or word n-gram overlap (share of the train problem's n-grams found in
    some eval problem) at or above `threshold`."""
    enabled: bool = True
    ngram: int = Field(8, ge=1)
    threshold: float = Field(0.5, gt=0, le=1)
