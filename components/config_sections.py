"""The typed sections of the run config (components/config.py composes them into RunConfig)."""
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

    @field_validator("name")
    @classmethod
    def _registered(cls, name: str) -> str:
        from components.data.families import FAMILIES  # the registry imports this module: ask at validation

        if name not in FAMILIES:
            raise ValueError(f"unknown family {name!r}; known: {', '.join(sorted(FAMILIES))}")
        return name


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


class MCConfig(Strict):
    rollouts: int = Field(8, ge=1, le=64)
    temperature: float = Field(0.8, ge=0)
    reuse_completion: bool = True  # the candidate's own continuation counts as one rollout (binary search)
    share_prefixes: bool = True  # one estimate per distinct prefix, shared by every trace that has it
    # Binary search only: draw rollouts this many at a time, stopping at a prefix's first success
    # (its hard label is then known); 0 draws all at once. Its scores are its hard labels.
    early_stop_chunk: int = Field(0, ge=0, le=64)


class ConfidenceConfig(Strict):
    """The `confidence` source (components/labeling/confidence.py)."""
    window: int = Field(1, ge=1)  # tokens per sliding window inside a step (1: the least sure position)
    # DeepConf's k: each token's confidence is -mean of the k largest log-probabilities there (at most
    # 20, vLLM's default max_logprobs)
    top_k: int = Field(20, ge=1, le=20)
    quantile: float = Field(0.3, gt=0, lt=1)  # of right-answer traces' confidence: the step threshold


class CalculatorConfig(Strict):
    """`scoring.calculator`: the family's calculator (arith: each `a<op>c=r` recomputed and chained;
    gsm8k: its `<<48/2=24>>` annotations) overrules the label source: a step whose stated arithmetic
    is wrong, and every step after it, is labelled wrong whatever the source said. It reads the trace
    alone, never the problem's answer or a reference: a tool check any task with written arithmetic
    has, not an oracle. A section, so that leaving it off keeps every loop id as it was."""
    enabled: bool = False


class RemoteJudgeConfig(Strict):
    """An OpenAI-compatible /v1/completions endpoint (`vllm serve`, hosted models; the judge is
    prompted as a base model, no chat template). The key is read from the environment variable
    named here, never from config."""
    base_url: str = "http://127.0.0.1:8000/v1"
    model: str = "judge"
    api_key_env: str = "VSTAR_JUDGE_API_KEY"
    timeout_s: float = Field(60.0, gt=0)
    retries: int = Field(4, ge=0)
    backoff_s: float = Field(0.5, ge=0)
    concurrency: int = Field(8, ge=1)


FIRST_ERROR_TEMPLATE = (
    "Problem:\n{problem}\nSolution steps:\n{steps}\n"
    "Which step is the first incorrect one? Answer with its number, or none if every step is correct.\n"
    "Verdict:")
PER_STEP_TEMPLATE = (
    "Problem:\n{problem}\nEarlier steps:\n{steps}\nStep {index}: {step}\n"
    "Is this step correct? Answer yes or no.\nVerdict:")


class JudgeConfig(Strict):
    """LLM-as-judge (ProcessBench protocol). `model_uri` None: the loop trains a small judge of its
    own from planted-error traces of the family (no instruct model on CPU); `backend: remote` asks
    an HTTP endpoint instead. Templates take {problem}, {steps} (numbered from 1), {index}, {step}."""
    backend: Literal["local", "remote"] = "local"
    model_uri: str | None = None
    mode: Literal["first_error", "per_step"] = "first_error"
    first_error_template: str = FIRST_ERROR_TEMPLATE
    per_step_template: str = PER_STEP_TEMPLATE
    step_line: str = "Step {index}: {step}"  # one numbered step in {steps}
    # What the judge the loop trains writes when every step is right; the parser always accepts
    # none / no error / all correct / -1 (ProcessBench). A char-level tiny judge needs "-1".
    none_verdict: str = "none"
    max_tokens: int = Field(8, ge=1)
    temperature: float = Field(0.0, ge=0)
    remote: RemoteJudgeConfig = RemoteJudgeConfig()
    train_examples: int = Field(20000, ge=1)  # planted-error examples for the judge the loop trains
    train: TrainConfig = TrainConfig(epochs=1.0, lr=1e-3, batch_size=64)


class LabelsConfig(Strict):
    """Existing human step labels (PRM800K or Math-Shepherd format) imported from any fsspec URI, or
    a labelling budget: `budget` traces of G_0 on problems set aside for labelling (disjoint from every
    round's and from evaluation), labelled once by the family's exact step check in place of human
    annotators, written as PRM800K and imported through the same path (so scoring never sees gold)."""
    uri: str | None = None
    budget: int = Field(0, ge=0)  # labelled traces (0: none; needs a family with an exact step check)
    format: Literal["prm800k", "math_shepherd"] = "prm800k"
    neutral: Literal["correct", "wrong", "skip"] = "correct"  # PRM800K rating 0 (TRL counted it wrong)
    strict: bool = False
    with_generated: bool = True  # PRM trains on imported plus generated traces (False: imported only)


