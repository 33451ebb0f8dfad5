"""Answer → critique → revise until the critique says "not needed": one record, plain async.

This is the functional core of augmentation; Ray code fans it out. It turns one
Instruction row into one Chain row (ARCHITECTURE.md) and never raises for a failed request:
the row carries ``error`` instead, so nothing is dropped.
"""

from __future__ import annotations

from typing import Any

import openai

from selfee import prompts
from selfee.chain import Verdict, detect_verdict
from selfee.llm import Usage, chat


async def augment_record(
    client: openai.AsyncOpenAI,
    model: str,
    record: dict[str, Any],
    max_iterations: int = 5,
    use_gold: bool = True,
) -> dict[str, Any]:
    """The Chain row for ``record``; ``iteration`` counts answer + revisions."""
    instruction, input_ = record["instruction"], record.get("input", "")
    gold = record.get("output", "") if use_gold else ""
    usage = Usage()
    outputs: list[dict[str, str]] = []
    truncated, error = False, None
    try:
        answer = await chat(client, model, prompts.answer_messages(instruction, input_), usage)
        while True:
            critique = prompts.critique_messages(
                instruction, answer, input_, gold=gold, revised=bool(outputs)
            )
            feedback = await chat(client, model, critique, usage)
            outputs.append({"output": answer, "feedback": feedback})
            if detect_verdict(feedback) is not Verdict.NEEDED:
                break
            if len(outputs) >= max_iterations:
                truncated = True
                break
            revise = prompts.revision_messages(instruction, answer, feedback, input_)
            answer = await chat(client, model, revise, usage)
    except (openai.OpenAIError, ValueError) as e:
        error = f"{type(e).__name__}: {e}"
    return {
        "id": record.get("id"),
        "dataset": record.get("dataset", ""),
        "instruction": instruction,
        "input": input_,
        "output": record.get("output", ""),
        "outputs": outputs,
        "iteration": len(outputs),
        "iteration_truncated": truncated,
        "usage": usage.as_dict(),
        "error": error,
    }
