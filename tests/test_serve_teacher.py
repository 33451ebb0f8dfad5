"""The offline teacher as a Ray Serve app on the shared local Ray, through the openai client."""

from __future__ import annotations

import asyncio
import importlib
from pathlib import Path

import httpx
import openai
import pytest
import yaml
from ray import serve

from conftest import free_port

REPO = Path(__file__).resolve().parents[1]


def test_serve_config_deploys_the_teacher(serve_cleanup: None) -> None:
    spec = yaml.safe_load((REPO / "configs" / "serve" / "teacher.yaml").read_text())
    app_spec = spec["applications"][0]
    module, attr = app_spec["import_path"].split(":")
    builder = getattr(importlib.import_module(module), attr)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(
        builder({**app_spec["args"], "rpm": 3}),
        name="teacher",
        route_prefix=app_spec["route_prefix"],
    )
    base = f"http://127.0.0.1:{port}{app_spec['route_prefix']}"

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
