"""The final model: ZeRO shards consolidated into a Hugging Face directory.

``zero_to_fp32`` gathers the fp32 master weights from every rank's shards (ZeRO-2 or 3),
lazily: each weight is gathered, cast and written to safetensors before the next
(``selfee.export.shards``): the model is never whole in host memory in the saved type, and
from ZeRO-3 not in fp32 either (each weight is read from the ranks' memory-mapped files;
DeepSpeed gathers ZeRO-1/2 checkpoints into one fp32 vector, its format for those stages).
Beside them: the config and generation config ``save_pretrained`` writes, the tokenizer and
``selfee.json`` (prompt format, objective, hashes of data and config). The checkpoint files
are our own, written by this job.

An adapter run's checkpoints hold the adapter's weights only: they are saved as peft's
adapter files without building the base (``selfee.adapter.write_adapter_files``), and for
a merged export folded into the base one tensor at a time (``selfee.export.merged``): the
export of a LoRA run on a 13B base never holds the base in host memory.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from selfee.adapter import write_adapter_files
from selfee.export.merged import write_merged
from selfee.export.shards import TensorEntry, saved_type, write_shards
from selfee.model_spec import PROMPT_FORMAT, model_config, write_metadata
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
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    # lazy: ZeRO-3's weights are gathered one at a time from the ranks' memory-mapped files
    state = get_fp32_state_dict_from_zero_checkpoint(
        str(checkpoint_dir), tag=DS_TAG, exclude_frozen_parameters=adapter is not None,
        lazy_mode=adapter is None,
    )  # fmt: skip
    meta = {"prompt_format": PROMPT_FORMAT, "dtype": dtype, **metadata}
    if adapter is not None:
        return export_adapter(state, spec, tokenizer, Path(output), meta, adapter)
    with atomic_directory(output) as staging:
        write_full_model(state, spec, staging, dtype)
        tokenizer.save_pretrained(staging)
        write_metadata(staging, meta)
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
            write_metadata(staging, meta)
        return output
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{output.name}-adapter-", dir=output.parent) as tmp:
        write_adapter_files(state, adapter, base, Path(tmp), "float32")
        tokenizer.save_pretrained(tmp)
        write_merged(Path(tmp), output, meta["dtype"], meta=meta)
    return output


def write_full_model(state: dict[str, Any], spec: dict[str, Any], folder: Path, dtype: str) -> None:
    """Each weight gathered, cast and written before the next (``selfee.export.shards``),
    with the config ``save_pretrained`` writes: the model is never whole in host memory in
    ``dtype`` (nor, from ZeRO-3, in fp32)."""
    import torch
    from transformers import AutoModelForCausalLM

    config = model_config(spec)
    config.use_cache = True
    with torch.device("meta"):  # its names, config and generation config; no weights
        model = AutoModelForCausalLM.from_config(config)
    expected = set(model.state_dict())
    tied = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
    missing, unexpected = expected - set(state) - tied, set(state) - expected
    if missing or unexpected:
        raise RuntimeError(
            f"checkpoint does not match the model: missing {sorted(missing)[:5]}, "
            f"unexpected {sorted(unexpected)[:5]}"
        )

    layout = [TensorEntry(name, Path(), saved_type(str(state[name].dtype), dtype),
                          tuple(state[name].shape))
              for name in state if name not in tied]  # fmt: skip
    write_shards(folder, layout,
                 lambda e: state[e.name].contiguous().to(getattr(torch, e.dtype)))  # fmt: skip
    model.config.architectures = [type(model).__name__]
    model.config.dtype = dtype
    model.config.save_pretrained(folder)
    if model.can_generate():
        model.generation_config.save_pretrained(folder)