class ScoringConfig(Strict):
    """Where step labels for filtering come from. `gold` is the exact step check of a verifiable
    family (the bar the others are measured by); `mc` Monte Carlo rollouts per step, `mc_binary`
    binary search for the first error (OmegaPRM); `confidence` the generator's own per-step token
    confidence (DeepConf; free: one prefill pass); `judge` an LLM judge; `consensus` keeps a trace's
    labels only where MC and the judge name the same first error (others are never kept); `labels`
    scores with a PRM trained on imported human labels (round 1: on those alone; later rounds: on
    those plus the loop's own labelled steps);
    `prm` uses the previous round's PRM (round 1, which has none, uses `first_round_source`);
    `prm+mc` runs MC only on traces the PRM is unsure about; `implicit` the previous round's DPO
    verifier read as an implicit PRM (needs `dpo.enabled`); `calc` the family's calculator alone
    (`calculator` below: the same check on top of any source). `also` names extra sources scored on
    the same traces for the label-quality report (agreement, F1 vs gold) without filtering on them."""
    label_source: str = "mc"  # names are validated against the registry (components/labeling/sources.py)
    first_round_source: str = "mc"
    also: list[str] = []
    mc: MCConfig = MCConfig()
    confidence: ConfidenceConfig = ConfidenceConfig()
    calculator: CalculatorConfig = CalculatorConfig()
    judge: JudgeConfig = JudgeConfig()
    labels: LabelsConfig = LabelsConfig()
    prm_unsure: tuple[float, float] = (0.2, 0.8)
    audit_mc: int = Field(0, ge=0)  # traces also scored by MC to report its label quality (0 = off)

    @field_validator("label_source", "first_round_source", "also")
    @classmethod
    def _registered(cls, value, info):
        from components.labeling.sources import check_name  # the registry imports this module

        names = value if isinstance(value, list) else [value]
        for name in names:
            check_name(name, standalone=info.field_name != "label_source")
        return value


class FilterConfig(Strict):
    mode: Literal["step", "outcome"] = "step"
    aggregate: Literal["min", "prod", "last", "mean"] = "min"
    threshold: float = Field(0.5, ge=0, le=1)
    max_per_problem: int = Field(2, ge=1)
    # Whose step scores rank the traces: the label source's (None), or a source scored beside it in
    # scoring.also (`confidence`, `mc_binary`, ...), so "which verifier filters best" is one flag.
    verifier: str | None = None
    # A fixed budget: the `keep` best-scored right traces in all (no threshold), so filters that
    # differ only in their verifier keep as many traces and compare on what they keep.
    keep: int | None = Field(None, ge=1)


class CurriculumConfig(Strict):
    """Which train problems a round samples: one level past the longest chain the current generator
    already solves (greedy pass@1 >= promote_at), plus a share one level easier (Lee et al. 2025)."""
    enabled: bool = True
    promote_at: float = Field(0.8, gt=0, le=1)
    problems: int = Field(400, ge=1)
    easier_share: float = Field(0.25, ge=0, lt=1)


