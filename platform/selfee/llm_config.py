"""What every job that calls a teacher or judge LLM shares: endpoint, limits, retries, prices."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field, model_validator

from selfee.config import RayConfig, StageConfig
from selfee.teacher.config import TeacherConfig


class RetryConfig(StageConfig):
    max_retries: int = Field(6, ge=0, le=50, description="retries per request after the first try")
    backoff_s: float = Field(1.0, ge=0, description="first backoff delay; doubles per retry")
    max_backoff_s: float = Field(60.0, ge=0, description="longest backoff delay")
    timeout_s: float = Field(120.0, gt=0, description="seconds before a request times out")


class PricesConfig(StageConfig):
    """For the cost estimate only (US dollars per million tokens; 0: not shown)."""

    prompt_per_million: float = Field(0.0, ge=0, description="$ per 1M prompt tokens")
    completion_per_million: float = Field(0.0, ge=0, description="$ per 1M completion tokens")

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (
            prompt_tokens * self.prompt_per_million
            + completion_tokens * self.completion_per_million
        ) / 1e6


class LLMJobConfig(StageConfig):
    """What every job that calls a teacher or judge LLM shares: endpoint, limits, retries."""

    renamed: ClassVar[dict[str, str]] = {"context_tokens": "max_context"}

    base_url: str | None = Field(
        None,
        description="OpenAI-compatible endpoint; empty: OpenAI if the API key variable is "
        "set, else the offline teacher",
    )
    model: str | None = Field(None, description="model name (required with base_url)")
    api_key_env: str = Field(
        "OPENAI_API_KEY", description="environment variable that holds the API key"
    )
    rpm: int | None = Field(None, gt=0, description="requests per minute for the whole job")
    tpm: int | None = Field(None, gt=0, description="tokens per minute for the whole job")
    max_tokens: int = Field(1024, ge=1, description="longest reply per request, in tokens")
    max_context: int = Field(
        4096, ge=256, description="the model's context window: prompt + reply must fit"
    )
    temperature: float = Field(1.0, ge=0, le=2, description="sampling temperature")
    workers: int = Field(
        2, ge=1, le=256, description="Ray workers (each gets 1/workers of rpm, tpm)"
    )
    concurrency: int = Field(16, ge=1, le=4096, description="rows in flight, all workers together")
    worker_cpus: float = Field(0.25, gt=0, description="CPUs Ray reserves per worker")
    progress_interval_s: float = Field(10.0, gt=0, description="seconds between progress lines")
    retry: RetryConfig = Field(default_factory=RetryConfig)
    prices: PricesConfig = Field(default_factory=PricesConfig)
    teacher: TeacherConfig = Field(
        default_factory=TeacherConfig,
        description="the offline teacher, used when no endpoint is configured",
    )
    ray: RayConfig = Field(default_factory=RayConfig)

    @model_validator(mode="after")
    def _reply_fits_context(self) -> LLMJobConfig:
        if self.max_tokens >= self.max_context:
            raise ValueError(
                f"max_tokens ({self.max_tokens}) must be below max_context "
                f"({self.max_context}): the prompt needs room too"
            )
        return self
