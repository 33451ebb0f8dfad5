"""The loop for one record, against a scripted teacher: every branch, every prompt it sends."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from selfee import prompts
from selfee.augment.loop import (
    STOP_MAX_ITERATIONS,
    STOP_NO_VERDICT,
    STOP_NOT_NEEDED,
    LoopSettings,
    augment_record,
)
from selfee.chain import parse, render_prompt, render_target
from selfee.llm import CallFailed, ContextOverflow, EndpointRejected, Message, estimate_tokens
from selfee.records import make_instruction
from selfee.teacher.replies import classify

NEEDED = "Misses a step. Score: 6/10. Revision is needed."
NOT_NEEDED = "Complete. Score: 9/10. Revision is not needed."
GOLD = "6 * 7 = 42\n#### 42"
RECORD = make_instruction("gsm8k", "What is 6 times 7?", "", GOLD)
CHAIN_FIELDS = {
    "id", "dataset", "instruction", "input", "output", "outputs", "iteration",
    "iteration_truncated", "stop_reason", "error",
}  # fmt: skip


class Scripted:
    """Replies by prompt kind from scripts; records every prompt it was sent."""

    def __init__(self, critiques: list[str], answers: list[str] | None = None) -> None:
        self.critiques = list(critiques)
        self.answers = list(answers or [f"Answer {i}" for i in range(20)])
        self.sent: list[tuple[str, list[Message]]] = []
        self.fail: Callable[[str, list[Message]], Exception | None] = lambda kind, m: None

    async def __call__(self, messages: list[Message]) -> str:
        kind = classify(messages)
        self.sent.append((kind, messages))
        if (error := self.fail(kind, messages)) is not None:
            raise error
        if kind == "critique":
            return self.critiques.pop(0) if len(self.critiques) > 1 else self.critiques[0]
        return self.answers.pop(0)

    def kinds(self) -> list[str]:
        return [kind for kind, _ in self.sent]

    def texts(self, kind: str) -> list[str]:
        return ["\n".join(m["content"] for m in msgs) for k, msgs in self.sent if k == kind]


def run(teacher: Scripted, record=RECORD, **settings) -> dict:
    return asyncio.run(augment_record(teacher, record, LoopSettings(**settings)))


def test_revises_until_the_critique_says_not_needed() -> None:
    teacher = Scripted([NEEDED, NOT_NEEDED])
    chain = run(teacher)
    assert set(chain) == CHAIN_FIELDS
    assert chain["error"] is None and chain["stop_reason"] == STOP_NOT_NEEDED
    assert teacher.kinds() == ["answer", "critique", "revision", "critique"]
    assert chain["outputs"] == [
        {"output": "Answer 0", "feedback": NEEDED},
        {"output": "Answer 1", "feedback": NOT_NEEDED},
    ]
    assert chain["iteration"] == 2 and chain["iteration_truncated"] is False
    second_critique = teacher.texts("critique")[1]
    assert prompts.REVISED_CRITIQUE_MARKER in second_critique
    assert "Earlier answer 1:\nAnswer 0" in second_critique and NEEDED in second_critique
    revision = teacher.texts("revision")[0]
    assert "Answer 0" in revision and NEEDED in revision
    text = render_prompt(chain["instruction"]) + render_target(chain["outputs"])
    assert parse(text).steps == chain["outputs"]


def test_stops_at_max_iterations() -> None:
    teacher = Scripted([NEEDED])
    chain = run(teacher, max_iterations=3)
    assert chain["iteration"] == 3 and chain["stop_reason"] == STOP_MAX_ITERATIONS
    assert teacher.kinds().count("revision") == 2 and teacher.kinds().count("critique") == 3


def test_gold_goes_to_the_critic_only() -> None:
    with_gold = Scripted([NEEDED, NOT_NEEDED])
    run(with_gold, use_gold=True)
    assert all(prompts.GOLD_MARKER in t and GOLD in t for t in with_gold.texts("critique"))
    for kind in ("answer", "revision"):
        assert all(GOLD not in t for t in with_gold.texts(kind))
    without = Scripted([NEEDED, NOT_NEEDED])
    run(without, use_gold=False)
    assert all(GOLD not in t for _, msgs in without.sent for t in [str(msgs)])


def test_a_given_answer_is_the_first_answer() -> None:
    record = make_instruction("sharegpt", "Tell me a joke.", "", "I'm sorry. Knock knock.")
    teacher = Scripted([NOT_NEEDED])
    chain = run(teacher, record=record, reuse_answer=True)
    assert teacher.kinds() == ["critique"]  # no answer request
    assert chain["outputs"][0]["output"] == "Knock knock."  # cleaned like teacher answers


def test_a_critique_without_verdict_is_asked_again_then_recorded() -> None:
    teacher = Scripted(["Looks fine, score 8.", NOT_NEEDED])
    chain = run(teacher)
    assert chain["stop_reason"] == STOP_NOT_NEEDED and chain["iteration"] == 1
    assert teacher.kinds() == ["answer", "critique", "critique"]
    stubborn = Scripted(["Looks fine."])
    chain = run(stubborn)
    assert (
        chain["stop_reason"] == STOP_NO_VERDICT and chain["outputs"][0]["feedback"] == "Looks fine."
    )


def test_teacher_output_is_cleaned() -> None:
    teacher = Scripted(
        [NEEDED, NOT_NEEDED + " Keep up the good work!"],
        ["First.", "I apologize for the confusion. Here is the revised answer:\n\nSecond."],
    )
    chain = run(teacher)
    assert chain["outputs"][1] == {"output": "Second.", "feedback": NOT_NEEDED}


def test_long_prompts_are_cut_to_the_context_budget() -> None:
    record = make_instruction("alpaca", "Summarise this text.", "word " * 6000)
    teacher = Scripted([NEEDED, NEEDED, NOT_NEEDED], ["A" * 900, "B" * 900, "C" * 900])
    chain = run(teacher, record=record, prompt_budget=1000)
    assert chain["error"] is None and chain["iteration_truncated"] is True
    assert all(estimate_tokens(msgs) <= 1000 for _, msgs in teacher.sent)
    assert chain["input"] == record["input"]  # the stored row keeps the full text
    assert all("[...]" in t for t in teacher.texts("answer"))


def test_earlier_rounds_go_first_when_the_budget_is_tight() -> None:
    teacher = Scripted([NEEDED, NEEDED, NOT_NEEDED], ["A" * 600, "B" * 600, "C" * 600])
    chain = run(teacher, prompt_budget=800)
    assert chain["iteration_truncated"] is True and chain["iteration"] == 3
    last_critique = teacher.texts("critique")[-1]
    assert "A" * 600 not in last_critique  # the oldest round was dropped...
    assert "C" * 600 in last_critique  # ...the answer being judged never is


def test_a_prompt_that_cannot_fit_is_an_error_row() -> None:
    record = make_instruction("alpaca", "x " * 400, "y " * 400)
    chain = run(Scripted([NOT_NEEDED]), record=record, prompt_budget=100)
    assert chain["error"] and "budget is 100" in chain["error"] and chain["outputs"] == []


def test_the_endpoint_saying_too_long_tightens_the_budget() -> None:
    teacher = Scripted([NOT_NEEDED], ["x " * 2000])
    teacher.fail = lambda kind, msgs: (
        ContextOverflow("context_length_exceeded") if estimate_tokens(msgs) > 900 else None
    )
    chain = run(teacher, prompt_budget=1500)  # our estimate says 1500 fits; the server says no
    assert chain["error"] is None and chain["iteration_truncated"] is True
    assert estimate_tokens(teacher.sent[-1][1]) <= 900


def test_a_failed_call_gives_an_error_row_with_what_was_done() -> None:
    teacher = Scripted([NEEDED])
    teacher.fail = lambda kind, msgs: (
        CallFailed("RateLimitError: slow down") if kind == "revision" else None
    )
    chain = run(teacher)
    assert chain["error"] == "RateLimitError: slow down"
    assert chain["outputs"] == [{"output": "Answer 0", "feedback": NEEDED}]


def test_a_rejected_endpoint_stops_everything() -> None:
    teacher = Scripted([NOT_NEEDED])
    teacher.fail = lambda kind, msgs: EndpointRejected("401 bad key")
    with pytest.raises(EndpointRejected):
        run(teacher)
