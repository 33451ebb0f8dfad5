"""The model deployment of the batching engines (HF, llama.cpp) behind the SelFee ingress.

``SelFeeModel.step(request, stream)`` is an async generator that yields the step's new
text as the engine writes it (when ``stream``), then the ``Completion`` or a
``StepFailed`` (``whole_step``: only that, in one reply); the steps of requests that
arrive together run as one batch (``@serve.batch``, streamed). A caller that stops
listening drops its row at the next token. (``engine: vllm`` uses Ray Serve LLM's server
instead: ``selfee.serve.llm_server`` yields the same events.)
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ray import serve

from selfee.engines.rows import OnText
from selfee.revision import Completion, CompletionRequest
from selfee.serve.config import ServeConfig

logger = logging.getLogger("ray.serve")
StepEvent = str | Completion  # a piece of new text, or the step's end


@dataclass(frozen=True)
class StepFailed:
    """A step the engine could not run, for that request alone (its batch goes on)."""

    status: int  # 400: the request's fault (its context is full); 500: ours
    message: str
    code: str | None = None


def step_failed(request: CompletionRequest, error: Exception) -> StepFailed:
    """What a request that failed alone gets; the traceback goes to the replica's log."""
    if isinstance(error, ValueError):  # the engine's word: the prompt fills the context
        return StepFailed(400, str(error), "context_length_exceeded")
    logger.error("a model step failed (request %s)", request.key, exc_info=error)
    return StepFailed(500, "the model failed on this request; it was not retried")


async def relay(
    work: Callable[[OnText], Awaitable[list[Any]]], rows: int, go_on: Callable[[int], bool],
) -> AsyncIterator[list[list[Any]]]:  # fmt: skip
    """Run ``work(on_text)`` — engine work that reports new text from any thread — and
    yield, for each of its ``rows``, the text pieces that arrived since the last yield;
    the last yield holds each row's result. ``go_on(row)``: False stops that row."""
    loop = asyncio.get_running_loop()
    arrived: asyncio.Queue[tuple[int, str]] = asyncio.Queue()

    def on_text(row: int, piece: str) -> bool:
        if piece:
            loop.call_soon_threadsafe(arrived.put_nowait, (row, piece))
        return go_on(row)

    task = asyncio.ensure_future(work(on_text))
    try:
        while not task.done() or not arrived.empty():
            getter = asyncio.ensure_future(arrived.get())
            await asyncio.wait([getter, task], return_when=asyncio.FIRST_COMPLETED)
            if not getter.done():
                getter.cancel()
                continue
            pieces: list[list[Any]] = [[] for _ in range(rows)]
            row, piece = getter.result()
            pieces[row].append(piece)
            while not arrived.empty():
                row, piece = arrived.get_nowait()
                pieces[row].append(piece)
            yield pieces
        yield [[result] for result in task.result()]
    finally:
        task.cancel()


class SelFeeModel:
    """One copy of a batching engine; the steps of concurrent requests run as one batch."""

    def __init__(self, cfg: ServeConfig) -> None:
        from selfee.engines import load_engine

        self.engine = load_engine(str(cfg.model), cfg.engine, cfg.device, cfg.dtype,
                                  max(1, int(cfg.cpus_per_replica)), adapters=cfg.adapters)  # fmt: skip
        if cfg.parked_tokens is not None and hasattr(self.engine, "parked_tokens"):  # hf
            self.engine.parked_tokens = cfg.parked_tokens
        self._batch.set_max_batch_size(cfg.max_batch_size)
        self.batch_wait_s = cfg.batch_wait_timeout_s
        self.ongoing = 0  # steps in this replica now, queued or running
        self.batches: list[int] = []  # sizes of the last batches, for tests and benchmarks
        self.tokens = 0  # generated, for tests: a dropped request stops adding to it
        self.gone: set[str] = set()  # requests whose caller went away

    async def step(self, request: CompletionRequest, stream: bool = False) -> AsyncIterator[Any]:
        finished = False
        self.ongoing += 1
        # a step alone starts at once; with others about, it waits a little for company
        self._batch.set_batch_wait_timeout_s(self.batch_wait_s if self.ongoing > 1 else 0.0)
        try:
            async for events in self._batch(request, stream):
                if events and isinstance(events[0], str):  # the text since the last yield:
                    yield "".join(events)  # one message however many tokens it holds
                elif events:
                    finished = True
                    yield events[0]
        finally:
            self.ongoing -= 1
            if not finished:  # the caller stopped listening: drop the row at its next token
                self.gone.add(request.key)

    async def whole_step(self, request: CompletionRequest) -> Completion | StepFailed:
        """``step`` for a caller that wants only the result: one reply, not a stream (a
        Ray streaming call costs about a millisecond more per step)."""
        done: Completion | StepFailed | None = None
        async for event in self.step(request, False):
            done = event
        assert done is not None and not isinstance(done, str)
        return done

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def _batch(
        self, requests: list[CompletionRequest], streams: list[bool]
    ) -> AsyncIterator[list[list[Any]]]:
        self.batches = [*self.batches[-99:], len(requests)]
        keys = [r.key for r in requests]

        def go_on(row: int) -> bool:
            return keys[row] not in self.gone

        async def work(on_text: OnText) -> list[Completion | StepFailed]:
            return await asyncio.to_thread(self._complete, requests, on_text, streams)

        async for pieces in relay(work, len(requests), go_on):
            yield pieces
        self.gone.difference_update(keys)

    def _complete(
        self, requests: Sequence[CompletionRequest], on_text: OnText, streams: Sequence[bool]
    ) -> list[Completion | StepFailed]:
        """One batch; if it fails, each request alone (one is at fault; the others go on).
        Text a row already streamed is not streamed again by its retry."""
        sent = [0] * len(requests)

        def report(row: int, piece: str) -> bool:
            if not streams[row]:
                return on_text(row, "")
            sent[row] += len(piece)
            return on_text(row, piece)

        try:
            done: list[Completion | StepFailed] = list(self.engine.complete_batch(requests, report))
        except Exception as e:
            if len(requests) == 1:
                return [step_failed(requests[0], e)]
            done = []
            for row, request in enumerate(requests):
                resent = _skipping(sent[row], lambda _, piece, row=row: report(row, piece))
                try:
                    done += self.engine.complete_batch([request], resent)
                except Exception as e:
                    done.append(step_failed(request, e))
        self.tokens += sum(d.tokens for d in done if isinstance(d, Completion))
        return done

    def max_context(self) -> int:
        return self.engine.max_context

    def batch_sizes(self) -> list[int]:
        return self.batches

    def tokens_generated(self) -> int:
        return self.tokens


def _skipping(chars: int, on_text: OnText) -> OnText:
    """``on_text`` that swallows the first ``chars`` characters (already sent)."""
    skipped = 0

    def report(row: int, piece: str) -> bool:
        nonlocal skipped
        drop = min(len(piece), chars - skipped)
        skipped += drop
        return on_text(row, piece[drop:])

    return report
