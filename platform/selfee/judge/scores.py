"""Reading the two scores out of a pairwise judge's text.

Judges are asked for a first line "s1 s2", and mostly write one. When they don't (GPT-4 on
math questions likes to solve the problem first), the scores are in a "(s1, s2)" tuple at the
end, in one "Assistant 1: 4/10" line per assistant, or in "I will give both of them a score
of 10". The upstream parser read only the first two forms and its published scores for the
rest were fixed by hand; this one reads them all, and says None rather than guess.
"""

from __future__ import annotations

import re

_NUM = r"(\d{1,2}(?:\.\d+)?)"
_OUT_OF = r"(?:\s*/\s*10(?!\d)|\s+out\s+of\s+10\b)?"

_FIRST_LINE_RE = re.compile(
    rf"^\s*\(?{_NUM}{_OUT_OF}\s*(?:,\s*|\s+|\s*;\s*){_NUM}{_OUT_OF}\)?\.?\s*$"
)
_TUPLE_RE = re.compile(rf"\(\s*{_NUM}{_OUT_OF}\s*,\s*{_NUM}{_OUT_OF}\s*\)")
_SAYS = (
    r"(?:'s)?(?:\s+(?:overall\s+)?score)?[ \t]*"
    r"(?::|=|-|\bis\b|\bscores?\b|\bscored\b|\breceives\b|\bgets\b|\bdeserves\b|\bearns\b)"
    r"[ \t]*(?:an?\s+|a\s+score\s+of\s+|the\s+score\s+of\s+|score\s+of\s+)?"
)
_PER_ASSISTANT_RE = {
    k: re.compile(rf"assistant\s*{k}\b{_SAYS}\**[ \t]*{_NUM}{_OUT_OF}", re.IGNORECASE)
    for k in (1, 2)
}
_GIVE_RE = {  # "I would give Assistant 1 a score of 7 and Assistant 2 an 8"
    k: re.compile(
        rf"assistant\s*{k}\s+(?:a|an|the)\s+(?:score\s+of\s+|rating\s+of\s+)?{_NUM}{_OUT_OF}",
        re.IGNORECASE,
    )
    for k in (1, 2)
}
_BOTH_RE = re.compile(
    rf"\bboth\b[^.\n]*?\b(?:a\s+)?score\s+of\s+{_NUM}{_OUT_OF}(?!\s*(?:and|,)\s*\d)",
    re.IGNORECASE,
)


Scored = tuple[tuple[float, float], int]  # the scores, and where their statement ends


def parse_score(text: str) -> tuple[float, float] | None:
    """(score of assistant 1, score of assistant 2), each in [0, 10]; None if not readable.

    The requested first line wins; otherwise the score statement nearest the end of the
    text (a judge that solves a geometry problem first writes coordinates such as
    "(10, 4)" long before "Assistant 1: 8/10 ... Assistant 2: 6/10")."""
    if not isinstance(text, str) or not text.strip():
        return None
    first = _pair(_FIRST_LINE_RE.match(text.strip().splitlines()[0]))
    if first is not None:
        return first[0]
    found = [
        f
        for f in (_pair(_last(_TUPLE_RE.finditer(text))), _per_assistant(text), _both(text))
        if f is not None
    ]
    return max(found, key=lambda f: f[1])[0] if found else None


def _pair(match: re.Match[str] | None) -> Scored | None:
    if match is None:
        return None
    scores = _valid(float(match.group(1)), float(match.group(2)))
    return None if scores is None else (scores, match.end())


def _last(matches: object) -> re.Match[str] | None:
    last = None
    for last in matches:  # type: ignore[attr-defined]  # noqa: B007
        pass
    return last


def _per_assistant(text: str) -> Scored | None:
    found = []
    for k in (1, 2):
        match = _last(_PER_ASSISTANT_RE[k].finditer(text)) or _last(_GIVE_RE[k].finditer(text))
        if match is None:
            return None
        found.append(match)
    scores = _valid(float(found[0].group(1)), float(found[1].group(1)))
    return None if scores is None else (scores, max(m.end() for m in found))


def _both(text: str) -> Scored | None:
    match = _last(_BOTH_RE.finditer(text))
    if match is None:
        return None
    scores = _valid(float(match.group(1)), float(match.group(1)))
    return None if scores is None else (scores, match.end())


def _valid(s1: float, s2: float) -> tuple[float, float] | None:
    return (s1, s2) if 0 <= s1 <= 10 and 0 <= s2 <= 10 else None
