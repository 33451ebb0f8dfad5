"""A local Hugging Face causal LM as a completion engine that keeps its KV cache.

Revision control continues a chain many times: after a stop string, after a forced
rewrite of the verdict. Each continuation's prompt is the previous text plus a little, so
the engine keeps, per chain (``CompletionRequest.key``), the token ids in its KV cache. A
new request is tokenized (once per call, not per token) and keeps the cached tokens its
ids start with; the rest of the cache is dropped (masked out in a batch, cropped at the
end) and only the new tokens are fed: no re-prefill of the prefix. The cache holds exactly
the ids a from-scratch run would feed, so both produce the same tokens. New text is
decoded a few tokens at a time, never the whole text per token. The cache writes each
token into room it keeps (``hf_cache.GrowingCache``), not into a copy of itself.

Many chains run as one batch: each row has its own positions (``position_ids``) and its
own attention-mask columns, so rows of different lengths, and rows whose tail was dropped,
share one cache. A chain keeps its cached tokens whichever chains it is batched with next
(a serving replica's batches change from step to step): a chain a call leaves out is
parked (its cached tokens copied aside, up to ``parked_tokens``) and comes back in new
columns, a new chain joins with a row that has nothing cached, and the columns no row uses
are packed away once they are most of the cache. ``reuse_cache=False`` re-prefills every request from scratch: the reference the
cache-reusing path must match token for token.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from selfee import adapter
from selfee.engines.rows import (
    DETOKENIZE_CONTEXT,
    OnText,
    RowCall,
    batch_keys,
    check_adapters,
    check_context,
    kept_prefix,
)
from selfee.revision import GREEDY_BELOW, Completion, CompletionRequest

COMPACT_WASTE = 64  # masked-out cache columns worth a copy of the cache to drop


@dataclass
class _Detokenizer:
    """Text of new tokens, decoding only a short window (as vLLM does): a token that ends
    in the middle of a UTF-8 character shows up with the token that completes it."""

    tokenizer: Any
    ids: list[int]
    prefix_offset: int
    read_offset: int

    @classmethod
    def after(cls, tokenizer: Any, context: list[int]) -> _Detokenizer:
        window = context[-DETOKENIZE_CONTEXT:]
        return cls(tokenizer, list(window), 0, len(window))

    def add(self, token: int) -> str:
        self.ids.append(token)
        decode = self.tokenizer.decode
        before = decode(self.ids[self.prefix_offset : self.read_offset], skip_special_tokens=True)
        now = decode(self.ids[self.prefix_offset :], skip_special_tokens=True)
        if now.endswith("\ufffd") and len(self.ids) - self.read_offset < 4:
            return ""  # wait for the rest of the character (4 bytes at most)
        if len(now) > len(before):
            self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
            return now[len(before) :]
        # a token with no text (a skipped special token): keep the window short
        self.prefix_offset = max(self.prefix_offset, len(self.ids) - DETOKENIZE_CONTEXT)
        self.read_offset = len(self.ids)
        return ""


@dataclass
class _Row:
    """One chain's tokens in the cache and the cache columns that hold them."""

    key: str
    ids: list[int] = field(default_factory=list)
    columns: list[int] = field(default_factory=list)


@dataclass
class _Parked:
    """A chain's cached tokens, kept aside while calls run without it."""

    ids: list[int]
    layers: list[tuple[torch.Tensor, torch.Tensor]]  # keys and values, [heads, tokens, dim]


@dataclass(kw_only=True)
class _Step(RowCall):
    """One row's part of a ``complete_batch`` call."""

    row: _Row
    detok: _Detokenizer
    generator: torch.Generator | None


