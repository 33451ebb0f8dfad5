"""Which model answers, on which engine, with what resources (``selfee infer`` and
``selfee eval``; Serve and vLLM share the engine names and vLLM's settings). Revision
control's settings are ``selfee.revision.RevisionSettings``."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from selfee.config import StageConfig
from selfee.llm_config import RetryConfig

EngineName = Literal["auto", "hf", "llama_cpp", "vllm"]
ENGINE_HELP = (
    "'auto': llama_cpp for a .gguf file; vllm where GPUs are reserved and vLLM is installed; "
    "else hf (Hugging Face transformers)"
)


ADAPTER_NAME = re.compile(r"[\w\-.:/]{1,128}")


def default_model_name(model: str | Path) -> str:
    """A model's name where none is given: its directory's, or its GGUF file's."""
    return Path(model).name.removesuffix(".gguf")


def check_adapter_names(adapters: Mapping[str, Path], model_name: str, option: str) -> None:
    """Adapters beside a model are named in requests (Serve) and answer files (infer): each
    name is one a client can send, and not the model's own (``option`` sets that one)."""
    for name in adapters:
        if not ADAPTER_NAME.fullmatch(name):
            raise ValueError(f"{name!r} is not a model name clients can send (letters, "
                             "digits and - _ . : / only)")  # fmt: skip
        if name == model_name:
            raise ValueError(f"{name!r} is the model's own name ({option}): give the adapter "
                             "another")  # fmt: skip


class VLLMConfig(StageConfig):
    """How a vLLM engine starts (``selfee.engines.vllm``); empty: a default for the device."""

    kv_cache_gib: float | None = Field(
        None, gt=0, description="KV cache size (empty: vLLM's share of GPU memory; 1 GiB on CPU)"
    )
    gpu_memory_utilization: float = Field(
        0.9, gt=0, le=1, description="share of GPU memory vLLM may take (weights + KV cache)"
    )
    max_num_seqs: int = Field(256, ge=1, description="requests in flight in one engine step")
    max_context: int | None = Field(
        None, ge=16, description="vLLM's max_model_len (empty: the model's own context)"
    )
    block_size: int | None = Field(
        None, ge=1, description="tokens per KV block, the unit of prefix caching (empty: 32 on "
        "CPU, vLLM's default on GPU)",
    )  # fmt: skip
    enforce_eager: bool | None = Field(
        None, description="skip CUDA graphs / torch.compile (empty: on CPU only)"
    )


class ModelConfig(StageConfig):
    """Which model answers, on which engine, with what resources (``selfee infer`` and
    ``selfee eval``): model actors on Ray Data, or an OpenAI-compatible endpoint."""

    model: str | None = Field(
        None,
        description="a Hugging Face model directory, a LoRA adapter directory (loaded on its "
        "base: merged by hf, applied per request by vllm) or a .gguf file; with base_url, the "
        "endpoint's model name",
    )
    engine: EngineName = Field("auto", description=ENGINE_HELP)
    model_id: str | None = Field(
        None, description="model_id in the answers (default: the model directory's name)"
    )
    base_url: str | None = Field(
        None,
        description="an OpenAI-compatible /v1 endpoint (vLLM, Ray Serve) instead of a local model",
    )
    api_key_env: str = Field("OPENAI_API_KEY", description="environment variable with its key")
    rpm: int | None = Field(
        None, gt=0, description="with base_url: requests per minute for the whole job (each "
        "actor keeps its share)",
    )  # fmt: skip
    retry: RetryConfig = Field(
        default_factory=RetryConfig, description="with base_url: retries, backoff and timeout"
    )
    batch_size: int = Field(
        8, ge=1, le=512, description="questions generated together per actor call"
    )
    concurrency: int = Field(1, ge=1, le=256, description="model actors (each holds one copy)")
    cpus_per_actor: float = Field(1.0, gt=0, description="CPUs Ray reserves per actor")
    gpus_per_actor: float = Field(0.0, ge=0, description="GPUs Ray reserves per actor (1 on GPUs)")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="'auto': CUDA if the actor has a GPU"
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="'auto': bf16 on CUDA, fp32 on CPU"
    )
    vllm: VLLMConfig = Field(default_factory=VLLMConfig, description="with engine vllm")
    adapters: dict[str, Path] = Field(
        {}, description="more LoRA adapters on model's base, each run too under its name (its "
        "answers' model_id): one base in memory, batches mixing adapters (hf, vllm)",
    )  # fmt: skip

    @model_validator(mode="after")
    def _adapters_beside(self) -> ModelConfig:
        if self.adapters and self.base_url:
            raise ValueError("adapters: an endpoint's adapters are model names it serves: run "
                             "once per --model NAME")  # fmt: skip
        if self.adapters and self.model:
            check_adapter_names(self.adapters, self.answer_model_id(), "model_id")
        return self

    def answer_model_id(self) -> str:
        """The model's name in answers and metrics."""
        return self.model_id or default_model_name(str(self.model))

    def alone(self, adapter: str) -> dict[str, Any]:
        """The settings that make ``adapter`` (one of ``adapters``) the model of a run alone."""
        return {"model": str(self.adapters[adapter]), "model_id": adapter, "adapters": {}}
