"""How problems are put to a model (family.prompt): plain templates, k worked examples, the chat
template of a real tokenizer, the step separator and answer line, and the cut after the answer."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from components.checks import load_config
from components.config import ConfigError
from components.config_sections import DataConfig, FamilyConfig, PromptConfig
from components.data.families import get_family
from components.data.prompting import PromptedFamily, problem_text

ROOT = Path(__file__).resolve().parent.parent


def gsm8k(prompt: PromptConfig = PromptConfig(), tmp: Path | None = None):
    d = next(p for p in (ROOT.parent / "shared/data/gsm8k", Path("/work/shared/data/gsm8k")) if p.is_dir())
    return get_family(FamilyConfig(name="gsm8k", prompt=prompt,
                                   data=DataConfig(train_uri=str(d / "train.jsonl"), eval_uri=str(d / "test.jsonl"),
                                                   bootstrap_size=50, eval_size=20)))


def test_plain_k_shot_prompt_shows_worked_examples_that_leave_the_train_split():
    cfg = PromptConfig(template="Question: {problem}Solution:\n", shots=2, shot_separator="\n")
    inner = gsm8k(cfg)
    fam = PromptedFamily(inner, cfg)
    shots = inner.problems("bootstrap")[:2]
    p = fam.problems("train")[0]
    expected = "".join(f"Question: {s.prompt}Solution:\n{inner.gold_solution(s)}\n" for s in shots)
    assert p.prompt == expected + f"Question: {problem_text(p)}Solution:\n"
    assert {s.id for s in shots}.isdisjoint(q.id for q in fam.problems("train"))
    assert len(fam.problems("train")) == len(inner.problems("train")) - 2
    # the judge and decontamination see the problem, not the rendering
    assert p.meta["question"] in problem_text(p) and "Question:" not in p.meta["question"]
    # Monte Carlo prefixes start from the rendered prompt
    assert fam.prefix_text(p, ["a", "b"], 0) == p.prompt + "a\n"


def test_chat_template_renders_system_shots_and_generation_prompt(tmp_path):
    from transformers import AutoTokenizer

    from components.models.tiny import build_qwen2_checkpoint

    folder = build_qwen2_checkpoint(tmp_path / "m", ["hello world 1 2 3"] * 10, vocab_size=300)
    cfg = PromptConfig(style="chat", system="Be brief.", shots=1)
    inner = gsm8k(cfg)
    fam = PromptedFamily(inner, cfg, AutoTokenizer.from_pretrained(str(folder)))
    shot, p = inner.problems("bootstrap")[0], fam.problems("train")[0]
    assert p.prompt == (f"<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n{shot.prompt.strip()}<|im_end|>\n"
                        f"<|im_start|>assistant\n{inner.gold_solution(shot).rstrip()}<|im_end|>\n"
                        f"<|im_start|>user\n{problem_text(p).strip()}<|im_end|>\n<|im_start|>assistant\n")


def test_chat_style_needs_a_pretrained_tokenizer():
    with pytest.raises(ConfigError, match="chat template of a pretrained tokenizer: set model.init_uri"):
        load_config(None, ["family.prompt.style=chat"])
    with pytest.raises(ConfigError, match="arith family's trace format is fixed"):
        load_config(None, ["family.prompt.step_separator=\"\\n\\n\""])


def test_blank_line_separated_steps_and_a_configured_answer_line():
    fam = gsm8k(PromptConfig(step_separator="\n\n", answer_line="#### {answer}"))
    text = "First we add\n3 + 4 = 7.\n\nThen double: 14.\n\n#### 14\n\nQuestion: next one"
    assert fam.split_steps(text) == ["First we add\n3 + 4 = 7.", "Then double: 14.", "#### 14"]
    assert fam.steps_text(fam.split_steps(text)) == "First we add\n3 + 4 = 7.\n\nThen double: 14.\n\n#### 14\n\n"
    assert text[: fam.answer_end(text)] == "First we add\n3 + 4 = 7.\n\nThen double: 14.\n\n#### 14\n\n"
    p = fam.problems("train")[0]
    assert fam.gold_solution(p).endswith(f"#### {p.answer}\n\n")
    assert fam.extract_answer(text) == "14"


def test_answer_end_cuts_what_follows_the_answer_line():
    fam = gsm8k()
    assert fam.answer_end("2 + 2 = 4\n#### 4\nQuestion: more\n") == len("2 + 2 = 4\n#### 4\n")
    assert fam.answer_end("2 + 2 = 4\n#### 4") == len("2 + 2 = 4\n#### 4")
    assert fam.answer_end("2 + 2 = 4\n") is None
    arith = get_family(FamilyConfig())
    assert arith.answer_end("1+2=3\nAnswer: 3\n7+7=14\n") == len("1+2=3\nAnswer: 3\n")


def test_prm_refuses_traces_laid_out_with_another_separator(tmp_path):
    from components.models.prm import FORMAT_FILE, check_separator
    from components.models.prm_scoring import load_scorer

    fmt = {"step_tag": "<step>", "step_tag_id": 5, "template": "{step}<step>\n\n", "step_separator": "\n\n",
           "positive_class": 1}
    (tmp_path / FORMAT_FILE).write_text(json.dumps(fmt))
    with pytest.raises(ValueError, match=r"trained on steps separated by '\\n\\n', but family.prompt.step_separator is '\\n'"):
        load_scorer("transformers", tmp_path, step_separator="\n")
    check_separator({"template": "x"}, "\n", "old")  # checkpoints from before the field: a newline


def test_rationalization_hint_is_rendered_like_the_prompt_and_carries_the_answer(tmp_path):
    """STaR's hinted prompt: the same chat rendering (system, shots), the user turn holding the problem
    and its answer; the problem's own prompt is untouched (it is what a rationalized trace keeps)."""
    from transformers import AutoTokenizer

    from components.config_sections import RATIONALIZE_HINT
    from components.data.prompting import hinted_prompt
    from components.models.tiny import build_qwen2_checkpoint

    folder = build_qwen2_checkpoint(tmp_path / "m", ["hello world 1 2 3"] * 10, vocab_size=300)
    cfg = PromptConfig(style="chat", system="Be brief.", shots=1)
    fam = PromptedFamily(gsm8k(cfg), cfg, AutoTokenizer.from_pretrained(str(folder)))
    p = fam.problems("train")[0]
    hinted = hinted_prompt(fam, p, RATIONALIZE_HINT)
    head = p.prompt.rsplit("<|im_start|>user\n", 1)[0]
    assert hinted.startswith(head + "<|im_start|>user\n" + problem_text(p).strip() + "\n(The final result is "
                             + str(p.answer) + ".)")
    assert hinted.endswith("<|im_end|>\n<|im_start|>assistant\n") and "final result" not in p.prompt
    assert fam.problems("train")[0].prompt == p.prompt  # the problem's prompt is not changed
    with pytest.raises(ConfigError, match=r"rationalize.hint: must contain \{answer\}"):
        load_config(None, ["rationalize.hint='{problem} no answer here'"])


def test_curriculum_never_strands_a_model_that_solves_no_level():
    """No level solved at promote_at: the level whose last evaluation had the best pass@k (something
    there is right, so something can be kept), the easiest when nothing was right anywhere."""
    from components.data.curriculum import next_difficulty

    assert next_difficulty({1: 0.95, 2: 0.85, 3: 0.4}, 0.8, 1, 6)[0] == 3  # as before: one past the solved
    level, why = next_difficulty({1: 0.1, 2: 0.0, 3: 0.0}, 0.8, 2, 6, {1: 0.9, 2: 0.1, 3: 0.3, 4: 0.3})
    assert level == 3 and "pass@k is highest (30%)" in why  # level 1 is below the train range; 3 and 4 tie: easier
    level, why = next_difficulty({2: 0.0, 3: 0.0}, 0.8, 2, 6, {2: 0.0, 3: 0.0})
    assert level == 2 and "the easiest, 2" in why
