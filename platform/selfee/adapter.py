"""LoRA and QLoRA adapters (peft): their settings, how training wraps a model in one, and
how an exported adapter is loaded for inference on top of its base.

An adapter directory, as ``selfee train`` exports it with ``lora.export: adapter``, holds
peft's ``adapter_config.json`` and ``adapter_model.safetensors`` (the low-rank weights
only), the run's tokenizer and ``selfee.json``; ``adapter_config.json`` names the base
model's directory. A base whose vocabulary the run grew (SelFee's ``[PAD]``) is grown the
same way when the adapter is loaded: the new embedding rows are zero and frozen in
training, so they are rebuilt, not stored. The HF engine folds an adapter into its base
as it loads; vLLM loads the base and applies the adapter to every request with its own
LoRA kernels (``selfee.engines.vllm.vllm_model``). ``lora.export: merged`` writes a full
Hugging Face model instead (base + adapter folded into the weights), which every engine
takes, llama.cpp's GGUF export too.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

ADAPTER_CONFIG = "adapter_config.json"
# Every linear layer of a LLaMA block, as QLoRA trains them (attention and MLP).
LLAMA_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class LoraSettings(BaseModel):
    """The low-rank update ``W + (alpha / rank) * B @ A`` on each target module."""

    model_config = ConfigDict(extra="forbid")

    rank: int = Field(16, ge=1, description="rank r of each update (trainable size grows with it)")
    alpha: float = Field(32.0, gt=0, description="scale: the update is multiplied by alpha / rank")
    dropout: float = Field(0.05, ge=0, lt=1, description="dropout on the adapter's input")
    target_modules: list[str] = Field(
        default_factory=lambda: list(LLAMA_LINEAR),
        min_length=1,
        description="module names that get an adapter (default: every linear layer of LLaMA)",
    )
    export: Literal["merged", "adapter"] = Field(
        "merged",
        description="'merged': a full model with the adapter folded in (every engine takes it); "
        "'adapter': the adapter alone (MBs), loaded on its base by infer, serve and eval",
    )


class AdapterError(ValueError):
    """An adapter directory that cannot be used as asked."""


def is_adapter(path: str | Path) -> bool:
    return (Path(path) / ADAPTER_CONFIG).is_file()


def adapter_config(path: str | Path) -> dict[str, Any]:
    """peft's settings of an adapter directory (rank, target modules, its base)."""
    file = Path(path) / ADAPTER_CONFIG
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise AdapterError(f"{file}: cannot read it ({e})") from None
    if not isinstance(config, dict):
        raise AdapterError(f"{file}: not a JSON object")
    return config


def adapter_base(path: str | Path) -> Path:
    """The base model directory an adapter was trained on (named in its config)."""
    path = Path(path)
    config = adapter_config(path)
    base = Path(str(config.get("base_model_name_or_path") or ""))
    if not (base / "config.json").is_file():
        raise AdapterError(
            f"{path} is a LoRA adapter whose base model {str(base) or '(not named)'} is not a "
            f"Hugging Face model directory here: put the base there, or set "
            f"base_model_name_or_path in {path / ADAPTER_CONFIG}"
        )
    return base


def base_of(model: str | Path) -> Path:
    """The base model directory ``model`` runs on: itself, or an adapter's base."""
    return adapter_base(model) if is_adapter(model) else Path(model)


def check_shared_base(model: str | Path, adapters: Mapping[str, Path]) -> None:
    """``adapters`` can be served beside ``model`` (a base, or an adapter on it): an
    ``AdapterError`` naming the one that is not an adapter, was trained on another base, or
    writes text with other token ids (one tokenizer serves them all)."""
    from transformers import AutoConfig

    base = base_of(model)
    rows = int(AutoConfig.from_pretrained(str(base)).vocab_size)
    vocabulary = _base_vocabulary(model, base, rows)
    for name, path in adapters.items():
        if not is_adapter(path):
            raise AdapterError(f"{name}: {path} is not a LoRA adapter (no {ADAPTER_CONFIG})")
        try:
            theirs = adapter_base(path)
        except AdapterError as e:
            raise AdapterError(f"{name}: {e}") from None
        if theirs.resolve() != base.resolve():
            raise AdapterError(
                f"{name}: {path} was trained on {theirs}, not on {base}: "
                "adapters run together share one base; run it on its own"
            )
        if _base_vocabulary(path, base, rows) != vocabulary:
            raise AdapterError(
                f"{name}: {path} has another tokenizer than {model} (the token ids "
                "differ): adapters run together share one; run it on its own"
            )


