"""``selfee export merged``: a LoRA adapter folded into its base, saved as a full Hugging
Face model. An adapter-only export (``lora.export: adapter``) is small and runs on its base
on the HF engine and vLLM; the merged model is what the delta commands need (the GGUF
export merges an adapter itself, into a folder it removes after), and what vLLM runs
fastest (it applies an adapter at every layer of every step: ``bench/vllm_lora.py``). The
weights are the base's, in the base's own type by default.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from selfee.adapter import AdapterError, adapter_base, is_adapter, load_merged
from selfee.errors import ConfigError
from selfee.export.config import ExportMergedConfig
from selfee.records import atomic_directory
from selfee.train.export import METADATA_FILE, PROMPT_FORMAT

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
    if output.exists() and any(output.iterdir()) and not cfg.overwrite:
        raise ConfigError(f"--output {output} exists: give a new folder, or --overwrite")
    return write_merged(adapter, output, cfg.dtype)


def write_merged(adapter: Path, output: Path, dtype: str = "auto") -> dict[str, Any]:
    """The adapter folded into its base, written to ``output`` (replaced whole, or left as
    it was if this fails)."""
    import torch

    from selfee.tokenizer import load_tokenizer

    base = adapter_base(adapter)
    dtype = base_dtype(base) if dtype == "auto" else dtype
    tokenizer = load_tokenizer(adapter)
    model = load_merged(adapter, tokenizer, getattr(torch, dtype))
    meta_file = adapter / METADATA_FILE
    meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
    meta |= {"prompt_format": meta.get("prompt_format", PROMPT_FORMAT), "dtype": dtype,
             "merged_from": str(adapter.resolve())}  # fmt: skip
    meta["adapter"] = {**meta.get("adapter", {"kind": "lora"}), "export": "merged"}
    with atomic_directory(output) as staging:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        (staging / METADATA_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return {"model": str(output), "base": str(base), "dtype": dtype,
            "parameters": sum(p.numel() for p in model.parameters())}  # fmt: skip
