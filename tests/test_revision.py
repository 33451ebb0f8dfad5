"""Revision control with a scripted engine: every branch of the controller."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from selfee.chain import VERDICT_NEEDED, Verdict, final_answer, parse
from selfee.revision import (
    Completion,
    CompletionRequest,
    RevisionController,
    RevisionSettings,
    generate,
    generate_batch,
)

PROMPT = "Below is an instruction.\n\n### Instruction:\nName a color.\n\n### Answer:\n"
EOS = "<EOS>"


def fb(k: int, text: str) -> str:
    return f"\n\n### Feedback {k}:\n{text}"


def rev(k: int, text: str) -> str:
    return f"\n\n### Revision {k}:\n{text}"


@dataclass
class ScriptedEngine:
    """Plays one scripted continuation per call; a character is a token; ``<EOS>`` ends.

    ``report_stop=False`` behaves like a server without ``stop_reason``: a stop string and
    EOS both come back as "stop" with no stop named.
    """

    script: list[str]
    report_stop: bool = True
    requests: list[CompletionRequest] = field(default_factory=list)

    def complete(self, request: CompletionRequest) -> Completion:
        self.requests.append(request)
        raw = self.script[len(self.requests) - 1]
        text, ended = (raw[: raw.index(EOS)], True) if EOS in raw else (raw, False)
        hits = sorted((text.find(s), s) for s in request.stop if s in text)
        if hits and hits[0][0] + len(hits[0][1]) <= request.max_tokens:
            at, stop = hits[0]
            return self._done(text[:at], "stop", at + len(stop), stop)
        if len(text) >= request.max_tokens or not ended:
            return self._done(text[: request.max_tokens], "length", request.max_tokens, None)
        return self._done(text, "eos", len(text), None)

    def _done(self, text: str, finish: str, tokens: int, stop: str | None) -> Completion:
        if not self.report_stop and finish in ("stop", "eos"):
            return Completion(text, "stop", tokens, None)
        return Completion(text, finish, tokens, stop)  # type: ignore[arg-type]


def run(script: list[str], report_stop: bool = True, **settings: object):
    engine = ScriptedEngine(script, report_stop)
    result = generate(engine, PROMPT, RevisionSettings(**settings))  # type: ignore[arg-type]
    assert result.text == result.whole_generation[len(PROMPT) :]
    assert result.final_answer == final_answer(result.whole_generation)
    assert result.calls == len(engine.requests)
    return result, engine


BOTH = pytest.mark.parametrize("report_stop", [True, False], ids=["stop_reason", "no_stop_reason"])


@BOTH
def test_autonomous_stops_at_the_not_needed_verdict(report_stop: bool) -> None:
    result, engine = run(
        ["Red." + fb(1, "Fine. Revision is not needed." + EOS)], report_stop, max_new_tokens=500
    )
    assert result.finish_reason == "verdict"
    assert result.text == "Red." + fb(1, "Fine. Revision is not needed.")
    assert (result.revisions, result.forced_rewrites, result.final_answer) == (0, 0, "Red.")
    assert engine.requests[0].stop == ("Revision is not needed.",)


@BOTH
def test_autonomous_revisions_the_model_asks_for(report_stop: bool) -> None:
    script = [
        "Red."
        + fb(1, "Why? Revision is needed.")
        + rev(1, "Red, like blood.")
        + fb(2, "Good. Revision is not needed." + EOS)
    ]
    result, _ = run(script, report_stop)
    assert (result.revisions, result.final_answer, result.finish_reason) == (
        1,
        "Red, like blood.",
        "verdict",
    )


@BOTH
def test_min_revisions_rewrites_the_verdict_and_continues(report_stop: bool) -> None:
    script = [
        "Red." + fb(1, "Fine. Revision is not needed." + EOS),
        "Red, like blood." + fb(2, "Better. Revision is not needed." + EOS),
        "Crimson red." + fb(3, "Best. Revision is not needed." + EOS),
    ]
    result, engine = run(script, report_stop, min_revisions=2)
    assert result.revisions == 2 and result.forced_rewrites == 2
    assert result.finish_reason == "verdict"
    assert result.final_answer == "Crimson red."
    chain = parse(result.whole_generation)
    assert chain.feedbacks == [
        "Fine. Revision is needed.",
        "Better. Revision is needed.",
        "Best. Revision is not needed.",
    ]
    assert chain.verdicts == [Verdict.NEEDED, Verdict.NEEDED, Verdict.NOT_NEEDED]
    # each continuation is the text so far plus the rewrite: what a KV cache can reuse
    assert engine.requests[1].prompt.endswith("Fine. Revision is needed.\n\n### Revision 1:\n")
    assert engine.requests[2].prompt.startswith(engine.requests[1].prompt)


@pytest.mark.parametrize(
    "variant",
    ["No revision is needed.", "no revisions needed", "Revision is not necessary.",
     "It does not need any revision."],
)  # fmt: skip
def test_verdict_variants_are_caught_at_eos_and_rewritten(variant: str) -> None:
    script = ["Red." + fb(1, f"Fine. {variant}" + EOS), "Red, like blood." + fb(2, "Good. " + EOS)]
    result, engine = run(script, min_revisions=1)
    assert engine.requests[1].prompt == PROMPT + "Red." + fb(
        1, f"Fine. {VERDICT_NEEDED}" + rev(1, "")
    ).rstrip(" ")
    assert result.forced_rewrites == 1 and result.revisions == 1
    autonomous, _ = run(script[:1])
    assert autonomous.finish_reason == "verdict" and autonomous.revisions == 0


@BOTH
def test_max_revisions_stops_before_the_next_revision_header(report_stop: bool) -> None:
    script = [
        "Red."
        + fb(1, "Why? Revision is needed.")
        + rev(1, "Red, like blood.")
        + fb(2, "Still vague. Revision is needed.")
        + rev(2, "Crimson." + EOS)
    ]
    result, engine = run(script, report_stop, max_revisions=1)
    assert result.finish_reason == "max_revisions"
    assert result.text.endswith("Still vague. Revision is needed.")
    assert (result.revisions, result.final_answer) == (1, "Red, like blood.")
    assert engine.requests[0].stop == ("Revision is not needed.", "\n\n### Revision 2:")


def test_max_revisions_zero_keeps_answer_and_first_feedback() -> None:
    script = ["Red." + fb(1, "Why? Revision is needed.") + rev(1, "Red, like blood." + EOS)]
    result, _ = run(script, max_revisions=0)
    assert result.finish_reason == "max_revisions"
    assert (result.revisions, result.final_answer) == (0, "Red.")


def test_min_equal_max_forces_then_caps() -> None:
    script = [
        "Red." + fb(1, "Fine. Revision is not needed." + EOS),
        "Red, like blood."
        + fb(2, "Why? Revision is needed.")
        + rev(2, "Crimson.")
        + fb(3, "Good. Revision is not needed." + EOS),
    ]
    result, _ = run(script, min_revisions=1, max_revisions=1)
    assert (result.finish_reason, result.revisions, result.forced_rewrites) == (
        "max_revisions",
        1,
        1,
    )
    assert result.final_answer == "Red, like blood."


def test_misnumbered_revisions_past_the_cap_are_cut_at_eos() -> None:
    script = [
        "Red."
        + fb(1, "Why? Revision is needed.")
        + rev(1, "Blood red.")
        + fb(2, "Why? Revision is needed.")
        + rev(7, "Crimson.")  # the cap's stop string names revision 2; the model wrote 7
        + fb(8, "Good. Revision is not needed." + EOS)
    ]
    result, _ = run(script, max_revisions=1)
    assert result.finish_reason == "max_revisions"
    assert result.revisions == 1 and result.final_answer == "Blood red."
    assert result.text.endswith("Why? Revision is needed.")


@BOTH
def test_eos_inside_a_revision_falls_back_to_the_last_finished_output(report_stop: bool) -> None:
    script = ["Red." + fb(1, "Why? Revision is needed.") + rev(1, "Red, like" + EOS)]
    result, _ = run(script, report_stop)
    assert result.finish_reason == "eos"
    assert result.revisions == 1 and result.final_answer == "Red."


def test_budget_exhausted_mid_revision_keeps_the_last_finished_revision() -> None:
    text = (
        "Red."
        + fb(1, "Why? Revision is needed.")
        + rev(1, "Blood red.")
        + fb(2, "More. Revision is needed.")
        + rev(2, "Crimson, the red of blood.")
    )
    budget = len(text) - 10  # cut inside revision 2
    result, _ = run([text + EOS], max_new_tokens=budget)
    assert result.finish_reason == "budget"
    assert result.tokens == budget
    assert result.revisions == 2 and result.final_answer == "Blood red."


def test_budget_counts_tokens_over_all_calls() -> None:
    script = [
        "Red." + fb(1, "Fine. Revision is not needed." + EOS),
        "Red, like blood, which is a long answer." + EOS,
    ]
    first = len("Red." + fb(1, "Fine. Revision is not needed."))
    result, engine = run(script, min_revisions=1, max_new_tokens=first + 5)
    assert engine.requests[1].max_tokens == 5
    assert result.finish_reason == "budget" and result.tokens == first + 5
    assert result.final_answer == "Red."  # revision 1 was cut off


def test_verdict_phrase_inside_an_answer_is_not_a_verdict() -> None:
    script = [
        "Write 'Revision is not needed.' on the form.",  # the engine stops at the phrase
        "' on the form." + fb(1, "Clear. Revision is not needed." + EOS),
    ]
    result, _ = run(script, min_revisions=0)
    assert result.final_answer == "Write 'Revision is not needed.' on the form."
    assert result.finish_reason == "verdict" and result.calls == 2


@BOTH
def test_a_model_that_ends_early_is_continued_up_to_min_revisions(report_stop: bool) -> None:
    script = [
        "Red." + EOS,  # an answer, then the end: Feedback 1 is opened
        "Why? " + EOS,  # a feedback without a verdict: it is needed, Revision 1 is opened
        "Blood red." + EOS,  # Feedback 2 is opened
        "Fine. Revision is needed." + EOS,  # a verdict but no revision: Revision 2 is opened
        "Crimson." + fb(3, "Good. Revision is not needed." + EOS),
    ]
    result, engine = run(script, report_stop, min_revisions=2)
    assert engine.requests[1].prompt.endswith("Red.\n\n### Feedback 1:\n")
    assert engine.requests[2].prompt.endswith("Why? Revision is needed.\n\n### Revision 1:\n")
    assert engine.requests[3].prompt.endswith("Blood red.\n\n### Feedback 2:\n")
    assert engine.requests[4].prompt.endswith("Revision is needed.\n\n### Revision 2:\n")
    assert (result.finish_reason, result.revisions, result.forced_rewrites) == ("verdict", 2, 4)
    assert result.final_answer == "Crimson."
    assert result.chain.verdicts == [Verdict.NEEDED, Verdict.NEEDED, Verdict.NOT_NEEDED]


def test_at_min_revisions_or_after_an_empty_call_an_early_end_is_the_end() -> None:
    done, _ = run(["Red." + fb(1, "Why? Revision is needed.") + rev(1, "Blood red." + EOS)],
                  min_revisions=1)  # fmt: skip
    assert (done.finish_reason, done.calls, done.final_answer) == ("eos", 1, "Red.")
    stuck, _ = run(["Red." + EOS, EOS], min_revisions=2)  # the model only ever ends
    assert (stuck.finish_reason, stuck.calls, stuck.revisions) == ("eos", 2, 0)


def test_sampling_settings_and_seed_reach_the_engine() -> None:
    script = [
        "Red." + fb(1, "Fine. Revision is not needed." + EOS),
        "Blood." + fb(2, "Ok. Revision is not needed." + EOS),
    ]
    _, engine = run(script, min_revisions=1, temperature=0.7, top_p=0.9, seed=11)
    assert [(r.temperature, r.top_p) for r in engine.requests] == [(0.7, 0.9)] * 2
    assert [r.seed for r in engine.requests] == [11, 12]  # a new draw per continuation


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"min_revisions": -1}, "min_revisions must be 0 or more"),
        ({"min_revisions": 3, "max_revisions": 2}, "min_revisions (3) is above max_revisions (2)"),
        ({"max_new_tokens": 0}, "max_new_tokens must be 1 or more"),
        ({"temperature": -0.1}, "temperature must be 0 or more"),
        ({"top_p": 0}, "top_p must be in (0, 1]"),
    ],
)
def test_bad_settings_say_what_is_wrong(settings: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        RevisionSettings(**settings)


def test_generate_batch_steps_chains_together() -> None:
    class KeyedEngine:
        def __init__(self) -> None:
            self.rounds: list[list[str]] = []
            self.scripts = {
                "0": ScriptedEngine(
                    ["A." + fb(1, "No. Revision is needed.") + rev(1, "A2.") + fb(2, "Ok." + EOS)]
                ),
                "1": ScriptedEngine(
                    ["B." + fb(1, "Ok. Revision is not needed." + EOS), "B2." + fb(2, "Ok." + EOS)]
                ),
            }

        def complete_batch(self, requests: list[CompletionRequest]) -> list[Completion]:
            self.rounds.append([r.key for r in requests])
            return [self.scripts[r.key].complete(r) for r in requests]

    engine = KeyedEngine()
    settings = RevisionSettings(min_revisions=1)
    results = generate_batch(engine, [PROMPT, PROMPT], settings)  # type: ignore[arg-type]
    assert engine.rounds == [["0", "1"], ["1"]]
    assert [r.final_answer for r in results] == ["A2.", "B2."]
    assert [r.finish_reason for r in results] == ["eos", "eos"]


def test_unfinished_controller_has_no_result() -> None:
    controller = RevisionController(PROMPT, RevisionSettings())
    with pytest.raises(RuntimeError, match="not finished"):
        controller.result()


class ContinuingEngine(ScriptedEngine):
    """A model that always writes the same chain: each call continues it from the prompt."""

    def __init__(self, whole: str) -> None:
        super().__init__([])
        self.whole = whole

    def complete(self, request: CompletionRequest) -> Completion:
        done = request.prompt[len(PROMPT) :]
        assert request.prompt.startswith(PROMPT) and self.whole.startswith(done)
        self.script.append(self.whole[len(done) :])
        return super().complete(request)


@BOTH
def test_answer_only_stops_before_the_first_feedback(report_stop: bool) -> None:
    result, _ = run(
        ["Red." + fb(1, "Fine. Revision is not needed." + EOS)], report_stop,
        answer_only=True, max_new_tokens=500,
    )  # fmt: skip
    assert result.text == "Red." and result.final_answer == "Red."
    assert result.calls == 1 and result.revisions == 0
    assert result.finish_reason == "answer_only"
    assert result.tokens == len("Red." + "\n\n### Feedback")
    with pytest.raises(ValueError, match="answer_only"):
        RevisionSettings(answer_only=True, min_revisions=1)


def test_forced_rewrites_record_the_verdict_the_model_wrote() -> None:
    """Eval reads the model's own verdicts: "not needed" where it was rewritten, "unknown"
    where the model wrote none and the controller added "Revision is needed."."""
    result, _ = run(
        [
            "Red." + fb(1, "Fine. Revision is not needed." + EOS),  # rewritten: not needed
            "Blue." + fb(2, "Hmm, no verdict here." + EOS),  # the controller adds the verdict
            "Green." + fb(3, "Bad. Revision is needed." + EOS),  # the model's own: kept
            "Gold." + fb(4, "Good. Revision is not needed." + EOS),
        ],
        min_revisions=3, max_new_tokens=2000,
    )  # fmt: skip
    assert result.revisions == 3 and result.finish_reason == "verdict"
    assert result.forced_verdicts == {"1": "not needed", "2": "unknown"}
    assert parse(result.whole_generation).verdicts[:3] == [Verdict.NEEDED] * 3
    assert result.summary()["forced_verdicts"] == {"1": "not needed", "2": "unknown"}


def test_a_misnumbered_revision_header_is_renumbered_not_taken_for_the_cap() -> None:
    """A model that writes "### Revision 3" as its first revision, with max_revisions 2:
    that header is the cap's stop string, but only one revision exists; min_revisions 2
    still holds."""
    result, _ = run(
        [
            "Red." + fb(1, "Hmm. Revision is needed.") + rev(3, "Blue." + EOS),
            "Blue." + fb(2, "Better. Revision is needed.") + rev(3, "Green."),
            "Green." + fb(3, "Good. Revision is not needed." + EOS),
        ],
        min_revisions=2, max_revisions=2, max_new_tokens=2000,
    )  # fmt: skip
    chain = parse(result.whole_generation)
    assert result.revisions == 2 and chain.revisions == ["Blue.", "Green."]
    assert "### Revision 1:" in result.text and "### Revision 3" not in result.text
    assert result.finish_reason == "verdict"


def test_a_model_that_ends_right_after_a_verdict_phrase_in_a_revision_is_continued() -> None:
    """The quickstart's tiny model writes "... Revision is not needed." inside a revision (no
    feedback header) and then ends: the phrase is no verdict, the controller goes on, the
    next call brings only EOS. Below min_revisions the next feedback is opened; only a
    call that writes nothing into a segment the controller opened ends the chain."""
    result, engine = run(
        [
            "Red." + fb(1, "Meh. Revision is needed.") + rev(1, "Blue. Revision is not needed."),
            EOS,  # the model ends right after the phrase
            "Good. Revision is not needed." + EOS,  # feedback 2, opened by the controller
            "Gold." + fb(3, "Fine. Revision is not needed." + EOS),
        ],
        min_revisions=2, max_new_tokens=2000,
    )  # fmt: skip
    assert result.revisions == 2 and result.finish_reason == "verdict"
    assert "### Feedback 2:\nGood." in result.text and len(engine.requests) == 4
    stalled, _ = run(["Red." + EOS, EOS], min_revisions=1, max_new_tokens=500)
    assert stalled.calls == 2 and stalled.finish_reason == "eos"  # nothing into feedback 1


@dataclass
class TokenEngine:
    """Plays one scripted continuation per call, a character per token, through the local
    engines' own per-token loop (``RowCall``): it stops where they do."""

    script: list[str]
    requests: list[CompletionRequest] = field(default_factory=list)

    def complete(self, request: CompletionRequest) -> Completion:
        from selfee.engines.rows import RowCall

        self.requests.append(request)
        row = RowCall(request=request, fed=[0], limit=request.max_tokens)
        for token, char in enumerate(self.script[len(self.requests) - 1].split(EOS)[0]):
            if not row.take(token, False, char):
                return row.completion()
        row.take(0, True, "")
        return row.completion()


