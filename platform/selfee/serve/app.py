"""SelFee on Ray Serve: an OpenAI-compatible ingress in front of a model deployment.

``OpenAIIngress`` (FastAPI) checks each request, runs ``selfee.revision``'s controller for
it (the same code as batch inference) and sends each step to the model deployment
(``selfee.serve.models.SelFeeModel`` batches the steps of concurrent requests on the HF or
llama.cpp engine; with vLLM it is Ray Serve LLM's server, ``selfee.serve.llm_server``),
streaming the text token by token when the client asked for a stream. A client that
disconnects ends its engine request at once. Replicas of the model deployment autoscale on
ongoing requests.

No ``from __future__ import annotations`` here: FastAPI must see ``Request`` itself, not a
string, in the signatures of the ingress's methods.
"""

import dataclasses
import errno
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from ray import serve
from ray.serve import Application
from ray.serve.handle import DeploymentHandle

from selfee import metrics
from selfee import openai_wire as wire
from selfee.config import RayConfig
from selfee.console import wait_for_ctrl_c
from selfee.errors import ConfigError, JobFailed
from selfee.ray_runtime import PROXY_WAIT, ray_runtime, will_embed
from selfee.revision import Completion, CompletionRequest, RevisionController
from selfee.serve import openai_api as api
from selfee.serve.config import ServeConfig
from selfee.serve.models import SelFeeModel, StepFailed
from selfee.serve.routing import request_router_config

logger = logging.getLogger("ray.serve")


app = FastAPI(title="SelFee", description="OpenAI-compatible SelFee endpoint with revision control")


def _record_first_text(arrived: float, model: str) -> None:
    """Defined above the ingress: ``serve.ingress`` pickles the class by value as it is
    decorated, with only the module names that exist by then."""
    metrics.record("selfee_time_to_first_token_seconds", time.monotonic() - arrived,
                   stage="serve", model=model)  # fmt: skip


