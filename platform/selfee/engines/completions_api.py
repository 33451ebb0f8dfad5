"""Any OpenAI-compatible ``/v1/completions`` endpoint as a completion engine.

vLLM, Ray Serve LLM and this project's own Serve app can be the engine on GPUs; their
prefix caching plays the part of the local engine's KV-cache reuse. They report which stop
string ended a completion (``stop_reason``, as vLLM does); for servers that do not, the
controller tells a stop string from the end of the text (``selfee.revision``).

Requests go through the same wing as the teacher and judge calls (``selfee.llm``): the
actor's share of the job's requests per minute, retries with backoff on 429, 5xx, timeouts
and malformed replies, usage counted. The revision controller is synchronous; the engine
keeps one event loop on a thread of its own for its async client and limiter.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

from selfee.llm import CallFailed, EndpointCall, EndpointRejected, Secret
from selfee.llm_config import RetryConfig
from selfee.ratelimit import RateLimiter, WorkerShare
from selfee.revision import Completion, CompletionRequest

T = TypeVar("T")
CHARS_PER_TOKEN = 4  # a rough prompt size for the token reservation (no tokenizer here)


class EndpointError(RuntimeError):
    """The endpoint refused or failed a request after the retries."""


class CompletionsAPIEngine:
    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: Secret,
        timeout_s: float = 120.0,
        max_retries: int = 4,
        concurrency: int = 8,
        share: WorkerShare | None = None,
        retry: RetryConfig | None = None,
    ) -> None:
        self.model = model
        self.secret = api_key
        self.concurrency = concurrency
        self.policy = retry or RetryConfig(max_retries=max_retries, timeout_s=timeout_s)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                        name="completions-api")  # fmt: skip
        self._thread.start()
        self.call: EndpointCall = self._run(self._start(base_url, share or WorkerShare(None, None)))

    async def _start(self, base_url: str, share: WorkerShare) -> EndpointCall:
        """Built inside the engine's loop: the client, limiter and slots belong to it."""
        import openai

        client = openai.AsyncOpenAI(base_url=base_url, api_key=self.secret.reveal(),
                                    timeout=self.policy.timeout_s, max_retries=0)  # fmt: skip
        self.slots = asyncio.Semaphore(self.concurrency)
        return EndpointCall(client, self.model, RateLimiter(share), self.secret, self.policy)

    def _run(self, work: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(work, self._loop).result()

    def complete(self, request: CompletionRequest) -> Completion:
        return self._run(self._complete(request))

    def complete_batch(self, requests: Sequence[CompletionRequest]) -> list[Completion]:
        """Requests in parallel: the server batches them (continuous batching in vLLM)."""

        async def every() -> list[Completion]:
            return list(await asyncio.gather(*(self._complete(r) for r in requests)))

        return self._run(every())

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)

    async def _complete(self, request: CompletionRequest) -> Completion:
        def create() -> Any:
            return self.call.client.completions.create(
                model=self.model,
                prompt=request.prompt,
                stop=list(request.stop) or None,
                max_tokens=request.max_tokens,
                temperature=request.temperature,
                top_p=request.top_p,
                seed=request.seed,
            )

        reserve = len(request.prompt) // CHARS_PER_TOKEN + request.max_tokens
        async with self.slots:
            try:
                return await self.call.send(create, reserve, _completion)
            except (CallFailed, EndpointRejected) as e:
                answered = f"the endpoint answered HTTP {e.status}" if e.status else (
                    "no usable reply from the endpoint")  # fmt: skip
                raise EndpointError(f"{answered}: {e}") from None


def _completion(response: Any) -> Completion:
    """The first choice as a ``Completion`` (a reply without one raises: retried)."""
    choice = response.choices[0]
    if not isinstance(choice.text, str):
        raise ValueError("a completion without text")
    extra = choice.model_extra or {}
    stop_reason = extra.get("stop_reason")
    usage = response.usage
    if choice.finish_reason == "length":
        finish = "length"
    elif isinstance(stop_reason, str):
        finish = "stop"
    elif "stop_reason" in extra:  # reported, and not a string: EOS (or a stop token id)
        finish = "eos"
    else:  # not reported: "stop" may be EOS or a stop string; the controller decides
        finish, stop_reason = "stop", None
    return Completion(
        text=choice.text,
        finish_reason=finish,  # type: ignore[arg-type]
        tokens=usage.completion_tokens if usage else 0,
        stop=stop_reason if isinstance(stop_reason, str) else None,
        prompt_tokens=usage.prompt_tokens if usage else 0,
    )
