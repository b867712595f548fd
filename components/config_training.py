"""The training sections of the run config: the generator's SFT and the verifiers (PRM, ORM, DPO).
Each extends TrainConfig (epochs, lr, batch_size, warmup, token budget) with its own defaults."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from components.config_sections import ModelConfig, Strict, TrainConfig


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
    """A verifier's own backbone (`prm.backbone`, `orm.backbone`, `dpo.backbone`) instead of the
    generator's, with its own tokenizer: a verifier reads a trace's text, never the generator's token ids.
    Either `uri`, a pretrained model: a Hugging Face causal-LM folder (local or any fsspec URI), a .gguf
    file or `package:<dist>` (converted once and published, as for model.init_uri); or `size`, a model
    made here from scratch by the bootstrap's recipe (its char-level tokenizer, the bootstrap split's
    gold) at that size, trained `pretrain_epochs` on at most `pretrain_examples` of that gold as a
    language model (0: left at its random initialisation) and published once under the store's
    backbones/ for every loop that names the same one. Every round's verifier starts from it (the PRM
    under `init_from: previous`: from PRM_{n-1} once there is one); the DPO verifier also refers to it
    (its score is log pi / pi_backbone)."""
    enabled: bool = False
    uri: str | None = None
    size: ModelConfig | None = None
    pretrain_epochs: float = Field(1.0, ge=0)
    pretrain_examples: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _named(self):
        if self.enabled and not (self.uri or self.size):
            raise ValueError("uri: a backbone needs a folder, a .gguf file or package:<dist> (or `size`: one made here)")
        if self.uri and self.size:
            raise ValueError("size: a backbone is either pretrained (`uri`) or made here (`size`), not both")
        if self.size and self.size.init_uri:
            raise ValueError("size.init_uri: a backbone made here starts from scratch; name a pretrained one as `uri`")
        return self


class PRMConfig(TrainConfig):
    enabled: bool = True
    init_from: Literal["generator", "previous"] = "generator"
    epochs: float = Field(2.0, gt=0)
    lr: float = Field(1e-3, gt=0, lt=1)
    max_examples: int = Field(4000, ge=1)
    soft: bool = True  # train on MC fractions as floats (BCE) rather than hard labels
    balance: bool = False  # weigh bad steps n_good / n_bad in the loss (they are rare)
    scorer: Literal["transformers", "vllm"] = "transformers"
    calibrate: CalibrateConfig = CalibrateConfig()
    backbone: BackboneConfig = BackboneConfig()


class ORMConfig(TrainConfig):
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
    max_examples: int = Field(4000, ge=1)
    balance: bool = True  # wrong traces weigh n_right / n_wrong (or the reverse share): either may be rare
    scorer: Literal["transformers", "vllm"] = "transformers"
    backbone: BackboneConfig = BackboneConfig()


class DPOVerifierConfig(TrainConfig):
    """V-STaR's verifier: a generator trained with DPO on (right, wrong) solution pairs of a problem,
    every generated trace of rounds 1..n, the model it starts from its reference; it scores a solution
    by DPO's implicit reward beta * log(pi / pi_ref) (components/models/dpo.py). Off by default.
    `init: sft` starts from G_0, the model fine-tuned on the bootstrap gold (V-STaR's G_SFT, §3);
    `generator` from the round's G_n; `backbone` (on) from a model of its own, published in the store,
    which is then its reference. lr 5e-4 suits the tiny demo model; pretrained checkpoints want DPO's
    usual 1e-6..1e-5."""
    enabled: bool = False
    init: Literal["sft", "generator"] = "sft"
    backbone: BackboneConfig = BackboneConfig()
    beta: float = Field(0.1, gt=0)
    epochs: float = Field(3.0, gt=0)
    lr: float = Field(5e-4, gt=0, lt=1)
    batch_size: int = Field(16, ge=1)
    pairs_per_problem: int = Field(2, ge=1)  # of all right x wrong pairings of a problem's solutions
    max_pairs: int = Field(2000, ge=1)

    @model_validator(mode="after")
    def _by_pairs(self):
        if self.max_tokens_per_batch is not None:  # TRL 1.16's DPOTrainer pads (padding-free is off there)
            raise ValueError("max_tokens_per_batch: the DPO verifier batches by pairs (dpo.batch_size), "
                             "TRL's DPOTrainer cannot size its batches in tokens")
        return self


# The rewards GRPO can train on (components/evaluation/rewards.py computes each), with the config section
# of the verifier each reads (round n-1's), None for the family's answer check and its calculator.
REWARDS = {"outcome": None, "orm": "orm", "prm": "prm", "implicit": "dpo", "calc": None}


class GRPOConfig(TrainConfig):
    """G_n by reinforcement learning: TRL's GRPOTrainer (Shao et al. 2024) on the round's problems (the
    ones `generate` sampled), the policy starting from G_{n-1}, each completion rewarded by
    sum_r rewards[r] * r(completion). A verifier's reward reads round n-1's verifier (`verifier:
    previous`; PRIME's online retraining within the round is not built). `aggregate` folds the PRM's
    (or the implicit PRM's) step scores into one reward per completion: TRL 1.16's GRPOTrainer takes one
    scalar per completion and spreads its group-normalised advantage over every completion token, so a
    step's score cannot be credited to that step's tokens alone. Samples at generation.temperature, by
    transformers' generate (TRL's vLLM modes need CUDA)."""
    rewards: dict[Literal[tuple(REWARDS)], float] = {"outcome": 1.0}
    aggregate: Literal["min", "last", "mean"] = "min"
    verifier: Literal["previous"] = "previous"
    num_generations: int = Field(8, ge=2)  # completions per problem: GRPO's group
    batch_size: int = Field(64, ge=2)  # completions per optimizer step: whole groups
    epochs: float = Field(1.0, gt=0)  # passes over the round's problems
    lr: float = Field(1e-4, gt=0, lt=1)
    beta: float = Field(0.0, ge=0)  # KL to G_{n-1}; 0 (TRL's default, after DAPO/Dr. GRPO) loads no reference
    max_problems: int = Field(2000, ge=1)
    max_tokens: int | None = Field(None, ge=1)  # completion length; None: generation.max_tokens
    lora: LoraConfig | None = None  # a new adapter on a full G_{n-1}; an adapter G_{n-1} trains on regardless

    @model_validator(mode="after")
    def _groups(self):
        if not self.rewards or not any(self.rewards.values()):
            raise ValueError("rewards: name at least one reward with a nonzero weight "
                             f"({', '.join(REWARDS)}), e.g. {{outcome: 1.0}}")
        if self.batch_size % self.num_generations:
            raise ValueError(f"batch_size {self.batch_size} must be whole groups of num_generations "
                             f"{self.num_generations} completions")
        if self.max_tokens_per_batch is not None:
            raise ValueError("max_tokens_per_batch: GRPO batches by completions (grpo.batch_size)")
        return self


class TrainGeneratorConfig(Strict):
    """How a round makes G_n: `sft` (V-STaR: SFT on the round's filtered traces) or `grpo` (RL on the
    round's problems, section `grpo`), from round `from_round` on; earlier rounds train by SFT (a
    verifier's reward needs round n-1's verifier, which round 1 does not have)."""
    method: Literal["sft", "grpo"] = "sft"
    from_round: int = Field(1, ge=1)

    def method_of(self, round_idx: int) -> str:
        return self.method if round_idx >= self.from_round else "sft"
