"""What every local engine does per chain (selfee.engines.rows), without a model."""

from __future__ import annotations

import pytest

from selfee.engines.rows import RowCall, check_context, first_stop, kept_prefix
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
