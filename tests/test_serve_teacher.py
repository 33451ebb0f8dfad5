"""The offline teacher as a Ray Serve app on the shared local Ray, through the openai client."""

from __future__ import annotations

import asyncio

import httpx
import openai
import pytest

from conftest import deploy_from_serve_config


def test_serve_config_deploys_the_teacher(serve_cleanup: None) -> None:
    base = deploy_from_serve_config("teacher.yaml", "offline-teacher", rpm=3)

    async def go() -> None:
        client = openai.AsyncOpenAI(base_url=f"{base}/v1", api_key="x", max_retries=0, timeout=30)
        messages = [{"role": "user", "content": "Name a colour."}]
        for _ in range(3):
            done = await client.chat.completions.create(model="offline-teacher", messages=messages)
            assert "offline-teacher" in done.choices[0].message.content
        with pytest.raises(openai.RateLimitError) as caught:
            await client.chat.completions.create(model="offline-teacher", messages=messages)
        assert int(caught.value.response.headers["retry-after"]) >= 1
        await client.close()

    asyncio.run(go())
    stats = httpx.get(f"{base}/stats", timeout=10).json()
    assert stats["requests"] == 3 and stats["rate_limited"] == 1


def test_the_teacher_on_serve_takes_concurrent_requests_at_once(serve_cleanup: None) -> None:
    """As an API does: 12 requests in their latency together (Ray Serve's default would hold
    5 at a time and queue the rest)."""
    base = deploy_from_serve_config("teacher.yaml", "offline-teacher", rpm=None,
                                    latency_ms=1000)  # fmt: skip

    async def go() -> None:
        async with openai.AsyncOpenAI(base_url=f"{base}/v1", api_key="x", max_retries=0,
                                      timeout=60) as client:  # fmt: skip
            messages = [{"role": "user", "content": "Name a colour."}]
            await asyncio.gather(*(
                client.chat.completions.create(model="offline-teacher", messages=messages)
                for _ in range(12)
            ))  # fmt: skip

    asyncio.run(go())
    stats = httpx.get(f"{base}/stats", timeout=10).json()
    assert stats["requests"] == 12 and stats["max_concurrent"] > 5, stats
