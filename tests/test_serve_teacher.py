"""The offline teacher as a Ray Serve app on the shared local Ray, through the openai client."""

from __future__ import annotations

import asyncio

import httpx
import openai
import pytest

from conftest import deploy_from_serve_config, free_port


def test_serve_config_deploys_the_teacher(serve_cleanup: None) -> None:
    base = deploy_from_serve_config("teacher.yaml", "offline-teacher", free_port(), rpm=3)

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
