"""The OpenAI wire format for a SelFee model: request checks, prompts, responses, chunks.

Pure functions, so every 4xx case is testable without Ray. A request is checked by
``selfee.openai_wire`` (the request models and their bounds, shared with the offline
teacher) and becomes a ``GenerationRequest``, or raises ``APIError`` (status, message
naming the field, OpenAI error type); nothing a client sends may end in a 5xx.

``content`` (``text`` for completions) is the final answer; the ``selfee`` object carries
the chain (answer, feedbacks, revisions, verdicts' outcome, token counts).

Streaming (``ChainStream``) sends text token by token. What ``delta.content`` carries is
the request's choice, ``stream_content``:

- ``"chain"`` (the default): the chain as the model writes it — answer, "### Feedback 1:",
  feedback, "### Revision 1:", … — so a plain OpenAI client shows it live. Revision control
  only appends text (a forced rewrite's "Revision is needed." and header arrive as one
  delta), with one exception: when the model ends on a verdict in other words and a
  revision is forced, the chunk that replaces it says ``selfee.replace_from`` (the
  character from which the client's text is replaced by this delta's).
- ``"final_answer"``: no content until the last chunk, whose content is the final answer:
  joined content deltas equal the non-streaming ``content``.

Every chunk's ``selfee`` holds ``delta`` (the new chain text, whatever the mode),
``segment`` ("answer", "feedback" or "revision") and ``number`` (k of "Feedback k" /
"Revision k", 0 for the answer) of the segment the text ends in; the last chunk holds the
whole ``selfee`` object, with ``usage`` and ``latency_s``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from selfee import openai_wire as wire
from selfee.chain import (
    final_answer,
    is_selfee_prompt,
    parse_generation,
    render_follow_up,
    render_prompt,
)
from selfee.openai_wire import APIError
from selfee.revision import RevisionResult, RevisionSettings

__all__ = ["APIError", "ChainStream", "GenerationRequest", "Limits", "chat_prompt",
           "parse_request"]  # fmt: skip


@dataclass(frozen=True)
class Limits:
    model_name: str  # what a request that names no model gets
    max_context: int
    max_new_tokens: int = 512  # default when the request gives none
    max_revisions: int = 20  # the most min_revisions / max_revisions a request may ask for
    adapters: tuple[str, ...] = ()  # the other names a request may ask for

    def names(self) -> tuple[str, ...]:
        return (self.model_name, *self.adapters)


@dataclass(frozen=True)
class GenerationRequest:
    prompt: str
    settings: RevisionSettings
    stream: bool
    chat: bool
    final_answer_only: bool = False  # a stream's content: the final answer, not the chain
    model: str = ""  # the served name it asked for (or the default one)


def chat_prompt(messages: list[dict[str, str]]) -> str:
    """The SelFee prompt for a conversation: earlier turns keep only their final answer
    (as upstream did); system (and developer) messages are not part of SelFee's format and
    are left out."""
    turns = [m for m in messages if m["role"] in ("user", "assistant")]
    prompt = ""
    for i, message in enumerate(turns):
        if message["role"] == "user":
            instruction = message["content"]
            prompt += render_follow_up(instruction) if prompt else render_prompt(instruction)
        elif i:  # an assistant turn: its final answer, whether it sent the chain or not
            prompt += final_answer(message["content"])
    return prompt


def parse_request(body: Any, limits: Limits, chat: bool) -> GenerationRequest:
    """A checked request (``selfee.openai_wire``'s models and bounds) as revision settings."""
    model = wire.ChatRequest if chat else wire.CompletionsRequest
    request = wire.validate(
        model, body, max_context=limits.max_context, max_revisions=limits.max_revisions
    )
    if request.model is not None and request.model not in limits.names():
        served = ", ".join(f"'{name}'" for name in limits.names())
        raise APIError(404, f"model '{request.model}' does not exist; this server has {served}",
                       "model", "model_not_found")  # fmt: skip
    if isinstance(request, wire.ChatRequest):
        if request.messages[-1].role != "user":
            raise APIError(400, "the last message must come from the user", "messages")
        prompt = chat_prompt([m.model_dump() for m in request.messages])
    else:
        # an instruction alone gets the SelFee prompt; a SelFee prompt is taken as it is
        text = request.prompt_text
        prompt = text if is_selfee_prompt(text) else render_prompt(text)
    settings = RevisionSettings(
        min_revisions=request.min_revisions,
        max_revisions=request.max_revisions,
        max_new_tokens=request.wanted_tokens or limits.max_new_tokens,
        temperature=request.greedy_temperature(),
        top_p=request.top_p,
        seed=request.seed or 0,
    )
    return GenerationRequest(prompt, settings, request.stream, chat,
                             request.stream_content == "final_answer",
                             request.model or limits.model_name)  # fmt: skip


# --- responses ------------------------------------------------------------------------


def selfee_object(result: RevisionResult) -> dict[str, Any]:
    chain = result.chain
    return {
        "answer": chain.answer,
        "feedbacks": chain.feedbacks,
        "revisions": chain.revisions,
        "final_answer": result.final_answer,
        "revisions_count": result.revisions,
        "forced_rewrites": result.forced_rewrites,
        "finish_reason": result.finish_reason,
        "text": result.text,
        "calls": result.calls,  # engine calls; each after the first continues the chain
        "engine_prompt_tokens": result.prompt_tokens,  # prompt tokens they evaluated
        "cached_tokens": result.cached_tokens,  # and those their engine took from its cache
    }


def openai_finish(result: RevisionResult) -> str:
    return "length" if result.finish_reason == "budget" else "stop"


def usage(result: RevisionResult) -> dict[str, Any]:
    """OpenAI's usage: the request's prompt (cached: the part of it the engine had cached)
    and the tokens generated over the whole chain."""
    prompt_tokens = result.request_prompt_tokens
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": result.tokens,
        "total_tokens": prompt_tokens + result.tokens,
        "prompt_tokens_details": {"cached_tokens": result.first_call_cached_tokens},
    }


