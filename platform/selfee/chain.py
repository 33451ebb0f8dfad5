"""The SelFee text format: prompts, chain targets, parsing and the final answer.

The exact strings matter: released SelFee weights were trained on them, and every stage
(training data, revision control, serving, evaluation) reads and writes this format through
this module only.

A generation looks like::

    <prompt>### Answer:
    {answer}

    ### Feedback 1:
    {feedback}

    ### Revision 1:
    {revision}

    ### Feedback 2:
    ...
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Answer:\n"
)
PROMPT_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides "
    "further context. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Answer:\n"
)
INSTRUCTION_HEADER = "### Instruction:"
INPUT_HEADER = "### Input:"
ANSWER_HEADER = "### Answer:"
FEEDBACK = "### Feedback"  # + " k:" (``feedback_header``)
REVISION = "### Revision"

VERDICT_NEEDED = "Revision is needed."
VERDICT_NOT_NEEDED = "Revision is not needed."


def feedback_header(k: int) -> str:
    return f"\n\n{FEEDBACK} {k}:\n"


def revision_header(k: int) -> str:
    return f"\n\n{REVISION} {k}:\n"


def render_prompt(instruction: str, input: str = "") -> str:
    """The SelFee prompt, ending in ``### Answer:\\n`` so a model continues with its answer."""
    if input:
        return PROMPT_WITH_INPUT.format(instruction=instruction, input=input)
    return PROMPT_NO_INPUT.format(instruction=instruction)


def render_follow_up(instruction: str) -> str:
    """A later user turn appended to a conversation's prompt (earlier turns keep only their
    final answer, as upstream's chat did)."""
    return f"\n\n{INSTRUCTION_HEADER}\n{instruction}\n\n{ANSWER_HEADER}\n"


def is_selfee_prompt(text: str) -> bool:
    """Whether ``text`` already holds a SelFee prompt (taken as it is, not wrapped again)."""
    return ANSWER_HEADER in text


def prompt_fields(prompt: str) -> tuple[str, str]:
    """(instruction, input) of a SelFee prompt: ``render_prompt`` read back."""

    def field(header: str) -> str:
        start = prompt.find(header + "\n")
        if start < 0:
            return ""
        start += len(header) + 1
        end = prompt.find("\n\n###", start)
        return prompt[start : end if end >= 0 else len(prompt)].strip()

    return field(INSTRUCTION_HEADER), field(INPUT_HEADER)


def render_target(outputs: Iterable[Mapping[str, str]], eos: str = "") -> str:
    """The training target for one chain: answer, then (feedback k, revision k) pairs.

    ``outputs[0]`` is the initial answer and ``outputs[k]`` revision k; each carries the
    feedback written on it. The target ends with the last feedback (and ``eos``).
    """
    parts: list[str] = []
    for k, step in enumerate(outputs):
        if k:
            parts.append(revision_header(k))
        parts.append(step["output"])
        parts.append(feedback_header(k + 1))
        parts.append(step["feedback"])
    if not parts:
        raise ValueError("a chain needs at least one output")
    return "".join(parts) + eos


# --- verdicts -------------------------------------------------------------------------


class Verdict(str, enum.Enum):
    NEEDED = "needed"
    NOT_NEEDED = "not needed"
    UNKNOWN = "unknown"


_REVISION = r"(?:re)?visions?"  # "vision" too: upstream forced rewrites dropped a token
_NEED = r"(?:needed|necessary|required)"
_NOT_NEEDED_PATTERNS = [
    rf"\bno\s+(?:further\s+|more\s+|additional\s+|other\s+)?{_REVISION}\s+(?:is\s+|are\s+)?{_NEED}",
    rf"\b{_REVISION}\s+(?:is|are)\s+not\s+(?:really\s+)?{_NEED}",
    rf"\b{_REVISION}\s+(?:isn't|aren't|is\s+no\s+longer)\s+{_NEED}",
    rf"\b{_REVISION}\s+not\s+{_NEED}",
    rf"\bno\s+need\s+(?:for|of|to)\s+(?:any\s+|a\s+|further\s+)*(?:{_REVISION}|revise)",
    rf"\b(?:does\s+not|doesn't|do\s+not|don't)\s+(?:need|require)\s+(?:any\s+|a\s+|further\s+)*{_REVISION}",
]
_NEEDED_PATTERNS = [
    rf"{_REVISION}\s+(?:is\s+|are\s+)?(?:still\s+)?{_NEED}",
    rf"\b(?:needs|requires)\s+(?:a\s+|some\s+|further\s+)*{_REVISION}",
]
_NOT_NEEDED_RE = re.compile("|".join(_NOT_NEEDED_PATTERNS), re.IGNORECASE)
_NEEDED_RE = re.compile("|".join(_NEEDED_PATTERNS), re.IGNORECASE)


def detect_verdict(feedback: str) -> Verdict:
    """The verdict a feedback ends with; the last verdict phrase wins.

    "No revision is needed" contains "revision is needed": a positive match inside a
    negative one is not a verdict of its own.
    """
    return last_verdict(feedback)[0]


