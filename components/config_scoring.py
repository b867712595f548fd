"""The scoring and filtering sections of the run config: where step labels come from (Monte Carlo,
the judge, imported human labels, the calculator, ...) and which traces are kept. Source names are
checked against their registry by components/checks.py, not here: the config imports nothing above it."""
from __future__ import annotations

from typing import Literal

from pydantic import AliasChoices, Field

from components.config_sections import Strict, TrainConfig


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
    label_source: str = "mc"  # a name in the registry (components/labeling/sources.py; checked by components/checks.py)
    first_round_source: str = "mc"
    also: list[str] = []
    mc: MCConfig = MCConfig()
    confidence: ConfidenceConfig = ConfidenceConfig()
    calculator: CalculatorConfig = CalculatorConfig()
    judge: JudgeConfig = JudgeConfig()
    labels: LabelsConfig = LabelsConfig()
    prm_unsure: tuple[float, float] = (0.2, 0.8)
    audit_mc: int = Field(0, ge=0)  # traces also scored by MC to report its label quality (0 = off)


class FilterConfig(Strict):
    mode: Literal["step", "outcome"] = "step"
    aggregate: Literal["min", "prod", "last", "mean"] = "min"
    threshold: float = Field(0.5, ge=0, le=1)
    max_per_problem: int = Field(2, ge=1)
    # Whose step scores rank the traces: the label source's (None), or a source scored beside it in
    # scoring.also (`confidence`, `mc_binary`, ...), so "which verifier filters best" is one flag.
    # Named `verifier` until issue #34: a config may still say so.
    rank_by: str | None = Field(None, validation_alias=AliasChoices("rank_by", "verifier"))
    # A fixed budget: the `keep` best-scored right traces in all (no threshold), so filters that
    # differ only in their verifier keep as many traces and compare on what they keep.
    keep: int | None = Field(None, ge=1)
