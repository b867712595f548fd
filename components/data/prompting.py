"""How a problem is put to the model: the family's problem text rendered by `family.prompt`.

A plain template, the chat template of the model's own tokenizer (with an optional system message),
and k worked examples before the problem. Rendering happens once, in the problems a family hands
out (`family_of(cfg)`): generation, Monte Carlo prefixes, SFT pairs and PRM inputs all start from
`Problem.prompt`, so they cannot disagree. The problem text before rendering stays in
`meta["problem_text"]` (the judge reads it) and `meta["question"]` (decontamination compares it).
"""
from __future__ import annotations

from dataclasses import replace
from functools import lru_cache

from components.config import RunConfig
from components.config_sections import DecontamConfig, PromptConfig
from components.data.families import Family, Problem, get_family


def problem_text(p: Problem) -> str:
    """The family's problem text, before any prompt rendering."""
    return p.meta.get("problem_text", p.prompt)


def hinted_prompt(fam, p: Problem, hint: str) -> str:
    """The prompt of `p` with its answer given (`hint`: {problem}, {answer}), rendered as `p.prompt` was:
    what STaR's rationalization asks (components/stages/generate.py). Never for evaluation problems."""
    text = hint.replace("{problem}", problem_text(p).rstrip("\n")).replace("{answer}", str(p.answer))
    if not text.endswith("\n") and problem_text(p).endswith("\n"):
        text += "\n"  # a family's problem text ends in a newline: the model reads the hint the same way
    prompter = getattr(fam, "prompter", None)
    return prompter.render(text) if prompter else text


class Prompter:
    def __init__(self, cfg: PromptConfig, shots: list[tuple[str, str]] = (), tokenizer=None):
        if cfg.style == "chat" and (tokenizer is None or not tokenizer.chat_template):
            raise ValueError("family.prompt.style chat: the model's tokenizer has no chat template "
                             "(use style plain with a template)")
        self.cfg, self.shots, self.tok = cfg, list(shots), tokenizer
        # A chat template that writes the BOS itself would get a second one from the tokenizer.
        self.bos = None
        if tokenizer is not None and tokenizer.bos_token and tokenizer("x").input_ids[:1] == [tokenizer.bos_token_id]:
            self.bos = tokenizer.bos_token

    def _fill(self, text: str) -> str:
        return self.cfg.template.replace("{problem}", text)

    def render(self, text: str) -> str:
        if self.cfg.style == "plain":
            return "".join(self._fill(q) + a + self.cfg.shot_separator for q, a in self.shots) + self._fill(text)
        messages = [{"role": "system", "content": self.cfg.system}] if self.cfg.system else []
        for q, a in self.shots:
            messages += [{"role": "user", "content": self._fill(q).strip()}, {"role": "assistant", "content": a.rstrip()}]
        messages.append({"role": "user", "content": self._fill(text).strip()})
        out = self.tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return out[len(self.bos):] if self.bos and out.startswith(self.bos) else out


class PromptedFamily:
    """A family whose problems carry rendered prompts; everything else is the inner family's. The
    worked examples' problems leave every split (a model is never asked what it was shown)."""

    def __init__(self, inner: Family, cfg: PromptConfig, tokenizer=None, decontam: DecontamConfig = DecontamConfig()):
        from components.data.decontam import decontaminate

        self.inner = inner
        # Shown in every prompt, the evaluation's too: never a problem that overlaps evaluation.
        examples = decontaminate(inner.problems("bootstrap"), inner.problems("eval"), decontam)[0][: cfg.shots]
        if len(examples) < cfg.shots:
            raise ValueError(f"family.prompt.shots={cfg.shots}: only {len(examples)} problems have a reference solution")
        self.shot_ids = {p.id for p in examples}
        self.prompter = Prompter(cfg, [(p.prompt, inner.gold_solution(p)) for p in examples], tokenizer)
        self._splits: dict[str, list[Problem]] = {}

    def problems(self, split: str) -> list[Problem]:
        if split not in self._splits:
            self._splits[split] = [
                replace(p, prompt=self.prompter.render(p.prompt),
                        meta={**p.meta, "problem_text": p.prompt, "question": p.meta.get("question", p.prompt.strip())})
                for p in self.inner.problems(split) if p.id not in self.shot_ids]
        return list(self._splits[split])

    def __getattr__(self, name):
        return getattr(self.inner, name)


@lru_cache(maxsize=4)
def _tokenizer(folder: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder)


def family_of(cfg: RunConfig) -> Family:
    """The run's family with its problems as the model sees them. The chat template comes from G_0's
    tokenizer as published in the store (so every machine renders the same prompts)."""
    fam = get_family(cfg.family, cfg.seed)
    pr = cfg.family.prompt
    if not pr.renders:
        return fam
    tok = None
    if pr.style == "chat":
        from components.artifacts import store
        from components.artifacts.layout import Layout

        tok = _tokenizer(str(store.fetch_folder(Layout.of(cfg).bootstrap())))
    return PromptedFamily(fam, pr, tok, cfg.decontam)
