"""What every local engine does per chain (selfee.engines.rows), without a model."""

from __future__ import annotations

import pytest

from selfee.engines.rows import RowCall, check_context, first_stop, held_back, kept_prefix
from selfee.revision import CompletionRequest


def test_kept_prefix_leaves_one_token_to_evaluate() -> None:
    assert kept_prefix([1, 2, 3, 4], [1, 2, 9, 4, 5]) == 2
    assert kept_prefix([1, 2, 3], [1, 2, 3]) == 2  # the same prompt: its last token again
    assert kept_prefix([], [7, 8]) == 0


def test_a_stop_string_straddling_two_pieces_is_found_once() -> None:
    assert first_stop("abc Revision is", 4, ["Revision is not"]) is None
    assert first_stop("abc Revision is not needed", 15, ["Revision is not", "xyz"]) == (
        4,
        "Revision is not",
    )
    assert first_stop("aXbY", 2, ["Y", "X"]) == (3, "Y")  # "X" lies wholly in the seen part


def test_a_row_call_stops_at_eos_a_stop_string_or_its_limit() -> None:
    def call(limit: int = 10) -> RowCall:
        request = CompletionRequest("p", ("STOP",), limit)
        return RowCall(request=request, fed=[1, 2, 3], limit=limit)

    eos = call()
    assert not eos.take(0, True, "") and eos.finish == "eos" and eos.generated == []
    stopped = call()
    assert stopped.take(5, False, "ab") and stopped.take(6, False, "cST")  # no stop yet
    assert not stopped.take(7, False, "OPx") and stopped.finish == "stop"
    done = stopped.completion()
    assert (done.text, done.stop, done.tokens, done.ids, done.prompt_tokens) == (
        "abc", "STOP", 3, (5, 6, 7), 3,
    )  # fmt: skip
    limited = call(limit=2)
    assert limited.take(1, False, "a") and not limited.take(2, False, "b")
    assert limited.finish == "length" and limited.text == "ab"
    with pytest.raises(ValueError, match="the prompt is 4 tokens; the model's context is 4"):
        check_context([1, 2, 3, 4], 4)


def test_streamed_text_holds_back_what_may_become_a_stop_string() -> None:
    assert held_back("the answer. Revision is n", ["Revision is not needed."]) == 13
    assert held_back("the answer. R", ["Revision is not needed.", "\n\n### Rev"]) == 1
    assert held_back("nothing here", ["Revision is not needed."]) == 0
    pieces: list[str] = []
    request = CompletionRequest("p", ("Revision is not needed.",), 50)
    row = RowCall(request=request, fed=[1], limit=50)
    words = ["Fine. ", "Revision", " is", " n", "ice. Revision", " is not", " needed.", "x"]
    for token, word in enumerate(words):
        if not row.take(token, False, word, lambda _, piece: pieces.append(piece) or True):
            break
    assert row.finish == "stop" and row.text == "Fine. Revision is nice. "
    assert "".join(pieces) == row.text  # all of the text, once, and no part of the stop
    assert pieces[1:4] == ["", "", ""]  # "Revision is n" waited until "ice" said no


def test_a_row_whose_caller_went_away_ends_at_the_next_token() -> None:
    row = RowCall(request=CompletionRequest("p", (), 50), fed=[1], limit=50)
    assert row.take(1, False, "a", lambda _, piece: True)
    assert not row.take(2, False, "b", lambda _, piece: False)  # not evaluated: not cached
    assert row.finish == "abort" and row.completion().finish_reason == "abort"


def test_a_batch_may_not_name_one_chain_twice() -> None:
    from selfee.engines.rows import batch_keys

    def request(key: str) -> CompletionRequest:
        return CompletionRequest("p", (), 4, key=key)

    assert batch_keys([request("a"), request("b")]) == ["a", "b"]
    with pytest.raises(ValueError, match="different keys"):
        batch_keys([request("a"), request("a")])
