"""``selfee export merged``: a LoRA adapter folded into its base, saved as a full Hugging
Face model. An adapter-only export (``lora.export: adapter``) is small and runs on its base
on the HF engine and vLLM; the merged model is what the delta commands need (the GGUF
export merges an adapter itself, into a folder it removes after), and what vLLM runs
fastest (it applies an adapter at every layer of every step: ``bench/vllm_lora.py``). The
weights are the base's, in the base's own type by default.

A plain LoRA adapter (what ``selfee train`` writes, and most adapters are) is merged one
tensor at a time from the base's safetensors files to the output's (``selfee.export.shards``):
each adapted weight becomes ``W + (alpha / r) * B @ A`` as peft computes it, and the host
holds one tensor, not the model. Anything else peft can do to a base (DoRA, per-module
ranks, modules saved whole, a ``pytorch_model.bin`` base, ...) goes through peft's own
merge, with the base in memory.
"""

from __future__ import annotations

import json
import math
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from selfee.adapter import AdapterError, adapter_base, adapter_config, is_adapter, load_merged
from selfee.errors import ConfigError
from selfee.export.config import ExportMergedConfig
from selfee.export.shards import (
    SHARD_BYTES,
    TensorEntry,
    model_files,
    read_entries,
    read_tensor,
    saved_type,
    write_shards,
)
from selfee.model_spec import METADATA_FILE, PROMPT_FORMAT, write_metadata
from selfee.records import atomic_directory

SAVED_TYPES = ("float32", "bfloat16", "float16")


