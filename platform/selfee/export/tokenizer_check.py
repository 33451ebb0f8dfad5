"""Strings on which a GGUF file's tokenizer must give the Hugging Face tokenizer's ids: the
proof that the pre-tokenizer declared at export is the right one."""

from __future__ import annotations

import itertools

from selfee import chain

HEADERS = [chain.INSTRUCTION_HEADER, chain.INPUT_HEADER, chain.ANSWER_HEADER,
           *(header.strip() for header in (chain.feedback_header(1), chain.revision_header(1),
                                           chain.feedback_header(12), chain.revision_header(10))),
           chain.VERDICT_NEEDED, chain.VERDICT_NOT_NEEDED,
           "No revision is needed.", "revision is not needed"]  # fmt: skip
CODE = ["def f(x):\n    return x ** 2\n", "for i in range(10):\n\tprint(i)",
        "if (a && b) { return -1; }", "x = [1, 2, 3]  # list\n", "print(\"hello\\n\")",
        "SELECT * FROM t WHERE id = 3;", "lambda s: s.strip().lower()", "import numpy as np",
        "```python\nprint(1)\n```", "a+=1;b-=2;c*=3", "{'k': [None, True, 1e-3]}"]  # fmt: skip
UNICODE = ["naïve café", "日本語のテキスト", "Привет, мир", "emoji 🚀🦙✅", "مرحبا", "ñandú",
           "Straße", "µ-law ± 3°C", "zero\u200bwidth", "tab\tand\u00a0nbsp", "😶‍🌫️ family 👨‍👩‍👧",
           "ﬁligature", "한국어", "ελληνικά", "עברית"]  # fmt: skip
SPACES = [" ", "  ", "\n", "\n\n", "\n\n\n", "  leading", "trailing  ", "a  b   c    d",
          " \n \n ", "\t\t", "line\r\nwindows", "   \n   indented"]  # fmt: skip
WORDS = ["Name a color.", "What is 12 * 7?", "I've been told he's there, 'RE you sure?",
         "3 33 333 3333 33333", "3.14159", "--- === ...", "Dr. Smith's 2nd-floor office",
         "The answer is 42.", "Hello, World!", "e-mail@example.com", "https://example.org/a?b=c",
         "CamelCaseWord snake_case_word", "it's", "don't", "''''''"]  # fmt: skip


def strings() -> list[str]:
    """Over 200 strings: each family alone, and pairs joined the way chains join them."""
    singles = HEADERS + CODE + UNICODE + SPACES + WORDS
    pairs = [
        f"{a}\n\n{b}" if i % 2 else f"{a} {b}"
        for i, (a, b) in enumerate(
            itertools.product(HEADERS[:8], CODE[:5] + UNICODE[:5] + WORDS[:8])
        )
    ]
    chains = [
        chain.render_prompt(w) + "Red." + chain.feedback_header(1) + "Too short. " + chain.VERDICT_NEEDED
        + chain.revision_header(1) + c + chain.feedback_header(2) + chain.VERDICT_NOT_NEEDED
        for w, c in zip(WORDS, CODE + UNICODE, strict=False)
    ]  # fmt: skip
    return singles + pairs + chains
