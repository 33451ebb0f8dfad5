"""The OpenAI wire format for a SelFee model: request checks, prompts, responses, chunks.

Pure functions, so every 4xx case is testable without Ray. A request either becomes a
``GenerationRequest`` or raises ``APIError`` (status, message naming the field, OpenAI
error type); nothing a client sends may end in a 500.

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

from selfee.chain import final_answer, render_prompt
from selfee.revision import RevisionResult, RevisionSettings

ROLES = ("system", "user", "assistant")


class APIError(Exception):
    def __init__(
        self, status: int, message: str, param: str | None = None, code: str | None = None
    ):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def body(self) -> dict[str, Any]:
        kind = {401: "authentication_error", 404: "invalid_request_error"}.get(
            self.status, "invalid_request_error"
        )
        return {
            "error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}
        }


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
    (as upstream did); system messages are not part of SelFee's format and are left out."""
    turns = [m for m in messages if m["role"] != "system"]
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
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object")
    model = body.get("model")
    if model is not None and model != limits.model_name:
        raise APIError(
            404, f"model '{model}' does not exist; this server has '{limits.model_name}'",
            "model", "model_not_found",
        )  # fmt: skip
    prompt = _chat_messages(body) if chat else _completion_prompt(body)
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise APIError(400, "'stream' must be true or false", "stream")
    if body.get("n", 1) != 1:
        raise APIError(400, "'n' must be 1: one chain per request", "n")
    max_tokens = _integer(body, "max_tokens", limits.max_new_tokens, 1, limits.max_context)
    if chat and "max_completion_tokens" in body:
        max_tokens = _integer(body, "max_completion_tokens", max_tokens, 1, limits.max_context)
    min_revisions = _integer(body, "min_revisions", 0, 0, limits.max_revisions)
    max_revisions = _integer(body, "max_revisions", None, 0, limits.max_revisions)
    if max_revisions is not None and min_revisions > max_revisions:
        raise APIError(
            400, f"min_revisions ({min_revisions}) is above max_revisions ({max_revisions})",
            "min_revisions",
        )  # fmt: skip
    temperature = _number(body, "temperature", 0.0, 0.0, 2.0)
    top_p = _number(body, "top_p", 1.0, 0.0, 1.0)
    if top_p == 0:
        raise APIError(400, "'top_p' must be above 0", "top_p")
    seed = _integer(body, "seed", 0, -(2**63), 2**63 - 1)
    settings = RevisionSettings(min_revisions, max_revisions, max_tokens, temperature, top_p, seed)
    return GenerationRequest(prompt, settings, stream, chat)


def _chat_messages(body: dict[str, Any]) -> str:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise APIError(400, "'messages' must be a non-empty list of messages", "messages")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise APIError(
                400, f"messages[{i}] needs a 'role' among {', '.join(ROLES)}", "messages"
            )
        if not isinstance(message.get("content"), str):
            raise APIError(400, f"messages[{i}].content must be a string", "messages")
    if messages[-1]["role"] != "user":
        raise APIError(400, "the last message must come from the user", "messages")
    return chat_prompt(messages)


def _completion_prompt(body: dict[str, Any]) -> str:
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str) or not prompt:
        raise APIError(400, "'prompt' must be a non-empty string", "prompt")
    # an instruction alone gets the SelFee prompt; a SelFee prompt is taken as it is
    return prompt if "### Answer:" in prompt else render_prompt(prompt)


def _integer(body: dict[str, Any], key: str, default: Any, low: int, high: int) -> Any:
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise APIError(400, f"'{key}' must be an integer (got {json.dumps(value)})", key)
    if not low <= value <= high:
        raise APIError(400, f"'{key}' must be between {low} and {high} (got {value})", key)
    return value


def _number(body: dict[str, Any], key: str, default: float, low: float, high: float) -> float:
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise APIError(400, f"'{key}' must be a number (got {json.dumps(value)})", key)
    if not low <= value <= high:
        raise APIError(400, f"'{key}' must be between {low:g} and {high:g} (got {value})", key)
    return float(value)


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