def base_dtype(base: Path) -> str:
    """The type a base's weights are saved in (its config's ``dtype``), else float32."""
    try:
        config = json.loads((base / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "float32"
    saved = str(config.get("dtype") or config.get("torch_dtype") or "float32")
    return saved if saved in SAVED_TYPES else "float32"


def merge_adapter(cfg: ExportMergedConfig) -> dict[str, Any]:
    """``selfee export merged``: the checks a user's paths need, then ``write_merged``."""
    adapter = Path(cfg.model)
    if not adapter.is_dir():
        raise ConfigError(f"--model {adapter}: no such folder")
    if not is_adapter(adapter):
        raise ConfigError(f"--model {adapter} is not a LoRA adapter (no adapter_config.json): "
                          "it already is a full model")  # fmt: skip
    try:
        base = adapter_base(adapter)
    except AdapterError as e:
        raise ConfigError(f"--model {e}") from None
    output = Path(cfg.output)
    if output.resolve() in (adapter.resolve(), base.resolve()):
        raise ConfigError(f"--output {output} is the adapter or its base: give a new folder")
    if output.exists() and not output.is_dir():
        raise ConfigError(f"--output {output} is a file: give a folder")
    if output.exists() and any(output.iterdir()) and not cfg.overwrite:
        raise ConfigError(f"--output {output} exists: give a new folder, or --overwrite")
    return write_merged(adapter, output, cfg.dtype)


def write_merged(adapter: Path, output: Path, dtype: str = "auto",
                 shard_bytes: int = SHARD_BYTES, meta: dict[str, Any] | None = None
                 ) -> dict[str, Any]:  # fmt: skip
    """The adapter folded into its base, written to ``output`` (replaced whole, or left as
    it was if this fails). ``merge`` in the result says how: ``streamed`` (one tensor at a
    time) or why peft merged it in memory. ``meta``: the merged model's ``selfee.json``
    (default: the adapter's, saying it was merged from it)."""
    from selfee.tokenizer import load_tokenizer

    base = adapter_base(adapter)
    dtype = base_dtype(base) if dtype == "auto" else dtype
    tokenizer = load_tokenizer(adapter)
    meta = merged_metadata(adapter, dtype) if meta is None else meta
    plan = streamed_merge_plan(adapter, base, tokenizer)
    with atomic_directory(output) as staging:
        if isinstance(plan, MergePlan):
            parameters = write_streamed(plan, staging, dtype, shard_bytes)
            how = "streamed"
        else:
            parameters = write_in_memory(adapter, tokenizer, staging, dtype)
            how = f"in memory (peft): {plan}"
        tokenizer.save_pretrained(staging)
        write_metadata(staging, meta)
    return {"model": str(output), "base": str(base), "dtype": dtype, "parameters": parameters,
            "merge": how}  # fmt: skip


def merged_metadata(adapter: Path, dtype: str) -> dict[str, Any]:
    meta_file = adapter / METADATA_FILE
    meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
    meta |= {"prompt_format": meta.get("prompt_format", PROMPT_FORMAT), "dtype": dtype,
             "merged_from": str(adapter.resolve())}  # fmt: skip
    meta["adapter"] = {**meta.get("adapter", {"kind": "lora"}), "export": "merged"}
    return meta


def write_in_memory(adapter: Path, tokenizer: Any, folder: Path, dtype: str) -> int:
    import torch

    model = load_merged(adapter, tokenizer, getattr(torch, dtype))
    model.save_pretrained(folder, safe_serialization=True)
    return sum(p.numel() for p in model.parameters())


# peft settings a plain LoRA merge (W + scale * B @ A, nothing else) may have at any value
PLAIN_SETTINGS = {"base_model_name_or_path", "peft_type", "task_type", "peft_version", "r",
                  "lora_alpha", "use_rslora", "lora_dropout", "target_modules", "exclude_modules",
                  "layers_to_transform", "layers_pattern", "inference_mode", "revision",
                  "auto_mapping", "megatron_core", "qalora_group_size"}  # fmt: skip
# initializations that leave the base as it is (PiSSA, OLoRA, LoftQ, ... change it)
PLAIN_INITS = (True, False, "gaussian")
ADAPTER_KEY = re.compile(r"base_model\.model\.(.+)\.lora_([AB])\.weight")


@dataclass
class MergePlan:
    """What a streamed merge writes: the base's tensors in order, each adapted weight's
    update, and the embedding rows the run's vocabulary adds (zero, as training has them)."""

    base: Path
    tensors: list[TensorEntry]
    updates: dict[str, tuple[str, str]]  # weight name -> its lora_A and lora_B in the adapter
    adapter_file: Path
    scale: float
    grown_rows: dict[str, int] = field(default_factory=dict)  # embedding weight -> rows added
    config: dict[str, Any] = field(default_factory=dict)  # the merged model's config.json


def streamed_merge_plan(adapter: Path, base: Path, tokenizer: Any) -> MergePlan | str:
    """The plan of a merge one tensor at a time, or why this adapter needs peft's merge."""
    settings = adapter_config(adapter)
    odd = sorted(key for key, value in settings.items()
                 if key not in PLAIN_SETTINGS and value not in (None, False, "none", {}, [])
                 and not (key == "init_lora_weights" and value in PLAIN_INITS))  # fmt: skip
    if settings.get("peft_type") != "LORA" or odd:
        return f"its adapter_config sets {', '.join(odd) or 'peft_type ' + str(settings.get('peft_type'))}"
    files = model_files(base)
    config = json.loads((base / "config.json").read_text(encoding="utf-8"))
    if files is None:
        return "the base's weights are not in safetensors files"
    if config.get("quantization_config"):
        return "the base is quantized"
    adapter_file = adapter / "adapter_model.safetensors"
    if not adapter_file.is_file():
        return "the adapter's weights are not in adapter_model.safetensors"
    tensors = read_entries(files)
    shapes = {t.name: t.shape for t in tensors}
    pairs: dict[str, dict[str, tuple[int, ...]]] = {}
    for entry in read_entries([adapter_file]):
        match = ADAPTER_KEY.fullmatch(entry.name)
        if match is None:
            return f"the adapter holds {entry.name}, not a LoRA A or B weight"
        pairs.setdefault(match[1], {})[match[2]] = entry.shape
    rank = int(settings["r"])
    updates = {}
    for module, pair in pairs.items():
        weight = f"{module}.weight"
        a, b = pair.get("A", (0, 0)), pair.get("B", (0, 0))
        if shapes.get(weight) != (b[0], a[1]) or (a[0], b[1]) != (rank, rank):
            return f"{module}'s update does not fit a weight of the base"
        updates[weight] = (f"base_model.model.{module}.lora_A.weight",
                           f"base_model.model.{module}.lora_B.weight")  # fmt: skip
    grown = grown_embeddings(base, len(tokenizer) - int(config["vocab_size"]), shapes)
    if isinstance(grown, str):
        return grown
    scale = settings["lora_alpha"] / (math.sqrt(rank) if settings.get("use_rslora") else rank)
    config = {**config, "vocab_size": max(config["vocab_size"], len(tokenizer))}
    if tokenizer.pad_token_id is not None:
        config["pad_token_id"] = tokenizer.pad_token_id
    return MergePlan(base, tensors, updates, adapter_file, scale, grown, config)


def grown_embeddings(base: Path, added: int, shapes: dict[str, tuple[int, ...]]
                     ) -> dict[str, int] | str:  # fmt: skip
    """The embedding weights that get ``added`` zero rows for the tokens a run added (its
    ``[PAD]``), named as the base's architecture names them (a model on the meta device)."""
    if added <= 0:
        return {}
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(base))
    names = {id(module): name for name, module in model.named_modules()}
    grown = {}
    for module in (model.get_input_embeddings(), model.get_output_embeddings()):
        weight = f"{names.get(id(module), '?')}.weight"
        if module is not None and weight in shapes:
            grown[weight] = added
    if f"{names.get(id(model.get_input_embeddings()))}.weight" not in grown:
        return "the base's embeddings are not where its architecture puts them"
    return grown


def write_streamed(plan: MergePlan, folder: Path, dtype: str, shard_bytes: int) -> int:
    """Each tensor read, updated, cast and written before the next is read."""
    import torch
    from safetensors.torch import load_file

    lora = load_file(plan.adapter_file)  # MBs: the low-rank weights only
    by_name = {t.name: t for t in plan.tensors}

    def produce(out: TensorEntry) -> Any:
        tensor = read_tensor(by_name[out.name])
        if out.name in plan.updates:
            a, b = plan.updates[out.name]
            update = lora[b].float() @ lora[a].float()
            tensor = tensor.float().add_(update.mul_(plan.scale))  # peft's order of operations
        if out.name in plan.grown_rows:
            zeros = tensor.new_zeros((plan.grown_rows[out.name], *tensor.shape[1:]))
            tensor = torch.cat([tensor, zeros])
        return tensor.to(getattr(torch, out.dtype))

    layout = [TensorEntry(t.name, t.file, saved_type(t.dtype, dtype),
                          (t.shape[0] + plan.grown_rows.get(t.name, 0), *t.shape[1:]))
              for t in plan.tensors]  # fmt: skip
    write_shards(folder, layout, produce, shard_bytes)
    config = {**plan.config, "dtype": dtype}
    config.pop("torch_dtype", None)
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    if (plan.base / "generation_config.json").is_file():
        shutil.copy(plan.base / "generation_config.json", folder / "generation_config.json")
    return sum(math.prod(t.shape) for t in layout)
