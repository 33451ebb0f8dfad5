"""The offline teacher's replies: recognised prompt kinds, determinism, SelFee shape."""

from __future__ import annotations

import re

from selfee import prompts
from selfee.chain import Verdict, detect_verdict
from selfee.teacher.replies import (
    TAG,
    ReplySettings,
    classify,
    count_tokens,
    critique_is_needed,
    reply,
    truncate_tokens,
)

SETTINGS = ReplySettings(seed=0, needed_fraction=0.5, later_needed_fraction=0.0)


def test_classifies_each_project_prompt() -> None:
    assert classify(prompts.answer_messages("Name a fruit.")) == "answer"
    assert classify(prompts.critique_messages("Name a fruit.", "Apple")) == "critique"
    assert classify(prompts.critique_messages("Name a fruit.", "Apple", revised=True)) == "critique"
    assert classify(prompts.revision_messages("Name a fruit.", "Apple", "Too short.")) == "revision"
    assert classify(prompts.GENERAL_JUDGE.messages("Q?", "a", "b")) == "judge"


def test_critiques_carry_score_and_end_with_a_verdict() -> None:
    for i in range(40):
        text = reply(prompts.critique_messages(f"Task {i}", f"Answer {i}"), SETTINGS)
        assert TAG in text
        assert re.search(r"Score: \d+/10", text)
        assert detect_verdict(text) is not Verdict.UNKNOWN
        assert text.rstrip().endswith(("Revision is needed.", "Revision is not needed."))


def test_first_round_verdict_fraction_is_deterministic_and_near_setting() -> None:
    requests = [
        prompts.critique_messages(f"Instruction number {i}", "an answer")[-1]["content"]
        for i in range(400)
    ]
    needed = [critique_is_needed(r, SETTINGS) for r in requests]
    assert needed == [critique_is_needed(r, SETTINGS) for r in requests]
    assert 0.4 < sum(needed) / len(needed) < 0.6
    never = ReplySettings(needed_fraction=0.0)
    always = ReplySettings(needed_fraction=1.0)
    assert not any(critique_is_needed(r, never) for r in requests)
    assert all(critique_is_needed(r, always) for r in requests)


def test_verdict_depends_on_instruction_not_on_answer_wording() -> None:
    a = prompts.critique_messages("Explain tides.", "first answer")[-1]["content"]
    b = prompts.critique_messages("Explain tides.", "another answer")[-1]["content"]
    assert critique_is_needed(a, SETTINGS) == critique_is_needed(b, SETTINGS)


def test_revised_answers_are_not_needed_later_by_default() -> None:
    for i in range(50):
        text = reply(prompts.critique_messages(f"T{i}", "rev", revised=True), SETTINGS)
        assert detect_verdict(text) is Verdict.NOT_NEEDED


def test_seed_changes_replies() -> None:
    msgs = prompts.answer_messages("Describe a good morning routine for a student.")
    texts = {reply(msgs, ReplySettings(seed=s)) for s in range(8)}
    assert len(texts) > 1
    assert reply(msgs, SETTINGS) == reply(msgs, SETTINGS)


def test_revision_keeps_the_previous_answer_and_adds_to_it() -> None:
    previous = f"{TAG} 1. Do this.\n2. Do that."
    text = reply(
        prompts.revision_messages("Plan a day.", previous, "It lacks a concrete example."), SETTINGS
    )
    assert text.startswith(previous)
    assert len(text) > len(previous)
    assert "Revision" not in text


def test_code_instructions_get_code() -> None:
    text = reply(
        prompts.answer_messages(
            "generate the python code snippet from the following natural language:\nsum a list"
        ),
        SETTINGS,
    )
    assert "```python" in text


def test_judge_reply_starts_with_two_scores_favouring_detail() -> None:
    short, detailed = "Yes.", " ".join(["A careful, detailed explanation with examples."] * 30)
    text = reply(prompts.GENERAL_JUDGE.messages("Why?", short, detailed), SETTINGS)
    first = text.splitlines()[0]
    assert re.fullmatch(r"\d+ \d+", first)
    s1, s2 = map(int, first.split())
    assert 1 <= s1 < s2 <= 10
    swapped = reply(prompts.GENERAL_JUDGE.messages("Why?", detailed, short), SETTINGS).splitlines()[
        0
    ]
    assert swapped == f"{s2} {s1}"


def test_upstream_judge_template_is_recognised(reference) -> None:
    import json

    template = json.loads((reference / "prompt.jsonl").read_text().splitlines()[0])
    user = template["prompt_template"].format(
        question="Q", answer_1="a", answer_2="b", prompt=template["defaults"]["prompt"]
    )
    assert classify([{"role": "user", "content": user}]) == "judge"


def test_token_counting_and_truncation() -> None:
    assert count_tokens("Hello, world!") == 4
    assert truncate_tokens("one two three four", 2) == ("one two", "length")
    assert truncate_tokens("one two", 5) == ("one two", "stop")
    assert truncate_tokens("one two", None) == ("one two", "stop")
