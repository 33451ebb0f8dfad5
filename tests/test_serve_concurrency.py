"""Concurrent chains on the SelFee endpoint: every one reaches the model deployment at once
(Ray Serve's default ``max_ongoing_requests``, 5, on the ingress would queue the rest at the
proxy, and no batch could hold more than 5 steps)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from ray import serve

from conftest import deploy_selfee
from selfee.testing.selfee_model import QUESTIONS

CHAINS = 12


@pytest.fixture(scope="module")
def endpoint(ray_session: None, selfee_model_dir: Path) -> Iterator[str]:
    # a wide window: steps that arrive while others run wait for company (up to 16 a batch)
    yield deploy_selfee(selfee_model_dir, max_batch_size=16, batch_wait_timeout_s=0.5)
    serve.shutdown()


def test_more_chains_than_serves_default_share_one_batch(endpoint: str) -> None:
    async def go() -> list[str]:
        async with openai.AsyncOpenAI(base_url=endpoint, api_key="x", max_retries=0,
                                      timeout=120) as c:  # fmt: skip
            replies = await asyncio.gather(*(
                c.chat.completions.create(
                    model="model", messages=[{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}],
                    extra_body={"min_revisions": 1})
                for i in range(CHAINS)
            ))  # fmt: skip
        return [r.choices[0].message.content or "" for r in replies]

    answers = asyncio.run(go())
    assert len(answers) == CHAINS and all(answers)
    sizes = serve.get_deployment_handle("SelFeeModel", app_name="selfee").batch_sizes.remote()
    assert max(sizes.result()) > 5, "no batch held more than 5 steps: the ingress caps chains"
