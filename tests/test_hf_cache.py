"""The HF engine's KV cache writes into room it keeps, and gives the logits
transformers' ``DynamicCache`` gives, bitwise, through everything the engine does to it."""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM

from selfee.engines import hf_cache
from selfee.engines.hf_cache import GrowingCache


@pytest.fixture(scope="module")
def model() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)  # fmt: skip
    return LlamaForCausalLM(config).eval()


def steps(model: LlamaForCausalLM, cache: DynamicCache) -> tuple[list[torch.Tensor], list[int]]:
    """What the engine does: prefill two rows (one padded on the left), decode, crop the
    tail, decode again, swap the rows, decode; the logits of every step and where the
    first layer's keys lived after each."""
    logits, places = [], []
    mask = torch.tensor([[0, 0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 1]])

    def feed(ids: torch.Tensor) -> None:
        nonlocal mask
        if cache.get_seq_length():  # the prefill's columns are in the mask already
            mask = torch.cat([mask, torch.ones_like(ids)], dim=1)
        positions = (mask.cumsum(1) - 1).clamp(min=0)[:, -ids.shape[1] :]
        out = model(input_ids=ids, attention_mask=mask, position_ids=positions,
                    past_key_values=cache, use_cache=True)  # fmt: skip
        logits.append(out.logits[:, -1])
        places.append(cache.layers[0].keys.data_ptr())

    with torch.inference_mode():
        feed(torch.randint(0, 97, (2, 7), generator=torch.Generator().manual_seed(1)))
        for _ in range(20):
            feed(logits[-1].argmax(-1, keepdim=True))
        cache.crop(-5)
        mask = mask[:, :-5]
        for _ in range(6):
            feed(logits[-1].argmax(-1, keepdim=True))
        cache.batch_select_indices(torch.tensor([1, 0]))
        mask = mask[[1, 0]]
        feed(logits[-1].argmax(-1, keepdim=True).flip(0))  # the last logits in the old order
        for _ in range(3):
            feed(logits[-1].argmax(-1, keepdim=True))
    return logits, places


def test_the_logits_are_dynamic_caches_bitwise(model, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hf_cache, "ROOM", 8)  # grow often: every 8 tokens
    expected, _ = steps(model, DynamicCache())
    got, places = steps(model, GrowingCache())
    assert len(got) == len(expected) == 31
    for want, have in zip(expected, got, strict=True):
        assert torch.equal(want, have)
    # no copy per token: a new buffer only when the room is used up (7 + 20 tokens in
    # rooms of 8: 4 buffers), none after the crop, one for the rows' copy after the swap
    assert len(set(places[:21])) == 4 and places[21:27] == [places[20]] * 6
    assert places[27] != places[26] and len(set(places[27:])) == 1
