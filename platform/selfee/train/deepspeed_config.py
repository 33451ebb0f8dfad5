"""The DeepSpeed config a run trains under: a shipped or given JSON file, its ``auto``
values filled from the run's settings, and DeepSpeed's accelerator on CPU machines.
(The models themselves: ``selfee.model_spec``.)"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

DS_AUTO_KEYS = (
    "train_micro_batch_size_per_gpu",
    "gradient_accumulation_steps",
    "train_batch_size",
    "gradient_clipping",
)


SHIPPED_DEEPSPEED = ("zero1", "zero2", "zero3")  # inside the package: found from any directory


def load_deepspeed_config(path: str | Path) -> dict[str, Any]:
    """A DeepSpeed JSON file, or the name of one the package ships (``zero1``, ``zero2``, ``zero3``)."""
    path = Path(path)
    if not path.is_file() and str(path) in SHIPPED_DEEPSPEED:
        path = Path(__file__).with_name("deepspeed") / f"{path}.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"DeepSpeed config {path} not found (give a JSON file, or "
            f"{' / '.join(SHIPPED_DEEPSPEED)} for the ones the package ships)"
        )
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"DeepSpeed config {path} is not valid JSON: {e}") from None


def fill_deepspeed_config(
    raw: dict[str, Any],
    *,
    micro_batch_size: int,
    accumulation: int,
    world_size: int,
    bf16: bool,
    max_grad_norm: float,
) -> dict[str, Any]:
    """Replace the ``auto`` values with the run's numbers; other ``auto`` values are errors."""
    config = json.loads(json.dumps(raw))
    values = {
        "train_micro_batch_size_per_gpu": micro_batch_size,
        "gradient_accumulation_steps": accumulation,
        "train_batch_size": micro_batch_size * accumulation * world_size,
        "gradient_clipping": max_grad_norm,
    }
    for key, value in values.items():
        if config.get(key, "auto") == "auto":
            config[key] = value
        elif config[key] != value:
            raise ValueError(
                f"DeepSpeed config sets {key}={config[key]} but the run needs {value}; "
                'write "auto" there and set it in the training config'
            )
    config.setdefault("bf16", {})
    if config["bf16"].get("enabled", "auto") == "auto":
        config["bf16"]["enabled"] = bf16
    left = _auto_keys(config)
    if left:
        raise ValueError(f"DeepSpeed config: no value for 'auto' at {', '.join(left)}")
    return config


def _auto_keys(node: Any, prefix: str = "") -> list[str]:
    if isinstance(node, dict):
        return [k for key, v in node.items() for k in _auto_keys(v, f"{prefix}{key}.")]
    return [prefix.rstrip(".")] if node == "auto" else []


def zero_stage(config: dict[str, Any]) -> int:
    return int(config.get("zero_optimization", {}).get("stage", 0))


def use_cpu_accelerator_unless_cuda() -> None:
    """DeepSpeed picks its accelerator at import; without CUDA it must be told 'cpu'."""
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
