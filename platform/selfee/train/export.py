"""The final model: ZeRO shards consolidated into a Hugging Face directory.

``zero_to_fp32`` gathers the fp32 master weights from every rank's shards (ZeRO-2 or 3);
they are loaded into a model built on the meta device (no second copy in memory) and
saved as safetensors with the tokenizer and ``selfee.json`` (prompt format, objective,
hashes of data and config). The checkpoint files are our own, written by this job.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from selfee.records import atomic_directory
from selfee.train.loop import DS_TAG
from selfee.train.model import model_config, use_cpu_accelerator_unless_cuda

METADATA_FILE = "selfee.json"
PROMPT_FORMAT = "selfee"  # selfee.chain: '### Answer:' / '### Feedback k:' / '### Revision k:'


def export_model(
    checkpoint_dir: str | Path,
    spec: dict[str, Any],
    tokenizer: Any,
    output: str | Path,
    metadata: dict[str, Any],
    dtype: str = "float32",
) -> Path:
    use_cpu_accelerator_unless_cuda()
    import torch
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    from transformers import AutoModelForCausalLM

    state = get_fp32_state_dict_from_zero_checkpoint(str(checkpoint_dir), tag=DS_TAG)
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
    model.to(getattr(torch, dtype))

    with atomic_directory(output) as staging:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        meta = {"prompt_format": PROMPT_FORMAT, "dtype": dtype, **metadata}
        (staging / METADATA_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return Path(output)
