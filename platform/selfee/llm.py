"""The one way this project talks to LLM endpoints: the async ``openai`` client.

Every request goes through ``EndpointCall.send`` (teacher and judge chats:
``TeacherCall.chat``; inference's completions: ``selfee.engines.completions_api``): the
job-wide rate limits (``selfee.ratelimit``), retries with exponential backoff and jitter (honouring ``Retry-After``) on 429, 5xx,
timeouts and malformed responses, and usage accounting. A call that still fails raises
``CallFailed`` (the row records it); a call the endpoint refuses for good (bad key, unknown
model) raises ``EndpointRejected`` (the job stops: every other row would fail the same way).

API keys come only from the environment variable a config names (``selfee.llm_job``
resolves it). They travel inside a
``Secret`` whose ``repr`` hides them, and every error message is passed through
``Secret.redact`` before it is stored or printed.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import math
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import openai

from selfee.llm_config import RetryConfig
from selfee.ratelimit import RateLimiter

OFFLINE_KEY = "offline-teacher-needs-no-key"
T = TypeVar("T")
Message = dict[str, str]


class Secret:
    """An API key that does not print itself."""

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def redact(self, text: str) -> str:
        if not self._value or len(self._value) < 4:
            return text
        return text.replace(self._value, "***")

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__


# --- tokens ----------------------------------------------------------------------------

BYTES_PER_TOKEN_LOWER_BOUND = 3.0  # BPE tokenizers average ~4 bytes a token on English


def estimate_tokens(messages: list[Message]) -> int:
    """A deliberately high estimate of a prompt's tokens, for budgets and rate limits:
    tokenizers differ per endpoint, and an underestimate costs a failed request."""
    text_bytes = sum(len(m.get("content", "").encode("utf-8")) for m in messages)
    return math.ceil(text_bytes / BYTES_PER_TOKEN_LOWER_BOUND) + 4 * len(messages) + 3


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    requests: int = 0  # every HTTP request sent, failed attempts included
    retries: int = 0
    rate_limited: int = 0  # requests answered 429

    def add(self, completion: Any) -> None:
        if completion.usage is not None:
            self.prompt_tokens += completion.usage.prompt_tokens or 0
            self.completion_tokens += completion.usage.completion_tokens or 0

    def as_dict(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "requests": self.requests,
            "retries": self.retries,
            "rate_limited": self.rate_limited,
        }


# --- failures --------------------------------------------------------------------------


class CallFailed(Exception):
    """A request that failed after its last retry, or that retrying cannot fix."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status  # the last HTTP status, if the endpoint answered


class ContextOverflow(CallFailed):
    """The endpoint says the prompt plus ``max_tokens`` exceed the model's context."""


