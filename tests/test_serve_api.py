"""The OpenAI wire format for SelFee, without Ray: prompts and request checks."""

from __future__ import annotations

import pytest

from selfee.chain import render_prompt
from selfee.serve.openai_api import APIError, Limits, chat_prompt, parse_request

LIMITS = Limits("selfee-13b", max_context=2048)


def test_multi_turn_keeps_only_final_answers_of_earlier_turns() -> None:
    chain = "Red.\n\n### Feedback 1:\nWhy? Revision is needed.\n\n### Revision 1:\nBlood red.\n\n### Feedback 2:\nOk. Revision is not needed."
    prompt = chat_prompt([
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Name a color."},
        {"role": "assistant", "content": chain},
        {"role": "user", "content": "And another?"},
    ])  # fmt: skip
    assert prompt == (
        render_prompt("Name a color.") + "Blood red."
        + "\n\n### Instruction:\nAnd another?\n\n### Answer:\n"
    )  # fmt: skip
    assert "Feedback" not in prompt and "terse" not in prompt


def test_a_request_becomes_revision_settings() -> None:
    wanted = parse_request(
        {"model": "selfee-13b", "messages": [{"role": "user", "content": "Hi"}],
         "min_revisions": 2, "max_revisions": 3, "max_tokens": 100, "temperature": 0.5,
         "top_p": 0.9, "seed": 4, "stream": True},
        LIMITS, chat=True,
    )  # fmt: skip
    s = wanted.settings
    assert (s.min_revisions, s.max_revisions, s.max_new_tokens) == (2, 3, 100)
    assert (s.temperature, s.top_p, s.seed, wanted.stream) == (0.5, 0.9, 4, True)
    assert wanted.prompt == render_prompt("Hi")
    defaults = parse_request({"prompt": "Hi"}, LIMITS, chat=False).settings
    assert (defaults.min_revisions, defaults.max_revisions, defaults.max_new_tokens) == (
        0,
        None,
        512,
    )
    selfee_prompt = render_prompt("Hi") + "Hello."
    assert parse_request({"prompt": selfee_prompt}, LIMITS, chat=False).prompt == selfee_prompt


@pytest.mark.parametrize(
    "body, param",
    [
        ([], None),
        ({"messages": [{"role": "user", "content": "x"}], "min_revisions": True}, "min_revisions"),
        ({"messages": [{"role": "user", "content": "x"}], "max_tokens": 4096}, "max_tokens"),
        ({"messages": [{"role": "user", "content": "x"}], "top_p": 0}, "top_p"),
        ({"messages": [{"role": "user", "content": "x"}], "temperature": "hot"}, "temperature"),
    ],
)
def test_bad_requests_are_api_errors_naming_the_field(body: object, param: str | None) -> None:
    with pytest.raises(APIError) as caught:
        parse_request(body, LIMITS, chat=True)
    assert caught.value.status == 400 and caught.value.param == param
    assert caught.value.body()["error"]["message"]


def test_a_request_that_fails_in_a_model_step_fails_alone() -> None:
    """The batched step (run here without Serve): the batch fails, each request is tried
    alone; the failing ones get their own error, their neighbours their completion, and
    text a row streamed before the batch failed is not streamed again."""
    from selfee.revision import Completion, CompletionRequest
    from selfee.serve.models import SelFeeModel, StepFailed

    class Engine:
        def __init__(self) -> None:
            self.calls: list[list[str]] = []

        def complete_batch(self, requests: list[CompletionRequest], on_text) -> list[Completion]:
            self.calls.append([r.key for r in requests])
            for i, r in enumerate(requests):
                on_text(i, f"ok {r.key}"[:2])
                on_text(i, f"ok {r.key}"[2:])
                if r.key == "bug":
                    raise RuntimeError("an engine bug")
                if r.key == "long":
                    raise ValueError("the prompt is 5000 tokens; the model's context is 4096")
            return [Completion(f"ok {r.key}", "eos", 1) for r in requests]

    model = object.__new__(SelFeeModel)
    model.engine, model.tokens = Engine(), 0
    requests = [CompletionRequest("p", (), 4, key=k) for k in ("a", "bug", "b", "long")]
    streamed: dict[int, str] = {}

    def on_text(row: int, piece: str) -> bool:
        streamed[row] = streamed.get(row, "") + piece
        return True

    out = model._complete(requests, on_text, [True, True, True, False])
    assert [o.text for o in (out[0], out[2])] == ["ok a", "ok b"]
    assert out[1] == StepFailed(500, "the model failed on this request; it was not retried")
    assert out[3] == StepFailed(400, "the prompt is 5000 tokens; the model's context is 4096",
                                "context_length_exceeded")  # fmt: skip
    assert model.engine.calls == [["a", "bug", "b", "long"], ["a"], ["bug"], ["b"], ["long"]]
    # each text once, though "a" was streamed by the failed batch and again by its retry
    assert streamed == {0: "ok a", 1: "ok bug", 2: "ok b", 3: ""}


def test_a_stream_that_fails_on_the_server_still_ends_with_done() -> None:
    import asyncio
    import json

    from selfee.revision import RevisionController, RevisionSettings
    from selfee.serve.app import OpenAIIngress
    from selfee.serve.openai_api import ChainStream

    async def broken_chain():
        yield "Red"
        raise RuntimeError("the replica died")

    async def collect() -> list[str]:
        controller = RevisionController("### Answer:\n", RevisionSettings(max_new_tokens=8))
        sse = ChainStream("chatcmpl-x", "model", True, False)
        chain = broken_chain()
        first = await anext(chain)
        return [event async for event in OpenAIIngress._stream(None, sse, controller, chain, first)]

    events = asyncio.run(collect())
    assert json.loads(events[1].removeprefix("data: "))["choices"][0]["delta"]["content"] == "Red"
    assert events[-1] == "data: [DONE]\n\n"
    error = json.loads(events[-2].removeprefix("data: "))["error"]
    assert error["type"] == "server_error" and "the stream failed" in error["message"]


def test_the_relay_sends_each_token_as_it_comes_and_joins_only_a_burst() -> None:
    """The model replica's relay from the engine's thread: a token that comes while the
    relay waits goes out alone; tokens that came together (the reader was busy) go out
    as one piece per row; rows stay apart and the results come last."""
    import asyncio

    from selfee.serve.models import relay

    async def collect() -> list[list[list[str]]]:
        async def work(on_text) -> list[str]:
            for piece in ("a", "b", "c"):  # one at a time, each read before the next
                await asyncio.to_thread(on_text, 0, piece)
                await asyncio.sleep(0.05)
            for piece in ("d", "e", "f"):  # a burst in one loop turn: read together
                on_text(0, piece)
            on_text(1, "x")
            on_text(1, "")  # nothing new: not a piece
            await asyncio.sleep(0.05)
            return ["row 0", "row 1"]

        return [pieces async for pieces in relay(work, 2, lambda row: True)]

    pieces = asyncio.run(collect())
    assert pieces == [[["a"], []], [["b"], []], [["c"], []], [["d", "e", "f"], ["x"]],
                      [["row 0"], ["row 1"]]]  # fmt: skip
