"""Stop strings in text that grows a token at a time: the part every local engine shares."""

from __future__ import annotations

from collections.abc import Sequence


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
