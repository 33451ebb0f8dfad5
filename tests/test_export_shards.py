"""Safetensors files written one tensor at a time (``selfee.export.shards``): what the
safetensors library and transformers read back is what was produced, in the planned files,
and a tensor that is not what the plan said stops the write."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from selfee.export.shards import (
    INDEX_FILE,
    SINGLE_FILE,
    TensorEntry,
    model_files,
    read_entries,
    read_tensor,
    write_shards,
)


def tensors() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {
        "a.weight": torch.randn(3, 5),
        "b.weight": torch.randn(7, 2).to(torch.bfloat16),
        "c.half": torch.randn(4).half(),
        "d.ids": torch.arange(6, dtype=torch.int64).reshape(2, 3),
        "e.mask": torch.tensor([True, False, True]),
        "f.scalar": torch.tensor(2.5),
        "g.empty": torch.zeros(0, 4),
    }


def layout(made: dict[str, torch.Tensor]) -> list[TensorEntry]:
    return [TensorEntry(name, Path(), str(t.dtype).removeprefix("torch."), tuple(t.shape))
            for name, t in made.items()]  # fmt: skip


def test_one_file_reads_back_as_written(tmp_path: Path) -> None:
    made = tensors()
    produced = []

    def produce(entry: TensorEntry) -> torch.Tensor:
        produced.append(entry.name)
        return made[entry.name]

    files = write_shards(tmp_path, layout(made), produce)
    assert files == [tmp_path / SINGLE_FILE] and not (tmp_path / INDEX_FILE).exists()
    assert produced == list(made)  # each made once, in order
    back = load_file(tmp_path / SINGLE_FILE)
    assert back.keys() == made.keys()
    for name, tensor in made.items():
        assert back[name].dtype == tensor.dtype and torch.equal(back[name], tensor), name
    # and our reader: headers alone, then one tensor
    entries = read_entries(model_files(tmp_path) or [])
    assert [(e.name, e.dtype, e.shape) for e in entries] == [
        (e.name, e.dtype, e.shape) for e in layout(made)]  # fmt: skip
    assert torch.equal(read_tensor(entries[1]), made["b.weight"])


def test_shards_split_by_size_with_an_index(tmp_path: Path) -> None:
    made = tensors()
    # at most 60 bytes a file: a (60) alone, b + c (28 + 8; d would make 84), d + e + f + g
    files = write_shards(tmp_path, layout(made), lambda e: made[e.name], shard_bytes=60)
    assert [f.name for f in files] == [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    index = json.loads((tmp_path / INDEX_FILE).read_text())
    assert index["metadata"]["total_size"] == sum(
        t.numel() * t.element_size() for t in made.values()
    )
    assert index["weight_map"] == {"a.weight": files[0].name, "b.weight": files[1].name,
                                   "c.half": files[1].name, "d.ids": files[2].name,
                                   "e.mask": files[2].name, "f.scalar": files[2].name,
                                   "g.empty": files[2].name}  # fmt: skip
    assert model_files(tmp_path) == files
    for file in files:
        with safe_open(file, framework="pt") as f:
            for name in f.keys():
                assert torch.equal(f.get_tensor(name), made[name])


def test_a_tensor_unlike_its_plan_stops_the_write(tmp_path: Path) -> None:
    made = tensors()
    plan = layout(made)
    with pytest.raises(
        ValueError, match=r"b.weight: made torch.float32 \(7, 2\), planned bfloat16"
    ):
        write_shards(tmp_path, plan, lambda e: made[e.name].float())


def test_a_sharded_model_loads_in_transformers(tmp_path: Path) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, tie_word_embeddings=False)  # fmt: skip
    model = LlamaForCausalLM(config).eval()
    model.save_pretrained(tmp_path / "whole")
    state = load_file(tmp_path / "whole" / SINGLE_FILE)
    out = tmp_path / "sharded"
    out.mkdir()
    files = write_shards(out, layout(state), lambda e: state[e.name], shard_bytes=20_000)
    assert len(files) > 2
    (out / "config.json").write_text((tmp_path / "whole" / "config.json").read_text())
    ids = torch.tensor([[1, 5, 9, 11]])
    with torch.no_grad():
        again = LlamaForCausalLM.from_pretrained(out).eval()
        assert torch.equal(again(ids).logits, model(ids).logits)


def test_a_file_cut_short_is_named_in_one_error(tmp_path: Path) -> None:
    made = tensors()
    [file] = write_shards(tmp_path, layout(made), lambda e: made[e.name])
    file.write_bytes(file.read_bytes()[:-10])
    with pytest.raises(ValueError, match=rf"{file}: not a readable safetensors file"):
        read_entries([file])
    (tmp_path / INDEX_FILE).write_text("{not json")
    with pytest.raises(ValueError, match=rf"{tmp_path / INDEX_FILE}: not a safetensors index"):
        model_files(tmp_path)
