"""The offline teacher's HTTP server: OpenAI-compatible chat and completions, limits, faults.

One FastAPI app serves both ways: as a plain process (``selfee teacher``) and as a Ray Serve
app (``serve_apps/teacher_app.py``). Counters live in the app, so a Serve deployment of the
teacher should keep one replica when its ``/stats`` are to be read.
"""

from __future__ import annotations

import asyncio
import math
import os
import random
import socket
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from selfee import openai_wire as wire
from selfee.teacher.config import TeacherConfig
from selfee.teacher.replies import (
    ReplySettings,
    count_tokens,
    reply,
    selfee_continuation,
    truncate_tokens,
)

WINDOW_S = 60.0
Checked = TypeVar("Checked", bound=wire.SamplingRequest)
BANNER = (
    "OFFLINE TEACHER: deterministic synthetic replies for tests and demos, not a real LLM. "
    "Configure a real endpoint and API key for real data."
)


@dataclass
class TeacherState:
    """Counters, the server-side rate limit and the fault dice; touched only from the event loop."""

    config: TeacherConfig
    rng: random.Random = field(init=False)
    received: int = 0
    served: int = 0
    rate_limited: int = 0
    context_rejected: int = 0
    faults: Counter[str] = field(default_factory=Counter)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    max_requests_in_any_60s: int = 0
    in_latency: int = 0  # requests in their added latency now
    max_concurrent: int = 0  # the most at once: what a server in front lets through
    first_request_at: float | None = None
    last_request_at: float | None = None
    _arrivals: deque[float] = field(default_factory=deque)
    _admitted: deque[float] = field(default_factory=deque)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.config.seed)

    def arrive(self, now: float) -> None:
        self.received += 1
        self.first_request_at = self.first_request_at or now
        self.last_request_at = now
        _trim(self._arrivals, now)
        self._arrivals.append(now)
        self.max_requests_in_any_60s = max(self.max_requests_in_any_60s, len(self._arrivals))

    def admit(self, now: float) -> int | None:
        """None if the request may proceed, else the seconds to put in ``Retry-After``."""
        if self.config.rpm is None:
            return None
        _trim(self._admitted, now)
        if len(self._admitted) >= self.config.rpm:
            self.rate_limited += 1
            return max(1, math.ceil(self._admitted[0] + WINDOW_S - now))
        self._admitted.append(now)
        return None

    def draw_fault(self) -> str | None:
        if self.config.fault_rate <= 0 or self.rng.random() >= self.config.fault_rate:
            return None
        kind = self.config.fault_kinds[self.rng.randrange(len(self.config.fault_kinds))]
        self.faults[kind] += 1
        if kind == "429":
            self.rate_limited += 1
        return kind

    def snapshot(self) -> dict[str, Any]:
        return {
            "model": self.config.model,
            "offline": True,
            "requests": self.served,
            "received": self.received,
            "rate_limited": self.rate_limited,
            "context_rejected": self.context_rejected,
            "faults": dict(self.faults),
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "max_requests_in_any_60s": self.max_requests_in_any_60s,
            "max_concurrent": self.max_concurrent,
            "first_request_at": self.first_request_at,
            "last_request_at": self.last_request_at,
            "rpm_limit": self.config.rpm,
        }


def _trim(window: deque[float], now: float) -> None:
    while window and window[0] <= now - WINDOW_S:
        window.popleft()


def openai_error(
    status: int, message: str, headers: dict[str, str] | None = None, code: str | None = None
) -> JSONResponse:
    code = code or {429: "rate_limit_exceeded", 500: "server_error"}.get(status)
    return wire.error_response(wire.APIError(status, message, code=code), headers)


def _no_stream(request: wire.SamplingRequest) -> wire.SamplingRequest:
    if request.stream:
        raise wire.APIError(400, "the offline teacher does not stream; send 'stream': false",
                            "stream")  # fmt: skip
    return request


def estimated_tokens(texts: list[str]) -> int:
    """What a prompt costs against the context window: 4 bytes a token, as BPE on English."""
    return sum(math.ceil(len(text.encode("utf-8")) / 4) + 3 for text in texts)


