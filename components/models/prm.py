"""Process reward model (PRM): the generator's backbone (any architecture transformers has a token-
classification head for: Llama, Qwen2, Mistral, Gemma, ...) with a 2-way head read at a tag token
after every step.

The input format is part of the model artifact: `prm_format.json` next to the weights says which token
tags a step, how steps are laid out and which class means "good". Training writes it, every scorer
reads it; a train/score mismatch silently costs F1 points (QwenLM/ProcessBench issue 12).

    input   <prompt><step 1><step><sep><step 2><step><sep>...  (the tag is a special token added here;
                                                               <sep> the family's step separator)
    output  P(good) per step = softmax(logits at the i-th tag)[1]

Labels are floats in [0, 1] (P(good)); None/NaN means "unlabeled" and is not trained on.

Training is components/models/prm_training.py, scoring components/models/prm_scoring.py: both go
through the format here.
"""
from __future__ import annotations

import json
from pathlib import Path

from components.runtime import progress
from components.models import packing
from components.models.hardware import CPU, Placement

STEP_TAG = "<step>"
TEMPLATE = "{step}" + STEP_TAG + "\n"
FORMAT_FILE = "prm_format.json"
POSITIVE = 1  # class index of "step is good"
LABEL_CONVENTION = "class 1 = good; soft labels = P(good)"


# ------------------------------------------------------------------------------------------- format

def format_input(prompt: str, steps: list[str], fmt: dict | None = None) -> str:
    """The PRM's input text; scorers pass the `fmt` loaded from the checkpoint, not the module default."""
    template = (fmt or {}).get("template", TEMPLATE)
    return prompt + "".join(template.format(step=s) for s in steps)


def load_format(model_dir: str | Path) -> dict:
    path = Path(model_dir) / FORMAT_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; a PRM checkpoint must carry {FORMAT_FILE} "
                                f"(written by components.models.prm_training.train_prm) so scorers use its step tag")
    fmt = json.loads(path.read_text())
    missing = {"step_tag", "step_tag_id", "template", "positive_class"} - fmt.keys()
    if missing:
        raise ValueError(f"{path}: missing keys {sorted(missing)}")
    return fmt


def check_tag(tok, fmt: dict, where: str) -> None:
    """The saved tag id must be what the saved tokenizer produces for the tag, or no step is read."""
    tid = tok.convert_tokens_to_ids(fmt["step_tag"])
    if tid != fmt["step_tag_id"]:
        raise ValueError(f"{where}/{FORMAT_FILE}: step_tag {fmt['step_tag']!r} has id {tid} in the "
                         f"tokenizer but step_tag_id {fmt['step_tag_id']} in the format file")


def check_separator(fmt: dict, step_separator: str | None, where: str) -> None:
    """Traces laid out with another step separator than the PRM trained on would be scored wrongly
    and silently: refuse. (Checkpoints from before the separator was saved used a newline.)"""
    saved = fmt.get("step_separator", "\n")
    if step_separator is not None and step_separator != saved:
        raise ValueError(f"{where}/{FORMAT_FILE}: this PRM was trained on steps separated by {saved!r}, "
                         f"but family.prompt.step_separator is {step_separator!r}")


def _encode(tok, fmt: dict, prompt: str, steps: list[str]) -> tuple[list[int], list[int]]:
    """(token ids with BOS, positions of the step tags); one tag per step or the labels misalign."""
    ids = tok(format_input(prompt, steps, fmt))["input_ids"]
    pos = [i for i, t in enumerate(ids) if t == fmt["step_tag_id"]]
    if len(pos) != len(steps):
        raise ValueError(f"{len(steps)} steps gave {len(pos)} step tags (a step containing "
                         f"{fmt['step_tag']!r}?): {format_input(prompt, steps, fmt)!r}")
    return ids, pos


def step_probs(model, tok, fmt: dict, prompts: list[str], steps: list[list[str]], batch_size: int = 32,
               max_len: int | None = None, placement: Placement = CPU) -> list[list[float]]:
    """P(good) at each step's tag; batches packed without padding when `placement.packing` (the scores
    are the same: a tag sees only its own trace either way)."""
    import torch

    enc = [_encode(tok, fmt, p, s) for p, s in zip(prompts, steps)]
    if max_len is not None:
        too_long = [i for i, (ids, _) in enumerate(enc) if len(ids) > max_len]
        if too_long:  # same contract as vLLM, which refuses prompts longer than max_model_len
            raise ValueError(f"trace {too_long[0]} has {len(enc[too_long[0]][0])} tokens > max_model_len {max_len}")
    out: list[list[float]] = []
    progress.report("traces", 0, len(enc))
    with torch.no_grad(), placement.autocast():
        for start in range(0, len(enc), batch_size):
            chunk = enc[start : start + batch_size]
            seqs = [ids for ids, _ in chunk]
            inputs = packing.layout(seqs, [[0] * len(ids) for ids in seqs], tok.pad_token_id, 0, placement.packing)
            del inputs["labels"]
            # packed: one row, each trace's tags at its start + their positions; padded: a row per trace
            rows = ([(0, at) for at in packing.starts(seqs)] if placement.packing else [(i, 0) for i in range(len(chunk))])
            inputs = {k: v.to(placement.device) if hasattr(v, "to") else v for k, v in inputs.items()}
            probs = model(**inputs).logits.float().softmax(-1).cpu()
            out += [probs[row, [at + p for p in pos], fmt["positive_class"]].tolist()
                    for (row, at), (_, pos) in zip(rows, chunk)]
            progress.report("traces", len(out), len(enc))
    return out


def threshold(fmt: dict) -> float:
    """The calibrated step threshold a checkpoint carries (0.5 for one trained before it was saved)."""
    return float(fmt.get("threshold", 0.5))


def calibrated_on(fmt: dict) -> list[str]:
    """The fingerprints of the problems its threshold was chosen on (quality.fingerprints)."""
    return list(fmt.get("calibrated_on", []))
