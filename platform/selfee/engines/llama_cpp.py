"""A GGUF model through llama.cpp (llama-cpp-python's bindings) as a completion engine.

SelFee's published CPU form is quantized files for llama.cpp; this engine runs them behind
the same revision control as every other engine. One llama.cpp context holds one KV
sequence per chain (``slots`` sequences, each its own KV stream: attention reads only its
own cells, so chains kept for later cost nothing; a unified cache made every decode read
all of them, +28% on forced revisions). A continuation — after a
stop string, after a forced rewrite — keeps the tokens its sequence already holds (the
longest common prefix with the new prompt's tokens), removes the rest from the cache and
evaluates only the new tokens: the rule of ``selfee.engines.hf``, so ``prompt_tokens``
counts what was really evaluated. The chains of one ``complete_batch`` call decode
together (one ``llama_decode`` per generated token for all of them).

Greedy decoding takes the arg-max logit (the first on ties, as the HF engine does), so an
f32/f16 file of a model gives the HF engine's tokens. Sampling uses numpy with the
request's seed (reproducible, not the HF engine's random stream).
"""

from __future__ import annotations

import codecs
import collections
import ctypes
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from selfee.engines import rows
from selfee.engines.rows import OnText, RowCall, batch_keys, check_context, kept_prefix, shifted
from selfee.revision import GREEDY_BELOW, Completion, CompletionRequest

GGUF_MAGIC = b"GGUF"


class GGUFError(ValueError):
    """A file this engine cannot run; the message names the file and says why."""


def bindings() -> Any:
    try:
        import llama_cpp
    except ImportError:
        raise GGUFError(
            "llama-cpp-python is not installed: `make install-llama-cpp` builds it (see the "
            "README's section on GGUF), or pip install 'selfee[llama-cpp]'"
        ) from None
    _quiet(llama_cpp)
    return llama_cpp


LOG_LINES: collections.deque[str] = collections.deque(maxlen=200)  # llama.cpp's latest log
_CALLBACK: Any = None