def test_the_verdict_phrase_outside_a_feedback_goes_on_in_the_same_call() -> None:
    """An engine that checks ``feedback_stops`` writes the phrase inside an answer or a
    revision as text and stops only at a feedback's verdict: one call where an engine that
    stops at every match needs a new request after each (the same text either way)."""
    whole = (
        "Write 'Revision is not needed.' on the form."
        + fb(1, "Vague. Revision is needed.")
        + rev(1, "Sign it; Revision is not needed. is the stamp.")
        + fb(2, "Clear. Revision is not needed. Done.")
    )
    engine = TokenEngine([whole])
    result = generate(engine, PROMPT, RevisionSettings(max_new_tokens=500))  # type: ignore[arg-type]
    assert result.calls == 1 and result.finish_reason == "verdict"
    assert result.text == whole.removesuffix(" Done.")
    assert engine.requests[0].feedback_stops == ("Revision is not needed.",)
    every_match, _ = run(
        ["Write 'Revision is not needed.", "' on the form." + fb(1, "Vague. Revision is needed.")
         + rev(1, "Sign it; Revision is not needed."), " is the stamp."
         + fb(2, "Clear. Revision is not needed.")],
    )  # fmt: skip
    assert every_match.calls == 3 and every_match.text == result.text


def test_a_forced_rewrite_still_stops_at_the_feedback_verdict() -> None:
    engine = TokenEngine([
        "Red. Revision is not needed. (a quote)" + fb(1, "Ok. Revision is not needed. Bye."),
        "Blue." + fb(2, "Ok. Revision is not needed." + EOS),
    ])  # fmt: skip
    result = generate(engine, PROMPT, RevisionSettings(min_revisions=1, max_new_tokens=500))  # type: ignore[arg-type]
    assert result.calls == 2 and result.forced_rewrites == 1 and result.revisions == 1
    assert result.chain.answer == "Red. Revision is not needed. (a quote)"
    assert result.final_answer == "Blue." and result.finish_reason == "verdict"
    second = engine.requests[1]  # its generation starts where the controller's text does
    assert second.prompt[second.generation_start :] == result.text[: len(result.text) - len(
        "Blue." + fb(2, "Ok. Revision is not needed."))]  # fmt: skip


