"""ShareGPT's HTML to text: the same text as the tree library it replaced (BeautifulSoup,
kept as the reference here), in one linear pass with no recursion."""

from __future__ import annotations

import random

import pytest

from selfee.collect.filters import html_to_text
from selfee.testing.html_reference import CHATGPT_PAGE
from selfee.testing.html_reference import html_to_text_with_a_tree as reference


def test_a_chatgpt_page_reads_as_before() -> None:
    text = html_to_text(CHATGPT_PAGE)
    assert text == reference(CHATGPT_PAGE)
    assert "- " in text and "```\npythonCopy codedef f(x):\n    return x < 2\n```" in text
    assert "alert" not in text and "hidden" not in text and "café" in text


def random_html(rng: random.Random, depth: int = 0) -> str:
    tags = ["p", "div", "pre", "code", "br", "ol", "ul", "li", "h1", "span", "table", "tr",
            "td", "a", "b", "script", "style", "template", "img", "hr"]  # fmt: skip
    words = ["hello", "x < y", "a &amp; b", "&lt;t&gt;", "  ", "\n", "def f():\n    pass",
             "naïve 日本", "&nbsp;", "&#169;", "tab\there", "<!-- c -->", "& alone"]  # fmt: skip
    out = []
    for _ in range(rng.randint(1, 5)):
        roll = rng.random()
        if roll < 0.35 or depth > 6:
            out.append(rng.choice(words))
        elif roll < 0.45:
            out.append(f"</{rng.choice(tags)}>")  # an end tag with no start
        elif roll < 0.5:
            out.append(f"<{rng.choice(tags)}/>")
        else:
            tag = rng.choice(tags)
            end = f"</{tag}>" if rng.random() < 0.8 else ""  # some are never closed
            out.append(f"<{tag}>{random_html(rng, depth + 1)}{end}")
    return "".join(out)


@pytest.mark.parametrize("seed", range(4))
def test_random_markup_gives_the_same_text(seed: int) -> None:
    """Unclosed tags, stray end tags, void tags, hidden text, entities, nesting. The tree
    library has one quirk we do not copy (it compares tags by content when it pops them, so
    two equal-looking tags can confuse whether spaces are kept): spaces may differ, never
    the words."""
    rng = random.Random(seed)
    exact = 0
    for _ in range(300):
        doc = random_html(rng)
        ours, theirs = html_to_text(doc), reference(doc)
        assert ours.split() == theirs.split(), doc
        exact += ours == theirs
    assert exact >= 285


def test_deep_nesting_and_many_paragraphs() -> None:
    deep = "<div>" * 20_000 + "inside" + "</div>" * 20_000 + "<p>after</p>"
    assert html_to_text(deep) == "inside\n\nafter"
    assert html_to_text("<div>" * 20_000 + "never closed") == "never closed"
    many = "".join(f"<p>paragraph {i}</p>" for i in range(5_000))
    text = html_to_text(many)
    assert text.count("\n\n") == 4_999 and text.endswith("paragraph 4999")