def _base_vocabulary(folder: str | Path, base: Path, rows: int) -> dict[str, int]:
    """The folder's tokenizer (the base's where it has none) on the ``rows`` ids the base
    model has rows for: tokens a run adds beyond them (its ``[PAD]``) are never written."""
    from selfee.tokenizer import raw_tokenizer

    folder = Path(folder)
    if not any((folder / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json")):
        folder = base
    vocab = raw_tokenizer(folder).get_vocab()
    return {token: i for token, i in vocab.items() if i < rows}


def load_side_by_side(base: Path, adapters: Mapping[str, Path], tokenizer: Any, dtype: Any) -> Any:
    """The base with several adapters beside each other, none merged: each row of a batch
    runs the one it names (peft's ``adapter_names``, ``"__base__"`` for none), so one base
    in memory serves them all. Keys: peft's names for them (no dots)."""
    from peft import PeftModel

    from selfee.model_spec import build_model, hf_spec

    model = build_model(hf_spec(base, tokenizer), seed=0, dtype=dtype)
    (first, path), *rest = adapters.items()
    model = PeftModel.from_pretrained(model, str(path), adapter_name=first)
    for name, path in rest:
        model.load_adapter(str(path), adapter_name=name)
    return model.eval()


def check_qlora_backend(use_gpu: bool) -> None:
    """QLoRA's 4-bit base needs bitsandbytes, and on a CPU a bitsandbytes with a CPU backend
    (0.50 has one; older releases are CUDA-only): said in one line before anything starts."""
    try:
        import bitsandbytes
    except ImportError:
        raise AdapterError(
            "adapter qlora loads the base in 4 bits with bitsandbytes, which is not installed: "
            "pip install 'selfee[qlora]' (or use adapter lora)"
        ) from None
    if use_gpu:
        return
    import torch

    try:  # the one operation a 4-bit base needs at load
        bitsandbytes.functional.quantize_4bit(torch.ones(64, 64, dtype=torch.bfloat16),
                                              quant_type="nf4")  # fmt: skip
    except Exception as e:
        raise AdapterError(
            f"adapter qlora on a CPU: bitsandbytes {bitsandbytes.__version__} cannot quantize "
            f"on CPUs ({type(e).__name__}); install bitsandbytes>=0.50, train on CUDA GPUs "
            "(use_gpu true), or use adapter lora"
        ) from None


def lora_config(lora: dict[str, Any], base: str | Path | None = None) -> Any:
    """peft's settings of our adapters, as training wraps a model and as the export saves
    them (``base``: the directory ``adapter_config.json`` names)."""
    from peft import LoraConfig

    return LoraConfig(r=lora["rank"], lora_alpha=lora["alpha"], lora_dropout=lora["dropout"],
                      target_modules=lora["target_modules"], task_type="CAUSAL_LM",
                      base_model_name_or_path=None if base is None else str(base))  # fmt: skip


def wrap_for_training(
    model: Any, lora: dict[str, Any], quantized: bool, checkpointing: bool
) -> Any:
    """The model with trainable LoRA weights; everything else frozen."""
    from peft import get_peft_model, prepare_model_for_kbit_training

    if quantized:  # QLoRA: norms in fp32, inputs that carry gradients through frozen 4-bit
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=checkpointing)
    return get_peft_model(model, lora_config(lora))


# a trained weight's name in a checkpoint of the wrapped model ("default": peft's adapter name)
CHECKPOINT_KEY = re.compile(r"(base_model\.model\..+\.lora_[AB])\.default\.weight")


def write_adapter_files(
    state: dict[str, Any], lora: dict[str, Any], base: Path, folder: Path, dtype: str
) -> None:
    """peft's adapter files from a checkpoint's trained weights alone: the base is neither
    read nor built (a 13B base in fp32 is 52 GB of host memory, to save MBs)."""
    import torch
    from safetensors.torch import save_file

    weights = {}
    for name, tensor in state.items():
        match = CHECKPOINT_KEY.fullmatch(name)
        if match is None:
            raise RuntimeError(
                f"checkpoint does not match the adapter: {name} is not a LoRA weight"
            )
        weights[f"{match[1]}.weight"] = tensor.to(getattr(torch, dtype)).contiguous()
    if not weights:
        raise RuntimeError("checkpoint does not match the adapter: it holds no LoRA weight")
    config = lora_config(lora, base)
    config.inference_mode = True  # as peft saves an adapter
    config.save_pretrained(str(folder))
    save_file(weights, folder / "adapter_model.safetensors", metadata={"format": "pt"})


def load_merged(path: str | Path, tokenizer: Any, dtype: Any) -> Any:
    """The base with the adapter folded in (as fast as a plain model at inference). The
    base is loaded in ``dtype`` itself, not in fp32 first: a 13B base in bf16 needs 26 GB of
    host memory, not 52 (peft adds each update in the weight's type: one more rounding)."""
    from peft import PeftModel

    from selfee.model_spec import build_model, hf_spec

    base = build_model(hf_spec(adapter_base(path), tokenizer), seed=0, dtype=dtype)
    model = PeftModel.from_pretrained(base, str(path))
    return model.merge_and_unload().to(dtype)
