"""What the offline teacher says: deterministic, SelFee-shaped replies to this project's prompts.

Pure functions of (messages, settings), so a run against the offline teacher is reproducible
and tests can predict its verdicts. Every reply names the offline teacher, so synthetic data
can never pass for real teacher output.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from selfee import chain, prompts
from selfee.chain import VERDICT_NEEDED, VERDICT_NOT_NEEDED
from selfee.records import stable_fraction

TAG = "[offline-teacher]"

_TOKEN_RE = re.compile(r"\w+|[^\w\s]")


def count_tokens(text: str) -> int:
    """A rough, deterministic token count (words and punctuation) for ``usage``."""
    return len(_TOKEN_RE.findall(text))


def truncate_tokens(text: str, max_tokens: int | None) -> tuple[str, str]:
    """(text cut to ``max_tokens`` rough tokens, OpenAI finish_reason)."""
    if max_tokens is None:
        return text, "stop"
    ends = [m.end() for m in _TOKEN_RE.finditer(text)]
    if len(ends) <= max_tokens:
        return text, "stop"
    return text[: ends[max_tokens - 1]], "length"


def _pick(options: Sequence[str], *parts: object) -> str:
    return options[int(stable_fraction(*parts) * len(options))]


@dataclass(frozen=True)
class ReplySettings:
    seed: int = 0
    needed_fraction: float = 0.5
    later_needed_fraction: float = 0.0
    judge_unparseable_fraction: float = 0.0


def classify(messages: Sequence[dict[str, str]]) -> str:
    """Which of this project's prompts a request is: answer, critique, revision or judge."""
    last_user = _last_user(messages)
    if prompts.JUDGE_MARKER in last_user:
        return "judge"
    if prompts.REVISION_MARKER in last_user or prompts.PREVIOUS_ANSWER_LABEL in last_user:
        return "revision"
    if prompts.CRITIQUE_MARKER in last_user or prompts.REVISED_CRITIQUE_MARKER in last_user:
        return "critique"
    return "answer"


def reply(messages: Sequence[dict[str, str]], settings: ReplySettings) -> str:
    kind = classify(messages)
    last_user = _last_user(messages)
    if kind == "judge":
        return judge_reply(last_user, settings)
    if kind == "critique":
        return critique_reply(last_user, settings)
    if kind == "revision":
        return revision_reply(last_user, settings)
    return answer_reply(last_user, settings)


def _last_user(messages: Sequence[dict[str, str]]) -> str:
    for message in reversed(messages):
        if message.get("role") == "user":
            content = message.get("content")
            return content if isinstance(content, str) else ""
    return ""


def _section(text: str, header: str) -> str:
    """The paragraph block after ``header`` up to the next known header line."""
    at = text.find(header)
    if at < 0:
        return ""
    rest = text[at + len(header) :].lstrip("\n")
    stops = [
        prompts.CRITIQUE_MARKER,
        prompts.REVISED_CRITIQUE_MARKER,
        prompts.GOLD_MARKER,
        prompts.CRITIQUE_LABEL,
        prompts.PREVIOUS_ANSWER_LABEL,
        prompts.REVISION_MARKER,
        prompts.CRITIQUE_REQUEST_START,
        prompts.INPUT_LABEL,
        prompts.EARLIER_ANSWER_LABEL,
        prompts.EARLIER_CRITIQUE_LABEL,
    ]
    end = len(rest)
    for stop in stops:
        i = rest.find("\n\n" + stop)
        if 0 <= i < end:
            end = i
    return rest[:end]


def _topic(request: str) -> str:
    first_line = request.strip().splitlines()[0] if request.strip() else "the request"
    words = first_line.split()
    topic = " ".join(words[:12])
    return topic + ("..." if len(words) > 12 else "")


_OPENINGS = [
    "Here is a clear answer.",
    "Let me answer this step by step.",
    "A short, direct answer follows.",
]
_POINTS = [
    "Start from the main goal and state it plainly.",
    "Break the task into small, concrete steps.",
    "Check each step against the requirements before moving on.",
    "Give a short example that shows the idea in practice.",
    "Mention the most common mistake and how to avoid it.",
    "Summarise the result in one sentence at the end.",
]


def answer_reply(request: str, settings: ReplySettings) -> str:
    topic = _topic(request)
    if re.search(r"\b(python|code|program|function|snippet)\b", request, re.IGNORECASE):
        name = _pick(["solve", "answer", "run_task"], settings.seed, "fn", request)
        return (
            f"{TAG} Python code for: {topic}\n\n```python\ndef {name}(data):\n"
            f"    # {topic}\n    return data\n```"
        )
    n_points = 2 + int(stable_fraction(settings.seed, "n", request) * 3)
    start = int(stable_fraction(settings.seed, "p", request) * len(_POINTS))
    points = [_POINTS[(start + i) % len(_POINTS)] for i in range(n_points)]
    opening = _pick(_OPENINGS, settings.seed, "open", request)
    body = "\n".join(f"{i + 1}. {p}" for i, p in enumerate(points))
    return f'{TAG} {opening} On "{topic}":\n\n{body}'


_STRENGTHS = ["addresses the instruction", "is easy to follow", "is on topic"]
_GAPS = [
    "it lacks a concrete example",
    "it misses an important detail",
    "it could be more precise about the key step",
    "its conclusion is vague",
]


def critique_is_needed(request: str, settings: ReplySettings) -> bool:
    """First critiques ask for a revision for ``needed_fraction`` of instructions; critiques
    of revised answers for ``later_needed_fraction``."""
    revised = prompts.REVISED_CRITIQUE_MARKER in request
    fraction = settings.later_needed_fraction if revised else settings.needed_fraction
    instruction = _section(request, prompts.INSTRUCTION_LABEL)
    key = _section(request, prompts.REVISED_CRITIQUE_MARKER) if revised else ""
    return stable_fraction(settings.seed, "verdict", instruction, key) < fraction