def _quiet(llama_cpp: Any) -> None:
    """llama.cpp logs to stderr by default; keep its lines here (shown in load errors, or
    printed with ``SELFEE_LLAMA_CPP_VERBOSE=1``)."""
    global _CALLBACK
    if _CALLBACK is not None:
        return
    verbose = bool(os.environ.get("SELFEE_LLAMA_CPP_VERBOSE"))

    @llama_cpp.llama_log_callback
    def collect(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
        line = text.decode("utf-8", "replace")
        LOG_LINES.append(line)
        if verbose:
            print(line, end="", flush=True)

    _CALLBACK = collect  # referenced for as long as llama.cpp may call it
    llama_cpp.llama_log_set(_CALLBACK, ctypes.c_void_p(0))


def check_gguf(path: str | Path) -> Path:
    """A readable file that starts like a GGUF file, or a ``GGUFError`` naming it."""
    path = Path(path)
    if not path.is_file():
        raise GGUFError(f"{path}: no such GGUF file")
    with open(path, "rb") as f:
        head = f.read(8)
    if head[:4] != GGUF_MAGIC:
        raise GGUFError(
            f"{path} is not a GGUF file (it starts with {head[:4]!r}); make one with "
            "`selfee export gguf --model DIR`"
        )
    return path


def _load_model(llama_cpp: Any, path: Path) -> Any:
    """The model (memory-mapped: opening even a big file is quick), or a ``GGUFError`` with
    llama.cpp's own reason."""
    llama_cpp.llama_backend_init()
    LOG_LINES.clear()
    model = llama_cpp.llama_model_load_from_file(
        str(path).encode(), llama_cpp.llama_model_default_params()
    )
    if not model:
        reason = next((line.strip() for line in reversed(LOG_LINES) if "error" in line.lower()),
                      "no reason given")  # fmt: skip
        raise GGUFError(
            f"{path}: llama.cpp cannot load it ({reason}); a truncated file or an "
            "architecture this llama.cpp does not know"
        )
    return model


def probe_gguf(path: str | Path) -> Path:
    """Open a GGUF file the way the engine will, and close it: a bad file is one error
    naming it before any job starts."""
    path = check_gguf(path)
    llama_cpp = bindings()
    llama_cpp.llama_model_free(_load_model(llama_cpp, path))
    return path


@dataclass
class _Row:
    """One chain's KV sequence: the token ids it holds."""

    key: str
    seq: int
    ids: list[int] = field(default_factory=list)
    used: int = 0  # when it last ran (least recently used rows give up their slot)


@dataclass(kw_only=True)
class _Step(RowCall):
    row: _Row
    rng: np.random.Generator | None
    decoder: Any = field(default_factory=lambda: codecs.getincrementaldecoder("utf-8")("replace"))


class LlamaCppEngine:
    def __init__(
        self, path: str | Path, n_threads: int | None = None, slots: int = 8, n_batch: int = 512
    ) -> None:
        self.path = check_gguf(path)
        llama_cpp = bindings()
        self._lib = llama_cpp
        self.slots = slots
        self.n_batch = n_batch
        self.n_threads = n_threads or len(os.sched_getaffinity(0))
        self._model = _load_model(llama_cpp, self.path)
        self._vocab = llama_cpp.llama_model_get_vocab(self._model)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(self._vocab)
        self.max_context = llama_cpp.llama_model_n_ctx_train(self._model)
        ctx_params = llama_cpp.llama_context_default_params()
        ctx_params.n_ctx = self.max_context * slots
        ctx_params.n_batch = n_batch
        ctx_params.n_ubatch = n_batch
        ctx_params.n_seq_max = slots  # with n_ctx = max_context * slots: max_context each
        ctx_params.kv_unified = False  # a stream per sequence: attention reads its own cells only
        ctx_params.n_threads = ctx_params.n_threads_batch = self.n_threads
        self._ctx = llama_cpp.llama_init_from_model(self._model, ctx_params)
        if not self._ctx:
            raise GGUFError(f"{self.path}: llama.cpp could not make a context for it")
        self._memory = llama_cpp.llama_get_memory(self._ctx)
        self._batch = llama_cpp.llama_batch_init(n_batch, 0, 1)
        self._rows: dict[str, _Row] = {}
        self._clock = 0

    @classmethod
    def load(cls, path: str | Path, n_threads: int | None = None) -> LlamaCppEngine:
        return cls(path, n_threads)

    def close(self) -> None:
        lib = self._lib
        if getattr(self, "_batch", None) is not None:
            lib.llama_batch_free(self._batch)
            self._batch = None
        if getattr(self, "_ctx", None):
            lib.llama_free(self._ctx)
            self._ctx = None
        if getattr(self, "_model", None):
            lib.llama_model_free(self._model)
            self._model = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    def metadata(self, key: str) -> str | None:
        buf = ctypes.create_string_buffer(256)
        n = self._lib.llama_model_meta_val_str(self._model, key.encode(), buf, len(buf))
        return buf.value.decode("utf-8", "replace") if n >= 0 else None

    # --- tokens ---------------------------------------------------------------------

    def tokenize(self, text: str) -> list[int]:
        """Ids as the model's own tokenizer gives them: BOS when the model adds one, special
        and added tokens in the text matched as tokens (as Hugging Face tokenizers do)."""
        data = text.encode("utf-8")
        size = len(data) + 8
        while True:
            out = (self._lib.llama_token * size)()
            n = self._lib.llama_tokenize(self._vocab, data, len(data), out, size, True, True)
            if n >= 0:
                return list(out[:n])
            size = -n

    def piece(self, token: int) -> bytes:
        buf = ctypes.create_string_buffer(64)
        n = self._lib.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, False)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = self._lib.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, False)
        return buf.raw[:n]

    def count_tokens(self, text: str) -> int:
        return len(self.tokenize(text))

    # --- completion -----------------------------------------------------------------

    def complete(self, request: CompletionRequest) -> Completion:
        return self.complete_batch([request])[0]

    def complete_batch(
        self, requests: Sequence[CompletionRequest], on_text: OnText | None = None
    ) -> list[Completion]:
        """``on_text``: stream each row's new text after every token (see ``rows.OnText``)."""
        batch_keys(requests)  # refuses a repeated key
        rows.check_adapters(requests, {None})  # one model: adapters are merged into their GGUF
        out: list[Completion] = []
        for start in range(0, len(requests), self.slots):  # at most one chain per slot
            group = requests[start : start + self.slots]
            part = None if on_text is None else shifted(on_text, start)
            try:
                out += self._complete_group(group, part)
            except BaseException:  # a half-done call leaves the cache unknown: start over
                self._lib.llama_memory_clear(self._memory, True)
                self._rows.clear()
                raise
        return out

    def _complete_group(
        self, requests: Sequence[CompletionRequest], on_text: OnText | None
    ) -> list[Completion]:
        self._clock += 1
        steps = [self._plan(request) for request in requests]
        logits = self._decode([(s.row, s.fed, len(s.row.ids) - len(s.fed)) for s in steps])
        while True:
            for i, step in enumerate(steps):
                if step.finish is None:
                    self._take(i, step, self._sample(logits[step.row.seq], step), on_text)
            active = [s for s in steps if s.finish is None]
            if not active:
                break
            logits = self._decode([(s.row, s.generated[-1:], len(s.row.ids) - 1) for s in active])
        return [s.completion() for s in steps]

    def _plan(self, request: CompletionRequest) -> _Step:
        """Keep the cached tokens the prompt's tokens start with; the rest is evaluated."""
        ids = self.tokenize(request.prompt)
        check_context(ids, self.max_context)
        row = self._row(request.key)
        keep = kept_prefix(row.ids, ids)
        self._lib.llama_memory_seq_rm(self._memory, row.seq, keep, -1)
        row.ids = list(ids)
        rng = None
        if request.temperature >= GREEDY_BELOW:
            rng = np.random.default_rng(request.seed % 2**64)
        limit = min(request.max_tokens, self.max_context - len(ids))
        return _Step(row=row, request=request, fed=ids[keep:], cached=keep, limit=limit, rng=rng)

    def _row(self, key: str) -> _Row:
        row = self._rows.get(key)
        if row is None:
            free = set(range(self.slots)) - {r.seq for r in self._rows.values()}
            if not free:  # the least recently used chain gives up its sequence
                oldest = min(self._rows.values(), key=lambda r: r.used)
                del self._rows[oldest.key]
                free = {oldest.seq}
            row = _Row(key, min(free))
            self._lib.llama_memory_seq_rm(self._memory, row.seq, -1, -1)
            self._rows[key] = row
        row.used = self._clock
        return row

    def _decode(self, work: list[tuple[_Row, list[int], int]]) -> dict[int, np.ndarray]:
        """Evaluate each row's tokens (row, tokens, position of the first) in batches of at
        most ``n_batch`` tokens; returns the logits after each row's last token."""
        lib = self._lib
        logits: dict[int, np.ndarray] = {}
        queue = [(row, pos + i, token, i == len(tokens) - 1)
                 for row, tokens, pos in work for i, token in enumerate(tokens)]  # fmt: skip
        for start in range(0, len(queue), self.n_batch):
            chunk = queue[start : start + self.n_batch]
            self._run_batch([(token, pos, row.seq, last) for row, pos, token, last in chunk])
            for i, (row, _, _, last) in enumerate(chunk):
                if last:
                    pointer = lib.llama_get_logits_ith(self._ctx, i)
                    logits[row.seq] = np.ctypeslib.as_array(pointer, shape=(self.n_vocab,)).copy()
        return logits

    def _run_batch(self, tokens: list[tuple[int, int, int, bool]]) -> None:
        """One ``llama_decode`` of (token, position, sequence, wants logits) entries."""
        batch = self._batch
        for i, (token, pos, seq, wants_logits) in enumerate(tokens):
            batch.token[i], batch.pos[i] = token, pos
            batch.n_seq_id[i], batch.seq_id[i][0] = 1, seq
            batch.logits[i] = wants_logits
        batch.n_tokens = len(tokens)
        code = self._lib.llama_decode(self._ctx, batch)
        if code != 0:
            raise RuntimeError(f"llama_decode returned {code} (the KV cache is full?)")

    def score(self, ids: Sequence[int]) -> np.ndarray:
        """The logits after every one of ``ids`` (measuring a file against its source model),
        in a sequence of its own that is freed afterwards."""
        lib = self._lib
        row = self._row("\x00score")
        out = np.empty((len(ids), self.n_vocab), np.float32)
        try:
            for start in range(0, len(ids), self.n_batch):
                chunk = ids[start : start + self.n_batch]
                self._run_batch([(t, start + i, row.seq, True) for i, t in enumerate(chunk)])
                for i in range(len(chunk)):
                    pointer = lib.llama_get_logits_ith(self._ctx, i)
                    out[start + i] = np.ctypeslib.as_array(pointer, shape=(self.n_vocab,))
        finally:
            lib.llama_memory_seq_rm(self._memory, row.seq, -1, -1)
            del self._rows[row.key]
        return out

    def _sample(self, logits: np.ndarray, step: _Step) -> int:
        request = step.request
        if step.rng is None:
            return int(np.argmax(logits))
        scaled = (logits - logits.max()) / request.temperature
        probs = np.exp(scaled.astype(np.float64))
        probs /= probs.sum()
        if not np.isfinite(probs).all():  # an extreme temperature: greedy
            return int(np.argmax(logits))
        if request.top_p < 1:
            order = np.argsort(-probs, kind="stable")
            sorted_probs = probs[order]
            outside = np.cumsum(sorted_probs) - sorted_probs >= request.top_p
            outside[0] = False  # the likeliest token always stays
            sorted_probs[outside] = 0
            probs = np.zeros_like(probs)
            probs[order] = sorted_probs / sorted_probs.sum()
        return int(step.rng.choice(len(probs), p=probs))

    def _take(self, index: int, step: _Step, token: int, on_text: OnText | None) -> None:
        eos = bool(self._lib.llama_vocab_is_eog(self._vocab, token))
        if step.take(
            token, eos, "" if eos else step.decoder.decode(self.piece(token)), on_text, index
        ):
            step.row.ids.append(token)
