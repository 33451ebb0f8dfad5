"""Any OpenAI-compatible ``/v1/completions`` endpoint as a completion engine.

vLLM, Ray Serve LLM and this project's own Serve app can be the engine on GPUs; their
prefix caching plays the part of the local engine's KV-cache reuse. They report which stop
string ended a completion (``stop_reason``, as vLLM does); for servers that do not, the
controller tells a stop string from the end of the text (``selfee.revision``).
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import openai

from selfee.llm import Secret, not_found_hint
from selfee.revision import Completion, CompletionRequest


class EndpointError(RuntimeError):
    """The endpoint refused or failed a request after the client's retries."""


class CompletionsAPIEngine:
    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: Secret,
        timeout_s: float = 120.0,
        max_retries: int = 4,
        concurrency: int = 8,
    ) -> None:
        self.model = model
        self.secret = api_key
        self.concurrency = concurrency
        self.client = openai.OpenAI(
            base_url=base_url,
            api_key=api_key.reveal(),
            timeout=timeout_s,
            max_retries=max_retries,
        )

    def complete(self, request: CompletionRequest) -> Completion:
        settings: dict[str, Any] = {
            "temperature": request.temperature,
            "top_p": request.top_p,
            "seed": request.seed,
        }
        try:
            response = self.client.completions.create(
                model=self.model,
                prompt=request.prompt,
                stop=list(request.stop) or None,
                max_tokens=request.max_tokens,
                **settings,
            )
        except openai.APIStatusError as e:
            hint = f" ({not_found_hint(str(self.client.base_url), self.model)})"
            raise EndpointError(
                f"the endpoint answered HTTP {e.status_code}: {self.secret.redact(e.message)}"
                + (hint if e.status_code == 404 else "")
            ) from None
        except openai.APIConnectionError as e:
            raise EndpointError(
                f"cannot reach the endpoint: {self.secret.redact(str(e))}"
            ) from None
        choice = response.choices[0]
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

    def complete_batch(self, requests: Sequence[CompletionRequest]) -> list[Completion]:
        """Requests in parallel: the server batches them (continuous batching in vLLM)."""
        if len(requests) == 1:
            return [self.complete(requests[0])]
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(requests))) as pool:
            return list(pool.map(self.complete, requests))
