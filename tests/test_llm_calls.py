"""Teacher calls over real HTTP against the offline teacher: retries, backoff, Retry-After,
faults, refusals, and API keys that never leak into errors."""

from __future__ import annotations

import asyncio
import time

import httpx
import openai
import pytest

from selfee.llm import (
    CallFailed,
    ContextOverflow,
    EndpointRejected,
    Secret,
    TeacherCall,
    retry_after_s,
)
from selfee.llm_config import RetryConfig
from selfee.ratelimit import RateLimiter, WorkerShare

USER = [{"role": "user", "content": "Give two tips for better sleep."}]
FAST = RetryConfig(max_retries=2, backoff_s=0.01, max_backoff_s=0.05, timeout_s=0.5)


def call_once(
    teacher, policy=FAST, key="sk-unused-0000", messages=USER, max_tokens=50, base_url=None
):
    async def go():
        client = openai.AsyncOpenAI(
            base_url=base_url or teacher.base_url,
            api_key=key,
            max_retries=0,
            timeout=policy.timeout_s,
        )
        call = TeacherCall(
            client,
            "offline-teacher",
            RateLimiter(WorkerShare(None, None)),
            Secret(key),
            policy=policy,
            max_tokens=max_tokens,
        )
        started = time.monotonic()
        try:
            return await call.chat(messages), call.usage, time.monotonic() - started
        except CallFailed as e:
            return e, call.usage, time.monotonic() - started
        finally:
            await client.close()

    return asyncio.run(go())


@pytest.mark.parametrize("kind", ["500", "malformed", "timeout", "429"])
def test_each_fault_is_retried_then_reported(start_teacher, kind: str) -> None:
    teacher = start_teacher(fault_rate=1.0, fault_kinds=[kind], timeout_fault_s=2)
    error, usage, _ = call_once(teacher)
    assert isinstance(error, CallFailed) and "gave up after 3 attempts" in str(error)
    assert usage.requests == 3 and usage.retries == 2
    assert httpx.get(f"{teacher.url}/stats").json()["received"] == 3


def test_retry_after_is_honoured(start_teacher) -> None:
    teacher = start_teacher(fault_rate=1.0, fault_kinds=["429"])  # Retry-After: 1
    error, usage, elapsed = call_once(teacher, RetryConfig(max_retries=1, backoff_s=0.01))
    assert isinstance(error, CallFailed) and usage.requests == 2
    assert elapsed >= 1.0  # backoff alone would be ~10 ms


def test_flaky_endpoint_succeeds_within_retries(start_teacher) -> None:
    teacher = start_teacher(fault_rate=0.4, fault_kinds=["500", "malformed"], seed=3)
    policy = RetryConfig(max_retries=8, backoff_s=0.01, max_backoff_s=0.02)
    replies = [call_once(teacher, policy) for _ in range(8)]
    assert all(isinstance(text, str) and "[offline-teacher]" in text for text, _, _ in replies)
    stats = httpx.get(f"{teacher.url}/stats").json()
    assert sum(usage.requests for _, usage, _ in replies) == stats["received"] > 8
    assert sum(usage.prompt_tokens for _, usage, _ in replies) == stats["prompt_tokens"]


def test_a_wrong_key_stops_the_job_without_showing_the_key(start_teacher, monkeypatch) -> None:
    monkeypatch.setenv("TEACHER_KEY", "sk-right-key-123456")
    teacher = start_teacher(api_key_env="TEACHER_KEY")
    with pytest.raises(EndpointRejected) as caught:
        call_once(teacher, key="sk-wrong-key-987654")
    assert "AuthenticationError" in str(caught.value)
    assert "sk-wrong-key-987654" not in str(caught.value)  # the server echoed it; we don't
    text, _, _ = call_once(teacher, key="sk-right-key-123456")
    assert isinstance(text, str)


def test_context_overflow_is_its_own_error(start_teacher) -> None:
    teacher = start_teacher(max_context=64)
    error, usage, _ = call_once(teacher, messages=[{"role": "user", "content": "word " * 100}])
    assert isinstance(error, ContextOverflow) and "maximum context length" in str(error)
    assert usage.requests == 1  # not retried: the same prompt would fail the same way
    assert httpx.get(f"{teacher.url}/stats").json()["context_rejected"] == 1


def test_retry_after_header_forms() -> None:
    def error(headers: dict[str, str]) -> openai.APIStatusError:
        response = httpx.Response(429, headers=headers, request=httpx.Request("POST", "http://x"))
        return openai.APIStatusError("limited", response=response, body=None)

    assert retry_after_s(error({"retry-after": "7"})) == 7
    assert retry_after_s(error({"retry-after-ms": "1500"})) == 1.5
    assert retry_after_s(error({})) is None
    assert retry_after_s(error({"retry-after": "soon"})) is None
    later = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 30))
    assert 25 <= retry_after_s(error({"retry-after": later})) <= 31


def test_secret_hides_itself() -> None:
    secret = Secret("sk-abcdef123456")
    assert "sk-abcdef" not in repr(secret) and "sk-abcdef" not in f"{secret}"
    assert secret.redact("key sk-abcdef123456 was wrong") == "key *** was wrong"


def test_a_404_says_the_url_may_be_wrong_not_only_the_model(start_teacher) -> None:
    teacher = start_teacher()
    with pytest.raises(EndpointRejected) as wrong_path:
        call_once(teacher, base_url=teacher.url)  # /v1 left out: every path is a 404
    message = str(wrong_path.value)
    assert "404" in message and f"{teacher.url} is not the API's base URL" in message
    assert "it usually ends in /v1" in message and "'offline-teacher'" in message