def response(request_id: str, model: str, result: RevisionResult, chat: bool) -> dict:
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
        "usage": usage(result),
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
HEADER_CHARS = 24  # "### Revision 123:" and its newlines, with room


@dataclass
class ChainStream:
    """The server-sent events of one streamed chain (see the module's docstring)."""

    request_id: str
    model: str
    chat: bool
    final_answer_only: bool
    sent: str = ""  # the chain text the client has
    segment: tuple[str, int] = ("answer", 0)

    def opening(self) -> str:
        return self._chunk("" if self.chat else None, None, self._selfee(""))

    def piece(self, text: str) -> str:
        self.sent += text
        return self._chunk(self._content(text), None, self._selfee(text))

    def catch_up(self, chain_text: str) -> str:
        """A chunk for the text the controller added after a step ("" when none)."""
        if chain_text.startswith(self.sent):
            new, extra = chain_text[len(self.sent) :], {}
        else:
            keep = _common_prefix(self.sent, chain_text)
            new, extra = chain_text[keep:], {"replace_from": keep}
        if not new and not extra:
            return ""
        self.sent = chain_text
        return self._chunk(self._content(new), None, {**self._selfee(new), **extra})

    def final(self, result: RevisionResult, seconds: float) -> str:
        selfee = {"delta": "", **selfee_object(result), "usage": usage(result),
                  "latency_s": round(seconds, 3)}  # fmt: skip
        content = result.final_answer if self.final_answer_only else ""
        return self._chunk(content, openai_finish(result), selfee)

    def _content(self, text: str) -> str | None:
        return None if self.final_answer_only else text

    def _selfee(self, text: str) -> dict[str, Any]:
        header_at = self.sent.rfind("###", max(0, len(self.sent) - len(text) - HEADER_CHARS))
        if header_at >= 0:  # near a header: the segment may have changed
            last = parse_generation(self.sent).segments[-1]
            self.segment = (last.kind, last.number)
        return {"delta": text, "segment": self.segment[0], "number": self.segment[1]}

    def _chunk(self, content: str | None, finish: str | None, selfee: dict[str, Any]) -> str:
        return chunk(self.request_id, self.model, self.chat, content, finish, selfee)


def _common_prefix(a: str, b: str) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n
