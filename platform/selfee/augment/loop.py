"""Answer → critique → revise until the critique says "not needed": one record, plain async.

The functional core of augmentation. It talks to the teacher only through ``ask`` (an async
function from chat messages to reply text), so it runs the same against a scripted teacher
in a unit test and against a rate-limited, retrying OpenAI client in a Ray worker. It turns
one Instruction row into one Chain row (ARCHITECTURE.md) and never raises for a failed
request: the row carries ``error`` instead, so nothing is dropped. Only ``EndpointRejected``
(bad key, unknown model) escapes, because every other row would fail the same way.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from selfee import prompts
from selfee.augment.cleanup import clean_answer, clean_feedback
from selfee.augment.config import PromptsConfig
from selfee.chain import Verdict, detect_verdict
from selfee.llm import CallFailed, ContextOverflow, Message, estimate_tokens

Ask = Callable[[list[Message]], Awaitable[str]]

# Why a chain ended (an extension of the Chain contract).
STOP_NOT_NEEDED = "not_needed"
STOP_MAX_ITERATIONS = "max_iterations"
STOP_NO_VERDICT = "no_verdict"
STOP_ERROR = "error"

MIN_FIELD_CHARS = 200  # a text is never cut below this to fit the context
CUT_MARK = "\n[...]\n"
OVERFLOW_RETRIES = 3  # when the endpoint says the prompt was too long after all
OVERFLOW_SHRINK = 0.75


@dataclass(frozen=True)
class LoopSettings:
    max_iterations: int = 5  # answer + revisions
    use_gold: bool = False  # the critic sees the record's ``output``
    reuse_answer: bool = False  # the record's ``output`` is the initial answer (ShareGPT)
    prompt_budget: int | None = None  # tokens a prompt may take (context - max_tokens)
    prompts: PromptsConfig = field(default_factory=PromptsConfig)


class ContextTooLong(CallFailed):
    """Even the minimum a call needs does not fit the context budget."""


@dataclass
class Turn:
    """What one teacher call is about; ``fit`` shrinks it to the context budget."""

    kind: str  # answer | critique | revision
    instruction: str
    input: str = ""
    gold: str = ""
    answer: str = ""
    feedback: str = ""
    history: list[tuple[str, str]] = field(default_factory=list)
    revised: bool = False

    def messages(self, settings: LoopSettings) -> list[Message]:
        if self.kind == "answer":
            return prompts.answer_messages(self.instruction, self.input)
        if self.kind == "critique":
            return prompts.critique_messages(
                self.instruction,
                self.answer,
                self.input,
                gold=self.gold,
                revised=self.revised,
                history=self.history,
                system=settings.prompts.critic_system,
                request=settings.prompts.critique_request,
            )
        return prompts.revision_messages(
            self.instruction,
            self.answer,
            self.feedback,
            self.input,
            settings.prompts.revision_request,
        )


def fit(turn: Turn, settings: LoopSettings, budget: int | None) -> tuple[list[Message], bool]:
    """(messages within ``budget`` tokens, whether anything was left out to get there).

    Keeps only what the next call needs: earlier rounds go first (oldest first), then the
    longest remaining text loses its middle, never below MIN_FIELD_CHARS.
    """
    messages = turn.messages(settings)
    if budget is None or estimate_tokens(messages) <= budget:
        return messages, False
    turn = dataclasses.replace(turn, history=list(turn.history))
    while turn.history and estimate_tokens(messages) > budget:
        turn.history.pop(0)
        messages = turn.messages(settings)
    names = ("instruction", "input", "gold", "answer", "feedback")
    while (over := estimate_tokens(messages) - budget) > 0:
        name = max(names, key=lambda n: len(getattr(turn, n)))
        text = getattr(turn, name)
        if len(text) <= MIN_FIELD_CHARS + len(CUT_MARK):
            raise ContextTooLong(
                f"the {turn.kind} prompt needs about {estimate_tokens(messages)} tokens even "
                f"with its longest texts cut; the budget is {budget} (raise max_context or "
                "lower max_tokens)"
            )
        keep = max(MIN_FIELD_CHARS, len(text) - int(over * 3) - len(CUT_MARK) - 16)
        setattr(turn, name, text[: keep // 2] + CUT_MARK + text[len(text) - keep // 2 :])
        messages = turn.messages(settings)
    return messages, True


class _Conversation:
    """Asks the teacher for one turn, fitting it to the budget (and tightening the budget
    when the endpoint disagrees with our token estimate)."""

    def __init__(self, ask: Ask, settings: LoopSettings) -> None:
        self.ask = ask
        self.settings = settings
        self.budget = settings.prompt_budget
        self.truncated = False

    async def __call__(self, turn: Turn) -> str:
        for attempt in range(OVERFLOW_RETRIES + 1):
            messages, cut = fit(turn, self.settings, self.budget)
            try:
                reply = await self.ask(messages)
            except ContextOverflow:
                if attempt == OVERFLOW_RETRIES:
                    raise
                self.budget = int((self.budget or estimate_tokens(messages)) * OVERFLOW_SHRINK)
                continue
            self.truncated |= cut
            return reply
        raise AssertionError("unreachable")


async def augment_record(ask: Ask, record: dict[str, Any], settings: LoopSettings) -> dict:
    """The Chain row for ``record`` (without ``usage``, which the caller's ``ask`` counts)."""
    instruction, input_ = record["instruction"], record.get("input") or ""
    given = record.get("output") or ""
    gold = given if settings.use_gold else ""
    talk = _Conversation(ask, settings)
    outputs: list[dict[str, str]] = []
    stop, error = STOP_ERROR, None
    try:
        if settings.reuse_answer and given.strip():
            answer = clean_answer(given)
        else:
            answer = clean_answer(await talk(Turn("answer", instruction, input_)))
        while True:
            critique = Turn(
                "critique",
                instruction,
                input_,
                gold=gold,
                answer=answer,
                history=[(o["output"], o["feedback"]) for o in outputs],
                revised=bool(outputs),
            )
            feedback = clean_feedback(await talk(critique))
            verdict = detect_verdict(feedback)
            if verdict is Verdict.UNKNOWN:  # one more try: the request asks for a verdict
                feedback = clean_feedback(await talk(critique))
                verdict = detect_verdict(feedback)
            outputs.append({"output": answer, "feedback": feedback})
            if verdict is not Verdict.NEEDED:
                stop = STOP_NOT_NEEDED if verdict is Verdict.NOT_NEEDED else STOP_NO_VERDICT
                break
            if len(outputs) >= settings.max_iterations:
                stop = STOP_MAX_ITERATIONS
                break
            revise = Turn("revision", instruction, input_, answer=answer, feedback=feedback)
            answer = clean_answer(await talk(revise))
    except CallFailed as e:
        error = str(e)
    return {
        "id": record["id"],
        "dataset": record.get("dataset") or "",
        "instruction": instruction,
        "input": input_,
        "output": given,
        "outputs": outputs,
        "iteration": len(outputs),
        "iteration_truncated": talk.truncated,
        "stop_reason": stop,
        "error": error,
    }
