"""PRM-guided step-level beam search as search-and-learn runs it (Snell et al. 2024; huggingface/
search-and-learn, src/sal/search/beam_search.py `_beam_search`): an inference-time method beside
best-of-N, compared with it at equal generated tokens and at equal compute (the verifier's too).

    N = width x expansions samples per step; `width` (N/M) beams survive a step, `expansions` (M) each
    active  = [empty solution] x N
    repeat  up to max_steps times (the last one without the step stop: every beam is finished):
        each active beam proposes its next step, sampled up to the step separator; the survivors are
        repeated round-robin to N proposals (sal: `(active_beams * repeats)[: config.n]`)
        score every proposal with the verifier on its partial trace (its steps' `aggregate`)
        a proposal that ended (answer line, token limit, nothing more to say) leaves the active set
        for the completed list: finished solutions no longer take a survivor's slot
        the `width` best of the still-active proposals survive; stop when none is active or N have completed
    answer  = the best-scored of the first N completed solutions (sal's default, `sort_completed`
              off: sal keeps searching past N but cuts the list back to its first N)

Duplicate texts are not merged (sal's `filter_duplicates` defaults to off). `score(prompts, steps) ->
per-step scores` is any step scorer: the round's PRM, or (in tests) the family's exact check as an oracle.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

from components.labeling.filtering import aggregate
from components.models.generation import Sampling


@dataclass
class Beam:
    text: str  # the solution so far (whole steps, each ending with the separator)
    score: float = 0.0
    done: bool = False


@dataclass
class Found:
    texts: list[str]  # the answer per prompt
    tokens: int = 0  # generated, all prompts
    scored_tokens: int = 0  # the verifier's input tokens, all prompts (`measure`); 0 without one


def search(gen, family, prompts: list[str], score: Callable[[list[str], list[list[str]]], list[list[float]]],
           width: int = 4, expansions: int = 4, max_steps: int = 12, sampling: Sampling = Sampling(),
           separator: str = "\n", how: str = "min",
           measure: Callable[[list[str], list[list[str]]], int] | None = None) -> Found:
    """The best solution found for each prompt, and what finding it cost. `measure(prompts, steps)`
    counts the verifier's input tokens of a batch it scores (for equal-compute comparisons)."""
    n = width * expansions
    active: list[list[Beam]] = [[Beam("")] for _ in prompts]
    completed: list[list[Beam]] = [[] for _ in prompts]
    found = Found([])
    for depth in range(max_steps):
        live = [i for i in range(len(prompts)) if active[i] and len(completed[i]) < n]
        if not live:
            break
        last = depth == max_steps - 1  # sal: "Last iteration, generate to EOS"
        asks: list[tuple[int, Beam, int]] = []  # (prompt, beam, proposals from it)
        for i in live:
            counts = [0] * len(active[i])
            for j in range(n):
                counts[j % len(active[i])] += 1
            asks += [(i, b, c) for b, c in zip(active[i], counts)]
        outs = _generate(gen, prompts, asks, replace(sampling, stop=() if last else (separator,),
                                                     seed=sampling.seed + depth))
        proposals: list[tuple[int, Beam]] = []
        for (i, b, _), samples in zip(asks, outs):
            for s in samples:
                found.tokens += len(s.token_ids)
                text = b.text + s.text
                # Ended: at its answer line, cut by the token limit, nothing more to say, or the forced last step.
                ended = last or s.finish_reason == "length" or family.answer_end(text) is not None or not s.text.strip()
                proposals.append((i, Beam(text if ended else text + separator, done=ended)))
        batch = ([prompts[i] for i, _ in proposals], [family.split_steps(b.text) for _, b in proposals])
        if measure:
            found.scored_tokens += measure(*batch)
        for (i, b), sc in zip(proposals, score(*batch)):
            b.score = aggregate(sc, how) if sc else 0.0
        active = [[] for _ in prompts]
        for i, b in proposals:
            (completed[i] if b.done else active[i]).append(b)
        active = [sorted(bs, key=lambda b: -b.score)[:width] for bs in active]  # stable: ties keep their order
    for i in range(len(prompts)):
        pool = completed[i][:n] or active[i] or [Beam("")]
        found.texts.append(max(pool, key=lambda b: b.score).text)
    return found


def _generate(gen, prompts: list[str], asks: list[tuple[int, Beam, int]], sampling: Sampling) -> list:
    """Each beam's proposals: one generate call per distinct proposal count (a backend takes one `n`
    per call), every beam of that count in the batch, vLLM caching the prefixes they share."""
    outs: list = [None] * len(asks)
    for count in sorted({c for _, _, c in asks}):
        idx = [k for k, (_, _, c) in enumerate(asks) if c == count]
        for k, o in zip(idx, gen.generate([prompts[asks[k][0]] + asks[k][1].text for k in idx],
                                          replace(sampling, n=count))):
            outs[k] = o
    return outs
