"""Delta weights: how SelFee's released weights are restored from LLaMA, and made for
publishing.

``apply``: output = base + delta, where the base first gains zero rows for the tokens the
delta's tokenizer added (SelFee added ``[PAD]`` to LLaMA's 32000). ``make`` is the inverse:
delta = target - base (padded the same way). Tensors are read one at a time from
safetensors files (or ``.bin`` files, loaded with ``weights_only=True``), so restoring a 13B
model needs memory for one output shard, not for three models.

``make`` stores deltas in a wider float than the weights (fp32 for fp16/bf16 weights,
fp64 for fp32) and checks that ``apply`` gives back every tensor bit for bit.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from selfee.adapter import is_adapter
from selfee.records import atomic_directory

DELTA_FILE = "selfee-delta.json"
WEIGHT_SUFFIXES = (".safetensors", ".bin")
SKIPPED_BASE_TENSORS = ("rotary_emb.inv_freq",)  # old LLaMA conversions stored a buffer
SHARD_BYTES = 2 * 1024**3


class DeltaError(ValueError):
    """Models that do not fit together; the message says which tensor and why."""


class WeightReader:
    """The tensors of a Hugging Face model directory, read on demand."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        if is_adapter(self.folder):
            raise DeltaError(
                f"{self.folder} is a LoRA adapter: it already is a small delta on its base "
                "(share the adapter directory as it is; its base is named in "
                "adapter_config.json), and a weight delta needs a full model (selfee export merged)"
            )
        if not (self.folder / "config.json").is_file():
            raise DeltaError(f"{self.folder}: not a Hugging Face model directory (no config.json)")
        self.where: dict[str, Path] = {}
        for file in self._weight_files():
            for name in self._names(file):
                self.where[name] = file
        if not self.where:
            raise DeltaError(f"{self.folder}: no weights (*.safetensors or *.bin)")
        self._bin_cache: tuple[Path, dict[str, Any]] | None = None

    def _weight_files(self) -> list[Path]:
        for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
            index = self.folder / index_name
            if index.is_file():
                files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
                return [self.folder / f for f in files]
        for single in ("model.safetensors", "pytorch_model.bin"):
            if (self.folder / single).is_file():
                return [self.folder / single]
        return []

    def _names(self, file: Path) -> list[str]:
        if file.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(file), framework="pt") as f:
                return list(f.keys())
        return list(self._load_bin(file))

    def _load_bin(self, file: Path) -> dict[str, Any]:
        if self._bin_cache is None or self._bin_cache[0] != file:
            import torch

            self._bin_cache = (file, torch.load(file, map_location="cpu", weights_only=True))
        return self._bin_cache[1]

    def names(self) -> list[str]:
        return list(self.where)

    def get(self, name: str) -> Any:
        file = self.where[name]
        if file.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(file), framework="pt") as f:
                return f.get_tensor(name)
        return self._load_bin(file)[name]