def test_the_header_past_max_revisions_outside_a_feedback_goes_on_in_the_same_call() -> None:
    """The stop before the revision past ``max_revisions`` means something only after a
    feedback: a model that quotes that header in an answer or a revision (as text: the
    parser reads it so) goes on in the same call with an engine that checks."""
    quote = rev(2, "is how a second revision starts.")
    whole = (
        "Title it" + quote
        + fb(1, "Vague. Revision is needed.")
        + rev(1, "Title it" + quote + " Then sign.")
        + fb(2, "Better. Revision is needed.")
        + rev(2, "Never written.")
    )  # fmt: skip
    engine = TokenEngine([whole])
    settings = RevisionSettings(max_revisions=1, max_new_tokens=1000)
    result = generate(engine, PROMPT, settings)  # type: ignore[arg-type]
    assert result.calls == 1 and result.finish_reason == "max_revisions"
    assert result.text == whole[: whole.index(rev(2, "Never"))]
    assert result.chain.answer == "Title it" + quote and result.revisions == 1
    assert engine.requests[0].feedback_stops == engine.requests[0].stop
    stop = rev(2, "").rstrip("\n")  # each call of an engine that stops at every match:
    first = whole.index(stop) + len(stop)  # through a match (the third, after feedback 2)
    second = whole.index(stop, first) + len(stop)
    every_match, _ = run([whole[:first], whole[first:second], whole[second:]], max_revisions=1)
    assert every_match.calls == 3 and every_match.text == result.text
