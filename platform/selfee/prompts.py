"""Prompts this project sends to teacher and judge LLMs (OpenAI chat messages).

These are the texts a real teacher (GPT-3.5/4 or any chat model) sees; the offline teacher
recognises them by the marker lines defined here, so the two always agree.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from selfee.chain import VERDICT_NEEDED, VERDICT_NOT_NEEDED

Message = dict[str, str]

# Marker lines: the offline teacher tells prompt kinds apart by these.
CRITIQUE_MARKER = "Proposed answer:"
REVISED_CRITIQUE_MARKER = "Revised proposed answer:"
GOLD_MARKER = "Reference answer (never reveal it):"
REVISION_MARKER = "Revise the answer based on the critique"
JUDGE_MARKER = "[The Start of Assistant 1's Answer]"
INSTRUCTION_LABEL = "Instruction:"
INPUT_LABEL = "Input:"
PREVIOUS_ANSWER_LABEL = "Your previous answer:"
CRITIQUE_LABEL = "Critique of that answer:"
EARLIER_ANSWER_LABEL = "Earlier answer"  # + " k:" — rounds before the current answer
EARLIER_CRITIQUE_LABEL = "Critique of earlier answer"
CRITIQUE_REQUEST_START = "Write a critique"

CRITIC_SYSTEM = (
    "You are a teaching assistant who critiques answers to instructions. Be specific and "
    "brief. When a reference answer is given, guide the student towards it without "
    "revealing or quoting it."
)

CRITIQUE_REQUEST = (
    f"{CRITIQUE_REQUEST_START} of the {{which}} answer in under 100 words. Score its quality from 1 to "
    f'10 as "Score: N". Then end with exactly one sentence: "{VERDICT_NEEDED}" or '
    f'"{VERDICT_NOT_NEEDED}" A score below 9 normally needs a revision.'
)

REVISION_REQUEST = (
    f"{REVISION_MARKER} with minimal edits. Write only the revised answer, as if it were "
    "the first try: no apology, no mention of the critique or of revisions."
)


def _instruction_block(instruction: str, input: str) -> str:
    text = f"{INSTRUCTION_LABEL}\n{instruction}"
    if input:
        text += f"\n\n{INPUT_LABEL}\n{input}"
    return text


def answer_messages(instruction: str, input: str = "") -> list[Message]:
    content = instruction if not input else f"{instruction}\n\n{input}"
    return [{"role": "user", "content": content}]


def critique_messages(
    instruction: str,
    answer: str,
    input: str = "",
    gold: str = "",
    revised: bool = False,
    history: Sequence[tuple[str, str]] = (),
    system: str = CRITIC_SYSTEM,
    request: str = CRITIQUE_REQUEST,
) -> list[Message]:
    """The critic sees the task, the gold answer if any, the earlier rounds (so it does not
    repeat itself) and the answer to judge; ``history`` is (answer, critique) per round."""
    parts = [_instruction_block(instruction, input)]
    if gold:
        parts.append(f"{GOLD_MARKER}\n{gold}")
    for k, (earlier, critique) in enumerate(history, 1):
        parts.append(f"{EARLIER_ANSWER_LABEL} {k}:\n{earlier}")
        parts.append(f"{EARLIER_CRITIQUE_LABEL} {k}:\n{critique}")
    parts.append(f"{REVISED_CRITIQUE_MARKER if revised else CRITIQUE_MARKER}\n{answer}")
    parts.append(request.replace("{which}", "revised proposed" if revised else "proposed"))
    return [
        {"role": "system", "content": system},
        {"role": "user", "content": "\n\n".join(parts)},
    ]


def revision_messages(
    instruction: str,
    answer: str,
    feedback: str,
    input: str = "",
    request: str = REVISION_REQUEST,
) -> list[Message]:
    content = "\n\n".join(
        [
            _instruction_block(instruction, input),
            f"{PREVIOUS_ANSWER_LABEL}\n{answer}",
            f"{CRITIQUE_LABEL}\n{feedback}",
            request,
        ]
    )
    return [{"role": "user", "content": content}]


@dataclass(frozen=True)
class JudgeTemplate:
    """A pairwise judge prompt, in the shape of the upstream ``prompt.jsonl`` records."""

    system_prompt: str
    prompt_template: str  # uses {question}, {answer_1}, {answer_2}, {prompt}
    prompt: str

    def messages(self, question: str, answer_1: str, answer_2: str) -> list[Message]:
        user = self.prompt_template.format(
            question=question, answer_1=answer_1, answer_2=answer_2, prompt=self.prompt
        )
        return [
            {"role": "system", "content": self.system_prompt},
            {"role": "user", "content": user},
        ]


PAIRWISE_TEMPLATE = (
    "[Question]\n{question}\n\n"
    f"{JUDGE_MARKER}\n{{answer_1}}\n\n[The End of Assistant 1's Answer]\n\n"
    "[The Start of Assistant 2's Answer]\n{answer_2}\n\n[The End of Assistant 2's Answer]\n\n"
    "[System]\n{prompt}\n\n"
)

_SCORE_LINE = (
    "First output a single line with only the two scores, for Assistant 1 and Assistant 2, "
    "separated by a space. Then explain your evaluation, avoiding bias and making sure the "
    "order of the answers does not affect your judgment."
)
JUDGE_SYSTEM = "You are a helpful and precise assistant for checking the quality of the answer."

GENERAL_JUDGE = JudgeTemplate(
    system_prompt=JUDGE_SYSTEM,
    prompt_template=PAIRWISE_TEMPLATE,
    prompt=(
        "Please rate the helpfulness, relevance, accuracy and level of detail of the two "
        "answers above. Each assistant receives an overall score from 1 to 10, higher is "
        f"better. {_SCORE_LINE}"
    ),
)

CODING_JUDGE = JudgeTemplate(
    system_prompt=JUDGE_SYSTEM,
    prompt_template=PAIRWISE_TEMPLATE,
    prompt=(
        "Both assistants were asked to write a program. Judge each submission on whether it "
        "solves the stated problem correctly (check edge cases), whether the code is efficient "
        "and idiomatic, and whether it is readable and explained where it matters. Each "
        "assistant receives a score from 1 (no code, or code unrelated to the task) to 10 "
        f"(correct, clear and efficient). {_SCORE_LINE}"
    ),
)

MATH_JUDGE = JudgeTemplate(
    system_prompt=JUDGE_SYSTEM,
    prompt_template=PAIRWISE_TEMPLATE,
    prompt=(
        "Both assistants were asked to solve a math problem. Work out the correct answer "
        "yourself before reading theirs, then check every step of each solution: a wrong "
        "final answer weighs most, then wrong steps, then unclear reasoning. Each assistant "
        f"receives a score from 1 to 10. {_SCORE_LINE}"
    ),
)
