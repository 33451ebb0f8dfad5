"""Safetensors model files read and written one tensor at a time, so that writing a model
(``selfee export merged``, the export at the end of ``selfee train``) holds a few tensors in
memory, not the model: a 13B model in bf16 is 26 GB (52 in fp32), more than many hosts that
fine-tune it have to spare.

The format is a little-endian u64 header length, a JSON header (each tensor's dtype, shape
and byte range; padded to 8 bytes), then the tensors' bytes in that order. The writer knows
every tensor's dtype and shape before it produces any, so it writes each header first and
streams the bytes after it. Sharded models are ``model-0000i-of-0000n.safetensors`` files
with ``model.safetensors.index.json``, as Hugging Face writes them.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
SHARD_BYTES = 5 * 2**30  # a file a resumable download or the Hub takes easily

# torch's name of a type: (safetensors' name, bytes per element)
DTYPES = {"float64": ("F64", 8), "float32": ("F32", 4), "float16": ("F16", 2),
          "bfloat16": ("BF16", 2), "int64": ("I64", 8), "int32": ("I32", 4), "int16": ("I16", 2),
          "int8": ("I8", 1), "uint8": ("U8", 1), "bool": ("BOOL", 1)}  # fmt: skip
TORCH_NAMES = {short: name for name, (short, _) in DTYPES.items()}


@dataclass(frozen=True)
class TensorEntry:
    """Where a tensor of a saved model is, and what it is."""

    name: str
    file: Path
    dtype: str  # torch's name: "bfloat16"
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * DTYPES[self.dtype][1]


def model_files(folder: Path) -> list[Path] | None:
    """A model folder's safetensors files (one, or the shards its index names); None when
    its weights are in another form (``pytorch_model.bin``)."""
    index = folder / INDEX_FILE
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            return [folder / name for name in dict.fromkeys(weight_map.values())]
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise ValueError(
                f"{index}: not a safetensors index ({type(e).__name__}: {e})"
            ) from None
    return [folder / SINGLE_FILE] if (folder / SINGLE_FILE).is_file() else None


def read_entries(files: Iterable[Path]) -> list[TensorEntry]:
    """Every tensor of these files, in file order, from their headers alone."""
    entries = []
    for file in files:
        with _opened(file) as f:
            for name in f.keys():
                part = f.get_slice(name)
                dtype = str(part.get_dtype())
                entries.append(TensorEntry(name, file, _torch_name(dtype), tuple(part.get_shape())))
    return entries


@contextmanager
def _opened(file: Path) -> Iterator[Any]:
    """A safetensors file opened for reading; one that is missing, cut short or not one
    at all is a ``ValueError`` naming it (a user's file, not a bug of ours)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(file, framework="pt") as f:
            yield f
    except (SafetensorError, OSError) as e:
        raise ValueError(f"{file}: not a readable safetensors file ({e})") from None


def _torch_name(safetensors_name: str) -> str:
    if safetensors_name not in TORCH_NAMES:
        raise ValueError(f"tensors of type {safetensors_name} are not supported here")
    return TORCH_NAMES[safetensors_name]


def saved_type(tensor_type: str, dtype: str) -> str:
    """The type a tensor is written in when a model is saved in ``dtype``: floating-point
    weights take it, other tensors (ids, masks) keep theirs. ``tensor_type``: torch's name,
    with or without its ``torch.`` prefix."""
    import torch

    name = tensor_type.removeprefix("torch.")
    return dtype if getattr(torch, name).is_floating_point else name


def read_tensor(entry: TensorEntry) -> Any:
    """One tensor, read from its file (the file is mapped only while it is read)."""
    with _opened(entry.file) as f:
        return f.get_tensor(entry.name)


def write_shards(
    folder: Path,
    layout: list[TensorEntry],
    produce: Callable[[TensorEntry], Any],
    shard_bytes: int = SHARD_BYTES,
) -> list[Path]:
    """The tensors ``layout`` lists (name, dtype, shape; ``file`` is ignored), each made by
    ``produce`` when its turn comes, written to ``folder`` in files of at most
    ``shard_bytes`` (a bigger tensor gets a file of its own)."""
    shards: list[list[TensorEntry]] = [[]]
    size = 0
    for entry in layout:
        if shards[-1] and size + entry.nbytes > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(entry)
        size += entry.nbytes
    count = len(shards)
    names = [SINGLE_FILE] if count == 1 else [
        f"model-{i:05d}-of-{count:05d}.safetensors" for i in range(1, count + 1)]  # fmt: skip
    for name, shard in zip(names, shards, strict=True):
        _write_file(folder / name, shard, produce)
    if count > 1:
        weight_map = {
            e.name: name for name, shard in zip(names, shards, strict=True) for e in shard
        }
        index = {
            "metadata": {"total_size": sum(e.nbytes for e in layout)},
            "weight_map": weight_map,
        }
        (folder / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    return [folder / name for name in names]


def _write_file(
    file: Path, entries: list[TensorEntry], produce: Callable[[TensorEntry], Any]
) -> None:
    import torch

    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for e in entries:
        header[e.name] = {"dtype": DTYPES[e.dtype][0], "shape": list(e.shape),
                          "data_offsets": [offset, offset + e.nbytes]}  # fmt: skip
        offset += e.nbytes
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # the tensors' bytes start 8-aligned
    with file.open("wb") as out:
        out.write(struct.pack("<Q", len(encoded)))
        out.write(encoded)
        for e in entries:
            tensor = produce(e)
            if (
                str(tensor.dtype).removeprefix("torch.") != e.dtype
                or tuple(tensor.shape) != e.shape
            ):
                raise ValueError(f"{e.name}: made {tensor.dtype} {tuple(tensor.shape)}, "
                                 f"planned {e.dtype} {e.shape}")  # fmt: skip
            out.write(tensor.contiguous().reshape(-1).view(torch.uint8).numpy().data)
