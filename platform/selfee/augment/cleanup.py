"""Tidying teacher output before it becomes SelFee training text.

Chat teachers open revisions with apologies and lead-ins ("I apologize for the confusion.
Here is the revised answer:"), sometimes put a verdict into an answer, and sometimes keep
writing after the verdict of a critique. A model trained on that would learn to apologise,
to stop mid-answer (the verdict is the stop signal at inference) and to bury its verdicts.
"""

from __future__ import annotations

import re

from selfee.chain import Verdict, last_verdict

_APOLOGY_RE = re.compile(
    r"^\s*(?:i\s+apologi[sz]e|my\s+apologies|apologies|sorry|i'?m\s+sorry|i\s+am\s+sorry)"
    r"[^.!\n]*[.!]\s*",
    re.IGNORECASE,
)
_LEAD_IN_RE = re.compile(
    r"^\s*(?:(?:here\s+is|here's|below\s+is)\s+(?:the\s+|my\s+|a\s+|an\s+)?"
    r"(?:revised|updated|corrected|improved|new)\s+(?:answer|version|response|code|solution)"
    r"|(?:revised|updated|corrected|improved)\s+(?:answer|version|response|code|solution))"
    r"[^:\n]*:[ \t]*\n*",
    re.IGNORECASE,
)
# A line that would read as a SelFee header and break the chain format when rendered.
_HEADER_LINE_RE = re.compile(r"^###[ \t]+(Feedback|Revision|Answer|Instruction|Input)\b", re.M)
# A sentence that is only a verdict ("Therefore, no revision is needed."), not prose that
# happens to mention revisions.
_VERDICT = (
    r"(?:[\w,]+[ \t]+){0,2}(?:no[ \t]+(?:further[ \t]+)?)?(?:re)?visions?[ \t]+(?:is[ \t]+|are[ \t]+)?"
    r"(?:not[ \t]+|still[ \t]+)?(?:needed|necessary|required)[ \t]*(?:[.!]|(?=\n)|\Z)"
)
_TRAILING_VERDICT_RE = re.compile(rf"(?:(?<=[.!?\n])|^)[ \t]*{_VERDICT}\s*\Z", re.IGNORECASE)
_LEADING_VERDICT_RE = re.compile(rf"\A\s*{_VERDICT}\s*", re.IGNORECASE)


def clean_answer(text: str) -> str:
    """An answer or revision as if it were a first try: no apology, no lead-in, no verdict."""
    previous = None
    while previous != text:
        previous = text
        text = _APOLOGY_RE.sub("", text, count=1)
        text = _LEAD_IN_RE.sub("", text, count=1)
    text = _neutralise_headers(text).strip()
    previous = None
    while previous != text:  # stray verdicts at either end; a verdict stops generation
        previous = text
        text = _TRAILING_VERDICT_RE.sub("", text).strip()
        text = _LEADING_VERDICT_RE.sub("", text).strip()
    return text


def clean_feedback(text: str) -> str:
    """A critique whose "not needed" verdict is its end: at inference that verdict stops
    generation, so text after it would never be produced anyway."""
    text = _neutralise_headers(text).strip()
    verdict, end = last_verdict(text)
    if verdict is not Verdict.NOT_NEEDED:
        return text
    rest = text[end:]
    sentence_end = re.match(r"[^.!\n]*[.!]?", rest)
    end += sentence_end.end() if sentence_end else 0
    return text[:end].strip()


def _neutralise_headers(text: str) -> str:
    return _HEADER_LINE_RE.sub(lambda m: m.group(1), text)
