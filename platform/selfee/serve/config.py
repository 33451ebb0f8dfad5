"""``selfee serve`` and ``selfee demo`` settings: the endpoint on Ray Serve and its Gradio UI."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from selfee.config import TAKE_EVERY_REQUEST, RayConfig, StageConfig
from selfee.engines.config import (
    ENGINE_HELP,
    EngineName,
    VLLMConfig,
    check_adapter_names,
    default_model_name,
)


class ServeConfig(StageConfig):
    """The SelFee endpoint on Ray Serve: OpenAI-compatible, revision control per request."""

    model: Path | None = Field(
        None,
        description="the Hugging Face model directory, LoRA adapter directory or .gguf file to serve",
    )
    engine: EngineName = Field("auto", description=ENGINE_HELP)
    model_name: str | None = Field(
        None, description="the name clients send as 'model' (default: the directory's name)"
    )
    adapters: dict[str, Path] = Field(
        {}, description="more LoRA adapters on model's base, each served under its name: a "
        "request's 'model' picks one (hf, vllm: one base in memory, every adapter applied per "
        "request; vllm batches requests for different adapters together)",
    )  # fmt: skip
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="'auto': CUDA if the replica has a GPU"
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="'auto': bf16 on CUDA, fp32 on CPU"
    )
    host: str = Field("127.0.0.1", description="HTTP interface (0.0.0.0 to listen on all)")
    port: int = Field(8000, ge=1, le=65535, description="HTTP port")
    route_prefix: str = Field("/", description="where the app lives (the API is <prefix>/v1)")
    max_batch_size: int = Field(
        8, ge=1, le=256, description="hf, llama_cpp: requests' steps run as one batch (vllm "
        "batches continuously)",
    )  # fmt: skip
    parked_tokens: int | None = Field(
        None, ge=0, description="hf: cached tokens a replica keeps for chains between their "
        "steps (least recently used out; in the model's device memory); default: twice the "
        "context; 0: none, every step evaluates its whole text",
    )  # fmt: skip
    batch_wait_timeout_s: float = Field(
        0.01, ge=0, description="how long a step waits for others to join its batch"
    )
    ingress_max_ongoing_requests: int = Field(
        TAKE_EVERY_REQUEST, ge=1, description="chains the ingress holds at once (each waits "
        "on the model deployment, which batches and autoscales); more wait at the proxy. Ray "
        "Serve's default, 5, would cap every engine at 5 concurrent chains",
    )  # fmt: skip
    min_replicas: int = Field(1, ge=0, description="model replicas kept running")
    max_replicas: int = Field(2, ge=1, description="most model replicas under load")
    target_ongoing_requests: float = Field(
        4, gt=0, description="autoscaling adds replicas above this many requests per replica"
    )
    cpus_per_replica: float = Field(1.0, gt=0, description="CPUs Ray reserves per model replica")
    gpus_per_replica: float = Field(0.0, ge=0, description="GPUs per model replica (1 on GPUs)")
    max_new_tokens: int = Field(
        512, ge=1, description="tokens per request when it names no max_tokens"
    )
    max_revisions_limit: int = Field(
        20, ge=0, le=100, description="the most min_revisions / max_revisions a request may ask for"
    )
    api_key_env: str = Field(
        "SELFEE_API_KEY", description="environment variable with the key requests must send "
        "(Authorization: Bearer); unset or empty: no key needed",
    )  # fmt: skip
    vllm: VLLMConfig = Field(default_factory=VLLMConfig, description="with engine vllm")
    prefix_affinity: bool = Field(
        True, description="send a chain's continuations to the replica that holds its prefix "
        "in its cache (vllm: Ray Serve LLM's PrefixCacheAffinityRouter; hf, llama_cpp: "
        "selfee.serve.routing.ChainAffinityRouter)",
    )  # fmt: skip
    prefix_affinity_chars: int = Field(
        400_000, ge=1_000, description="vllm, prefix_affinity: characters of prompts the router "
        "remembers per replica, least recently used out (~4 per KV-cache token: 400,000 is "
        "about what a 7B model's cache holds on an 80 GB GPU)",
    )  # fmt: skip
    ray: RayConfig = Field(default_factory=RayConfig)

    @model_validator(mode="after")
    def _replicas(self) -> ServeConfig:
        if self.min_replicas > self.max_replicas:
            raise ValueError(
                f"min_replicas ({self.min_replicas}) is above max_replicas ({self.max_replicas})"
            )
        return self

    @field_validator("adapters")
    @classmethod
    def _adapter_names(cls, adapters: dict[str, Path], info: ValidationInfo) -> dict[str, Path]:
        model, model_name = info.data.get("model"), info.data.get("model_name")
        check_adapter_names(adapters, served_name(model, model_name), "model_name")
        return adapters

    def missing(self) -> str | None:
        if self.model is None:
            return "--model: give a Hugging Face model directory, an adapter or a .gguf file"
        return None

    def served_name(self) -> str:
        return served_name(self.model, self.model_name)

    def served_names(self) -> list[str]:
        """What clients may send as 'model': model's name first (a request with none gets
        it), then the adapters'."""
        return [self.served_name(), *self.adapters]


def served_name(model: Path | None, model_name: str | None) -> str:
    """The name clients send as 'model' for the model itself."""
    return model_name or (default_model_name(model) if model else "selfee")


class DemoConfig(StageConfig):
    """The Gradio demo: a chat UI that talks to a SelFee endpoint over HTTP."""

    endpoint: str = Field("http://127.0.0.1:8000/v1", description="the OpenAI-compatible /v1 URL")
    api_key_env: str = Field("SELFEE_API_KEY", description="environment variable with its key")
    host: str = Field("127.0.0.1", description="interface the demo listens on")
    port: int = Field(7860, ge=1, le=65535, description="the demo's port")
    share: bool = Field(False, description="ask Gradio for a public share link")
