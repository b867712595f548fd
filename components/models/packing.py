"""Padding-free batches: a batch's sequences laid end to end in one row, positions restarting at
each sequence, and attention that never crosses a sequence boundary.

    padded   [[a a a . .], [b b b b b], [c . . . .]]   attention_mask marks the pads
    packed   [[a a a b b b b b c]], position_ids [[0 1 2 0 1 2 3 4 0]]

transformers (5.19) reads a packed row from its position ids when no attention mask is passed: sdpa,
eager and flex attention then mask block-diagonally (masking_utils.find_packed_sequence_indices),
FlashAttention-2 runs its varlen kernel. So a packed batch computes exactly what the padded one does,
without the pads (48-60% of the positions of a GSM8K batch, docs/benchmarks.md "On a GPU").

Labels travel with their tokens. A causal LM's loss shifts them by one, so the first label of every
sequence is ignored (it would be predicted from the previous sequence's last token); the completion-
only masks already ignore it (the BOS is part of the prompt), and `pack(shifted=True)` makes sure.

Batches sized in tokens (`max_tokens_per_batch`): `token_batches` fills each batch up to a budget
(first fit over a shuffled order), so a step holds about as many tokens however long the sequences.
"""
from __future__ import annotations

import random


def pad(seqs: list[list[int]], labels: list, pad_id: int, ignore) -> dict:
    """Right padding (causal attention leaves the real tokens alone): input_ids, attention_mask, labels."""
    import torch

    width = max(map(len, seqs))
    dtype = torch.float if isinstance(ignore, float) else torch.long
    input_ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(seqs), width), dtype=torch.long)
    out = torch.full((len(seqs), width), ignore, dtype=dtype)
    for i, (ids, lab) in enumerate(zip(seqs, labels)):
        input_ids[i, : len(ids)], attn[i, : len(ids)] = torch.tensor(ids), 1
        out[i, : len(ids)] = torch.as_tensor(lab, dtype=dtype)
    return {"input_ids": input_ids, "attention_mask": attn, "labels": out}


def pack(seqs: list[list[int]], labels: list, ignore, shifted: bool) -> dict:
    """One row: input_ids, position_ids and labels of shape [1, total tokens], no attention mask (which
    would make the attention ignore the boundaries), and no KV cache: with one, transformers skips
    reading the pack from the position ids and every token attends to all before it (measured: logits
    0.6 apart). `shifted`: a causal LM's labels (see above)."""
    import torch

    dtype = torch.float if isinstance(ignore, float) else torch.long
    out = torch.cat([torch.as_tensor(lab, dtype=dtype) for lab in labels])
    if shifted:
        out[starts(seqs)] = ignore
    return {"input_ids": torch.tensor([t for ids in seqs for t in ids])[None],
            "position_ids": torch.cat([torch.arange(len(ids)) for ids in seqs])[None], "labels": out[None],
            "use_cache": False}


def starts(seqs: list[list[int]]) -> list[int]:
    """Where each sequence begins in the packed row."""
    out, at = [], 0
    for ids in seqs:
        out.append(at)
        at += len(ids)
    return out


def layout(seqs: list[list[int]], labels: list, pad_id: int, ignore, packed: bool, shifted: bool = False) -> dict:
    """The model's inputs for one batch, packed or padded."""
    return pack(seqs, labels, ignore, shifted) if packed else pad(seqs, labels, pad_id, ignore)


def token_batches(lengths: list[int], max_tokens: int, seed: int) -> list[list[int]]:
    """Indices grouped into batches of at most `max_tokens` tokens each, in random order: first fit
    over a shuffled order (a batch is closed when a sequence no longer fits, so a batch holds
    consecutive picks and the data stays shuffled). A sequence longer than the budget is refused:
    cutting it would train on a truncated trace without saying so."""
    too_long = [i for i, n in enumerate(lengths) if n > max_tokens]
    if too_long:
        worst = max(too_long, key=lengths.__getitem__)
        raise ValueError(f"{len(too_long)} of {len(lengths)} examples are longer than max_tokens_per_batch "
                         f"{max_tokens} (the longest, example {worst}, has {lengths[worst]} tokens): raise it")
    order = list(range(len(lengths)))
    random.Random(seed).shuffle(order)
    batches, current, used = [], [], 0
    for i in order:
        if current and used + lengths[i] > max_tokens:
            batches.append(current)
            current, used = [], 0
        current.append(i)
        used += lengths[i]
    return batches + ([current] if current else [])