@serve.ingress(app)
class OpenAIIngress:
    def __init__(
        self, model: DeploymentHandle, cfg: ServeConfig, key_sha256: str | None = None,
        vllm_models: dict[str, str] | None = None,
    ) -> None:  # fmt: skip
        """``vllm_models``: the model deployment is Ray Serve LLM's server; each served
        name → the model asked of it (decided where the app is built, which reads the
        model's folder). Else each name but the first is an adapter the engine holds."""
        self.model = model
        self.cfg = cfg
        self.vllm_models = vllm_models
        self.name = cfg.served_name()
        # the key's hash travels in the app's arguments (the dashboard shows them); the
        # replica's own environment may hold the key too
        self.key_sha256 = wire.key_sha256(os.environ.get(cfg.api_key_env)) or key_sha256
        self.limits: api.Limits | None = None

    async def _limits(self) -> api.Limits:
        if self.limits is None:
            context = await self.model.max_context.remote()
            self.limits = api.Limits(self.name, context, self.cfg.max_new_tokens,
                                     self.cfg.max_revisions_limit, tuple(self.cfg.adapters))  # fmt: skip
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
        models = [{"id": name, "object": "model", "owned_by": "selfee"}
                  for name in self.cfg.served_names()]  # fmt: skip
        return {"object": "list", "data": models}

    @app.post("/v1/chat/completions")
    async def chat_completions(self, request: Request) -> Response:
        return await self._complete(request, chat=True)

    @app.post("/v1/completions")
    async def completions(self, request: Request) -> Response:
        return await self._complete(request, chat=False)

    async def _complete(self, request: Request, chat: bool) -> Response:
        if (refused := self._refused(request)) is not None:
            return refused
        request_id = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"
        try:
            body = await wire.read_body(request.stream(), request.headers.get("content-length"))
            limits = await self._limits()
            wanted = api.parse_request(body, limits, chat)
            controller = RevisionController(wanted.prompt, wanted.settings, key=request_id)
            chain = self._chain(controller, wanted.stream, wanted.model)
            # the first step tells the prompt's length, or that it does not fit (a 400,
            # even for a stream: nothing is sent before it)
            first = await anext(chain, None)
        except api.APIError as e:
            return wire.error_response(e)
        if wanted.stream:
            sse = api.ChainStream(request_id, wanted.model, chat, wanted.final_answer_only)
            events = self._stream(sse, controller, chain, first)
            return StreamingResponse(events, media_type="text/event-stream")
        try:
            async for _ in chain:
                if await request.is_disconnected():
                    await chain.aclose()
                    return Response(status_code=499)
        except api.APIError as e:
            return wire.error_response(e)
        result = controller.result()
        return JSONResponse(api.response(request_id, wanted.model, result, chat))

    async def _chain(
        self, controller: RevisionController, stream: bool, model: str
    ) -> AsyncIterator[str]:
        """Run the chain step by step on ``model`` (a served name): the new text as the
        engine writes it (when ``stream``), and "" after each step, when the controller may
        have added text. Metrics: the time to the first text, and the finished chain."""
        arrived, waiting = time.monotonic(), True  # waiting: no text written yet
        while (step := controller.next_request()) is not None:
            done: Completion | None = None
            async for event in self._step(step, stream, model):
                if isinstance(event, StepFailed):
                    raise api.APIError(event.status, event.message, code=event.code)
                if isinstance(event, str):
                    if event and waiting:
                        waiting = False
                        _record_first_text(arrived, model)
                    yield event
                else:
                    done = event
            assert done is not None, "the model deployment ended a step without its result"
            if done.text and waiting:  # not streamed: the first step brought the text
                waiting = False
                _record_first_text(arrived, model)
            controller.feed(done)
            yield ""
        result = controller.result().summary()
        metrics.record_chain("serve", model, result)
        seconds = max(time.monotonic() - arrived, 1e-9)
        metrics.record("selfee_tokens_per_second", result["tokens"] / seconds, stage="serve",
                       model=model)  # fmt: skip

    async def _step(self, step: CompletionRequest, stream: bool, model: str) -> AsyncIterator[Any]:
        """One step on the model deployment; closed early, the deployment drops it."""
        if self.vllm_models is not None:
            from selfee.serve.llm_server import llm_step

            async for event in llm_step(self.model, self.vllm_models[model], step, stream):
                yield event
            return
        if model != self.name:  # one of the adapters the engine holds beside the model
            step = dataclasses.replace(step, adapter=model)
        if not stream:
            whole = self.model.whole_step.remote(step)
            try:
                done = await whole
            except BaseException:  # cancelled before the reply came: the replica drops it
                whole.cancel()
                raise
            yield done
            return
        response = self.model.options(stream=True).step.remote(step, stream)
        finished = False
        try:
            async for event in response:
                finished = not isinstance(event, str)
                yield event
        finally:
            if not finished:
                response.cancel()

    async def _stream(
        self, sse: "api.ChainStream", controller: RevisionController,
        chain: AsyncIterator[str], first: str | None,
    ) -> AsyncIterator[str]:  # fmt: skip
        """Every stream ends with its final chunk or an error event, then ``[DONE]``."""
        yield sse.opening()
        started = time.monotonic()
        try:
            try:
                piece = first
                while piece is not None:
                    if piece:
                        yield sse.piece(piece)
                    elif caught_up := sse.catch_up(controller.text):  # a step ended: the
                        yield caught_up  # controller may have added (or rewritten) text
                    piece = await anext(chain, None)
                yield sse.final(controller.result(), time.monotonic() - started)
            except api.APIError as e:
                yield f"data: {json.dumps(e.body())}\n\n"
            except Exception:
                logger.exception("stream %s failed", sse.request_id)
                failed = api.APIError(500, "the stream failed on the server; it was not retried")
                yield f"data: {json.dumps(failed.body())}\n\n"
            yield api.DONE
        finally:
            await chain.aclose()  # a client that went away: its engine request ends now


def model_deployment(cfg: ServeConfig) -> Application:
    """The model deployment for the configured engine (named ``SelFeeModel`` whatever the
    engine): Ray Serve LLM's vLLM server, or ours for the engines that batch the steps
    that arrive together."""
    if uses_vllm(cfg):
        from selfee.serve.llm_server import llm_deployment

        return llm_deployment(cfg)
    options: dict[str, Any] = {}
    if router := request_router_config(cfg, vllm=False):
        options["request_router_config"] = router
    return serve.deployment(
        SelFeeModel,
        name="SelFeeModel",
        autoscaling_config={
            "min_replicas": cfg.min_replicas,
            "max_replicas": cfg.max_replicas,
            "target_ongoing_requests": cfg.target_ongoing_requests,
        },
        max_ongoing_requests=max(cfg.max_batch_size * 2, 4),
        ray_actor_options={"num_cpus": cfg.cpus_per_replica, "num_gpus": cfg.gpus_per_replica},
        **options,
    ).bind(cfg)


def uses_vllm(cfg: ServeConfig) -> bool:
    from selfee.engines import engine_for

    return engine_for(str(cfg.model), cfg.engine, cfg.gpus_per_replica) == "vllm"


