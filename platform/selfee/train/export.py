"""The final model: ZeRO shards consolidated into a Hugging Face directory.

``zero_to_fp32`` gathers the fp32 master weights from every rank's shards (ZeRO-2 or 3);
they are loaded into a model built on the meta device (no second copy in memory) and
saved as safetensors with the tokenizer and ``selfee.json`` (prompt format, objective,
hashes of data and config). The checkpoint files are our own, written by this job.

An adapter run's checkpoints hold the adapter's weights only: they go onto the base (read
from its directory) wrapped as in training, then either merged into it and saved as a full
model, or saved alone (``selfee.adapter``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from selfee.adapter import load_adapter_weights, save_adapter, wrap_for_training
from selfee.model_spec import build_model, model_config
from selfee.records import atomic_directory
from selfee.train.deepspeed_config import use_cpu_accelerator_unless_cuda
from selfee.train.loop import DS_TAG

METADATA_FILE = "selfee.json"
PROMPT_FORMAT = "selfee"  # selfee.chain: '### Answer:' / '### Feedback k:' / '### Revision k:'


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
    model = full_model(state, spec) if adapter is None else adapted_model(state, spec, adapter)
    keep_adapter = adapter is not None and adapter["export"] == "adapter"
    if adapter is not None and not keep_adapter:
        model = model.merge_and_unload()
    model.to(getattr(torch, dtype))

    with atomic_directory(output) as staging:
        if keep_adapter:
            save_adapter(model, staging)
        else:
            model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        meta = {"prompt_format": PROMPT_FORMAT, "dtype": dtype, **metadata}
        if adapter is not None:
            meta["adapter"] = {"kind": adapter["kind"], "export": adapter["export"]}
        (staging / METADATA_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return Path(output)


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


def adapted_model(state: dict[str, Any], spec: dict[str, Any], adapter: dict[str, Any]) -> Any:
    """The base from its directory (full precision, also for QLoRA), wrapped as in
    training, with the checkpoint's adapter weights."""
    model = wrap_for_training(build_model(spec, seed=0), adapter, quantized=False,
                              checkpointing=False)  # fmt: skip
    load_adapter_weights(model, state)
    model.config.use_cache = True
    return model