class LoraConfig(Strict):
    """A LoRA adapter (PEFT) trained instead of the whole model, served unmerged on its base: the one
    place its defaults live. The loop's `sft.lora` is one and `vstar sft --lora-r N` builds one; training
    (components/models/sft.py) takes it as is, and serving reads the one it serves back from the adapter."""
    r: int = Field(8, ge=1)
    alpha: int | None = Field(None, ge=1)  # not given: 2 r (filled in below), so alpha / r stays 2 at any rank
    dropout: float = Field(0.0, ge=0, lt=1)
    # The modules that get an adapter, by name (PEFT matches a module name's last part): the attention
    # projections of Llama / Qwen2 / Mistral-style models; add gate_proj, up_proj, down_proj for the MLP.
    # Kept sorted, without repeats: the same modules in another order are the same adapter and loop.
    target_modules: list[str] = Field(["k_proj", "o_proj", "q_proj", "v_proj"], min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _alpha_twice_r(cls, data):
        if isinstance(data, dict) and data.get("alpha") is None:
            try:
                r = int(data.get("r", cls.model_fields["r"].default))
            except (TypeError, ValueError):
                return data  # r's own error says what is wrong
            if r >= 1:
                data = {**data, "alpha": 2 * r}
        return data

    @field_validator("target_modules")
    @classmethod
    def _module_names(cls, names: list[str]) -> list[str]:
        if not all(n.strip() for n in names):
            raise ValueError("a module name is empty")
        return sorted(set(names))


class SFTConfig(TrainConfig):
    epochs: float = Field(3.0, gt=0)
    lr: float = Field(1e-3, gt=0, lt=1)
    replay_gold: float = Field(1.0, ge=0)  # bootstrap gold examples mixed in per kept trace
    keep_history: bool = True  # earlier rounds' kept traces join this round's
    max_examples: int = Field(6000, ge=1)
    lora: LoraConfig | None = None
    # Where G_n starts: G_{n-1} (previous; with LoRA, G_{n-1}'s adapter trains on) or G_0 (base:
    # V-STaR retrains from the base model every round, on all data so far; with LoRA, a new adapter).
    init: Literal["previous", "base"] = "previous"
    # A round that kept fewer traces (after decontamination) learns nothing: no SFT on replayed gold
    # alone (that would be plain SFT on references, not self-improvement), G_n = G_{n-1} published as
    # unchanged, and a warning says what was generated, what was right and what to try.
    min_kept: int = Field(1, ge=1)


class CalibrateConfig(Strict):
    """The PRM as a label source (`prm`, `prm+mc`, `labels`) calls a step wrong below the threshold its
    training chose on its held-back traces (the one maximising their first-error F1 against their
    labels; saved in the checkpoint's prm_format.json, in MLflow as train_prm/calibrated_threshold),
    instead of the fixed 0.5 (off). Its scores are mapped so that threshold falls at 0.5: the filter,
    `prm_unsure` and the quality report read them as before. Evaluation reports the PRM's F1 at both."""
    enabled: bool = False


class BackboneConfig(Strict):
    """The PRM's own backbone instead of the generator's: a Hugging Face causal-LM folder (local or any
    fsspec URI), a .gguf file or `package:<dist>` (converted once and published, as for model.init_uri),
    with its own tokenizer: a verifier reads a trace's text, never the generator's token ids. Every
    round's PRM starts from it (`init_from: previous`: from PRM_{n-1} once there is one)."""
    enabled: bool = False
    uri: str | None = None

    @model_validator(mode="after")
    def _named(self):
        if self.enabled and not self.uri:
            raise ValueError("prm.backbone.uri: a backbone needs a folder, a .gguf file or package:<dist>")
        return self


class PRMConfig(Strict):
    enabled: bool = True
    init_from: Literal["generator", "previous"] = "generator"
    epochs: float = Field(2.0, gt=0)
    lr: float = Field(1e-3, gt=0, lt=1)
    batch_size: int = Field(64, ge=1)
    max_tokens_per_batch: int | None = Field(None, ge=1)  # as TrainConfig's
    max_examples: int = Field(4000, ge=1)
    soft: bool = True  # train on MC fractions as floats (BCE) rather than hard labels
    balance: bool = False  # weigh bad steps n_good / n_bad in the loss (they are rare)
    scorer: Literal["transformers", "vllm"] = "transformers"
    calibrate: CalibrateConfig = CalibrateConfig()
    backbone: BackboneConfig = BackboneConfig()


class ORMConfig(Strict):
    """The outcome verifier: the PRM's model and format, trained on one label per trace (is its final
    answer right?), read at the trace's last step tag; trained on every generated trace of rounds 1..n
    (V-STaR keeps all iterations' data). Off by default: the PRM-vs-ORM comparison turns it on."""
    enabled: bool = False
    # outcome: every generated trace, labelled by the family's answer check. prm: PRM vs ORM at one
    # label budget: exactly the rows PRM_n trains on, each labelled by its last step's label alone, so
    # the two differ only in how many of those labels they learn from. With Monte Carlo labels the
    # last step's is the trace's own outcome (its rollouts are the trace); with another source it is
    # what that source says of the last step (the calculator: its arithmetic).
    labels: Literal["outcome", "prm"] = "outcome"
    epochs: float = Field(2.0, gt=0)
    lr: float = Field(1e-3, gt=0, lt=1)
    batch_size: int = Field(64, ge=1)
    max_tokens_per_batch: int | None = Field(None, ge=1)  # as TrainConfig's
    max_examples: int = Field(4000, ge=1)
    balance: bool = True  # wrong traces weigh n_right / n_wrong (or the reverse share): either may be rare
    scorer: Literal["transformers", "vllm"] = "transformers"


class DPOVerifierConfig(Strict):
    """V-STaR's verifier: a generator trained with DPO on (right, wrong) solution pairs of a problem,
    every generated trace of rounds 1..n, the model it starts from its reference; it scores a solution
    by DPO's implicit reward beta * log(pi / pi_ref) (components/models/dpo.py). Off by default.
    `init: sft` starts from G_0, the model fine-tuned on the bootstrap gold (V-STaR's G_SFT, §3);
    `generator` from the round's G_n. lr 5e-4 suits the tiny demo model; pretrained checkpoints want
    DPO's usual 1e-6..1e-5."""
    enabled: bool = False
    init: Literal["sft", "generator"] = "sft"
    beta: float = Field(0.1, gt=0)
    epochs: float = Field(3.0, gt=0)
    lr: float = Field(5e-4, gt=0, lt=1)
    batch_size: int = Field(16, ge=1)
    pairs_per_problem: int = Field(2, ge=1)  # of all right x wrong pairings of a problem's solutions
    max_pairs: int = Field(2000, ge=1)


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
