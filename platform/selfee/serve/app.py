"""SelFee on Ray Serve: a model deployment that batches, and an OpenAI-compatible ingress.

``SelFeeModel`` holds the model (``HFEngine``, or ``LlamaCppEngine`` for a .gguf file) in
each replica and exposes one thing: a completion step, batched with ``@serve.batch``
across all requests that arrive together.
``OpenAIIngress`` (FastAPI) checks each request, runs ``selfee.revision``'s controller for
it (the same code as batch inference) and sends each step to the model deployment, so the
steps of many requests share forward passes. A client that disconnects stops its chain at
the next step. Replicas of the model deployment autoscale on ongoing requests.

No ``from __future__ import annotations`` here: FastAPI must see ``Request`` itself, not a
string, in the signatures of the ingress's methods.
"""

import asyncio
import json
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from ray import serve
from ray.serve import Application
from ray.serve.handle import DeploymentHandle

from selfee import openai_wire as wire
from selfee.config import ServeConfig
from selfee.revision import Completion, CompletionRequest, RevisionController
from selfee.serve import openai_api as api

API_KEY_ENV = "SELFEE_API_KEY"
logger = logging.getLogger("ray.serve")


@dataclass(frozen=True)
class StepFailed:
    """A step the engine could not run, for that request alone (its batch goes on)."""

    status: int  # 400: the request's fault (its context is full); 500: ours
    message: str
    code: str | None = None


class SelFeeModel:
    """One model copy; ``step`` runs the completion steps of concurrent requests as one batch."""

    def __init__(self, cfg: ServeConfig) -> None:
        from selfee.engines import load_engine

        self.engine = load_engine(str(cfg.model), cfg.engine, cfg.device, cfg.dtype,
                                  max(1, int(cfg.cpus_per_replica)))  # fmt: skip
        self.step.set_max_batch_size(cfg.max_batch_size)
        self.step.set_batch_wait_timeout_s(cfg.batch_wait_timeout_s)
        self.batches: list[int] = []  # sizes of the last batches, for tests and benchmarks
        self.steps = 0

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def step(self, requests: list[CompletionRequest]) -> list[Completion | StepFailed]:
        self.batches = [*self.batches[-99:], len(requests)]
        self.steps += len(requests)
        try:
            return await asyncio.to_thread(self.engine.complete_batch, requests)
        except Exception as e:  # one request is at fault: run them one by one to find it
            if len(requests) == 1:
                return [_step_failed(requests[0], e)]
        out: list[Completion | StepFailed] = []
        for request in requests:
            try:
                out += await asyncio.to_thread(self.engine.complete_batch, [request])
            except Exception as e:
                out.append(_step_failed(request, e))
        return out

    def count_tokens(self, text: str) -> int:
        return self.engine.count_tokens(text)

    def max_context(self) -> int:
        return self.engine.max_context

    def batch_sizes(self) -> list[int]:
        return self.batches

    def steps_taken(self) -> int:
        return self.steps


def _step_failed(request: CompletionRequest, error: Exception) -> StepFailed:
    """What a request that failed alone gets; the traceback goes to the replica's log."""
    if isinstance(error, ValueError):  # the engine's word: the prompt fills the context
        return StepFailed(400, str(error), "context_length_exceeded")
    logger.error("a model step failed (request %s)", request.key, exc_info=error)
    return StepFailed(500, "the model failed on this request; it was not retried")


app = FastAPI(title="SelFee", description="OpenAI-compatible SelFee endpoint with revision control")


