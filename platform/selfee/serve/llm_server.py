"""``engine: vllm`` on Serve: Ray Serve LLM's vLLM server as the model deployment.

The model deployment is Ray Serve LLM's ``LLMServer`` (vLLM's async engine and its OpenAI
serving layer in each replica), built from an ``LLMConfig``: Ray Serve LLM's placement
(a GPU per replica, or CPUs), its autoscaling, and its ``PrefixCacheAffinityRouter``, which
sends a request to the replica whose prefix tree holds the longest part of its prompt —
so the steps of one chain, each resubmitting the text so far, land where that text is
cached. This project's revision-control ingress (``selfee.serve.app``) stays in front: it
sends each step as a ``/v1/completions`` request (the prompt text, stop strings, the
step's budget; vLLM tokenizes it once, in the replica, and clamps ``max_tokens`` to the
context) and reads vLLM's stream back as the events the other engines' deployment yields.
LoRA adapters (the model, if it is one, and those served beside it) are loaded on their
base when the server starts (vLLM's ``lora_modules``) and each step asks for its own by
name: requests for different adapters share the engine's batches.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from ray.serve import Application
from ray.serve.handle import DeploymentHandle
from ray.serve.llm import LLMConfig, LLMServer, build_llm_deployment

from selfee.adapter import is_adapter
from selfee.engines.vllm import (
    ADAPTER_ID,
    engine_kwargs,
    finish_of,
    lora_ids,
    sampling,
    text_tokens,
    vllm_model,
)
from selfee.revision import Completion, CompletionRequest
from selfee.serve.config import ServeConfig
from selfee.serve.models import StepFailed
from selfee.serve.routing import request_router_config

SERVED_ID = "selfee"  # the model id inside Ray Serve LLM (clients see ServeConfig's name)
STREAM_BATCH_MS = 10  # Ray Serve LLM sends stream chunks in batches this often (default 50)


class SelFeeLLMServer(LLMServer):
    """Ray Serve LLM's server, plus what the ingress and the tests read from a replica."""

    async def max_context(self) -> int:
        return int(self._engine_client().model_config.max_model_len)

    async def running_requests(self) -> int:
        return int(self._engine_client().output_processor.get_num_unfinished_requests())

    def _engine_client(self) -> Any:  # vLLM's AsyncLLM inside Ray Serve LLM's engine
        return self.engine._engine_client


def llm_config(cfg: ServeConfig) -> LLMConfig:
    gpus = cfg.gpus_per_replica > 0
    deployment: dict[str, Any] = {
        "autoscaling_config": {
            "min_replicas": cfg.min_replicas,
            "max_replicas": cfg.max_replicas,
            "target_ongoing_requests": cfg.target_ongoing_requests,
        },
        "max_ongoing_requests": cfg.vllm.max_num_seqs,
    }
    if not gpus:  # the replica actor takes none: its bundle holds the CPUs vLLM runs on
        deployment["ray_actor_options"] = {"num_cpus": 0}
    if router := request_router_config(cfg, vllm=True):
        deployment["request_router_config"] = router
    model = vllm_model(cfg.model)
    served = served_models(cfg)
    beside = {served[name]: vllm_model(path) for name, path in cfg.adapters.items()}
    engine = {
        **engine_kwargs(cfg.vllm, cfg.dtype, 0, cpu=not gpus),
        **model.engine_kwargs(list(beside.values())),
        "enable_prompt_tokens_details": True,  # usage.prompt_tokens_details.cached_tokens
    }
    loras = {**({ADAPTER_ID: model} if model.adapter is not None else {}), **beside}
    if loras:  # loaded at start, asked for by name (served_models)
        from vllm.entrypoints.openai.models.protocol import LoRAModulePath

        engine["lora_modules"] = [LoRAModulePath(name, str(lora.adapter))
                                  for name, lora in loras.items()]  # fmt: skip
    return LLMConfig(
        model_loading_config={"model_id": SERVED_ID, "model_source": model.base},
        accelerator_config=None if gpus else {"kind": "cpu"},
        placement_group_config=None if gpus else {"bundles": [{"CPU": cfg.cpus_per_replica}]},
        engine_kwargs=engine,
        deployment_config=deployment,
        experimental_configs={"stream_batching_interval_ms": STREAM_BATCH_MS},
        runtime_env={"env_vars": {"VLLM_LOGGING_LEVEL": "WARNING"}},
    )


def llm_deployment(cfg: ServeConfig) -> Application:
    return build_llm_deployment(
        llm_config(cfg), deployment_cls=SelFeeLLMServer,
        override_serve_options={"name": "SelFeeModel"},
    )  # fmt: skip


def served_models(cfg: ServeConfig) -> dict[str, str]:
    """Each name clients may ask for → the model the ingress asks the server for: the base,
    or an adapter on it (whose settings ``llm_config`` has read and checked already)."""
    first = ADAPTER_ID if is_adapter(cfg.model) else SERVED_ID
    return {cfg.served_name(): first} | {
        name: lora_name for name, (lora_name, _) in lora_ids(cfg.adapters).items()
    }


def completion_request(request: CompletionRequest, model: str) -> Any:
    """A step as vLLM's OpenAI completion request (always streamed: tokens as they come)."""
    from ray.llm._internal.serve.core.configs.openai_api_models import (
        CompletionRequest as OpenAICompletion,
    )

    return OpenAICompletion(
        model=model, prompt=request.prompt, max_tokens=request.max_tokens,
        stop=list(request.stop), **sampling(request),
        stream=True, stream_options={"include_usage": True},
    )  # fmt: skip


async def llm_step(
    server: DeploymentHandle, model: str, request: CompletionRequest, stream: bool
) -> AsyncIterator[str | Completion | StepFailed]:
    """One step on the ``LLMServer`` (``model``: one of ``served_models``): its text as it comes (when
    ``stream``), then the ``Completion`` or a ``StepFailed``. Closed early, it cancels the
    request (vLLM aborts)."""
    text, finish, stop, usage = "", "length", None, {}
    response = server.options(stream=True).completions.remote(completion_request(request, model))
    done = False
    try:
        async for batch in response:
            for item in batch if isinstance(batch, list) else [batch]:
                if not isinstance(item, str):  # an ErrorResponse
                    error = item.error
                    yield StepFailed(400 if error.code < 500 else 500, error.message,
                                     "context_length_exceeded" if error.code < 500 else None)  # fmt: skip
                    done = True
                    return
                if not item.startswith("data: {"):
                    continue
                body = json.loads(item[len("data: ") :])
                usage = body.get("usage") or usage
                for choice in body.get("choices", []):
                    text += choice["text"]
                    if stream and choice["text"]:
                        yield choice["text"]
                    if choice.get("finish_reason"):
                        finish, stop = finish_of(choice["finish_reason"], choice.get("stop_reason"))
        cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
        done = True
        tokens = text_tokens(usage.get("completion_tokens", 0), finish)
        yield Completion(text, finish, tokens, stop,  # type: ignore[arg-type]
                         usage.get("prompt_tokens", 0) - cached, (), cached)  # fmt: skip
    finally:
        if not done:
            response.cancel()