class HFEngine:
    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        reuse_cache: bool = True,
        max_context: int | None = None,
        parked_tokens: int | None = None,
        adapters: dict[str | None, str] | None = None,
    ) -> None:
        """``parked_tokens``: how many cached tokens of chains absent from the current call
        are kept for their next call (default: twice the context), least recently used
        first out. ``adapters``: a model with several adapters side by side
        (``adapter.load_side_by_side``): a request's ``adapter`` → the peft adapter its rows
        run (``None``: what a request that names none runs)."""
        self.model = model.eval()
        self.adapters = adapters
        self.tokenizer = tokenizer
        self.reuse_cache = reuse_cache
        self.device = next(model.parameters()).device
        self.max_context = max_context or int(
            getattr(model.config, "max_position_embeddings", 2048)
        )
        self.eos_ids = _eos_ids(model, tokenizer)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.parked_tokens = 2 * self.max_context if parked_tokens is None else parked_tokens
        self._rows: list[_Row] = []
        self._parked: OrderedDict[str, _Parked] = OrderedDict()
        self._cache: Any = None
        self._mask = torch.zeros(0, 0, dtype=torch.long)
        self._row_adapters: list[str] | None = None

    @classmethod
    def load(
        cls, path: str | Path, device: str = "auto", dtype: str = "auto",
        adapters: Mapping[str, Path] | None = None,
    ) -> HFEngine:  # fmt: skip
        """A model directory (ours or any HF causal LM); ``auto``: CUDA + bf16 when present.
        ``adapters``: LoRA adapters on the model's base, each run by requests that name it
        (``CompletionRequest.adapter``); ``engines.load_engine`` checks them first."""
        from transformers import AutoModelForCausalLM

        from selfee.tokenizer import load_tokenizer, raw_tokenizer

        path = Path(path)
        lora = adapter.is_adapter(path)
        if not (path / "config.json").is_file() and not lora:
            raise FileNotFoundError(
                f"{path} is not a Hugging Face model directory (no config.json) nor an adapter"
            )
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if dtype == "auto":
            dtype = "bfloat16" if device.startswith("cuda") else "float32"
        tokenizer = load_tokenizer(path)
        if adapters:  # several on one base, side by side (peft's names: no dots)
            base = adapter.base_of(path)
            peft_names = {name: f"adapter_{i}" for i, name in enumerate(adapters)}
            loaded = {peft_names[name]: Path(p) for name, p in adapters.items()}
            routes: dict[str | None, str] = {**peft_names, None: "__base__"}
            if lora:
                loaded = {"served_model": path, **loaded}
                routes[None] = "served_model"
            model = adapter.load_side_by_side(base, loaded, tokenizer, getattr(torch, dtype))
            return cls(model.to(device), tokenizer, adapters=routes)
        if lora:  # a LoRA adapter: on its base, merged
            return cls(adapter.load_merged(path, tokenizer, getattr(torch, dtype)).to(device),
                       tokenizer)  # fmt: skip
        model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype))
        if model.get_input_embeddings().weight.shape[0] < len(tokenizer):  # no pad (LLaMA's):
            tokenizer = raw_tokenizer(path)  # the model as it is, as vLLM runs it (a new row
            # would be one more token it could write, with random weights)
        return cls(model.to(device), tokenizer)

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=True)["input_ids"])

    # --- completion -----------------------------------------------------------------

    def complete(self, request: CompletionRequest) -> Completion:
        return self.complete_batch([request])[0]

    @torch.inference_mode()
    def complete_batch(
        self, requests: Sequence[CompletionRequest], on_text: OnText | None = None
    ) -> list[Completion]:
        """``on_text``: stream each row's new text after every token (see ``rows.OnText``)."""
        keys = batch_keys(requests)
        try:
            return self._complete_batch(requests, keys, on_text)
        except BaseException:  # a half-done call leaves the cache unknown: start over
            self._rows, self._cache = [], None
            self._parked.clear()
            raise

    def _complete_batch(
        self, requests: Sequence[CompletionRequest], keys: list[str], on_text: OnText | None
    ) -> list[Completion]:
        self._row_adapters = self._adapters_of(requests)
        self._select_rows(keys)
        steps = [self._plan(i, request) for i, request in enumerate(requests)]
        if not self.reuse_cache:
            self._forget_cache()
        logits = self._feed([s.fed for s in steps])
        while True:
            for i, step in enumerate(steps):
                if step.finish is None:
                    self._take(i, step, self._sample(logits[i], step), on_text)
            if all(step.finish for step in steps):
                break
            logits = self._feed([s.generated[-1:] if s.finish is None else [] for s in steps])
        self._trim_tail()
        return [s.completion() for s in steps]

    def _adapters_of(self, requests: Sequence[CompletionRequest]) -> list[str] | None:
        """The peft adapter each row runs (None: a model without adapters side by side)."""
        check_adapters(requests, self.adapters or {None})
        return None if self.adapters is None else [self.adapters[r.adapter] for r in requests]

    # --- the steps of a call ----------------------------------------------------------

    def _select_rows(self, keys: list[str]) -> None:
        """Keep the rows these keys continue, in this order; a chain absent from this call
        is parked (its cached tokens copied aside), a parked one comes back in new columns,
        and a key new to the engine gets a row with nothing cached (its mask hides every
        column): a chain keeps its cache whichever chains it is batched with."""
        index = {row.key: i for i, row in enumerate(self._rows)}
        returning = {k: self._parked.pop(k) for k in keys if k in self._parked}
        self._park([i for i, row in enumerate(self._rows) if row.key not in keys])
        if self._cache is None or not any(k in index for k in keys):
            self._rows = [_Row(k) for k in keys]
            self._forget_cache()
        else:
            order = [index.get(k, 0) for k in keys]  # a new row takes row 0's cells, masked
            if order != list(range(len(self._rows))):
                self._cache.batch_select_indices(torch.tensor(order, device=self.device))
                self._mask = self._mask[order]
                self._rows = [self._rows[index[k]] if k in index else _Row(k) for k in keys]
                for i, key in enumerate(keys):
                    if key not in index:
                        self._mask[i] = 0
            self._compact()
        self._unpark(returning)

    def _park(self, leaving: list[int]) -> None:
        if not self.reuse_cache:
            return
        for i in leaving:
            row = self._rows[i]
            if row.columns:
                layers = self._cache.take_row(i, row.columns)
                self._parked[row.key] = _Parked(row.ids[: len(row.columns)], layers)
        total = sum(len(p.ids) for p in self._parked.values())
        while total > self.parked_tokens:
            total -= len(self._parked.popitem(last=False)[1].ids)

    def _unpark(self, returning: dict[str, _Parked]) -> None:
        back = {i: returning[row.key] for i, row in enumerate(self._rows) if row.key in returning}
        if not back:
            return
        start = self._mask.shape[1]
        width = self._cache.put_rows({i: p.layers for i, p in back.items()}, len(self._rows))
        block = torch.zeros(len(self._rows), width, dtype=torch.long)
        for i, parked in back.items():
            first = start + width - len(parked.ids)
            block[i, first - start :] = 1
            self._rows[i].ids, self._rows[i].columns = parked.ids, list(range(first, start + width))
        self._mask = torch.cat([self._mask, block], dim=1)

    def _compact(self) -> None:
        """Pack each row's cached tokens to the right of as many columns as the fullest row
        needs, once most columns are masked out (left by chains that are gone, or before a
        new row's tokens): attention reads, and the cache holds, what rows use."""
        used = max(len(row.columns) for row in self._rows)
        if self._mask.shape[1] - used < max(COMPACT_WASTE, used):
            return
        index = torch.zeros(len(self._rows), used, dtype=torch.long)
        self._mask = torch.zeros(len(self._rows), used, dtype=torch.long)
        for i, row in enumerate(self._rows):
            first = used - len(row.columns)
            index[i, first:] = torch.tensor(row.columns, dtype=torch.long)
            self._mask[i, first:] = 1
            row.columns = list(range(first, used))
        self._cache.gather_columns(index)

    def _forget_cache(self) -> None:
        """Drop the cache: each row feeds all its tokens again."""
        from selfee.engines.hf_cache import GrowingCache

        self._cache = GrowingCache()
        self._mask = torch.zeros(len(self._rows), 0, dtype=torch.long)
        for row in self._rows:
            row.columns = []

    def _plan(self, index: int, request: CompletionRequest) -> _Step:
        """Keep the cached tokens the prompt's tokens start with; the rest is fed."""
        row = self._rows[index]
        ids = self.tokenizer(request.prompt, add_special_tokens=True)["input_ids"]
        check_context(ids, self.max_context)
        keep = kept_prefix(row.ids, ids)
        self._mask[index, row.columns[keep:]] = 0
        del row.columns[keep:]
        row.ids = list(ids)
        fed = ids[keep:] if self.reuse_cache else list(ids)
        generator = None
        if request.temperature > 0:
            generator = torch.Generator(device=self.device).manual_seed(request.seed)
        return _Step(
            row=row,
            request=request,
            fed=fed,
            cached=len(ids) - len(fed),
            detok=_Detokenizer.after(self.tokenizer, ids),
            limit=min(request.max_tokens, self.max_context - len(ids)),
            generator=generator,
        )

    def _feed(self, new_ids: list[list[int]]) -> torch.Tensor:
        """Append each row's new tokens (right-aligned in one block; rows may feed none)
        and return the logits after each row's last token."""
        width = max(len(ids) for ids in new_ids)
        start = self._mask.shape[1]
        batch = len(new_ids)
        input_ids = torch.full((batch, width), self.pad_id, dtype=torch.long)
        positions = torch.zeros((batch, width), dtype=torch.long)
        block = torch.zeros((batch, width), dtype=torch.long)
        for i, (row, ids) in enumerate(zip(self._rows, new_ids, strict=True)):
            if not ids:
                continue
            offset = width - len(ids)
            first = len(row.ids) - len(ids)  # row.ids already holds the tokens being fed
            input_ids[i, offset:] = torch.tensor(ids)
            positions[i, offset:] = torch.arange(first, first + len(ids))
            block[i, offset:] = 1
            row.columns += range(start + offset, start + width)
        self._mask = torch.cat([self._mask, block], dim=1)
        dense = bool(self._mask.all())  # no padding, no dropped tokens: the model's defaults
        out = self.model(
            input_ids=input_ids.to(self.device),
            attention_mask=None if dense else self._mask.to(self.device),
            position_ids=None if dense else positions.to(self.device),
            past_key_values=self._cache,
            use_cache=True,
            **({} if self._row_adapters is None else {"adapter_names": self._row_adapters}),
        )
        self._cache = out.past_key_values
        return out.logits[:, -1, :].float()

    def _sample(self, logits: torch.Tensor, step: _Step) -> int:
        request = step.request
        if request.temperature < GREEDY_BELOW:
            return int(torch.argmax(logits))
        probs = torch.softmax(logits / request.temperature, dim=-1)
        if not torch.isfinite(probs).all():  # overflow at an extreme temperature: greedy
            return int(torch.argmax(logits))
        if request.top_p < 1:
            sorted_probs, order = torch.sort(probs, descending=True)
            outside = torch.cumsum(sorted_probs, dim=-1) - sorted_probs >= request.top_p
            outside[0] = False  # the likeliest token always stays (a tiny top_p is 0 in fp32)
            sorted_probs[outside] = 0
            probs = torch.zeros_like(probs).scatter(0, order, sorted_probs)
        return int(torch.multinomial(probs, 1, generator=step.generator))

    def _take(self, index: int, step: _Step, token: int, on_text: OnText | None) -> None:
        eos = token in self.eos_ids
        if step.take(token, eos, "" if eos else step.detok.add(token), on_text, index):
            step.row.ids.append(token)

    def _trim_tail(self) -> None:
        """Crop cache columns no row uses any more (all of them, for a single chain)."""
        length = max((row.columns[-1] + 1 for row in self._rows if row.columns), default=0)
        extra = self._mask.shape[1] - length
        if extra > 0:
            self._cache.crop(-extra)
            self._mask = self._mask[:, :length]


def _eos_ids(model: Any, tokenizer: Any) -> set[int]:
    ids = model.generation_config.eos_token_id if model.generation_config else None
    ids = ids if ids is not None else tokenizer.eos_token_id
    if ids is None:
        return set()
    return set(ids) if isinstance(ids, list) else {int(ids)}