class EndpointRejected(Exception):
    """The endpoint refuses every request (bad key, no permission, unknown model)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def backoff_s(policy: RetryConfig, attempt: int, rng: random.Random) -> float:
    """Exponential with "equal jitter": half fixed, half random, so retries spread out."""
    ceiling = min(policy.max_backoff_s, policy.backoff_s * 2**attempt)
    return ceiling / 2 + rng.uniform(0, ceiling / 2)


def retry_after_s(error: openai.APIStatusError) -> float | None:
    """Seconds the server asked us to wait (``retry-after-ms`` or ``retry-after``)."""
    headers = error.response.headers
    try:
        if "retry-after-ms" in headers:
            return max(0.0, float(headers["retry-after-ms"]) / 1000)
        value = headers.get("retry-after")
        if value is None:
            return None
        try:
            return max(0.0, float(value))
        except ValueError:
            when = email.utils.parsedate_to_datetime(value)
            return max(0.0, when.timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def _is_context_overflow(error: openai.BadRequestError) -> bool:
    text = f"{getattr(error, 'code', '') or ''} {error.message}".lower()
    return "context_length" in text or "maximum context length" in text


def not_found_hint(base_url: str, model: str) -> str:
    """What an HTTP 404 from an OpenAI-compatible endpoint can mean: the path or the model."""
    return (
        f"either {base_url} is not the API's base URL (it usually ends in /v1, without "
        f"/chat/completions), or the model '{model}' does not exist there"
    )


@dataclass
class EndpointCall:
    """Requests to one endpoint: the worker's client and limiter, retries, usage counted.

    ``send`` is the retry loop every request of this project goes through: teacher and
    judge chats (``TeacherCall``) and inference's completions (``selfee.engines.completions_api``).
    """

    client: openai.AsyncOpenAI
    model: str
    limiter: RateLimiter
    secret: Secret
    policy: RetryConfig = field(default_factory=RetryConfig)
    usage: Usage = field(default_factory=Usage)
    rng: random.Random = field(default_factory=random.Random)

    async def send(
        self, create: Callable[[], Awaitable[Any]], reserve: int, read: Callable[[Any], T]
    ) -> T:
        """``read(await create())``, within the limits (``reserve`` tokens), retried on 429,
        5xx, timeouts and replies ``read`` cannot use (it raises ValueError and such)."""
        problem, status = "no attempt made", None
        for attempt in range(self.policy.max_retries + 1):
            if attempt:
                self.usage.retries += 1
            await self.limiter.acquire(reserve)
            self.usage.requests += 1
            wait: float | None = None
            try:
                response = await create()
                value = read(response)
                self.usage.add(response)
                return value
            except openai.RateLimitError as e:
                self.usage.rate_limited += 1
                problem, status = self._describe(e), e.status_code
                wait = retry_after_s(e)
                if wait is not None:
                    self.limiter.pause(wait)  # the whole worker waits, not just this row
            except (openai.AuthenticationError, openai.PermissionDeniedError) as e:
                raise EndpointRejected(self._describe(e), e.status_code) from None
            except openai.NotFoundError as e:
                hint = not_found_hint(str(self.client.base_url), self.model)
                raise EndpointRejected(f"{self._describe(e)} ({hint})", e.status_code) from None
            except openai.BadRequestError as e:
                if _is_context_overflow(e):
                    raise ContextOverflow(self._describe(e), e.status_code) from None
                raise CallFailed(self._describe(e), e.status_code) from None
            except openai.APIStatusError as e:
                if e.status_code < 500 and e.status_code not in (408, 409):
                    raise CallFailed(self._describe(e), e.status_code) from None
                problem, status = self._describe(e), e.status_code
            except openai.APIConnectionError as e:  # includes timeouts
                problem, status = self._describe(e), None
            except (
                openai.APIResponseValidationError,
                ValueError,
                KeyError,
                IndexError,
                TypeError,
                AttributeError,
            ) as e:
                # json.JSONDecodeError is a ValueError: a body that is not a completion
                problem, status = f"malformed response: {self._describe(e)}", None
            if attempt < self.policy.max_retries:
                delay = backoff_s(self.policy, attempt, self.rng)
                await asyncio.sleep(max(delay, wait or 0.0))
        raise CallFailed(
            f"{problem} (gave up after {self.policy.max_retries + 1} attempts)", status
        )

    def _describe(self, error: BaseException) -> str:
        text = str(error)
        if isinstance(error, json.JSONDecodeError):
            text = f"not valid JSON ({error.msg})"
        return self.secret.redact(f"{type(error).__name__}: {text}")[:500]


@dataclass
class TeacherCall(EndpointCall):
    """Chat calls for one record (teacher or judge): shares the worker's client and limiter."""

    max_tokens: int = 1024
    temperature: float = 1.0

    async def chat(self, messages: list[Message]) -> str:
        def create() -> Awaitable[Any]:
            return self.client.chat.completions.create(
                model=self.model,
                messages=messages,  # type: ignore[arg-type]
                max_tokens=self.max_tokens,
                temperature=self.temperature,
            )

        return await self.send(create, estimate_tokens(messages) + self.max_tokens, _content)


def _content(completion: Any) -> str:
    content = completion.choices[0].message.content if completion.choices else None
    if not isinstance(content, str):
        raise ValueError("a completion without message content")
    return content