def critique_reply(request: str, settings: ReplySettings) -> str:
    needed = critique_is_needed(request, settings)
    strength = _pick(_STRENGTHS, settings.seed, "s", request)
    if needed:
        gap = _pick(_GAPS, settings.seed, "g", request)
        score = 5 + int(stable_fraction(settings.seed, "score", request) * 3)  # 5..7
        hint = " Compare it with what the task expects." if prompts.GOLD_MARKER in request else ""
        return f"{TAG} The answer {strength}, but {gap}.{hint} Score: {score}/10. {VERDICT_NEEDED}"
    score = 9 + int(stable_fraction(settings.seed, "score", request) * 2)  # 9..10
    return f"{TAG} The answer {strength} and is complete. Score: {score}/10. {VERDICT_NOT_NEEDED}"


def revision_reply(request: str, settings: ReplySettings) -> str:
    previous = _section(request, prompts.PREVIOUS_ANSWER_LABEL).strip()
    feedback = _section(request, prompts.CRITIQUE_LABEL)
    gap = next((g for g in _GAPS if g in feedback), "it could be clearer")
    addition = {
        "it lacks a concrete example": "For example, apply the steps above to one small case first.",
        "it misses an important detail": "One detail matters most: check the inputs before you begin.",
        "it could be more precise about the key step": "The key step is the second one: do it carefully.",
        "its conclusion is vague": "In short: follow the steps in order and verify the result.",
    }.get(gap, "In short: follow the steps in order and verify the result.")
    if not previous:
        previous = f"{TAG} Here is a revised answer."
    if not previous.startswith(TAG):
        previous = f"{TAG} {previous}"
    return f"{previous}\n\n{addition}"


def judge_reply(request: str, settings: ReplySettings) -> str:
    """First line "s1 s2"; longer, more detailed answers score higher, ties are common.
    A seeded ``judge_unparseable_fraction`` of requests get a verdict without any scores."""
    if stable_fraction(settings.seed, "unparseable", request) < settings.judge_unparseable_fraction:
        return f"{TAG} Both answers have merits and flaws; I cannot settle on numbers here."
    first = _between(request, prompts.JUDGE_MARKER, "[The End of Assistant 1's Answer]")
    second = _between(
        request, "[The Start of Assistant 2's Answer]", "[The End of Assistant 2's Answer]"
    )
    s1, s2 = _judge_score(first, settings), _judge_score(second, settings)
    better = "Assistant 1" if s1 > s2 else "Assistant 2" if s2 > s1 else "Neither assistant"
    return (
        f"{s1} {s2}\n{TAG} Both assistants respond to the question. {better} gives the more "
        "detailed and helpful answer; the scores reflect detail and relevance."
    )


def _between(text: str, start: str, end: str) -> str:
    i = text.find(start)
    if i < 0:
        return ""
    i += len(start)
    j = text.find(end, i)
    return text[i : j if j >= 0 else len(text)].strip()


def _judge_score(answer: str, settings: ReplySettings) -> int:
    if not answer:
        return 1
    detail = min(3, count_tokens(answer) // 40)
    jitter = int(stable_fraction(settings.seed, "judge", answer) * 2)
    return max(1, min(10, 5 + detail + jitter))


# --- /v1/completions: the offline teacher as a SelFee model ----------------------------

MAX_OFFLINE_REVISIONS = 4


def selfee_continuation(prompt: str, settings: ReplySettings) -> str:
    """What a SelFee model would write after ``prompt`` (the SelFee prompt and any chain so
    far): answer, critiques and revisions as the teacher writes them for augmentation, so
    revision control can be tested over HTTP. Ends where the model would end (EOS)."""
    head, body = chain.split_prompt(prompt)
    instruction, context = chain.prompt_fields(head)
    parsed = chain.parse_generation(body, head)
    last = parsed.segments[-1]
    if last.text.strip():
        return ""  # mid-segment (a controller appended text): nothing more to say
    outputs = parsed.outputs
    feedbacks = parsed.feedbacks
    written = ""
    if last.kind == "answer":
        outputs = [_plain_answer(instruction, context, settings)]
        written = outputs[0] + chain.feedback_header(1)
    elif last.kind == "revision":
        revised = revision_reply(
            prompts.revision_messages(instruction, outputs[-2], feedbacks[-1], context)[-1][
                "content"
            ],
            settings,
        )
        outputs = [*outputs[:-1], revised]
        written = revised + chain.feedback_header(len(outputs))
    while True:
        history = list(zip(outputs[:-1], feedbacks, strict=False))
        critique = critique_reply(
            prompts.critique_messages(
                instruction, outputs[-1], context, revised=len(outputs) > 1, history=history
            )[-1]["content"],
            settings,
        )
        written += critique
        feedbacks = [*feedbacks, critique]
        if chain.detect_verdict(critique) is not chain.Verdict.NEEDED:
            return written
        if len(outputs) > MAX_OFFLINE_REVISIONS:
            return written
        revised = revision_reply(
            prompts.revision_messages(instruction, outputs[-1], critique, context)[-1]["content"],
            settings,
        )
        outputs = [*outputs, revised]
        written += chain.revision_header(len(outputs) - 1) + revised
        written += chain.feedback_header(len(outputs))


def _plain_answer(instruction: str, input: str, settings: ReplySettings) -> str:
    content = prompts.answer_messages(instruction, input)[-1]["content"]
    return answer_reply(content, settings)