def selfee_application(cfg: ServeConfig) -> Application:
    model = model_deployment(cfg)
    key_sha256 = wire.key_sha256(os.environ.get(cfg.api_key_env))
    vllm_models = None
    if uses_vllm(cfg):
        from selfee.serve.llm_server import served_models

        vllm_models = served_models(cfg)
    ingress = serve.deployment(
        OpenAIIngress, name="OpenAIIngress", ray_actor_options={"num_cpus": 0},
        max_ongoing_requests=cfg.ingress_max_ongoing_requests,
    ).bind(model, cfg, key_sha256, vllm_models)  # fmt: skip
    return ingress


def build(args: dict[str, Any]) -> Application:
    """Builder for ``serve run configs/serve/selfee.yaml`` (args: any ``ServeConfig`` key).
    The model and its adapters are checked here, as ``selfee serve`` checks them: a replica
    would fail on them later, or (adapters vLLM's CPU build mixes up) answer wrongly."""
    from selfee.engines import check_model

    cfg = ServeConfig.model_validate(args)
    cfg.require()
    check_model(cfg.model, cfg.engine, cfg.gpus_per_replica, cfg.adapters)
    return selfee_application(cfg)


def port_in_use(host: str, port: int, port_option: str) -> ConfigError:
    return ConfigError(f"{port_option} {port}: {host}:{port} is in use (another server, or "
                       f"Serve started by another job): pick another {port_option}")  # fmt: skip


def check_port_free(host: str, port: int, port_option: str, ray: RayConfig) -> None:
    """Before an embedded Ray starts (its HTTP proxy would bind host:port on this machine):
    a port something listens on is one line at once, not a failure after Ray's start with
    the proxy's traceback forwarded to the console. Binds as the proxy does (no
    ``SO_REUSEADDR``); other bind errors are left to Serve."""
    if not will_embed(ray):
        return
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        try:
            probe.bind((host, port))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise port_in_use(host, port, port_option) from None


def start_serve(host: str, port: int, port_option: str = "--port", **options: Any) -> None:
    """``serve.start`` with its HTTP proxy on host:port; the proxy's failures to start are
    one line each: a taken port (a ``ConfigError`` naming ``port_option``), a proxy Serve
    gave up waiting for (a busy machine)."""
    from ray.exceptions import RayActorError

    try:
        serve.start(http_options={"host": host, "port": port}, **options)
    except Exception as e:
        if "Failed to bind" in str(e):  # taken after check_port_free, or on a cluster
            raise port_in_use(host, port, port_option) from None
        if isinstance(e, RayActorError):  # Serve gave up waiting for it
            wait = os.environ.get(PROXY_WAIT, "5")
            raise JobFailed(f"Ray Serve's HTTP proxy did not start in time (a busy machine?): "
                            f"try again, or allow it more than {wait} s per check with "
                            f"${PROXY_WAIT}") from None  # fmt: skip
        raise


def serve_forever(cfg: ServeConfig) -> None:
    """``selfee serve``: deploy on the configured (or an embedded) Ray and wait for Ctrl-C."""
    from selfee.engines import AdaptersRefused, check_model

    cfg.require()
    try:
        check_model(cfg.model, cfg.engine, cfg.gpus_per_replica, cfg.adapters)
    except AdaptersRefused as e:
        raise ConfigError(str(e)) from None
    except ValueError as e:
        raise ConfigError(f"--model: {e}") from None
    check_port_free(cfg.host, cfg.port, "--port", cfg.ray)
    with ray_runtime(cfg.ray):
        start_serve(cfg.host, cfg.port)
        serve.run(selfee_application(cfg), name="selfee", route_prefix=cfg.route_prefix)
        base = f"http://{cfg.host}:{cfg.port}{cfg.route_prefix.rstrip('/')}/v1"
        print(f"[serve] {', '.join(cfg.served_names())} at {base} (chat/completions, "
              "completions, models)", flush=True)  # fmt: skip
        print(f"[serve] try: curl {base}/chat/completions -H 'Content-Type: application/json' "
              """-d '{"messages": [{"role": "user", "content": "Hi"}], "min_revisions": 1}'""")  # fmt: skip
        if os.environ.get(cfg.api_key_env):
            print(
                f"[serve] requests need the key in ${cfg.api_key_env} (Authorization: Bearer ...)"
            )
        print("[serve] Ctrl-C stops it", flush=True)
        try:
            wait_for_ctrl_c()
        finally:
            serve.shutdown()
