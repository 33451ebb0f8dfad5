"""The SelFee endpoint on a real local Ray Serve, over HTTP, with the openai client."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from ray import serve

from conftest import deploy_selfee as deploy
from conftest import taken_port
from selfee.chain import final_answer, parse
from selfee.testing.selfee_model import QUESTIONS

USER = [{"role": "user", "content": QUESTIONS[0]}]


@pytest.fixture(scope="module")
def endpoint(ray_session: None, selfee_model_dir: Path) -> Iterator[str]:
    yield deploy(selfee_model_dir)
    serve.shutdown()


def client(base: str, key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=base, api_key=key, max_retries=0, timeout=60)


def test_chat_completion_with_forced_revisions(endpoint: str) -> None:
    done = client(endpoint).chat.completions.create(
        model="model", messages=USER, extra_body={"min_revisions": 2}, max_tokens=300
    )
    selfee = done.model_extra["selfee"]
    assert selfee["revisions_count"] >= 2 and selfee["forced_rewrites"] >= 1
    content = done.choices[0].message.content
    assert content == final_answer(selfee["text"]) and content
    assert selfee["answer"] == parse(selfee["text"]).answer
    assert len(selfee["feedbacks"]) >= 2 and len(selfee["revisions"]) == selfee["revisions_count"]
    assert done.usage.completion_tokens > 0 and done.usage.prompt_tokens > 10
    # each continuation after the first reused the engine's cache for the text so far
    assert selfee["calls"] >= 2 and selfee["cached_tokens"] >= done.usage.prompt_tokens
    assert done.usage.prompt_tokens_details.cached_tokens == 0  # a new chain: nothing cached
    assert done.choices[0].finish_reason == "stop"


def test_autonomous_and_capped(endpoint: str) -> None:
    autonomous = client(endpoint).chat.completions.create(model="model", messages=USER)
    assert autonomous.model_extra["selfee"]["finish_reason"] == "verdict"
    capped = client(endpoint).chat.completions.create(
        model="model", messages=USER, extra_body={"max_revisions": 0}
    )
    selfee = capped.model_extra["selfee"]
    assert (selfee["revisions_count"], selfee["finish_reason"]) == (0, "max_revisions")
    assert capped.choices[0].message.content == selfee["answer"]


def stream_chat(endpoint: str, **extra: object) -> list:
    return list(client(endpoint).chat.completions.create(
        model="model", messages=USER, stream=True, extra_body={"min_revisions": 2, **extra}
    ))  # fmt: skip


def test_streaming_sends_the_chain_token_by_token(endpoint: str) -> None:
    chunks = stream_chat(endpoint)
    content = "".join(c.choices[0].delta.content or "" for c in chunks)
    last = chunks[-1].model_extra["selfee"]
    assert last["revisions_count"] >= 2 and chunks[-1].choices[0].finish_reason == "stop"
    assert content == last["text"]  # the whole chain, as written, forced rewrites included
    assert len(chunks) >= chunks[-1].model_extra["selfee"]["usage"]["completion_tokens"] / 3
    kinds = [(c.model_extra["selfee"]["segment"], c.model_extra["selfee"]["number"])
             for c in chunks[1:-1]]  # fmt: skip
    assert kinds[0] == ("answer", 0) and ("feedback", 1) in kinds and ("revision", 2) in kinds
    assert kinds == sorted(kinds, key=lambda k: (k[1], k[0] == "revision"))  # in chain order
    # each segment's text is in the deltas labelled with it and the delta after them: a
    # delta is labelled with the segment it ends in, and tokens that come faster than the
    # client reads are coalesced, so one delta may close a segment and open the next
    deltas = [c.model_extra["selfee"]["delta"] for c in chunks[1:-1]]
    by_kind: dict[tuple[str, int], str] = {}
    for i, key in enumerate(kinds):
        following = deltas[i + 1] if i + 1 < len(kinds) and kinds[i + 1] != key else ""
        by_kind[key] = by_kind.get(key, "") + deltas[i] + following
    assert last["answer"] in by_kind[("answer", 0)]
    assert last["feedbacks"][0] in by_kind[("feedback", 1)]
    assert last["revisions"][1] in by_kind[("revision", 2)]
    assert last["final_answer"] and last["final_answer"] in content


def test_streaming_the_final_answer_only_joins_to_the_plain_content(endpoint: str) -> None:
    plain = client(endpoint).chat.completions.create(
        model="model", messages=USER, extra_body={"min_revisions": 2}
    )
    chunks = stream_chat(endpoint, stream_content="final_answer")
    content = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert content == plain.choices[0].message.content and content
    chain = "".join(c.model_extra["selfee"]["delta"] for c in chunks)  # the chain still streams
    assert chain == plain.model_extra["selfee"]["text"] and len(chunks) > 20


def test_completions_endpoint_and_multi_turn_chat(endpoint: str) -> None:
    done = client(endpoint).completions.create(
        model="model", prompt=QUESTIONS[1], max_tokens=200, extra_body={"min_revisions": 1}
    )
    assert done.choices[0].text == final_answer(done.model_extra["selfee"]["text"])
    first = client(endpoint).chat.completions.create(model="model", messages=USER)
    history = [*USER, {"role": "assistant", "content": first.model_extra["selfee"]["text"]},
               {"role": "user", "content": QUESTIONS[2]}]  # fmt: skip
    second = client(endpoint).chat.completions.create(model="model", messages=history)
    assert second.choices[0].message.content
    # earlier turns keep only their final answer: the prompt grew by it, not by the chain
    assert second.usage.prompt_tokens < first.usage.prompt_tokens * 2 + 30


def test_models_and_health(endpoint: str) -> None:
    assert [m.id for m in client(endpoint).models.list().data] == ["model"]
    assert httpx.get(endpoint.removesuffix("/v1") + "/healthz").json() == {"status": "ok"}


def test_concurrent_requests_share_batches(endpoint: str) -> None:
    async def go() -> None:
        async with openai.AsyncOpenAI(
            base_url=endpoint, api_key="x", max_retries=0, timeout=60
        ) as c:
            await asyncio.gather(*(
                c.chat.completions.create(model="model", messages=[{"role": "user", "content": q}],
                                          extra_body={"min_revisions": 1})
                for q in QUESTIONS[:8]
            ))  # fmt: skip

    asyncio.run(go())
    handle = serve.get_deployment_handle("SelFeeModel", app_name="selfee")
    assert max(handle.batch_sizes.remote().result()) > 1


def test_a_client_that_disconnects_stops_its_generation(endpoint: str) -> None:
    handle = serve.get_deployment_handle("SelFeeModel", app_name="selfee")
    before = handle.tokens_generated.remote().result()
    body = {"messages": USER, "stream": True, "min_revisions": 20, "max_tokens": 3000}
    with httpx.stream("POST", f"{endpoint}/chat/completions", json=body, timeout=60) as response:
        events = (line for line in response.iter_lines() if line)
        assert next(events).startswith("data: ")
        assert "delta" in next(events)  # tokens are arriving: the chain is under way
    time.sleep(1.0)  # the row is dropped at its next token
    stopped_at = handle.tokens_generated.remote().result()
    time.sleep(1.5)
    assert handle.tokens_generated.remote().result() == stopped_at
    # the whole chain would have taken 20 forced revisions: over 1,000 tokens
    assert stopped_at - before < 300


def test_a_client_that_disconnects_before_a_plain_reply_stops_its_chain(endpoint: str) -> None:
    """Not streamed: the steps go to the model replica as one-reply calls; a client that
    gives up mid-chain leaves no step running and none sent after."""
    handle = serve.get_deployment_handle("SelFeeModel", app_name="selfee")
    body = {"messages": USER, "min_revisions": 20, "max_tokens": 3000}
    before, started = handle.tokens_generated.remote().result(), time.monotonic()
    httpx.post(f"{endpoint}/chat/completions", json=body, timeout=60).raise_for_status()
    seconds, whole_chain = (
        time.monotonic() - started,
        handle.tokens_generated.remote().result() - before,
    )
    before += whole_chain
    with pytest.raises(httpx.ReadTimeout):  # gives up a fifth of the way into the chain
        httpx.post(f"{endpoint}/chat/completions", json=body, timeout=seconds / 5)
    time.sleep(1.0)
    stopped_at = handle.tokens_generated.remote().result()
    time.sleep(1.5)
    assert handle.tokens_generated.remote().result() == stopped_at
    assert 0 < stopped_at - before < whole_chain / 2, (stopped_at - before, whole_chain)


LONG = "word " * 6000
BAD = [
    ({"model": "model"}, 400, "'messages' must be a non-empty list"),
    ({"messages": "hi"}, 400, "'messages' must be a non-empty list"),
    ({"messages": [{"role": "user", "content": 3}]}, 400, "messages[0].content must be a string"),
    ({"messages": [{"role": "robot", "content": "x"}]}, 400, "needs a 'role' among"),
    (
        {"messages": [{"role": "assistant", "content": "x"}]},
        400,
        "last message must come from the user",
    ),
    ({"messages": USER, "min_revisions": -1}, 400, "'min_revisions' must be between 0 and 20"),
    ({"messages": USER, "min_revisions": "2"}, 400, "'min_revisions' must be an integer"),
    ({"messages": USER, "min_revisions": 10**9}, 400, "'min_revisions' must be between 0 and 20"),
    ({"messages": USER, "max_revisions": 1.5}, 400, "'max_revisions' must be an integer"),
    ({"messages": USER, "min_revisions": 3, "max_revisions": 1}, 400, "min_revisions (3) is above"),
    ({"messages": USER, "max_tokens": 0}, 400, "'max_tokens' must be between 1"),
    ({"messages": USER, "temperature": 9}, 400, "'temperature' must be between 0 and 2"),
    ({"messages": USER, "stream": "yes"}, 400, "'stream' must be true or false"),
    ({"messages": USER, "n": 3}, 400, "'n' must be 1"),
    ({"messages": [{"role": "user", "content": LONG}]}, 400, "the model's context is 4096"),
    (  # a stream too: nothing is sent before the first step has run
        {"messages": [{"role": "user", "content": LONG}], "stream": True},
        400,
        "is 24028 tokens; the model's context",
    ),
    ({"messages": USER, "stream": True, "stream_content": "answer"}, 400, "stream_content"),
    ({"messages": USER, "model": "gpt-4"}, 404, "model 'gpt-4' does not exist"),
]


@pytest.mark.parametrize("body, status, message", BAD, ids=[m for _, _, m in BAD])
def test_bad_input_gets_a_4xx_that_says_what_is_wrong(
    endpoint: str, body: dict, status: int, message: str
) -> None:
    response = httpx.post(f"{endpoint}/chat/completions", json=body, timeout=60)
    assert response.status_code == status
    error = response.json()["error"]
    assert message in error["message"] and error["type"]


def test_malformed_json_and_bad_completion_prompt(endpoint: str) -> None:
    raw = httpx.post(f"{endpoint}/chat/completions", content=b"{not json", timeout=30)
    assert raw.status_code == 400 and "not valid JSON" in raw.json()["error"]["message"]
    empty = httpx.post(f"{endpoint}/completions", json={"prompt": ""}, timeout=30)
    assert empty.status_code == 400 and "'prompt'" in empty.json()["error"]["message"]


def test_bearer_token_auth(
    ray_session: None, selfee_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    serve.shutdown()  # the module's app is redeployed by its fixture only once; run last
    monkeypatch.setenv("MY_SELFEE_KEY", "sk-test-secret-1")  # the variable the config names
    base = deploy(selfee_model_dir, api_key_env="MY_SELFEE_KEY")
    try:
        with pytest.raises(openai.AuthenticationError) as refused:
            client(base, "sk-wrong").chat.completions.create(model="model", messages=USER)
        assert "sk-wrong" not in str(refused.value) and "sk-test-secret-1" not in str(refused.value)
        missing = httpx.post(f"{base}/chat/completions", json={"messages": USER}, timeout=30)
        assert missing.status_code == 401
        done = client(base, "sk-test-secret-1").chat.completions.create(
            model="model", messages=USER
        )
        assert done.choices[0].message.content
        app_args = json.dumps(serve.status().applications["selfee"].deployments, default=str)
        assert "sk-test-secret-1" not in app_args
    finally:
        serve.shutdown()


def test_selfee_serve_command_serves_until_interrupted(
    selfee_model_dir: Path, tmp_path: Path
) -> None:
    """``selfee serve --model DIR`` in its own process, on its own embedded Ray."""
    from conftest import selfee_serve

    log = tmp_path / "serve.log"
    with selfee_serve(selfee_model_dir, log) as base:
        models = httpx.get(f"{base}/models", timeout=30)
        assert models.json()["data"][0]["id"] == "model"
        done = client(base).chat.completions.create(
            model="model", messages=USER, extra_body={"min_revisions": 1}
        )
        assert done.model_extra["selfee"]["revisions_count"] >= 1
    assert "selfee serve: interrupted" in log.read_text()


def test_a_port_in_use_is_one_line(selfee_model_dir: Path, tmp_path: Path) -> None:
    """``selfee serve`` on a taken port: one line naming it, before Ray starts — once Ray
    had started, its HTTP proxy's bind error came with the proxy's traceback, forwarded to
    the console (seen in CI on a slower machine)."""
    import subprocess
    import sys

    with taken_port() as port:
        done = subprocess.run(
            [sys.executable, "-m", "selfee.cli", "serve", "--model", str(selfee_model_dir),
             "--port", str(port), "--ray.num-cpus", "1", "--no-ray.dashboard"],
            capture_output=True, text=True, timeout=180, cwd=tmp_path,
        )  # fmt: skip
    assert done.returncode == 1, done.stderr[-2000:]
    assert f"--port {port}: 127.0.0.1:{port} is in use" in done.stderr
    assert "Traceback" not in done.stderr


def test_the_port_is_checked_before_an_embedded_ray_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """The check binds as Serve's proxy does; on a cluster the proxy binds on the head node,
    not here, and a Ray this process already holds runs its own proxy (Serve may be up on
    that very port): neither is checked."""
    import ray

    from selfee.config import RayConfig
    from selfee.errors import ConfigError
    from selfee.serve.app import check_port_free

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)  # as in a new `selfee serve`
    with taken_port() as port:
        with pytest.raises(ConfigError) as caught:
            check_port_free("127.0.0.1", port, "--port", RayConfig())
        assert str(caught.value).startswith(f"--port {port}: 127.0.0.1:{port} is in use")
        check_port_free("127.0.0.1", port, "--port", RayConfig(address="10.0.0.1:6379"))
        monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
        check_port_free("127.0.0.1", port, "--port", RayConfig())
        monkeypatch.delenv("RAY_ADDRESS")
        monkeypatch.setattr(ray, "is_initialized", lambda: True)
        check_port_free("127.0.0.1", port, "--port", RayConfig())
        monkeypatch.setattr(ray, "is_initialized", lambda: False)
    check_port_free("127.0.0.1", port, "--port", RayConfig())  # free again


def test_a_port_taken_after_the_check_is_still_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """Taken between the check and Serve's start (or on a cluster's head node): Serve's
    bind failure is the same one line."""
    from selfee.errors import ConfigError
    from selfee.serve.app import start_serve

    def bind_failed(**options: object) -> None:
        raise RuntimeError("Failed to bind to address '127.0.0.1:8123'.")

    monkeypatch.setattr(serve, "start", bind_failed)
    with pytest.raises(ConfigError) as caught:
        start_serve("127.0.0.1", 8123, "--serve-port")
    assert str(caught.value).startswith("--serve-port 8123: 127.0.0.1:8123 is in use")


def test_a_proxy_that_serve_gave_up_on_is_one_error(
    ray_session: None, selfee_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Serve kills an HTTP proxy slow to start (seen on a busy 2-core machine) and
    ``serve.start`` raises the actor's death: ``selfee serve`` says what happened and which
    setting waits longer, in one line (``JobFailed``), not a traceback."""
    from ray.exceptions import ActorDiedError

    from selfee.errors import JobFailed
    from selfee.serve.app import serve_forever
    from selfee.serve.config import ServeConfig

    def proxy_killed(**options: object) -> None:
        raise ActorDiedError()

    monkeypatch.setattr(serve, "start", proxy_killed)
    monkeypatch.setenv("RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S", "12")
    with pytest.raises(JobFailed) as caught:
        serve_forever(ServeConfig(model=selfee_model_dir))
    assert str(caught.value) == (
        "Ray Serve's HTTP proxy did not start in time (a busy machine?): try again, or allow "
        "it more than 12 s per check with $RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S"
    )


