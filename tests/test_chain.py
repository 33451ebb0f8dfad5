"""The SelFee text format: exact strings, parsing, final answers, verdicts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from selfee.chain import (
    Verdict,
    detect_verdict,
    final_answer,
    parse,
    render_prompt,
    render_target,
)


def load(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# --- published data --------------------------------------------------------------------


def test_final_answer_matches_published_13b_enforce_3(reference: Path) -> None:
    rows = load(reference / "answer" / "selfee_13b_enforce_3_revisions.jsonl")
    assert len(rows) == 80
    mismatched = [
        r["question_id"] for r in rows if final_answer(r["whole_generation"]) != r["text"]
    ]
    assert mismatched == []


def test_final_answer_matches_every_published_answer_file_with_chains(reference: Path) -> None:
    """Any answer file that carries whole generations (more may be added) must agree."""
    files = [
        p
        for p in sorted((reference / "answer").glob("*.jsonl"))
        if "whole_generation" in load(p)[0]
    ]
    assert files, "expected at least one answer file with whole_generation"
    for path in files:
        for row in load(path):
            assert final_answer(row["whole_generation"]) == row["text"], (
                path.name,
                row["question_id"],
            )


def test_published_generations_parse_into_alternating_parts(reference: Path) -> None:
    rows = load(reference / "answer" / "selfee_13b_enforce_3_revisions.jsonl")
    for row in rows:
        chain = parse(row["whole_generation"])
        assert chain.prompt.startswith("Below is an instruction")
        assert chain.prompt.endswith("### Answer:\n")
        assert len(chain.feedbacks) in (len(chain.revisions), len(chain.revisions) + 1)
        assert [s.number for s in chain.segments if s.kind == "revision"] == list(
            range(1, len(chain.revisions) + 1)
        )


def test_augmented_sample_round_trips(reference: Path) -> None:
    rows = load(reference / "augmented" / "conala_sample.jsonl")
    assert len(rows) == 30
    for row in rows:
        text = render_prompt(row["instruction"], row["input"]) + render_target(row["outputs"])
        chain = parse(text)
        assert chain.steps == row["outputs"]
        assert chain.outputs == [o["output"] for o in row["outputs"]]
        assert chain.feedbacks == [o["feedback"] for o in row["outputs"]]
        assert chain.prompt == render_prompt(row["instruction"], row["input"])


# --- exact strings ----------------------------------------------------------------------


def test_prompt_without_input_is_exact() -> None:
    assert render_prompt("Say hi.") == (
        "Below is an instruction that describes a task. Write a response that appropriately "
        "completes the request.\n\n### Instruction:\nSay hi.\n\n### Answer:\n"
    )


def test_prompt_with_input_is_exact() -> None:
    assert render_prompt("Translate.", "Bonjour") == (
        "Below is an instruction that describes a task, paired with an input that provides "
        "further context. Write a response that appropriately completes the request.\n\n"
        "### Instruction:\nTranslate.\n\n### Input:\nBonjour\n\n### Answer:\n"
    )


def test_a_prompt_reads_back_and_a_follow_up_turn_is_exact() -> None:
    from selfee.chain import is_selfee_prompt, prompt_fields, render_follow_up

    assert prompt_fields(render_prompt("Translate.", "Bonjour")) == ("Translate.", "Bonjour")
    assert prompt_fields(render_prompt("Say hi.")) == ("Say hi.", "")
    two_turns = render_prompt("Say hi.") + "Hi." + render_follow_up("Again.")
    assert two_turns.endswith("Hi.\n\n### Instruction:\nAgain.\n\n### Answer:\n")
    assert prompt_fields(two_turns) == ("Say hi.", "")  # the first turn's instruction
    assert is_selfee_prompt(two_turns) and not is_selfee_prompt("Say hi.")


def test_target_is_exact_and_ends_with_last_feedback_and_eos() -> None:
    outputs = [
        {"output": "a0", "feedback": "f0. Revision is needed."},
        {"output": "a1", "feedback": "f1. Revision is not needed."},
    ]
    assert render_target(outputs, eos="</s>") == (
        "a0\n\n### Feedback 1:\nf0. Revision is needed.\n\n### Revision 1:\n"
        "a1\n\n### Feedback 2:\nf1. Revision is not needed.</s>"
    )


def test_target_needs_an_output() -> None:
    with pytest.raises(ValueError):
        render_target([])


# --- parsing edge cases -----------------------------------------------------------------


def _chain(n: int) -> list[dict[str, str]]:
    return [
        {"output": f"answer {k}", "feedback": f"feedback {k}. Revision is needed."}
        for k in range(n)
    ]


def test_revision_numbers_above_nine() -> None:
    outputs = _chain(13)
    chain = parse(render_prompt("q") + render_target(outputs))
    assert chain.steps == outputs
    assert chain.segments[-2].kind == "revision" and chain.segments[-2].number == 12
    assert chain.final_answer == "answer 12"


def test_parse_without_prompt() -> None:
    chain = parse(render_target(_chain(2)))
    assert chain.prompt == ""
    assert chain.answer == "answer 0"
    assert chain.revisions == ["answer 1"]


def test_cut_off_last_revision_falls_back_to_previous_one() -> None:
    text = render_prompt("q") + render_target(_chain(3)) + "\n\n### Revision 3:\nhalf a sent"
    chain = parse(text)
    assert chain.revisions[-1] == "half a sent"
    assert chain.final_answer == "answer 2"


def test_cut_off_first_revision_falls_back_to_answer() -> None:
    text = (
        render_prompt("q")
        + "the answer\n\n### Feedback 1:\nmeh. Revision is needed.\n\n### Revision 1:\npart"
    )
    assert final_answer(text) == "the answer"


def test_lone_answer_with_or_without_feedback() -> None:
    assert final_answer(render_prompt("q") + "just this") == "just this"
    assert final_answer(render_prompt("q") + "ok\n\n### Feedback 1:\nfine. Revision is not") == "ok"


def test_markdown_headings_and_mid_line_headers_stay_text() -> None:
    answer = "### Step 1:\ndo it\n\nsee ### Feedback 1: inline\n\n### Revision 1:\nnot yet"
    outputs = [{"output": answer, "feedback": "good. Revision is not needed."}]
    chain = parse(render_target(outputs))
    assert chain.steps == outputs


def test_whitespace_inside_parts_survives_round_trip() -> None:
    outputs = [
        {"output": "\n  code\n\n", "feedback": " score 9 \n"},
        {"output": "x\n", "feedback": "Revision is not needed.\n\n"},
    ]
    assert parse(render_prompt("q", "in") + render_target(outputs)).steps == outputs


# --- verdicts ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("feedback", "verdict"),
    [
        ("Good. Score: 9. Revision is not needed.", Verdict.NOT_NEEDED),
        ("Good. No revision is needed.", Verdict.NOT_NEEDED),
        ("fine, no revisions needed", Verdict.NOT_NEEDED),
        ("No revisions are needed. Score: 10.", Verdict.NOT_NEEDED),
        ("There is no need for any revision. 10/10. Great job!", Verdict.NOT_NEEDED),
        ("The code does not need any revision.", Verdict.NOT_NEEDED),
        ("Revision is not needed, but you could optimize it further.", Verdict.NOT_NEEDED),
        ("Missing edge cases. Score: 6. Revision is needed.", Verdict.NEEDED),
        ("Score: 7\n\nRevision is needed", Verdict.NEEDED),
        ("Some revisions are needed.", Verdict.NEEDED),
        ("Great job! Score: 10/10.vision is needed.", Verdict.NEEDED),  # upstream rewrite artifact
        (
            "No revision is needed at first sight, but on reflection revision is needed.",
            Verdict.NEEDED,
        ),
        ("Overall, I would give it a score of 9.", Verdict.UNKNOWN),
        ("", Verdict.UNKNOWN),
    ],
)
def test_verdict_variants(feedback: str, verdict: Verdict) -> None:
    assert detect_verdict(feedback) is verdict


def test_published_feedbacks_have_verdicts(reference: Path) -> None:
    rows = load(reference / "augmented" / "conala_sample.jsonl")
    verdicts = [detect_verdict(o["feedback"]) for r in rows for o in r["outputs"]]
    # In the released data a chain continues exactly when its feedback asked for a revision.
    for row in rows:
        for step in row["outputs"][:-1]:
            assert detect_verdict(step["feedback"]) is Verdict.NEEDED
    assert verdicts.count(Verdict.NOT_NEEDED) >= 20


def test_header_cut_off_at_the_end_still_closes_the_revision() -> None:
    text = (
        render_prompt("q")
        + render_target(_chain(3))
        + "\n\n### Revision 3:\nfull revision\n\n### Feedback"
    )
    chain = parse(text)
    assert chain.final_answer == "full revision"
    assert chain.segments[-1].kind == "feedback" and chain.segments[-1].number == 4
    assert final_answer(text + " 4") == "full revision"


def test_text_after_a_numberless_header_is_not_a_header() -> None:
    outputs = [{"output": "see ### Feedback below\n### Feedback is a word here", "feedback": "ok"}]
    assert parse(render_target(outputs)).steps == outputs