def last_verdict(feedback: str) -> tuple[Verdict, int]:
    """(the verdict, where its phrase ends in ``feedback``); (UNKNOWN, -1) when there is none."""
    verdict, _, end = verdict_span(feedback)
    return verdict, end


def verdict_span(feedback: str) -> tuple[Verdict, int, int]:
    """(the last verdict, start and end of its phrase); (UNKNOWN, -1, -1) without one.

    Revision control rewrites exactly this span when it forces a revision.
    """
    negatives = [m.span() for m in _NOT_NEEDED_RE.finditer(feedback)]
    span, verdict = (-1, -1), Verdict.UNKNOWN
    if negatives:
        span, verdict = max(negatives, key=lambda s: s[1]), Verdict.NOT_NEEDED
    for m in _NEEDED_RE.finditer(feedback):
        inside_negative = any(s <= m.start() and m.end() <= e for s, e in negatives)
        if not inside_negative and m.end() > span[1]:
            span, verdict = m.span(), Verdict.NEEDED
    return verdict, span[0], span[1]


# --- parsing --------------------------------------------------------------------------

# A header starts a line; the blank line before it and one newline after its colon belong
# to the header, so segments come back exactly as they were rendered. A header cut off at
# the very end of a generation ("...\n\n### Feedback") still counts as one.
_HEADER_RE = re.compile(r"(?:\n\n|\n|^)### (Feedback|Revision)(?: (\d+))?(?::\n?|[ \t]*$)")


@dataclass(frozen=True)
class Segment:
    kind: str  # "answer", "feedback" or "revision"
    number: int  # 0 for the answer, k for "Feedback k" / "Revision k"
    text: str
    closed: bool  # another header follows this segment
    start: int = 0  # where the text starts in the generation (prompt excluded)

    @property
    def end(self) -> int:
        return self.start + len(self.text)


@dataclass
class ParsedChain:
    """A generation split into its parts. ``outputs[0]`` is the answer, ``outputs[k]`` revision k."""

    prompt: str
    segments: list[Segment] = field(default_factory=list)

    @property
    def answer(self) -> str:
        return self.segments[0].text

    @property
    def feedbacks(self) -> list[str]:
        return [s.text for s in self.segments if s.kind == "feedback"]

    @property
    def revisions(self) -> list[str]:
        return [s.text for s in self.segments if s.kind == "revision"]

    @property
    def outputs(self) -> list[str]:
        return [s.text for s in self.segments if s.kind != "feedback"]

    @property
    def verdicts(self) -> list[Verdict]:
        return [detect_verdict(f) for f in self.feedbacks]

    @property
    def steps(self) -> list[dict[str, str]]:
        """The Chain contract's ``outputs``: each output paired with the feedback on it."""
        steps: list[dict[str, str]] = []
        for seg in self.segments:
            if seg.kind == "feedback":
                if steps and "feedback" not in steps[-1]:
                    steps[-1]["feedback"] = seg.text
            else:
                steps.append({"output": seg.text})
        return [s if "feedback" in s else {**s, "feedback": ""} for s in steps]

    @property
    def final_answer(self) -> str:
        """The last output that a feedback follows; if the last one was cut off, the one
        before it; a lone answer stands for itself."""
        outputs = [i for i, s in enumerate(self.segments) if s.kind != "feedback"]
        last = outputs[-1]
        followed_by_feedback = last + 1 < len(self.segments)
        if followed_by_feedback or len(outputs) == 1:
            return self.segments[last].text
        return self.segments[outputs[-2]].text


def split_prompt(text: str) -> tuple[str, str]:
    """(prompt, generation); a text without ``### Answer:`` is all generation."""
    at = text.find(ANSWER_HEADER)
    if at < 0:
        return "", text
    end = at + len(ANSWER_HEADER)
    if text.startswith("\n", end):
        end += 1
    return text[:end], text[end:]


def parse(text: str) -> ParsedChain:
    """Split a generation (with or without its prompt) into answer, feedbacks, revisions.

    Headers are taken in the order the format allows (a feedback after an output, a
    revision after a feedback); anything else that looks like a header stays text.
    """
    prompt, body = split_prompt(text)
    return parse_generation(body, prompt)


def parse_generation(body: str, prompt: str = "") -> ParsedChain:
    """``parse`` for a generation whose prompt is known (and may hold headers of its own)."""
    chain = ParsedChain(prompt=prompt)
    kind, number, start = "answer", 0, 0
    for m in _HEADER_RE.finditer(body):
        header_kind = m.group(1).lower()
        expected = "revision" if kind == "feedback" else "feedback"
        if header_kind != expected or m.start() < start:
            continue
        chain.segments.append(Segment(kind, number, body[start : m.start()], True, start))
        if m.group(2):
            number = int(m.group(2))
        elif header_kind == "feedback":
            number += 1
        kind, start = header_kind, m.end()
    chain.segments.append(Segment(kind, number, body[start:], False, start))
    return chain


def final_answer(text: str) -> str:
    """The answer a user should see for a whole generation (see ``ParsedChain.final_answer``)."""
    return parse(text).final_answer