def test_an_embedded_ray_gives_serve_s_proxy_time_to_start(tmp_path: Path) -> None:
    """An embedded Ray's processes (Serve's controller among them) wait 30 s per readiness
    check of the HTTP proxy, not Serve's 5; a value in the environment is kept."""
    import os
    import subprocess
    import sys

    script = (
        "import os, ray\n"
        "from selfee.config import RayConfig\n"
        "from selfee.ray_runtime import ray_runtime\n"
        "with ray_runtime(RayConfig(num_cpus=1, dashboard=False)):\n"
        "    wait = ray.remote(lambda: os.environ.get('RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S'))\n"
        "    print('wait', ray.get(wait.remote()))\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS",
           "RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S")}  # fmt: skip
    for given, expected in ((None, "30"), ("7", "7")):
        run_env = env if given is None else {**env, "RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S": given}
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                              timeout=120, cwd=tmp_path, env=run_env)  # fmt: skip
        assert f"wait {expected}\n" in done.stdout, done.stderr[-2000:]


def test_parked_tokens_reach_the_hf_engine(selfee_model_dir: Path) -> None:
    """``parked_tokens`` bounds what a replica's HF engine keeps for chains between steps
    (in the model's device memory: on a GPU, room the batch could use)."""
    from selfee.serve.config import ServeConfig
    from selfee.serve.models import SelFeeModel

    none_kept = SelFeeModel(ServeConfig(model=selfee_model_dir, parked_tokens=0)).engine
    assert none_kept.parked_tokens == 0
    default = SelFeeModel(ServeConfig(model=selfee_model_dir)).engine
    assert default.parked_tokens == 2 * default.max_context
