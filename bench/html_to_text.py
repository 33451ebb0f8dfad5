"""ShareGPT's HTML to text: our one-pass converter against the tree library it replaced
(BeautifulSoup, the tests' reference), on growing inputs. Same text out is checked on every
input both ran; the tree library is skipped where it would take minutes (its time grew
quadratically with paragraphs, and with nesting depth).

    .venv/bin/python bench/html_to_text.py
"""

from __future__ import annotations

import datetime
import time

from results import append_rows, machine
from selfee.collect.filters import html_to_text
from selfee.testing.html_reference import CHATGPT_PAGE
from selfee.testing.html_reference import html_to_text_with_a_tree as reference

PARAGRAPH = "<p>Some text with <b>bold</b>, <code>x = 1</code> &amp; more.</p>\n"


def timed(fn, text: str) -> tuple[float, str]:
    started = time.perf_counter()
    out = fn(text)
    return time.perf_counter() - started, out


def main() -> None:
    inputs = [(f"{n:,} <p> paragraphs", PARAGRAPH * n, True) for n in (1_000, 2_000, 4_000)]
    page = CHATGPT_PAGE * (1_000_000 // len(CHATGPT_PAGE) + 1)
    inputs += [
        ("1 MB of ChatGPT-page HTML", page[:1_000_000], False),
        ("nesting depth 2,000", "<div>" * 2_000 + "x" + "</div>" * 2_000, True),
        ("nesting depth 20,000 (220 KB)", "<div>" * 20_000 + "x" + "</div>" * 20_000, False),
    ]
    rows = []
    for name, html, with_reference in inputs:
        ours, text = timed(html_to_text, html)
        theirs, same = "not run", "-"
        if with_reference:
            seconds, expected = timed(reference, html)
            theirs, same = f"{seconds:.2f} s", "yes" if text == expected else "**no**"
        print(f"{name}: ours {ours:.3f} s, BeautifulSoup {theirs}, same text: {same}", flush=True)
        rows.append(f"| {datetime.date.today()} | {machine()} | {name} | {len(html) / 1e6:.2f} MB "
                    f"| **{ours:.3f} s** | {theirs} | {same} |")  # fmt: skip
    append_rows(
        "\n## Collection: HTML to text (`bench/html_to_text.py`)\n\n"
        "| date | machine | input | size | one pass (ours) | BeautifulSoup (before) | same text |\n"
        "|---|---|---|---|---|---|---|\n",
        rows,
    )


if __name__ == "__main__":
    main()
