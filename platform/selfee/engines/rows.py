"""What every local engine does per chain, whatever runs the model: keep the cached tokens
a new prompt starts with, and take generated tokens one at a time until EOS, a stop string
or the token limit."""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from functools import partial

from selfee.revision import Completion, CompletionRequest

DETOKENIZE_CONTEXT = 6  # tokens of left context when decoding new tokens (leading spaces)

OnText = Callable[[int, str], bool]
"""Called after every generated token with (the row's index in the call, its new text —
possibly empty); returning False ends that row at once (its client went away)."""


def kept_prefix(cached: Sequence[int], ids: Sequence[int]) -> int:
    """How many cached tokens a prompt's ids start with, leaving at least one to evaluate
    (its logits give the next token)."""
    keep = 0
    for old, new in zip(cached, ids, strict=False):
        if old != new:
            break
        keep += 1
    return min(keep, len(ids) - 1)


def batch_keys(requests: Sequence[CompletionRequest]) -> list[str]:
    """The rows' keys: each names one chain's KV state, so a batch may not repeat one. The
    state is the adapter's too: a key continued on another adapter starts afresh."""
    keys = [r.key if r.adapter is None else f"{r.key}\0{r.adapter}" for r in requests]
    if len(set(keys)) != len(keys):
        raise ValueError("requests in one batch need different keys")
    return keys


def check_adapters(requests: Sequence[CompletionRequest], known: Collection[str | None]) -> None:
    """Every request names an adapter the engine holds (``None``: the engine's model)."""
    unknown = {r.adapter for r in requests} - set(known)
    if unknown:
        raise KeyError(f"no adapter {sorted(map(str, unknown))} in this engine")


def check_context(ids: Sequence[int], max_context: int) -> None:
    if len(ids) >= max_context:
        raise ValueError(f"the prompt is {len(ids)} tokens; the model's context is {max_context}")


def first_stop(
    text: str, seen: int, stops: Sequence[str],
    ends_call: Callable[[int, str], bool] | None = None,
) -> tuple[int, str] | None:  # fmt: skip
    """(where, which) of the earliest stop string in ``text`` that was not wholly inside its
    first ``seen`` characters (each new piece is searched with enough overlap to catch a
    stop string that straddles it) and that ends the call (``ends_call(at, stop)``, e.g.
    ``CompletionRequest.stop_ends_call``; default: every one), or None."""
    hits = []
    for stop in stops:
        at = text.find(stop, max(0, seen - len(stop) + 1))
        while at >= 0 and ends_call is not None and not ends_call(at, stop):
            at = text.find(stop, at + 1)
        if at >= 0:
            hits.append((at, stop))
    return min(hits) if hits else None


def shifted(on_text: OnText, offset: int) -> OnText:
    """``on_text`` for the part of a call whose first row is row ``offset`` of the whole."""
    return lambda index, piece: on_text(index + offset, piece)


def held_back(text: str, stops: Sequence[str]) -> int:
    """How many characters at the end of ``text`` could be the start of a stop string: a
    stream must not send them until the next tokens say (a stop string is never sent)."""
    longest = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:n]):
                longest = n
                break
    return longest


def streamable(text: str, stops: Sequence[str], ended: bool) -> int:
    """Where the part of a call's text that may be streamed now ends: all of it once the
    call ended, else short of what could still become one of ``stops``."""
    return len(text) if ended else len(text) - held_back(text, stops)


@dataclass(kw_only=True)
class RowCall:
    """One chain's part of an engine call: what it evaluated and what it generated."""

    request: CompletionRequest
    fed: list[int]  # prompt tokens this call evaluates
    limit: int  # tokens it may generate (max_tokens, or what the context leaves)
    generated: list[int] = field(default_factory=list)
    text: str = ""
    finish: str | None = None
    stop: str | None = None
    sent: int = 0  # characters of ``text`` already streamed
    cached: int = 0  # prompt tokens served from the cache (not evaluated)

    def take(
        self, token: int, eos: bool, piece: str, on_text: OnText | None = None, index: int = 0
    ) -> bool:
        """Record a sampled token (``piece``: its new text) and stream the new text; True
        when the chain goes on, so the token must be evaluated next. A token that ends the
        chain is never evaluated, so it never enters the cache."""
        goes_on = self._take(token, eos, piece)
        if on_text is not None:
            goes_on = self.stream(index, on_text) and goes_on
        return goes_on

    def _take(self, token: int, eos: bool, piece: str) -> bool:
        if eos:
            self.finish = "eos"
            return False
        self.generated.append(token)
        seen = len(self.text)
        self.text += piece
        ends_call = partial(self.request.stop_ends_call, self.text)
        if (hit := first_stop(self.text, seen, self.request.stop, ends_call)) is not None:
            at, self.stop = hit
            self.text, self.finish = self.text[:at], "stop"
            return False
        if len(self.generated) >= self.limit:
            self.finish = "length"
            return False
        return True

    def stream(self, index: int, on_text: OnText) -> bool:
        """Send the text no stop string can still claim; False when the row was aborted."""
        end = streamable(self.text, self.request.stop, bool(self.finish))
        piece, self.sent = self.text[self.sent : end], max(self.sent, end)
        if on_text(index, piece):
            return True
        self.finish = self.finish or "abort"
        return False

    def completion(self) -> Completion:
        return Completion(self.text, self.finish, len(self.generated), self.stop,  # type: ignore[arg-type]
                          len(self.fed), tuple(self.generated), self.cached)  # fmt: skip
