"""The SFT set: chain files, exact label masking, the tiny tokenizer, batching, DS config."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from selfee import chain
from selfee.testing.chains import make_chains
from selfee.tokenizer import SELFEE_PHRASES, train_tiny_tokenizer
from selfee.train import sft
from selfee.train.deepspeed_config import fill_deepspeed_config, load_deepspeed_config

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def chains() -> list[dict]:
    return make_chains(24, revisions=2)


@pytest.fixture(scope="module")
def tokenizer(chains: list[dict]):
    texts = [sft.chain_text(c) for c in chains]
    return train_tiny_tokenizer(texts, vocab_size=400)


def test_upstream_released_data_reads_without_id_or_dataset(
    reference: Path, tmp_path: Path
) -> None:
    rows, skipped = sft.read_chains(reference / "augmented" / "conala_sample.jsonl")
    assert len(rows) == 30 and skipped == 0
    assert "id" not in rows[0] and "dataset" not in rows[0]
    as_array = tmp_path / "released.json"  # upstream also released one JSON array
    as_array.write_text(json.dumps(rows))
    assert sft.read_chains(as_array)[0] == rows


def test_error_rows_are_skipped_and_bad_rows_named(tmp_path: Path) -> None:
    rows = make_chains(3)
    rows[1] = {**rows[1], "outputs": [], "error": "teacher failed"}
    path = tmp_path / "chains.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    kept, skipped = sft.read_chains(path)
    assert [r["id"] for r in kept] == ["c0", "c2"] and skipped == 1

    rows[1] = {**rows[1], "error": None, "outputs": [{"output": "x"}]}
    path.write_text("\n".join(json.dumps(r) for r in rows))
    with pytest.raises(sft.ChainFileError, match="chain 2: outputs\\[0\\] needs"):
        sft.read_chains(path)
    with pytest.raises(sft.ChainFileError, match="no such chain file"):
        sft.read_chains(tmp_path / "missing.jsonl")


def test_segments_join_to_prompt_plus_selfee_target(chains: list[dict]) -> None:
    for c in chains:
        text = sft.chain_text(c)
        assert text == chain.render_prompt(c["instruction"], c["input"]) + chain.render_target(
            c["outputs"]
        )
        parsed = chain.parse(text)
        assert parsed.outputs == [o["output"] for o in c["outputs"]]


def test_tiny_tokenizer_round_trips_and_keeps_selfee_phrases_whole(tokenizer) -> None:
    samples = [
        "### Feedback 12:\nScore: 7. Revision is not needed.",
        "naïve café — 東京 🙂\n\n\tcode:  x = [i**2 for i in range(3)]  ",
        "words never seen in training: zyxwvut qqq",
    ]
    for text in samples:
        ids = tokenizer(text).input_ids
        assert ids[0] == tokenizer.bos_token_id and len(ids) > 1
        assert tokenizer.decode(ids, skip_special_tokens=True) == text
    for phrase in SELFEE_PHRASES:
        assert len(tokenizer(phrase, add_special_tokens=False).input_ids) == 1, phrase


def test_labels_are_ignored_exactly_on_prompt_tokens(tokenizer, chains: list[dict]) -> None:
    for c in chains:
        example = sft.tokenize_chain(tokenizer, c)
        prompt = chain.render_prompt(c["instruction"], c["input"])
        n_prompt = len(tokenizer(prompt).input_ids)
        assert example.labels[:n_prompt] == [sft.IGNORE] * n_prompt
        assert example.labels[n_prompt:] == example.input_ids[n_prompt:]
        assert example.input_ids[-1] == tokenizer.eos_token_id
        target = tokenizer.decode(example.input_ids[n_prompt:-1])
        assert target == chain.render_target(c["outputs"])


def test_loss_switches_and_answer_only(tokenizer, chains: list[dict]) -> None:
    c = chains[0]
    no_feedback = sft.tokenize_chain(tokenizer, c, loss_on=["answer", "revision"])
    kept = tokenizer.decode([t for t in no_feedback.labels if t != sft.IGNORE])
    assert "Revision is needed." not in kept and "### Feedback" not in kept
    assert "### Revision" in kept and c["outputs"][0]["output"] in kept
    assert no_feedback.labels[-1] == sft.IGNORE  # EOS follows the last feedback

    answer_only = sft.tokenize_chain(tokenizer, c, objective="answer-only")
    kept = tokenizer.decode([t for t in answer_only.labels if t != sft.IGNORE])
    assert kept == c["outputs"][0]["output"] + tokenizer.eos_token


def test_over_length_examples_truncate_or_drop(tokenizer, chains: list[dict]) -> None:
    full = sft.tokenize_chain(tokenizer, chains[0])
    limit = len(full.input_ids) - 5
    cut = sft.tokenize_chain(tokenizer, chains[0], max_context=limit)
    assert cut.status == "truncated" and cut.input_ids == full.input_ids[:limit]
    assert sft.tokenize_chain(tokenizer, chains[0], max_context=limit, overflow="drop").status == (
        "dropped"
    )
    assert (
        sft.tokenize_chain(tokenizer, chains[0], max_context=16).status == "dropped"
    )  # prompt only


def test_collate_pads_with_ignored_labels_and_no_attention(tokenizer, chains: list[dict]) -> None:
    examples = [sft.tokenize_chain(tokenizer, c) for c in chains[:3]]
    batch = sft.collate([(e.input_ids, e.labels) for e in examples], tokenizer.pad_token_id)
    width = batch["input_ids"].shape[1]
    assert width % 8 == 0 and width >= max(len(e.input_ids) for e in examples)
    for row, e in enumerate(examples):
        n = len(e.input_ids)
        assert batch["input_ids"][row, :n].tolist() == e.input_ids
        assert batch["labels"][row, :n].tolist() == e.labels
        assert batch["labels"][row, n:].eq(sft.IGNORE).all()
        assert batch["attention_mask"][row, :n].eq(1).all()
        assert batch["attention_mask"][row, n:].eq(0).all()
        assert batch["input_ids"][row, n:].eq(tokenizer.pad_token_id).all()


def test_length_grouping_wastes_less_than_random_batches() -> None:
    rng = random.Random(1)
    lengths = [rng.randint(20, 2000) for _ in range(4000)]
    grouped = sft.length_grouped_batches(lengths, 8, seed=0)
    shuffled = sft.random_batches(lengths, 8, seed=0)
    for batches in (grouped, shuffled):  # every example exactly once
        assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    assert sft.padding_efficiency(grouped, lengths) > 0.95
    assert sft.padding_efficiency(shuffled, lengths) < 0.7
    assert sft.length_grouped_batches(lengths, 8, seed=0) == grouped  # seeded
    assert sft.length_grouped_batches(lengths, 8, seed=1) != grouped


def test_ranks_training_side_by_side_get_the_same_amount_of_work() -> None:
    """At every micro-step the ranks' micro-batches are cut from alike slots: the slowest
    rank (the one everyone waits for at the gradient reduction) is barely slower."""
    rng = random.Random(2)
    lengths = [rng.randint(20, 2000) for _ in range(1003)]
    micro, world = 4, 2

    def straggling(plan: list[list[list[int]]]) -> float:
        """Mean over micro-steps of (slowest rank's padded tokens / the mean rank's)."""
        steps = list(zip(*plan, strict=True))
        cost = [[len(b) * max(lengths[i] for i in b) for b in step] for step in steps]
        return sum(max(c) / (sum(c) / world) for c in cost) / len(cost)

    balanced = sft.deal_units(lengths, world, "length-grouped").epoch_plan(micro, 0)
    assert len(balanced[0]) == len(balanced[1])
    trained = [i for mine in balanced for b in mine for i in b]
    assert len(trained) == len(set(trained)) == len(lengths) - 1  # 1003 = 2 x 501 + 1 left out
    assert all(sum(len(b) < micro for b in mine) == 1 for mine in balanced)  # 501 = 125 x 4 + 1
    assert sft.padding_efficiency([b for mine in balanced for b in mine], lengths) > 0.95
    one = sft.make_batches(lengths, micro, 0, "length-grouped")  # one rank's plan, dealt
    unaware = [one[rank::world] for rank in range(world)]
    unaware = [mine[: len(unaware[-1])] for mine in unaware]
    assert straggling(unaware) > 1.3
    assert straggling(balanced) < 1.02


def test_each_rank_reads_only_its_shard_and_trains_each_example_once_an_epoch() -> None:
    rng = random.Random(0)
    for n, world, micro, grouping in [(100, 2, 4, "length-grouped"), (97, 3, 5, "random"),
                                      (40, 4, 1, "length-grouped"), (300, 3, 2, "packed")]:  # fmt: skip
        lengths = [rng.randint(5, 300) for _ in range(n)]
        deal = sft.deal_units(lengths, world, grouping, 512)
        shards = [deal.shard(rank) for rank in range(world)]
        assert sorted(i for shard in shards for i in shard) == list(range(n))  # no overlap
        tokens = [sum(lengths[i] for i in shard) for shard in shards]
        assert max(tokens) - min(tokens) <= (512 if grouping == "packed" else 300)  # one unit
        left_out = []
        for epoch in range(4):
            plan = deal.epoch_plan(micro, epoch)
            assert len({len(mine) for mine in plan}) == 1  # the same micro-steps on every rank
            for rank, mine in enumerate(plan):
                assert {i for b in mine for i in b} <= set(shards[rank])  # its own shard only
            trained = [i for mine in plan for b in mine for i in b]
            assert len(trained) == len(set(trained))  # once
            missing = set(range(n)) - set(trained)
            units = len(deal.units)
            assert len(missing) <= (world - 1) * (300 if grouping == "packed" else 1) and (
                units % world or not missing
            )
            left_out.append(missing)
            again = sft.deal_units(lengths, world, grouping, 512).epoch_plan(micro, epoch)
            assert plan == again  # seeded
        if any(left_out):  # a different unit left out each epoch
            assert len({frozenset(m) for m in left_out}) > 1


def test_deepspeed_configs_fill_auto_values() -> None:
    for stage in (2, 3):
        raw = load_deepspeed_config(REPO / "configs" / "deepspeed" / f"zero{stage}.json")
        filled = fill_deepspeed_config(
            raw, micro_batch_size=4, accumulation=8, world_size=4, bf16=True, max_grad_norm=1.0
        )
        assert filled["zero_optimization"]["stage"] == stage
        assert filled["train_batch_size"] == 128 and filled["gradient_accumulation_steps"] == 8
        assert filled["bf16"]["enabled"] is True
        assert "auto" not in json.dumps(filled)
    with pytest.raises(ValueError, match="train_batch_size=64 but the run needs 128"):
        fill_deepspeed_config(
            {**raw, "train_batch_size": 64},
            micro_batch_size=4, accumulation=8, world_size=4, bf16=False, max_grad_norm=1.0,
        )  # fmt: skip
