"""The OpenAI wire format for a SelFee model: request checks, prompts, responses, chunks.

Pure functions, so every 4xx case is testable without Ray. A request is checked by
``selfee.openai_wire`` (the request models and their bounds, shared with the offline
teacher) and becomes a ``GenerationRequest``, or raises ``APIError`` (status, message
naming the field, OpenAI error type); nothing a client sends may end in a 5xx.

``content`` (``text`` for completions) is the final answer; the ``selfee`` object carries
the chain. Streaming sends the chain as it grows in ``selfee.text`` (a rewrite may change
what was sent before, so each chunk carries all of it) and the final answer as the
``content`` delta of the last chunk, so an OpenAI client that joins the deltas gets the
same ``content`` as without streaming.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from selfee import openai_wire as wire
from selfee.chain import final_answer, render_prompt
from selfee.openai_wire import APIError
from selfee.revision import RevisionResult, RevisionSettings

__all__ = ["APIError", "GenerationRequest", "Limits", "chat_prompt", "parse_request"]


@dataclass(frozen=True)
class Limits:
    model_name: str
    max_context: int
    max_new_tokens: int = 512  # default when the request gives none
    max_revisions: int = 20  # the most min_revisions / max_revisions a request may ask for


@dataclass(frozen=True)
class GenerationRequest:
    prompt: str
    settings: RevisionSettings
    stream: bool
    chat: bool


def chat_prompt(messages: list[dict[str, str]]) -> str:
    """The SelFee prompt for a conversation: earlier turns keep only their final answer
    (as upstream did); system (and developer) messages are not part of SelFee's format and
    are left out."""
    turns = [m for m in messages if m["role"] in ("user", "assistant")]
    prompt = ""
    for i, message in enumerate(turns):
        if message["role"] == "user":
            instruction = message["content"]
            prompt += (
                render_prompt(instruction)
                if not prompt
                else (f"\n\n### Instruction:\n{instruction}\n\n### Answer:\n")
            )
        elif i:  # an assistant turn: its final answer, whether it sent the chain or not
            prompt += final_answer(message["content"])
    return prompt


def parse_request(body: Any, limits: Limits, chat: bool) -> GenerationRequest:
    """A checked request (``selfee.openai_wire``'s models and bounds) as revision settings."""
    model = wire.ChatRequest if chat else wire.CompletionsRequest
    request = wire.validate(
        model, body, max_context=limits.max_context, max_revisions=limits.max_revisions
    )
    if request.model is not None and request.model != limits.model_name:
        raise APIError(
            404, f"model '{request.model}' does not exist; this server has '{limits.model_name}'",
            "model", "model_not_found",
        )  # fmt: skip
    if isinstance(request, wire.ChatRequest):
        if request.messages[-1].role != "user":
            raise APIError(400, "the last message must come from the user", "messages")
        prompt = chat_prompt([m.model_dump() for m in request.messages])
    else:
        # an instruction alone gets the SelFee prompt; a SelFee prompt is taken as it is
        text = request.prompt_text
        prompt = text if "### Answer:" in text else render_prompt(text)
    settings = RevisionSettings(
        min_revisions=request.min_revisions,
        max_revisions=request.max_revisions,
        max_new_tokens=request.wanted_tokens or limits.max_new_tokens,
        temperature=request.greedy_temperature(),
        top_p=request.top_p,
        seed=request.seed or 0,
    )
    return GenerationRequest(prompt, settings, request.stream, chat)


# --- responses ------------------------------------------------------------------------


def selfee_object(result: RevisionResult) -> dict[str, Any]:
    chain = result.chain
    return {
        "answer": chain.answer,
        "feedbacks": chain.feedbacks,
        "revisions": chain.revisions,
        "revisions_count": result.revisions,
        "forced_rewrites": result.forced_rewrites,
        "finish_reason": result.finish_reason,
        "text": result.text,
    }


def openai_finish(result: RevisionResult) -> str:
    return "length" if result.finish_reason == "budget" else "stop"


def usage(result: RevisionResult, prompt_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": result.tokens,
        "total_tokens": prompt_tokens + result.tokens,
    }


def response(
    request_id: str, model: str, result: RevisionResult, prompt_tokens: int, chat: bool
) -> dict:
    choice: dict[str, Any] = {"index": 0, "finish_reason": openai_finish(result), "logprobs": None}
    if chat:
        choice["message"] = {"role": "assistant", "content": result.final_answer}
    else:
        choice["text"] = result.final_answer
    return {
        "id": request_id,
        "object": "chat.completion" if chat else "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [choice],
        "usage": usage(result, prompt_tokens),
        "selfee": selfee_object(result),
    }


def chunk(request_id: str, model: str, chat: bool, delta: str | None, finish: str | None,
          selfee: dict[str, Any]) -> str:  # fmt: skip
    """One server-sent event."""
    choice: dict[str, Any] = {"index": 0, "finish_reason": finish, "logprobs": None}
    if chat:
        choice["delta"] = {"role": "assistant", "content": delta} if delta is not None else {}
    else:
        choice["text"] = delta or ""
    body = {
        "id": request_id,
        "object": "chat.completion.chunk" if chat else "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [choice],
        "selfee": selfee,
    }
    return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"


DONE = "data: [DONE]\n\n"
