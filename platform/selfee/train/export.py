"""The final model: ZeRO shards consolidated into a Hugging Face directory.

``zero_to_fp32`` gathers the fp32 master weights from every rank's shards (ZeRO-2 or 3);
they are loaded into a model built on the meta device (no second copy in memory) and
saved as safetensors with the tokenizer and ``selfee.json`` (prompt format, objective,
hashes of data and config). The checkpoint files are our own, written by this job.

An adapter run's checkpoints hold the adapter's weights only: they are saved as peft's
adapter files without building the base (``selfee.adapter.write_adapter_files``), and for
a merged export folded into the base one tensor at a time (``selfee.export.merged``): the
export of a LoRA run on a 13B base never holds the base in host memory.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from selfee.adapter import write_adapter_files
from selfee.export.merged import write_merged
from selfee.model_spec import METADATA_FILE, PROMPT_FORMAT, model_config
from selfee.records import atomic_directory
from selfee.train.deepspeed_config import use_cpu_accelerator_unless_cuda
from selfee.train.loop import DS_TAG


def export_model(
    checkpoint_dir: str | Path,
    spec: dict[str, Any],
    tokenizer: Any,
    output: str | Path,
    metadata: dict[str, Any],
    dtype: str = "float32",
    adapter: dict[str, Any] | None = None,
) -> Path:
    """``adapter``: the run's adapter settings (``{"kind": ..., **LoraSettings}``)."""
    use_cpu_accelerator_unless_cuda()
    import torch
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    state = get_fp32_state_dict_from_zero_checkpoint(
        str(checkpoint_dir), tag=DS_TAG, exclude_frozen_parameters=adapter is not None
    )
    meta = {"prompt_format": PROMPT_FORMAT, "dtype": dtype, **metadata}
    if adapter is not None:
        return export_adapter(state, spec, tokenizer, Path(output), meta, adapter)
    model = full_model(state, spec).to(getattr(torch, dtype))
    with atomic_directory(output) as staging:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        (staging / METADATA_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return Path(output)


def export_adapter(state: dict[str, Any], spec: dict[str, Any], tokenizer: Any, output: Path,
                   meta: dict[str, Any], adapter: dict[str, Any]) -> Path:  # fmt: skip
    """The adapter alone, or merged into its base (through an adapter folder beside the
    output, removed after)."""

    meta = {**meta, "adapter": {"kind": adapter["kind"], "export": adapter["export"]}}
    base = Path(spec["path"])
    if adapter["export"] == "adapter":
        with atomic_directory(output) as staging:
            write_adapter_files(state, adapter, base, staging, meta["dtype"])
            tokenizer.save_pretrained(staging)
            (staging / METADATA_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        return output
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{output.name}-adapter-", dir=output.parent) as tmp:
        write_adapter_files(state, adapter, base, Path(tmp), "float32")
        tokenizer.save_pretrained(tmp)
        write_merged(Path(tmp), output, meta["dtype"], meta=meta)
    return output


def full_model(state: dict[str, Any], spec: dict[str, Any]) -> Any:
    """Built on the meta device and given the checkpoint's tensors: no second copy."""
    import torch
    from transformers import AutoModelForCausalLM

    config = model_config(spec)
    config.use_cache = True
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    tied = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
    if unexpected or set(missing) - tied:
        raise RuntimeError(
            f"checkpoint does not match the model: missing {sorted(missing)[:5]}, "
            f"unexpected {sorted(unexpected)[:5]}"
        )
    if tied:
        model.tie_weights()
    return model
