"""PRM-guided step-level beam search (search-and-learn's recipe, Snell et al. 2024): an inference-time
method beside best-of-N, compared with it at equal generated tokens.

    beams   = [empty solution]
    repeat  up to max_steps times:
        each live beam proposes `expansions` next steps: sampled up to the step separator (vLLM caches
        the shared prefix), so every proposal is the beam plus one step
        score every proposal with the verifier on its partial trace (its steps' aggregate, `min`)
        keep the `width` best of the proposals and of the solutions finished so far
        stop when every kept one has reached its answer line (or ended)
    answer  = the best-scored finished solution (the best beam if none finished)

`score(prompts, steps) -> per-step scores` is any step scorer: the round's PRM, or (in tests) the
family's exact step check as an oracle.
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


def search(gen, family, prompts: list[str], score: Callable[[list[str], list[list[str]]], list[list[float]]],
           width: int = 4, expansions: int = 4, max_steps: int = 12, sampling: Sampling = Sampling(),
           separator: str = "\n", how: str = "min") -> tuple[list[str], int]:
    """The best solution found for each prompt, and the tokens generated for all of them."""
    beams = [[Beam("")] for _ in prompts]
    tokens = 0
    for depth in range(max_steps):
        live = [(i, b) for i, bs in enumerate(beams) for b in bs if not b.done]
        if not live:
            break
        step = replace(sampling, n=expansions, stop=(separator,), seed=sampling.seed + depth)
        outs = gen.generate([prompts[i] + b.text for i, b in live], step)
        proposals: list[tuple[int, Beam]] = []
        for (i, b), samples in zip(live, outs):
            for s in samples:
                tokens += len(s.token_ids)
                text = b.text + s.text
                # Ended: at its answer line, cut by the token limit, or nothing more to say (EOS at once).
                ended = s.finish_reason == "length" or family.answer_end(text) is not None or not s.text.strip()
                proposals.append((i, Beam(text if ended else text + separator, done=ended)))
        steps = [family.split_steps(b.text) for _, b in proposals]
        for (i, b), sc in zip(proposals, score([prompts[i] for i, _ in proposals], steps)):
            b.score = aggregate(sc, how) if sc else 0.0
        pool: list[list[Beam]] = [[b for b in bs if b.done] for bs in beams]
        seen = [{b.text for b in p} for p in pool]
        for i, b in proposals:  # two beams proposing the same text are one beam
            if b.text not in seen[i]:
                seen[i].add(b.text)
                pool[i].append(b)
        beams = [sorted(p, key=lambda b: -b.score)[:width] for p in pool]  # stable: ties keep their order
    best = []
    for bs in beams:
        done = [b for b in bs if b.done]
        best.append(max(done or bs, key=lambda b: b.score).text)
    return best, tokens