class ShardWriter:
    """Writes tensors into safetensors shards of at most ``SHARD_BYTES``, plus the index."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.shards: list[dict[str, Any]] = [{}]
        self.sizes = [0]
        self.written: list[tuple[str, list[str]]] = []

    def add(self, name: str, tensor: Any) -> None:
        size = tensor.numel() * tensor.element_size()
        if self.sizes[-1] and self.sizes[-1] + size > SHARD_BYTES:
            self._flush()
        self.shards[-1][name] = tensor.contiguous()
        self.sizes[-1] += size

    def _flush(self) -> None:
        from safetensors.torch import save_file

        part = len(self.written) + 1
        file = f"model-{part:05d}.safetensors"
        save_file(self.shards[-1], str(self.folder / file), metadata={"format": "pt"})
        self.written.append((file, list(self.shards[-1])))
        self.shards[-1], self.sizes[-1] = {}, 0

    def close(self) -> None:
        if self.shards[-1]:
            self._flush()
        if len(self.written) == 1:
            os.replace(self.folder / self.written[0][0], self.folder / "model.safetensors")
            return
        total = len(self.written)
        weight_map = {}
        for n, (file, names) in enumerate(self.written, 1):
            final = f"model-{n:05d}-of-{total:05d}.safetensors"
            os.replace(self.folder / file, self.folder / final)
            weight_map.update(dict.fromkeys(names, final))
        index = {"metadata": {}, "weight_map": weight_map}
        (self.folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))


def _pad_rows(base: Any, rows: int) -> Any:
    """The base tensor with zero rows appended up to ``rows`` (new vocabulary entries)."""
    import torch

    if base.shape[0] == rows:
        return base
    pad = torch.zeros((rows - base.shape[0], *base.shape[1:]), dtype=base.dtype)
    return torch.cat([base, pad])


def _check_shapes(name: str, base: Any, other: Any) -> None:
    fits = base.shape == other.shape or (
        base.ndim == other.ndim
        and base.shape[1:] == other.shape[1:]
        and base.shape[0] < other.shape[0]
    )
    if not fits:
        raise DeltaError(
            f"{name}: base has shape {tuple(base.shape)}, the other model {tuple(other.shape)} "
            "(is this the right base model?)"
        )


def _pairs(base: WeightReader, other: WeightReader) -> Iterator[tuple[str, Any, Any]]:
    missing = [n for n in other.names() if n not in base.where]
    if missing:
        raise DeltaError(f"the base model lacks {len(missing)} tensors, e.g. {missing[0]}")
    extra = [
        n for n in base.names() if n not in other.where and not n.endswith(SKIPPED_BASE_TENSORS)
    ]
    if extra:
        raise DeltaError(
            f"the base model has {len(extra)} tensors the other lacks, e.g. {extra[0]}"
        )
    for name in other.names():
        b, o = base.get(name), other.get(name)
        _check_shapes(name, b, o)
        yield name, _pad_rows(b, o.shape[0]) if b.ndim else b, o


def _copy_model_files(source: Path, staging: Path) -> None:
    """Config, tokenizer and generation files: everything that is not a weight."""
    for item in source.iterdir():
        weight = item.name.endswith(WEIGHT_SUFFIXES) or item.name.endswith(".index.json")
        if item.is_file() and not weight and item.name != DELTA_FILE:
            shutil.copy2(item, staging / item.name)


def apply_delta(base: str | Path, delta: str | Path, output: str | Path) -> dict[str, Any]:
    import torch

    base_w, delta_w = WeightReader(base), WeightReader(delta)
    info_file = Path(delta) / DELTA_FILE
    info = json.loads(info_file.read_text()) if info_file.is_file() else {}
    count = 0
    with atomic_directory(output) as staging:
        writer = ShardWriter(staging)
        for name, b, d in _pairs(base_w, delta_w):
            wanted = info.get("dtypes", {}).get(name)
            writer.add(name, (b.to(d.dtype) + d).to(getattr(torch, wanted) if wanted else d.dtype))
            count += 1
        writer.close()
        _copy_model_files(Path(delta), staging)
    return {"tensors": count, "output": str(output)}


def make_delta(base: str | Path, target: str | Path, output: str | Path) -> dict[str, Any]:
    import torch

    base_w, target_w = WeightReader(base), WeightReader(target)
    dtypes: dict[str, str] = {}
    inexact = 0
    with atomic_directory(output) as staging:
        writer = ShardWriter(staging)
        for name, b, t in _pairs(base_w, target_w):
            wide = torch.float64 if t.dtype in (torch.float32, torch.float64) else torch.float32
            d = t.to(wide) - b.to(wide)
            inexact += int((((b.to(wide) + d).to(t.dtype)) != t).sum())
            writer.add(name, d)
            dtypes[name] = str(t.dtype).removeprefix("torch.")
        writer.close()
        _copy_model_files(Path(target), staging)
        info = {"base": str(base), "dtypes": dtypes, "inexact_elements": inexact}
        (staging / DELTA_FILE).write_text(json.dumps(info, indent=1) + "\n")
    return {
        "tensors": len(dtypes),
        "inexact_elements": inexact,
        "output": str(output),
    }
