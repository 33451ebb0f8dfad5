"""Two HF model replicas behind the SelFee ingress: a chain's steps go to the replica that
holds its text in its cache (``selfee.serve.routing.ChainAffinityRouter``). Serve's default
router sends each step to the less busy of two replicas, at random when both are idle."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import openai
import pytest
from ray import serve

from conftest import deploy_selfee
from selfee.serve.routing import ChainAffinityRouter
from selfee.testing.selfee_model import QUESTIONS


@pytest.fixture(scope="module")
def endpoint(ray_session: None, selfee_model_dir: Path) -> Iterator[str]:
    yield deploy_selfee(selfee_model_dir, engine="hf", min_replicas=2, max_replicas=2)
    serve.shutdown()


def test_a_chain_s_steps_stay_on_the_replica_that_holds_its_cache(endpoint: str) -> None:
    status = serve.status().applications["selfee"].deployments["SelFeeModel"]
    assert status.replica_states.get("RUNNING") == 2
    client = openai.OpenAI(base_url=endpoint, api_key="unused", max_retries=0, timeout=120)
    for question in QUESTIONS[:4]:  # one chain at a time: both replicas idle at each step
        done = client.chat.completions.create(
            model="model", messages=[{"role": "user", "content": question}], max_tokens=600,
            extra_body={"min_revisions": 6},
        )  # fmt: skip
        chain, prompt = done.model_extra["selfee"], done.usage.prompt_tokens
        continuations = chain["calls"] - 1
        assert continuations >= 2
        # Every step after the first found the text so far in its replica's cache: it
        # evaluated only what revision control added (a rewritten verdict, a header: ~8
        # tokens). A step on the other replica would evaluate the whole text again: the
        # question and all the chain wrote before it, far more than 16 tokens.
        assert chain["engine_prompt_tokens"] - prompt <= continuations * 16, chain
        assert chain["cached_tokens"] >= continuations * prompt, chain


def choices(router: ChainAffinityRouter, replicas: list, key: str | None) -> list[list]:
    step = SimpleNamespace(args=[SimpleNamespace(key=key, prompt="text")] if key else [])
    return asyncio.run(router.choose_replicas(replicas, step))  # type: ignore[arg-type]


def test_the_router_tries_the_chain_s_replica_first_then_two_others() -> None:
    router = ChainAffinityRouter.__new__(ChainAffinityRouter)  # its choices need no Serve
    router.initialize_state()
    a, b, c, d = (SimpleNamespace(replica_id=name) for name in "abcd")
    step = SimpleNamespace(args=[SimpleNamespace(key="chain-1", prompt="text")])
    router.on_request_routed(step, "b", None)  # type: ignore[arg-type]

    first, then = choices(router, [a, b, c, d], "chain-1")
    assert first == [b] and len(then) == 2 and b not in then  # b full: two of the others
    # a new chain, or a call that is no step: two at random, as Serve's default does
    assert [len(rank) for rank in choices(router, [a, b, c, d], "chain-2")] == [2]
    assert [len(rank) for rank in choices(router, [a, b, c, d], None)] == [2]
    # its replica gone: two of those left
    (only,) = choices(router, [a, c, d], "chain-1")
    assert len(only) == 2 and b not in only
    # one replica: that one, whatever the chain
    assert choices(router, [b], "chain-1") == [[b]]
    assert choices(router, [a], "chain-1") == [[a]]
