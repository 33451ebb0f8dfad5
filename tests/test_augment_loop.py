"""One record through answer → critique → revision against the offline teacher over HTTP."""

from __future__ import annotations

import asyncio

import openai

from selfee.augment_loop import augment_record
from selfee.chain import Verdict, detect_verdict, parse, render_prompt, render_target
from selfee.records import make_instruction

RECORD = make_instruction("gsm8k", "What is 6 times 7?", "", "6 * 7 = 42\n#### 42")
CHAIN_FIELDS = {
    "id",
    "dataset",
    "instruction",
    "input",
    "output",
    "outputs",
    "iteration",
    "iteration_truncated",
    "usage",
    "error",
}


def run(teacher, record=RECORD, **kwargs):
    async def go():
        client = openai.AsyncOpenAI(
            base_url=teacher.base_url, api_key="x", max_retries=0, timeout=5
        )
        try:
            return await augment_record(client, "offline-teacher", record, **kwargs)
        finally:
            await client.close()

    return asyncio.run(go())


def test_revises_until_not_needed(start_teacher) -> None:
    teacher = start_teacher(needed_fraction=1.0, later_needed_fraction=0.0)
    chain = run(teacher)
    assert set(chain) == CHAIN_FIELDS
    assert chain["error"] is None
    assert chain["iteration"] == 2 and not chain["iteration_truncated"]
    verdicts = [detect_verdict(o["feedback"]) for o in chain["outputs"]]
    assert verdicts == [Verdict.NEEDED, Verdict.NOT_NEEDED]
    assert chain["usage"]["requests"] == 4  # answer, critique, revision, critique
    assert chain["usage"]["prompt_tokens"] > 0 and chain["usage"]["completion_tokens"] > 0
    assert chain["id"] == RECORD["id"] and chain["output"] == RECORD["output"]
    text = render_prompt(chain["instruction"]) + render_target(chain["outputs"])
    assert parse(text).steps == chain["outputs"]


def test_stops_at_max_iterations(start_teacher) -> None:
    teacher = start_teacher(needed_fraction=1.0, later_needed_fraction=1.0)
    chain = run(teacher, max_iterations=3)
    assert chain["iteration"] == 3 and chain["iteration_truncated"] is True
    assert chain["usage"]["requests"] == 6


def test_gold_answer_is_shown_to_the_critic_only_when_asked(start_teacher) -> None:
    teacher = start_teacher(needed_fraction=1.0)
    with_gold = run(teacher, max_iterations=1)
    without = run(teacher, max_iterations=1, use_gold=False)
    assert "Compare it with what the task expects" in with_gold["outputs"][0]["feedback"]
    assert "Compare it with what the task expects" not in without["outputs"][0]["feedback"]


def test_a_failing_endpoint_gives_an_error_row_not_an_exception(start_teacher) -> None:
    teacher = start_teacher(fault_rate=1.0, fault_kinds=["malformed"])
    chain = run(teacher)
    assert chain["error"] and "JSONDecodeError" in chain["error"]
    assert chain["outputs"] == [] and chain["iteration"] == 0
    limited = start_teacher(fault_rate=1.0, fault_kinds=["429"])
    chain = run(limited)
    assert chain["error"].startswith("RateLimitError")
