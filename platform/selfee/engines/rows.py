"""What every local engine does per chain, whatever runs the model: keep the cached tokens
a new prompt starts with, and take generated tokens one at a time until EOS, a stop string
or the token limit."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from selfee.revision import Completion, CompletionRequest


def kept_prefix(cached: Sequence[int], ids: Sequence[int]) -> int:
    """How many cached tokens a prompt's ids start with, leaving at least one to evaluate
    (its logits give the next token)."""
    keep = 0
    for old, new in zip(cached, ids, strict=False):
        if old != new:
            break
        keep += 1
    return min(keep, len(ids) - 1)


def check_context(ids: Sequence[int], max_context: int) -> None:
    if len(ids) >= max_context:
        raise ValueError(f"the prompt is {len(ids)} tokens; the model's context is {max_context}")


def first_stop(text: str, seen: int, stops: Sequence[str]) -> tuple[int, str] | None:
    """(where, which) of the earliest stop string in ``text`` that was not wholly inside its
    first ``seen`` characters (each new piece is searched with enough overlap to catch a
    stop string that straddles it), or None."""
    hits = []
    for stop in stops:
        at = text.find(stop, max(0, seen - len(stop) + 1))
        if at >= 0:
            hits.append((at, stop))
    return min(hits) if hits else None


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

    def take(self, token: int, eos: bool, piece: str) -> bool:
        """Record a sampled token (``piece``: its new text); True when the chain goes on, so
        the token must be evaluated next. A token that ends the chain is never evaluated,
        so it never enters the cache."""
        if eos:
            self.finish = "eos"
            return False
        self.generated.append(token)
        seen = len(self.text)
        self.text += piece
        if (hit := first_stop(self.text, seen, self.request.stop)) is not None:
            at, self.stop = hit
            self.text, self.finish = self.text[:at], "stop"
            return False
        if len(self.generated) >= self.limit:
            self.finish = "length"
            return False
        return True

    def completion(self) -> Completion:
        return Completion(self.text, self.finish, len(self.generated), self.stop,  # type: ignore[arg-type]
                          len(self.fed), tuple(self.generated))  # fmt: skip
