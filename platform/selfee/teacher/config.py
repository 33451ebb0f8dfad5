"""``selfee teacher`` settings: the offline teacher's replies, limits and faults."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from selfee.config import StageConfig

FaultKind = Literal["429", "500", "timeout", "malformed"]


class TeacherConfig(StageConfig):
    """The offline teacher: an OpenAI-compatible server that answers deterministically."""

    renamed: ClassVar[dict[str, str]] = {"context_tokens": "max_context"}

    host: str = Field("127.0.0.1", description="interface to listen on")
    port: int = Field(8100, ge=0, le=65535, description="TCP port (0: any free port)")
    model: str = Field("offline-teacher", description="model name the server reports")
    rpm: int | None = Field(
        None, gt=0, description="server-side requests-per-minute limit (429 over it)"
    )
    latency_ms: float = Field(0.0, ge=0, description="added latency per request")
    fault_rate: float = Field(0.0, ge=0, le=1, description="fraction of requests that fail")
    fault_kinds: list[FaultKind] = Field(
        default_factory=lambda: ["429", "500", "timeout", "malformed"],
        min_length=1,
        description="faults to inject, chosen evenly",
    )
    timeout_fault_s: float = Field(
        30.0, ge=0, description="how long a 'timeout' fault holds the request"
    )
    seed: int = Field(0, description="seed for replies, verdicts and faults")
    needed_fraction: float = Field(
        0.5, ge=0, le=1, description="fraction of first critiques that ask for a revision"
    )
    later_needed_fraction: float = Field(
        0.0, ge=0, le=1, description="the same for critiques of revised answers"
    )
    judge_unparseable_fraction: float = Field(
        0.0, ge=0, le=1, description="fraction of judge requests answered without scores"
    )
    max_context: int | None = Field(
        None,
        ge=16,
        description="reject prompts + max_tokens over this many tokens (4 bytes a token), "
        "as OpenAI does (400 context_length_exceeded)",
    )
    api_key_env: str | None = Field(
        None,
        description="require the key in this environment variable (401 otherwise, echoing the "
        "key sent, as some servers do)",
    )