@serve.ingress(app)
class OpenAIIngress:
    def __init__(
        self, model: DeploymentHandle, cfg: ServeConfig, key_sha256: str | None = None
    ) -> None:
        self.model = model
        self.cfg = cfg
        self.name = cfg.served_name()
        # the key's hash travels in the app's arguments (the dashboard shows them); the
        # replica's own environment may hold the key too
        self.key_sha256 = wire.key_sha256(os.environ.get(API_KEY_ENV)) or key_sha256
        self.limits: api.Limits | None = None

    async def _limits(self) -> api.Limits:
        if self.limits is None:
            context = await self.model.max_context.remote()
            self.limits = api.Limits(
                self.name, context, self.cfg.max_new_tokens, self.cfg.max_revisions_limit
            )
        return self.limits

    def _refused(self, request: Request) -> JSONResponse | None:
        if self.key_sha256 is None:
            return None
        if wire.bearer_matches(request.headers.get("authorization"), self.key_sha256):
            return None
        error = api.APIError(
            401, "missing or wrong API key (Authorization: Bearer ...)", code="invalid_api_key"
        )
        return wire.error_response(error)

    @app.get("/healthz")
    async def healthz(self) -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models(self, request: Request) -> Any:
        if (refused := self._refused(request)) is not None:
            return refused
        return {
            "object": "list",
            "data": [{"id": self.name, "object": "model", "owned_by": "selfee"}],
        }

    @app.post("/v1/chat/completions")
    async def chat_completions(self, request: Request) -> Response:
        return await self._complete(request, chat=True)

    @app.post("/v1/completions")
    async def completions(self, request: Request) -> Response:
        return await self._complete(request, chat=False)

    async def _complete(self, request: Request, chat: bool) -> Response:
        if (refused := self._refused(request)) is not None:
            return refused
        try:
            body = await wire.read_body(request.stream(), request.headers.get("content-length"))
            limits = await self._limits()
            wanted = api.parse_request(body, limits, chat)
            prompt_tokens = await self.model.count_tokens.remote(wanted.prompt)
            if prompt_tokens >= limits.max_context:
                raise api.APIError(
                    400,
                    f"the prompt is {prompt_tokens} tokens; this model's context is "
                    f"{limits.max_context} tokens",
                    "messages" if chat else "prompt",
                    "context_length_exceeded",
                )
        except api.APIError as e:
            return wire.error_response(e)
        request_id = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"
        controller = RevisionController(
            wanted.prompt, wanted.settings, key=request_id, stream_segments=wanted.stream
        )
        if wanted.stream:
            events = self._stream(request, controller, request_id, chat, prompt_tokens)
            return StreamingResponse(events, media_type="text/event-stream")
        try:
            while (step := controller.next_request()) is not None:
                if await request.is_disconnected():
                    return Response(status_code=499)
                await self._feed(controller, step)
        except api.APIError as e:
            return wire.error_response(e)
        result = controller.result()
        return JSONResponse(api.response(request_id, self.name, result, prompt_tokens, chat))

    async def _feed(self, controller: RevisionController, step: CompletionRequest) -> None:
        done = await self.model.step.remote(step)
        if isinstance(done, StepFailed):
            raise api.APIError(done.status, done.message, code=done.code)
        controller.feed(done)

    async def _stream(
        self, request: Request, controller: RevisionController, request_id: str, chat: bool,
        prompt_tokens: int,
    ) -> AsyncIterator[str]:  # fmt: skip
        """Every stream ends with its final chunk or an error event, then ``[DONE]``."""
        yield api.chunk(request_id, self.name, chat, "" if chat else None, None, {"text": ""})
        started = time.monotonic()
        try:
            while (step := controller.next_request()) is not None:
                await self._feed(controller, step)
                yield api.chunk(request_id, self.name, chat, None, None, {"text": controller.text})
            result = controller.result()
            selfee = {**api.selfee_object(result), "usage": api.usage(result, prompt_tokens),
                      "latency_s": round(time.monotonic() - started, 3)}  # fmt: skip
            yield api.chunk(
                request_id, self.name, chat, result.final_answer, api.openai_finish(result), selfee
            )
        except api.APIError as e:
            yield f"data: {json.dumps(e.body())}\n\n"
        except Exception:
            logger.exception("stream %s failed", request_id)
            failed = api.APIError(500, "the stream failed on the server; it was not retried")
            yield f"data: {json.dumps(failed.body())}\n\n"
        yield api.DONE


def selfee_application(cfg: ServeConfig) -> Application:
    autoscaling = {
        "min_replicas": cfg.min_replicas,
        "max_replicas": cfg.max_replicas,
        "target_ongoing_requests": cfg.target_ongoing_requests,
    }
    model = serve.deployment(
        SelFeeModel,
        name="SelFeeModel",
        autoscaling_config=autoscaling,
        max_ongoing_requests=max(cfg.max_batch_size * 2, 4),
        ray_actor_options={"num_cpus": cfg.cpus_per_replica, "num_gpus": cfg.gpus_per_replica},
    ).bind(cfg)
    key_sha256 = wire.key_sha256(os.environ.get(API_KEY_ENV))
    ingress = serve.deployment(
        OpenAIIngress, name="OpenAIIngress", ray_actor_options={"num_cpus": 0}
    ).bind(model, cfg, key_sha256)
    return ingress


def build(args: dict[str, Any]) -> Application:
    """Builder for ``serve run configs/serve/selfee.yaml`` (args: any ``ServeConfig`` key)."""
    return selfee_application(ServeConfig.model_validate(args))


def serve_forever(cfg: ServeConfig) -> None:
    """``selfee serve``: deploy on the configured (or an embedded) Ray and wait for Ctrl-C."""
    from selfee.config import ConfigError
    from selfee.engines import check_model
    from selfee.ray_runtime import ray_runtime

    if cfg.model is None:
        raise ConfigError("--model: give a Hugging Face model directory or a .gguf file")
    try:
        check_model(cfg.model, cfg.engine)
    except ValueError as e:
        raise ConfigError(f"--model: {e}") from None
    with ray_runtime(cfg.ray):
        serve.start(http_options={"host": cfg.host, "port": cfg.port})
        serve.run(selfee_application(cfg), name="selfee", route_prefix=cfg.route_prefix)
        base = f"http://{cfg.host}:{cfg.port}{cfg.route_prefix.rstrip('/')}/v1"
        print(f"[serve] {cfg.served_name()} at {base} (chat/completions, completions, models)",
              flush=True)  # fmt: skip
        print(f"[serve] try: curl {base}/chat/completions -H 'Content-Type: application/json' "
              """-d '{"messages": [{"role": "user", "content": "Hi"}], "min_revisions": 1}'""")  # fmt: skip
        if os.environ.get(API_KEY_ENV):
            print(f"[serve] requests need the key in ${API_KEY_ENV} (Authorization: Bearer ...)")
        print("[serve] Ctrl-C stops it", flush=True)
        try:
            while True:
                time.sleep(3600)
        finally:
            serve.shutdown()
