"""The HF engine's KV cache: transformers' ``DynamicCache`` without a copy per token.

``DynamicCache`` appends each new token's keys and values with ``torch.cat``, which copies
the whole cache of every layer at every step: at 1,500 tokens of context that was 15% of
a 27M model's time per token on CPU, and on a GPU the copy grows with the batch while the
weights read per step do not. Here each layer writes into a buffer with room to spare
(rounded up to ``ROOM`` tokens) and hands attention a view of its filled part: the same
values in the same order, so logits are bitwise those of ``DynamicCache``. Cropping keeps
the buffer (the next tokens overwrite the dropped ones); selecting rows of a batch copies,
as it did before, and the next write moves the copy into a new buffer.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

ROOM = 256  # tokens a buffer grows by at a time: a copy of the cache every ROOM tokens


class GrowingLayer(DynamicLayer):
    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        super().lazy_initialization(key_states, value_states)
        self._key_buffer: torch.Tensor | None = None
        self._value_buffer: torch.Tensor | None = None

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: object, **kwargs: object
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        length = self.get_seq_length()
        end = length + key_states.shape[-2]
        if not self._holds(end, key_states.shape[0]):
            self._key_buffer = _buffer(self.keys, key_states, length, end)
            self._value_buffer = _buffer(self.values, value_states, length, end)
        assert self._key_buffer is not None and self._value_buffer is not None
        self._key_buffer[..., length:end, :] = key_states
        self._value_buffer[..., length:end, :] = value_states
        self.keys = self._key_buffer[..., :end, :]
        self.values = self._value_buffer[..., :end, :]
        return self.keys, self.values

    def _holds(self, end: int, batch: int) -> bool:
        """Whether the buffer has room for ``end`` tokens of this batch and the cached
        tokens are (a cropped view of) it, not a copy made by selecting rows."""
        buffer = self._key_buffer
        if buffer is None or buffer.shape[-2] < end or buffer.shape[0] != batch:
            return False
        return self.get_seq_length() == 0 or self.keys.data_ptr() == buffer.data_ptr()


def _buffer(cached: torch.Tensor, new: torch.Tensor, length: int, end: int) -> torch.Tensor:
    """A buffer for ``end`` tokens and some room, holding the first ``length`` cached ones."""
    room = -(-end // ROOM) * ROOM
    buffer = new.new_empty((*new.shape[:-2], room, new.shape[-1]))
    if length:
        buffer[..., :length, :] = cached
    return buffer


class GrowingCache(DynamicCache):
    """A ``DynamicCache`` (no config: every layer full attention, as the engine used it)
    whose layers are ``GrowingLayer``."""

    def __init__(self) -> None:
        super().__init__()
        self.layer_class_to_replicate = GrowingLayer
