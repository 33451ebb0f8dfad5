"""The HF engine's KV cache: transformers' ``DynamicCache`` without a copy per token.

``DynamicCache`` appends each new token's keys and values with ``torch.cat``, which copies
the whole cache of every layer at every step: at 1,500 tokens of context that was 15% of
a 27M model's time per token on CPU, and on a GPU the copy grows with the batch while the
weights read per step do not. Here each layer writes into a buffer with room to spare
(rounded up to ``ROOM`` tokens) and hands attention a view of its filled part: the same
values in the same order, so logits are bitwise those of ``DynamicCache``. Cropping keeps
the buffer (the next tokens overwrite the dropped ones); selecting rows of a batch or
gathering columns copies, as it did before, and the next write moves the copy into a new
buffer.
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
    whose layers are ``GrowingLayer``, with the column and row moves the engine makes."""

    def __init__(self) -> None:
        super().__init__()
        self.layer_class_to_replicate = GrowingLayer

    def take_row(self, row: int, columns: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Copies of one row's keys and values at ``columns``, layer by layer."""
        out = []
        for layer in self.layers:
            assert layer.keys is not None and layer.values is not None
            where = torch.tensor(columns, dtype=torch.long, device=layer.keys.device)
            out.append((layer.keys[row].index_select(1, where),
                        layer.values[row].index_select(1, where)))  # fmt: skip
        return out

    def put_rows(self, rows: dict[int, list[tuple[torch.Tensor, torch.Tensor]]], batch: int) -> int:
        """Append columns that hold, right-aligned, each given row's keys and values (from
        ``take_row``); the other rows get zeros there, to be masked out. Returns how many
        columns were added."""
        saved = list(rows.values())
        width = max(layers[0][0].shape[1] for layers in saved)
        for i in range(len(saved[0])):
            keys, values = (like.new_zeros((batch, like.shape[0], width, like.shape[-1]))
                            for like in saved[0][i])  # [heads, tokens, head dim] each  # fmt: skip
            for row, layers in rows.items():
                key, value = layers[i]
                keys[row, :, width - key.shape[1] :] = key
                values[row, :, width - value.shape[1] :] = value
            self.update(keys, values, i)
        return width

    def gather_columns(self, index: torch.Tensor) -> None:
        """Keep the columns ``index[b]`` of each row ``b``, in that order (positions are
        in the keys already: a cached token may move to another column)."""
        for layer in self.layers:
            if layer.get_seq_length():
                keys, values = layer.keys, layer.values
                assert keys is not None and values is not None
                where = index.to(keys.device)[:, None, :, None]
                layer.keys = keys.gather(2, where.expand(-1, keys.shape[1], -1, keys.shape[-1]))
                layer.values = values.gather(
                    2, where.expand(-1, values.shape[1], -1, values.shape[-1])
                )
