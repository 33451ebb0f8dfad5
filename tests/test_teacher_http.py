"""The offline teacher over real HTTP on 127.0.0.1, through the real async ``openai`` client."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import time

import httpx
import openai
import pytest

from selfee import prompts
from selfee.chain import Verdict, detect_verdict

USER = [{"role": "user", "content": "Give two tips for better sleep."}]


def client(teacher, timeout: float = 10.0) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url=teacher.base_url, api_key="unused", max_retries=0, timeout=timeout
    )


def test_chat_completion_with_usage(start_teacher) -> None:
    teacher = start_teacher()

    async def go() -> None:
        c = client(teacher)
        done = await c.chat.completions.create(model="gpt-4o", messages=USER)
        assert done.model == "offline-teacher"  # says so, whatever was asked for
        assert "offline-teacher" in done.choices[0].message.content
        assert done.choices[0].finish_reason == "stop"
        assert done.usage.prompt_tokens == 7
        assert done.usage.completion_tokens > 5
        models = await c.models.list()
        assert [m.id for m in models.data] == ["offline-teacher"]
        await c.close()

    asyncio.run(go())
    stats = httpx.get(f"{teacher.url}/stats").json()
    assert stats["requests"] == 1 and stats["received"] == 1 and stats["rate_limited"] == 0
    assert stats["first_request_at"] <= stats["last_request_at"] <= time.time()


def test_critique_round_trip_over_http(start_teacher) -> None:
    teacher = start_teacher(needed_fraction=1.0)

    async def go() -> tuple[str, str]:
        c = client(teacher)
        first = await c.chat.completions.create(
            model="m", messages=prompts.critique_messages("Q", "A")
        )
        later = await c.chat.completions.create(
            model="m", messages=prompts.critique_messages("Q", "A2", revised=True)
        )
        await c.close()
        return first.choices[0].message.content, later.choices[0].message.content

    first, later = asyncio.run(go())
    assert detect_verdict(first) is Verdict.NEEDED
    assert detect_verdict(later) is Verdict.NOT_NEEDED


def test_rate_limit_429_with_retry_after(start_teacher) -> None:
    teacher = start_teacher(rpm=2)

    async def go() -> openai.RateLimitError:
        c = client(teacher)
        for _ in range(2):
            await c.chat.completions.create(model="m", messages=USER)
        with pytest.raises(openai.RateLimitError) as caught:
            await c.chat.completions.create(model="m", messages=USER)
        await c.close()
        return caught.value

    error = asyncio.run(go())
    retry_after = int(error.response.headers["retry-after"])
    assert 55 <= retry_after <= 60
    assert "2 requests per minute" in error.message
    stats = httpx.get(f"{teacher.url}/stats").json()
    assert (stats["requests"], stats["received"], stats["rate_limited"]) == (2, 3, 1)
    assert stats["max_requests_in_any_60s"] == 3


def test_malformed_json_fault(start_teacher) -> None:
    teacher = start_teacher(fault_rate=1.0, fault_kinds=["malformed"])

    async def go() -> None:
        c = client(teacher)
        with pytest.raises(ValueError):  # json.JSONDecodeError from the client
            await c.chat.completions.create(model="m", messages=USER)
        await c.close()

    asyncio.run(go())
    raw = httpx.post(f"{teacher.base_url}/chat/completions", json={"messages": USER})
    assert raw.status_code == 200
    with pytest.raises(ValueError):
        raw.json()
    assert httpx.get(f"{teacher.url}/stats").json()["faults"] == {"malformed": 2}


def test_server_error_and_timeout_faults(start_teacher) -> None:
    errors = start_teacher(fault_rate=1.0, fault_kinds=["500"])
    slow = start_teacher(fault_rate=1.0, fault_kinds=["timeout"], timeout_fault_s=2)

    async def go() -> None:
        c = client(errors)
        with pytest.raises(openai.InternalServerError):
            await c.chat.completions.create(model="m", messages=USER)
        s = client(slow, timeout=0.3)
        with pytest.raises(openai.APITimeoutError):
            await s.chat.completions.create(model="m", messages=USER)
        await c.close()
        await s.close()

    asyncio.run(go())


def test_fault_rate_is_a_seeded_mix(start_teacher) -> None:
    def outcomes(seed: int) -> list[int]:
        teacher = start_teacher(fault_rate=0.5, fault_kinds=["429", "500"], seed=seed)
        with httpx.Client() as http:
            return [
                http.post(
                    f"{teacher.base_url}/chat/completions", json={"messages": USER}
                ).status_code
                for _ in range(40)
            ]

    first = outcomes(7)
    assert first == outcomes(7)
    assert set(first) == {200, 429, 500}
    assert 8 <= first.count(200) <= 32


def test_latency_is_added(start_teacher) -> None:
    teacher = start_teacher(latency_ms=300)
    started = time.monotonic()
    httpx.post(f"{teacher.base_url}/chat/completions", json={"messages": USER}).raise_for_status()
    assert time.monotonic() - started >= 0.3


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({}, "'messages' must be a non-empty list"),
        ({"messages": "hi"}, "'messages' must be a non-empty list"),
        ({"messages": [{"role": "user"}]}, "messages[0].content is required"),
        ({"messages": [{"role": "user", "content": 3}]}, "messages[0].content must be a string"),
        ({"messages": USER, "stream": True}, "does not stream"),
        ({"messages": USER, "max_tokens": 0}, "'max_tokens' must be between 1 and"),
    ],
)
def test_bad_requests_get_openai_style_400(start_teacher, body: dict, message: str) -> None:
    teacher = start_teacher()
    response = httpx.post(f"{teacher.base_url}/chat/completions", json=body)
    assert response.status_code == 400
    assert message in response.json()["error"]["message"]


def test_max_tokens_cuts_the_reply(start_teacher) -> None:
    teacher = start_teacher()
    body = httpx.post(
        f"{teacher.base_url}/chat/completions", json={"messages": USER, "max_tokens": 3}
    ).json()
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 3


def test_selfee_teacher_command_serves_until_stopped() -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "selfee.cli", "teacher", "--port", "0", "--rpm", "1", "--seed", "3"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        line = proc.stdout.readline()
        match = re.search(r"http://127\.0\.0\.1:(\d+)/v1", line)
        assert match, line
        base = f"http://127.0.0.1:{match.group(1)}"
        ok = httpx.post(f"{base}/v1/chat/completions", json={"messages": USER})
        limited = httpx.post(f"{base}/v1/chat/completions", json={"messages": USER})
        assert (ok.status_code, limited.status_code) == (200, 429)
        assert int(limited.headers["retry-after"]) >= 1
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=20)
    assert "OFFLINE TEACHER" in err
    assert "Traceback" not in err


def test_selfee_teacher_reports_a_busy_port_without_traceback(start_teacher) -> None:
    busy = start_teacher()
    done = subprocess.run(
        [sys.executable, "-m", "selfee.cli", "teacher", "--port", str(busy.port)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert f"cannot listen on 127.0.0.1:{busy.port}" in done.stderr
    assert "Traceback" not in done.stderr
