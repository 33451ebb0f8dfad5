"""Delta weights: make → apply gives back identical tensors; SelFee's [PAD] row; bad bases."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import LlamaConfig, LlamaForCausalLM

from selfee.cli import main
from selfee.train.delta import DeltaError, WeightReader, apply_delta, make_delta


def tiny(vocab: int, seed: int, dtype: torch.dtype = torch.float32) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=False,
    )  # fmt: skip
    return LlamaForCausalLM(config).to(dtype)


def fine_tuned(base: LlamaForCausalLM, seed: int) -> LlamaForCausalLM:
    """The base grown by one token ([PAD]) and nudged, as SelFee's fine-tuning did."""
    torch.manual_seed(seed)
    model = tiny(base.config.vocab_size + 1, seed=seed, dtype=base.dtype)
    with torch.no_grad():
        for p, q in zip(model.parameters(), base.parameters(), strict=True):
            rows = q.shape[0]
            p[:rows] = q + 0.01 * torch.randn_like(q)
    return model


def tensors(folder: Path) -> dict[str, torch.Tensor]:
    reader = WeightReader(folder)
    return {name: reader.get(name) for name in reader.names()}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_make_then_apply_gives_back_identical_tensors(tmp_path: Path, dtype: torch.dtype) -> None:
    base = tiny(100, seed=0, dtype=dtype)
    target = fine_tuned(base, seed=1)
    base.save_pretrained(tmp_path / "base")
    target.save_pretrained(tmp_path / "target")

    made = make_delta(tmp_path / "base", tmp_path / "target", tmp_path / "delta")
    assert made["inexact_elements"] == 0
    apply_delta(tmp_path / "base", tmp_path / "delta", tmp_path / "restored")

    want, got = tensors(tmp_path / "target"), tensors(tmp_path / "restored")
    assert want.keys() == got.keys()
    for name in want:
        assert got[name].dtype == want[name].dtype, name
        assert torch.equal(got[name], want[name]), name
    restored = LlamaForCausalLM.from_pretrained(tmp_path / "restored")
    assert restored.config.vocab_size == 101


def test_apply_adds_the_pad_row_as_zero_then_the_delta(tmp_path: Path) -> None:
    """An upstream-style delta (fp16 tensors, no selfee metadata): output = padded base + delta."""
    base = tiny(100, seed=0, dtype=torch.float16)
    base.save_pretrained(tmp_path / "base")
    delta = tiny(101, seed=5, dtype=torch.float16)
    delta.save_pretrained(tmp_path / "delta")
    assert main(
        ["delta", "apply", "--base", str(tmp_path / "base"), "--delta", str(tmp_path / "delta"),
         "--output", str(tmp_path / "out")]
    ) == 0  # fmt: skip
    out = load_file(tmp_path / "out" / "model.safetensors")
    d = delta.state_dict()
    emb = "model.embed_tokens.weight"
    assert torch.equal(out[emb][100], d[emb][100])  # the [PAD] row: 0 + delta
    assert torch.equal(out[emb][:100], base.state_dict()[emb] + d[emb][:100])
    assert (tmp_path / "out" / "config.json").is_file()


def test_a_base_that_does_not_fit_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    tiny(100, seed=0).save_pretrained(tmp_path / "base")
    other = LlamaForCausalLM(
        LlamaConfig(vocab_size=101, hidden_size=48, intermediate_size=64, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=4)
    )  # fmt: skip
    other.save_pretrained(tmp_path / "delta")
    with pytest.raises(DeltaError, match="right base model"):
        apply_delta(tmp_path / "base", tmp_path / "delta", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    code = main(["delta", "make", "--base", str(tmp_path / "nothing"), "--target",
                 str(tmp_path / "delta"), "--output", str(tmp_path / "d")])  # fmt: skip
    assert code == 1
    assert "not a Hugging Face model directory" in capsys.readouterr().err
