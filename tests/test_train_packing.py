"""Sample packing: full rows, the planned rows rebuilt from a micro-batch, examples kept apart."""

from __future__ import annotations

import random

import pytest
import torch

from selfee.model_spec import build_model, tiny_llama_config
from selfee.testing.chains import make_chains
from selfee.tokenizer import train_tiny_tokenizer
from selfee.train import packing, sft


def test_rows_hold_every_example_once_and_are_nearly_full() -> None:
    rng = random.Random(0)
    lengths = [rng.randint(20, 700) for _ in range(3000)]
    rows = packing.pack_rows(lengths, 1024)
    assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
    fills = [sum(lengths[i] for i in row) for row in rows]
    assert max(fills) <= 1024
    assert sum(lengths) / (1024 * len(rows)) > 0.98  # first-fit decreasing packs tight
    with pytest.raises(ValueError, match="longer than the row width 100"):
        packing.pack_rows([50, 101], 100)


def test_a_micro_batch_splits_back_into_its_planned_rows() -> None:
    """The plan is a flat list of examples per micro-batch: next-fit on it must rebuild the
    rows first-fit decreasing made, on every micro-batch of every rank's plan."""
    rng = random.Random(1)
    lengths = [rng.randint(5, 600) for _ in range(1500)]
    rows = {tuple(row) for row in packing.pack_rows(lengths, 1024)}
    for world, micro, seed in [(1, 4, 0), (2, 2, 1), (3, 1, 2)]:
        plan = sft.deal_units(lengths, world, "packed", 1024).epoch_plan(micro, seed)
        planned = []
        for batch in (b for mine in plan for b in mine):
            split = packing.split_rows([lengths[i] for i in batch], 1024)
            planned += [tuple(batch[k] for k in row) for row in split]
            assert len(split) <= micro
        assert set(planned) <= rows and len(planned) == len(set(planned))
        assert len(planned) > len(rows) - world  # a rank with one row more leaves one out
    # the same rows every epoch (packed once): only their order changes
    deal = sft.deal_units(lengths, 2, "packed", 1024)
    one, two = (deal.epoch_plan(4, s) for s in (0, 1))
    assert len(one[0]) == len(two[0]) and one != two


def test_packing_computes_on_fewer_pad_tokens_than_length_grouping() -> None:
    rng = random.Random(2)
    lengths = [rng.randint(20, 1000) for _ in range(2000)]
    grouped = sft.make_batches(lengths, 8, 0, "length-grouped")
    packed = sft.make_batches(lengths, 4, 0, "packed", 1024)
    assert sft.padding_efficiency(packed, lengths, 8, 1024) > 0.97
    assert sft.padding_efficiency(packed, lengths, 8, 1024) > sft.padding_efficiency(
        grouped, lengths, 8
    )
    with pytest.raises(ValueError, match="row width"):
        sft.make_batches(lengths, 4, 0, "packed")


def test_packed_examples_are_kept_apart_exactly() -> None:
    """Each example's logits in a packed row equal its logits alone, and the packed batch's
    loss is the token-weighted mean of the examples' own losses."""
    chains = make_chains(12, revisions=2)
    tokenizer = train_tiny_tokenizer([sft.chain_text(c) for c in chains], vocab_size=400)
    width = 512
    tiny = {"hidden_size": 64, "num_layers": 2, "num_heads": 4, "intermediate_size": 128}
    config = tiny_llama_config({**tiny, "vocab_size": 400}, tokenizer, width)
    model = build_model({"kind": "tiny", "config": config}, seed=0).eval()
    model.config.use_cache = False  # as the training loop sets it
    examples = [sft.tokenize_chain(tokenizer, c, max_context=width) for c in chains]
    pairs = [(e.input_ids, e.labels) for e in examples]

    batch = sft.collate(pairs, tokenizer.pad_token_id, pack_width=width)
    assert "attention_mask" not in batch
    rows = packing.split_rows([len(ids) for ids, _ in pairs], width)
    assert len(rows) < len(pairs)  # several examples share a row
    with torch.no_grad():
        packed = model(**batch)
        alone = [model(input_ids=torch.tensor([ids]), labels=torch.tensor([labs]))
                 for ids, labs in pairs]  # fmt: skip
    loss_sum = tokens = 0.0
    for r, row in enumerate(rows):
        start = 0
        for k in row:
            n = len(pairs[k][0])
            assert batch["position_ids"][r, start : start + n].tolist() == list(range(n))
            assert batch["labels"][r, start] == sft.IGNORE
            torch.testing.assert_close(
                packed.logits[0 + r, start : start + n], alone[k].logits[0], atol=1e-5, rtol=0
            )
            trained = sum(1 for label in pairs[k][1][1:] if label != sft.IGNORE)
            loss_sum += float(alone[k].loss) * trained
            tokens += trained
            start += n
    assert float(packed.loss) == pytest.approx(loss_sum / tokens, rel=1e-5)
