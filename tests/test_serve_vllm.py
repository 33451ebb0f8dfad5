"""The SelFee endpoint with ``engine: vllm`` (the CPU build) on a real local Ray Serve — the
model deployment is Ray Serve LLM's vLLM server: the openai client, token streaming, bad
input, a client that goes away, prefix caching."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from ray import serve

from conftest import deploy_selfee
from selfee.chain import final_answer
from selfee.testing.selfee_model import QUESTIONS

USER = [{"role": "user", "content": QUESTIONS[0]}]
ROUTER_CHARS = 1_000  # what the prefix-affinity router may remember per replica


@pytest.fixture(scope="module")
def endpoint(ray_session: None, selfee_model_dir: Path) -> Iterator[str]:
    yield deploy_selfee(selfee_model_dir, engine="vllm", cpus_per_replica=1,
                        prefix_affinity_chars=ROUTER_CHARS)  # fmt: skip
    serve.shutdown()


def client(base: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=base, api_key="unused", max_retries=0, timeout=120)


def model_handle():
    return serve.get_deployment_handle("SelFeeModel", app_name="selfee")


def test_forced_revisions_reuse_the_prefix_cache(endpoint: str, selfee_model_dir: Path) -> None:
    from selfee.engines.hf import HFEngine
    from selfee.revision import RevisionSettings, generate
    from selfee.serve.openai_api import chat_prompt

    done = client(endpoint).chat.completions.create(
        model="model", messages=USER, max_tokens=400, extra_body={"min_revisions": 3}
    )
    selfee = done.model_extra["selfee"]
    assert selfee["revisions_count"] >= 3 and selfee["forced_rewrites"] >= 1
    assert done.choices[0].message.content == final_answer(selfee["text"])
    # every continuation resubmitted the text so far; vLLM had whole blocks of it cached
    assert selfee["calls"] >= 2 and selfee["cached_tokens"] >= 32 * (selfee["calls"] - 1)
    assert done.usage.prompt_tokens_details is not None
    # the same chain as the HF engine's, greedy, same weights
    reference = generate(HFEngine.load(selfee_model_dir), chat_prompt(USER),
                         RevisionSettings(min_revisions=3, max_new_tokens=400))  # fmt: skip
    assert selfee["text"] == reference.text


def test_streaming_arrives_token_by_token(endpoint: str) -> None:
    stream = client(endpoint).chat.completions.create(
        model="model", messages=USER, stream=True, extra_body={"min_revisions": 2}
    )
    chunks = list(stream)
    last = chunks[-1].model_extra["selfee"]
    content = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert content == last["text"] and last["revisions_count"] >= 2
    assert len(chunks) >= last["usage"]["completion_tokens"] / 3  # a chunk per few tokens


def test_bad_input_is_a_4xx(endpoint: str) -> None:
    for body, status in [
        ({"messages": USER, "temperature": 9}, 400),
        ({"messages": [{"role": "user", "content": "word " * 6000}]}, 400),
        ({"messages": [{"role": "user", "content": "word " * 6000}], "stream": True}, 400),
        ({"messages": USER, "model": "other"}, 404),
    ]:
        response = httpx.post(f"{endpoint}/chat/completions", json=body, timeout=60)
        assert response.status_code == status, response.text
        assert response.json()["error"]["message"]


def test_a_client_that_disconnects_leaves_no_request_running(endpoint: str) -> None:
    body = {"messages": USER, "stream": True, "min_revisions": 20, "max_tokens": 3000}
    with httpx.stream("POST", f"{endpoint}/chat/completions", json=body, timeout=60) as response:
        events = (line for line in response.iter_lines() if line)
        for _ in range(4):
            assert next(events).startswith("data: ")
        assert model_handle().running_requests.remote().result() == 1  # under way
    deadline = time.monotonic() + 10
    while model_handle().running_requests.remote().result() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert model_handle().running_requests.remote().result() == 0


def test_the_routers_prefix_tree_stays_within_its_bound(endpoint: str) -> None:
    import ray

    written = 0
    for question in QUESTIONS[1:7]:  # six chains: the router remembers each step's prompt
        done = client(endpoint).chat.completions.create(
            model="model", messages=[{"role": "user", "content": question}], max_tokens=400,
            extra_body={"min_revisions": 3},
        )  # fmt: skip
        assert done.model_extra["selfee"]["calls"] >= 2
        written += len(done.model_extra["selfee"]["text"])
    assert written > 2 * ROUTER_CHARS  # far more than the bound passed through the router
    tree = ray.get_actor("LlmPrefixTreeActor", namespace="serve::selfee::SelFeeModel")
    deadline = time.monotonic() + 15
    while True:
        remembered = ray.get(tree.getattr.remote("tenant_to_char_count"))
        if max(remembered.values(), default=0) <= ROUTER_CHARS or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert remembered and max(remembered.values()) <= ROUTER_CHARS, remembered
