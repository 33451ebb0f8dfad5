"""The SFT set: chains → (input_ids, labels) in the exact SelFee format, and batching.

A chain renders as prompt + answer + (feedback k, revision k)... + EOS (``selfee.chain``).
Labels are -100 on the prompt, on padding and on any segment whose loss is switched off;
everything else is the token itself (the model shifts labels internally). Which segment a
token belongs to is read from the tokenizer's character offsets of the whole text, so the
tokens are exactly those the model sees at inference, where it continues the prompt.

Batches are length-grouped: shuffle, cut into mega-chunks, sort each chunk by length, cut
into micro-batches, shuffle those. Upstream padded random batches to their longest member.
Every rank computes the same seeded plan from the examples' lengths alone and reads from
the set only its own shard, for the whole run (``deal_units``, ``RankDeal``).
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from selfee import chain
from selfee.records import read_rows
from selfee.train import packing

Objective = Literal["full", "answer-only"]
SEGMENT_KINDS = ("answer", "feedback", "revision")
IGNORE = -100
MEGA_CHUNK = 64  # micro-batches per sorted chunk: big enough to group, small enough to mix


class ChainFileError(ValueError):
    """A chain file that cannot be used; the message names the file and the row."""


def read_chains(path: str | Path) -> tuple[list[dict[str, Any]], int]:
    """Chain rows of a JSONL/Parquet file or a JSON array (upstream's released data), and
    how many were skipped because the augmentation marked them with an error."""
    path = Path(path)
    if not path.is_file():
        raise ChainFileError(f"{path}: no such chain file")
    if path.suffix == ".json":
        try:
            rows = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ChainFileError(f"{path} is not valid JSON: {e.msg} (line {e.lineno})") from None
        except UnicodeDecodeError as e:
            raise ChainFileError(f"{path} is not UTF-8 text (at byte {e.start})") from None
        if not isinstance(rows, list):
            raise ChainFileError(f"{path}: expected a JSON array of chains")
    else:
        try:
            rows = read_rows(path)
        except ValueError as e:
            raise ChainFileError(str(e)) from None
    kept = [row for row in rows if not (isinstance(row, dict) and row.get("error"))]
    for n, row in enumerate(kept, 1):
        problem = _chain_problem(row)
        if problem:
            raise ChainFileError(f"{path}: chain {n}: {problem}")
    return kept, len(rows) - len(kept)


def _chain_problem(row: Any) -> str | None:
    if not isinstance(row, dict):
        return "not a JSON object"
    if not isinstance(row.get("instruction"), str) or not row["instruction"].strip():
        return "no instruction"
    outputs = row.get("outputs")
    if not isinstance(outputs, list) or not outputs:
        return "no outputs (a chain needs at least the initial answer and its feedback)"
    for k, step in enumerate(outputs):
        if not isinstance(step, dict) or not all(
            isinstance(step.get(key), str) for key in ("output", "feedback")
        ):
            return f"outputs[{k}] needs the strings 'output' and 'feedback'"
    return None


def chain_segments(row: dict[str, Any], objective: Objective) -> list[tuple[str, str]]:
    """(kind, text) pieces whose concatenation is prompt + SelFee target (without EOS)."""
    segments = [("prompt", chain.render_prompt(row["instruction"], row.get("input") or ""))]
    outputs = row["outputs"]
    if objective == "answer-only":
        return [*segments, ("answer", outputs[0]["output"])]
    for k, step in enumerate(outputs):
        if k:
            segments.append(("revision", chain.revision_header(k) + step["output"]))
        else:
            segments.append(("answer", step["output"]))
        segments.append(("feedback", chain.feedback_header(k + 1) + step["feedback"]))
    return segments


def chain_text(row: dict[str, Any], objective: Objective = "full") -> str:
    """Prompt + SelFee target (without EOS): the text the model is trained on."""
    return "".join(text for _, text in chain_segments(row, objective))


@dataclass(frozen=True)
class Example:
    input_ids: list[int]
    labels: list[int]
    status: str  # "ok", "truncated" or "dropped"


def tokenize_chain(
    tokenizer: Any,
    row: dict[str, Any],
    *,
    objective: Objective = "full",
    loss_on: Iterable[str] = SEGMENT_KINDS,
    max_context: int = 2048,
    overflow: Literal["truncate", "drop"] = "truncate",
) -> Example:
    segments = chain_segments(row, objective)
    text = chain_text(row, objective)
    ends, at = [], 0
    for _, t in segments:
        at += len(t)
        ends.append(at)
    trainable = {kind for kind in loss_on}
    enc = tokenizer(text, return_offsets_mapping=True, add_special_tokens=True)
    ids: list[int] = list(enc["input_ids"])
    labels: list[int] = []
    segment = 0
    for token, (start, end) in zip(ids, enc["offset_mapping"], strict=True):
        if start == end:  # BOS and other added specials: never a target
            labels.append(IGNORE)
            continue
        while segment < len(ends) - 1 and start >= ends[segment]:
            segment += 1
        labels.append(token if segments[segment][0] in trainable else IGNORE)
    ids.append(tokenizer.eos_token_id)
    labels.append(tokenizer.eos_token_id if segments[-1][0] in trainable else IGNORE)
    status = "ok"
    if len(ids) > max_context:
        if overflow == "drop":
            return Example([], [], "dropped")
        ids, labels, status = ids[:max_context], labels[:max_context], "truncated"
    if all(label == IGNORE for label in labels):
        return Example([], [], "dropped")  # the prompt alone fills max_context
    return Example(ids, labels, status)


# --- batching ------------------------------------------------------------------------


def random_batches(lengths: Sequence[int], micro_batch_size: int, seed: int) -> list[list[int]]:
    """Upstream's batching: shuffled, each batch padded to its longest member."""
    order = list(range(len(lengths)))
    random.Random(seed).shuffle(order)
    return [order[i : i + micro_batch_size] for i in range(0, len(order), micro_batch_size)]


def length_grouped_batches(
    lengths: Sequence[int], micro_batch_size: int, seed: int
) -> list[list[int]]:
    """Shuffle, cut into mega-chunks, sort each by length, cut into micro-batches, shuffle."""
    rng = random.Random(seed)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    chunk = micro_batch_size * MEGA_CHUNK
    batches: list[list[int]] = []
    for i in range(0, len(order), chunk):
        part = sorted(order[i : i + chunk], key=lambda j: lengths[j], reverse=True)
        batches += [part[k : k + micro_batch_size] for k in range(0, len(part), micro_batch_size)]
    rng.shuffle(batches)
    return batches


# --- the ranks' shards and each epoch's plan -----------------------------------------


def batch_units(
    lengths: Sequence[int], grouping: str, pack_width: int | None = None
) -> list[list[int]]:
    """What micro-batches are made of: single examples, or packed rows of examples (packed
    once per run, in packing order, so every epoch has as many micro-batches as the first)."""
    if grouping != "packed":
        return [[i] for i in range(len(lengths))]
    if pack_width is None:
        raise ValueError("packed batches need the row width (the run's max_context)")
    return packing.pack_rows(lengths, pack_width)


@dataclass(frozen=True)
class RankDeal:
    """Which units (single examples, or packed rows) each rank holds for the whole run:
    made once per run (``deal_units``; packing is the costly part), planned each epoch."""

    grouping: str
    units: list[list[int]]  # each unit's example positions
    unit_lengths: list[int]
    held: list[list[int]]  # each rank's units, longest first

    def shard(self, rank: int) -> list[int]:
        """The examples ``rank`` reads from the set, once per run: its shard. Shards never
        overlap and together hold every example."""
        return sorted(i for u in self.held[rank] for i in self.units[u])

    def epoch_plan(self, micro_batch_size: int, seed: int) -> list[list[list[int]]]:
        """Every rank's micro-batches of one epoch (``seed``: the run's seed + the epoch), as
        example positions: ``plan[rank][j]``; each rank's come from its own shard only.

        Ranks train their j-th micro-batches side by side and wait for each other at every
        gradient reduction, so these are cut alike from slots: slot k holds the k-th longest
        unit of every rank, and the plan groups slots. A rank holding one unit more than the
        fewest leaves a different one out each epoch (seeded). ``packed``: micro-batches of
        ``micro_batch_size`` rows, listed row after row in packing order
        (``packing.split_rows`` rebuilds them); rows are grouped by their fill.
        """
        rng = random.Random(seed)
        fewest = min(len(mine) for mine in self.held)
        kept = []
        for mine in self.held:
            mine = list(mine)
            for _ in range(len(mine) - fewest):
                mine.pop(rng.randrange(len(mine)))
            kept.append(mine)
        slots = list(zip(*kept, strict=True))
        slot_lengths = [max(self.unit_lengths[u] for u in slot) for slot in slots]
        if self.grouping == "random":
            grouped = random_batches(slot_lengths, micro_batch_size, seed)
        else:
            grouped = length_grouped_batches(slot_lengths, micro_batch_size, seed)
        return [
            [[i for u in sorted(slots[s][rank] for s in batch) for i in self.units[u]]
             for batch in grouped]
            for rank in range(len(self.held))
        ]  # fmt: skip


def deal_units(
    lengths: Sequence[int], world_size: int, grouping: str, pack_width: int | None = None
) -> RankDeal:
    """The units of the run dealt to the ranks: one run sorted by length, round robin, so
    every rank holds the same mix of lengths."""
    units = batch_units(lengths, grouping, pack_width)
    unit_lengths = [sum(lengths[i] for i in u) for u in units]
    order = sorted(range(len(units)), key=lambda u: -unit_lengths[u])
    held = [order[rank::world_size] for rank in range(world_size)]
    return RankDeal(grouping, units, unit_lengths, held)


def make_batches(
    lengths: Sequence[int],
    micro_batch_size: int,
    seed: int,
    grouping: str,
    pack_width: int | None = None,
) -> list[list[int]]:
    """One rank's seeded micro-batch plan over all the examples."""
    return deal_units(lengths, 1, grouping, pack_width).epoch_plan(micro_batch_size, seed)[0]


def padded_length(longest: int, multiple: int) -> int:
    return -(-longest // multiple) * multiple


def padding_efficiency(
    batches: Iterable[Sequence[int]],
    lengths: Sequence[int],
    pad_to_multiple: int = 1,
    pack_width: int | None = None,
) -> float:
    """Real tokens / tokens the model computes on (padding included); ``pack_width``: the
    batches are packed rows (``collate`` with the same width)."""
    real = padded = 0
    for batch in batches:
        sizes = [lengths[i] for i in batch]
        rows = packing.split_rows(sizes, pack_width)
        longest = padded_length(max(sum(sizes[k] for k in row) for row in rows), pad_to_multiple)
        real += sum(sizes)
        padded += longest * len(rows)
    return real / padded if padded else 1.0


def collate(
    examples: Sequence[tuple[Sequence[int], Sequence[int]]],
    pad_id: int,
    pad_to_multiple: int = 8,
    pack_width: int | None = None,
) -> dict[str, Any]:
    """Right-padded tensors: padding has attention 0 and label -100.

    ``pack_width``: examples side by side in rows of that many tokens (``packing``): position
    ids restart with each example and there is no attention mask (transformers then keeps
    the examples apart); each example's first label and the padding are -100."""
    import torch

    sizes = [len(ids) for ids, _ in examples]
    rows = packing.split_rows(sizes, pack_width)
    fills = [sum(sizes[k] for k in row) for row in rows]
    width = padded_length(max(fills), pad_to_multiple)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    position_ids = torch.zeros((len(rows), width), dtype=torch.long) if pack_width else None
    for r, row in enumerate(rows):
        start = 0
        for k in row:
            ids, labs = examples[k]
            end = start + len(ids)
            input_ids[r, start:end] = torch.tensor(ids)
            labels[r, start:end] = torch.tensor(labs)
            if position_ids is not None:
                position_ids[r, start:end] = torch.arange(len(ids))
                labels[r, start] = IGNORE  # not predicted from the example before it
            start = end
        if position_ids is not None:  # the padding: a run of its own
            position_ids[r, start:] = torch.arange(width - start)
    if position_ids is not None:
        return {"input_ids": input_ids, "position_ids": position_ids, "labels": labels}
    attention = (torch.arange(width) < torch.tensor(fills)[:, None]).long()
    return {"input_ids": input_ids, "attention_mask": attention, "labels": labels}
