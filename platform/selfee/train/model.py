"""Models to fine-tune and the DeepSpeed config they train under.

``tiny``: a LLaMA-architecture model built from a config (random init) sized for a CPU.
Anything else: a Hugging Face causal-LM directory, grown by the tokens the run added
(SelFee added ``[PAD]`` to LLaMA; the new embedding rows start at zero, as in its delta
weights).
"""

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


def tiny_llama_config(tiny: dict[str, Any], tokenizer: Any, max_context: int) -> dict[str, Any]:
    """The LlamaConfig (as a dict, so it travels to workers and into the export)."""
    from transformers import LlamaConfig

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=tiny["hidden_size"],
        intermediate_size=tiny["intermediate_size"],
        num_hidden_layers=tiny["num_layers"],
        num_attention_heads=tiny["num_heads"],
        num_key_value_heads=tiny["num_heads"],
        max_position_embeddings=max_context,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    return config.to_dict()


def hf_spec(path: str | Path, tokenizer: Any) -> dict[str, Any]:
    """The spec of a Hugging Face base, grown to the run's tokenizer (its ``[PAD]``)."""
    return {"kind": "hf", "path": str(Path(path).resolve()), "vocab_size": len(tokenizer),
            "pad_token_id": tokenizer.pad_token_id}  # fmt: skip


def model_config(spec: dict[str, Any]) -> Any:
    """The transformers config of a model spec, with the run's vocabulary size."""
    from transformers import AutoConfig, LlamaConfig

    if spec["kind"] == "tiny":
        return LlamaConfig.from_dict(spec["config"])
    config = AutoConfig.from_pretrained(spec["path"])
    config.vocab_size = max(config.vocab_size, spec["vocab_size"])
    if spec.get("pad_token_id") is not None:
        config.pad_token_id = spec["pad_token_id"]
    return config


def build_model(spec: dict[str, Any], seed: int, quantized: bool = False) -> Any:
    """``quantized``: the base in 4 bits (NF4, bf16 compute) on this process's GPU, for
    QLoRA (bitsandbytes)."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaForCausalLM

    torch.manual_seed(seed)
    if spec["kind"] == "tiny":
        return LlamaForCausalLM(model_config(spec))
    load: dict[str, Any] = {"dtype": torch.float32}
    if quantized:
        from transformers import BitsAndBytesConfig

        load = {"dtype": torch.bfloat16, "device_map": {"": torch.cuda.current_device()},
                "quantization_config": BitsAndBytesConfig(
                    load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                    bnb_4bit_compute_dtype=torch.bfloat16)}  # fmt: skip
    model = AutoModelForCausalLM.from_pretrained(spec["path"], **load)
    old = model.get_input_embeddings().weight.shape[0]
    if spec["vocab_size"] > old:
        model.resize_token_embeddings(spec["vocab_size"], mean_resizing=False)
        with torch.no_grad():
            model.get_input_embeddings().weight[old:] = 0
            output = model.get_output_embeddings()
            if output is not None:
                output.weight[old:] = 0
    if spec.get("pad_token_id") is not None:
        model.config.pad_token_id = spec["pad_token_id"]
    return model


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
