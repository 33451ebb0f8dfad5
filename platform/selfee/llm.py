"""The one way this project talks to teacher and judge LLMs: the async ``openai`` client.

API keys come only from the environment variable a config names; they are never stored on
objects that get logged, never put in configs written to disk, never echoed in errors.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import openai

OFFLINE_KEY = "offline-teacher-needs-no-key"


@dataclass(frozen=True)
class Endpoint:
    base_url: str
    model: str
    api_key_env: str | None = None  # the variable's name, never its value

    def client(self, timeout_s: float = 60.0, max_retries: int = 0) -> openai.AsyncOpenAI:
        """A client for this endpoint. Retries are ours to do (with rate limits), so the
        SDK's own are off by default."""
        key = os.environ.get(self.api_key_env, "") if self.api_key_env else ""
        if self.api_key_env and not key:
            raise ValueError(
                f"environment variable {self.api_key_env} is not set (it should hold the API key)"
            )
        return openai.AsyncOpenAI(
            base_url=self.base_url,
            api_key=key or OFFLINE_KEY,
            timeout=timeout_s,
            max_retries=max_retries,
        )


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    requests: int = 0

    def add(self, completion: openai.types.chat.ChatCompletion) -> None:
        self.requests += 1
        if completion.usage is not None:
            self.prompt_tokens += completion.usage.prompt_tokens
            self.completion_tokens += completion.usage.completion_tokens

    def as_dict(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "requests": self.requests,
        }


async def chat(
    client: openai.AsyncOpenAI,
    model: str,
    messages: list[dict[str, str]],
    usage: Usage,
    temperature: float = 1.0,
    max_tokens: int | None = None,
) -> str:
    completion = await client.chat.completions.create(
        model=model,
        messages=messages,
        temperature=temperature,
        max_tokens=max_tokens,  # type: ignore[arg-type]
    )
    usage.add(completion)
    content = completion.choices[0].message.content if completion.choices else None
    if content is None:
        raise ValueError("the endpoint returned a completion without content")
    return content