def create_app(config: TeacherConfig | None = None) -> FastAPI:
    config = config or TeacherConfig()
    required_key = os.environ.get(config.api_key_env, "") if config.api_key_env else None
    state = TeacherState(config)
    settings = ReplySettings(
        config.seed,
        config.needed_fraction,
        config.later_needed_fraction,
        config.judge_unparseable_fraction,
    )
    app = FastAPI(title="SelFee offline teacher", description=BANNER)
    app.state.teacher = state

    def check_key(request: Request) -> JSONResponse | None:
        if required_key is None:
            return None
        sent = wire.bearer_token(request.headers.get("authorization"))
        if sent == required_key:
            return None
        return openai_error(401, f"Incorrect API key provided: {sent}.", code="invalid_api_key")

    async def gate(
        request: Request, model: type[Checked], prompt_of: Callable[[Checked], list[str]]
    ) -> tuple[Checked | None, Response | None]:
        """Key, rate limit, body checks, context, latency and injected faults: (body, None)
        when the request may be answered, else (None, the response to send)."""
        now = time.time()
        state.arrive(now)
        if (refused := check_key(request)) is not None:
            return None, refused
        retry_after = state.admit(now)
        if retry_after is not None:
            return None, openai_error(
                429,
                f"rate limit of {config.rpm} requests per minute reached",
                headers={"Retry-After": str(retry_after)},
            )
        fault = state.draw_fault()
        try:
            raw = await wire.read_body(request.stream(), request.headers.get("content-length"))
            body = _no_stream(wire.validate(model, raw))
        except wire.APIError as e:
            return None, wire.error_response(e)
        if config.max_context is not None:
            wanted = estimated_tokens(prompt_of(body)) + (body.wanted_tokens or 0)
            if wanted > config.max_context:
                state.context_rejected += 1
                return None, openai_error(
                    400,
                    f"This model's maximum context length is {config.max_context} tokens. "
                    f"However, you requested {wanted} tokens. Please reduce the length of the "
                    "messages or completion.",
                    code="context_length_exceeded",
                )
        if config.latency_ms:
            state.in_latency += 1
            state.max_concurrent = max(state.max_concurrent, state.in_latency)
            try:
                await asyncio.sleep(config.latency_ms / 1000)
            finally:
                state.in_latency -= 1
        if fault == "429":
            return None, openai_error(429, "injected rate limit", {"Retry-After": "1"})
        if fault == "500":
            return None, openai_error(500, "injected server error")
        if fault == "timeout":
            await asyncio.sleep(config.timeout_fault_s)
            return None, openai_error(500, "injected timeout")
        if fault == "malformed":
            return None, Response(
                '{"id": "cmpl-broken", "choices": [', media_type="application/json"
            )
        return body, None

    def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
        state.served += 1
        state.prompt_tokens += prompt_tokens
        state.completion_tokens += completion_tokens
        return {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }

    def reply_json(
        prefix: str, kind: str, choice: dict[str, Any], finish: str, used: dict[str, int]
    ) -> JSONResponse:
        body = {
            "id": f"{prefix}-offline-{state.received}",
            "object": kind,
            "created": int(time.time()),
            "model": config.model,
            "system_fingerprint": "offline-teacher",
            "choices": [{"index": 0, **choice, "finish_reason": finish}],
            "usage": used,
        }
        return JSONResponse(body, headers={"X-Offline-Teacher": "1"})

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        body, refused = await gate(
            request, wire.ChatRequest, lambda b: [m.content for m in b.messages]
        )
        if body is None:
            return refused  # type: ignore[return-value]
        messages = [m.model_dump() for m in body.messages]
        content, finish_reason = truncate_tokens(reply(messages, settings), body.wanted_tokens)
        prompt_tokens = sum(count_tokens(m["content"]) for m in messages)
        choice = {"message": {"role": "assistant", "content": content}}
        return reply_json("chatcmpl", "chat.completion", choice, finish_reason,
                          usage(prompt_tokens, count_tokens(content)))  # fmt: skip

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        """The teacher as a SelFee model: continues a SelFee prompt (``selfee.revision``'s
        engine protocol: stop strings, and ``stop_reason`` saying which one matched)."""
        body, refused = await gate(request, wire.CompletionsRequest, lambda b: [b.prompt_text])
        if body is None:
            return refused  # type: ignore[return-value]
        prompt = body.prompt_text
        text = selfee_continuation(prompt, settings)
        hits = sorted((text.find(s), s) for s in body.stops() if s and s in text)
        stop_reason = None
        if hits:
            text, stop_reason = text[: hits[0][0]], hits[0][1]
        text, finish_reason = truncate_tokens(text, body.max_tokens or 16)
        if finish_reason == "length":
            stop_reason = None
        choice = {"text": text, "logprobs": None, "stop_reason": stop_reason}
        return reply_json("cmpl", "text_completion", choice, finish_reason,
                          usage(count_tokens(prompt), count_tokens(text)))  # fmt: skip

    @app.get("/v1/models")
    async def models(request: Request) -> Any:
        if (refused := check_key(request)) is not None:
            return refused
        return {
            "object": "list",
            "data": [
                {"id": config.model, "object": "model", "created": 0, "owned_by": "selfee-offline"}
            ],
        }

    @app.get("/stats")
    async def stats() -> dict[str, Any]:
        return state.snapshot()

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app


def bind_socket(host: str, port: int) -> socket.socket:
    """Bind before serving so that port 0 resolves to a real port we can print; a port
    that is taken is one line (``OSError``) naming it."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise OSError(
            f"cannot listen on {host}:{port}: {e.strerror}; pick another --port"
        ) from None
    sock.listen(128)  # clients that come before the server loop runs wait in the backlog
    return sock


def _uvicorn_server(config: TeacherConfig) -> uvicorn.Server:
    return uvicorn.Server(uvicorn.Config(create_app(config), log_level="warning", lifespan="off"))


def serve_forever(config: TeacherConfig) -> None:
    """Run the teacher in this process until interrupted (``selfee teacher``)."""
    sock = bind_socket(config.host, config.port)
    port = sock.getsockname()[1]
    print(f"*** {BANNER}", file=sys.stderr)
    print(f"offline teacher listening on http://{config.host}:{port}/v1", flush=True)
    _uvicorn_server(config).run(sockets=[sock])


class TeacherThread:
    """The teacher on a background thread of this process: for tests, benchmarks, notebooks.

    >>> with TeacherThread(TeacherConfig(port=0)) as teacher:
    ...     client = openai.AsyncOpenAI(base_url=teacher.base_url, api_key="unused")
    """

    def __init__(self, config: TeacherConfig) -> None:
        self.config = config
        self._sock = bind_socket(config.host, config.port)
        self.port: int = self._sock.getsockname()[1]
        self._server = _uvicorn_server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://{self.config.host}:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def __enter__(self) -> TeacherThread:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the offline teacher did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._sock.close()
