"""``selfee export gguf`` settings: which quantized files, measured how."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from selfee.config import StageConfig

QuantType = Literal[
    "f32", "f16", "q8_0", "q6_K", "q5_K_M", "q5_K_S", "q4_K_M", "q4_K_S", "q4_0", "q3_K_M", "q2_K"
]


class ExportGGUFConfig(StageConfig):
    """GGUF files for llama.cpp from a LLaMA-architecture Hugging Face model directory."""

    model: Path = Field(
        description="the Hugging Face model directory (LLaMA architecture), or a LoRA adapter "
        "on one (folded into its base first, in a folder of the output removed after)"
    )
    quant: list[QuantType] = Field(
        default_factory=lambda: ["q8_0", "q4_K_M"], min_length=1,
        description="the types to write, one file each: --quant f16 q8_0 q4_K_M",
    )  # fmt: skip
    output: Path = Field(Path("outputs/export"), description="the folder the GGUF files go to")
    eval_data: Path | None = Field(
        None, description="chains (JSONL) whose perplexity each file is measured on"
    )
    prompts: int = Field(8, ge=1, le=1000, description="fixed prompts for the greedy agreement")
    max_new_tokens: int = Field(64, ge=1, description="greedy tokens per prompt")
    threads: int | None = Field(
        None, ge=1, description="llama.cpp threads; all CPUs when not given"
    )
    converter_dir: Path | None = Field(
        None,
        description="llama.cpp's convert_hf_to_gguf.py folder (default: $SELFEE_LLAMA_CPP_DIR, "
        "else <venv>/share/llama.cpp, unpacked by make)",
    )


class ExportMergedConfig(StageConfig):
    """A LoRA adapter folded into its base: a full Hugging Face model."""

    model: Path = Field(
        description="the adapter directory (selfee train with lora.export adapter); its "
        "adapter_config.json names the base"
    )
    output: Path = Field(description="where the merged model goes (a new folder)")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="the merged weights' type; auto: the base's own"
    )
    overwrite: bool = Field(False, description="replace the output folder if it exists")
