"""ShareGPT's HTML to text: the same text as the tree library it replaced (BeautifulSoup,
kept as the reference here), in one linear pass with no recursion."""

from __future__ import annotations

import random
import re

import pytest

from selfee.collect.filters import BLOCK_TAGS, HTML_HINT_RE, html_to_text


def reference(text: str) -> str:
    """What the collect stage did before: BeautifulSoup's tree, edited, then its text."""
    from bs4 import BeautifulSoup

    if not HTML_HINT_RE.search(text):  # the same gate: text without HTML stays as it is
        return text.strip()
    soup = BeautifulSoup(text, "html.parser")
    for pre in soup.find_all("pre"):
        pre.replace_with(f"\n```\n{pre.get_text().strip()}\n```\n")
    for li in soup.find_all("li"):
        li.insert_before("\n- ")
    for tag in soup.find_all(BLOCK_TAGS):
        tag.insert_before("\n")
        tag.insert_after("\n")
    plain = re.sub(r"[ \t]+\n", "\n", soup.get_text())
    return re.sub(r"\n{3,}", "\n\n", plain).strip()


CHATGPT_PAGE = (
    '<div class="markdown prose w-full break-words"><p>Sure! Here are a few tips:</p>\n'
    "<ol><li><p>Be <strong>brief</strong> &amp; kind.</p></li><li><p>Offer another time.</p>"
    '</li></ol><pre><div class="bg-black"><span>python</span><button>Copy code</button></div>'
    '<div><code class="language-python">def f(x):\n    return x &lt; 2\n</code></div></pre>'
    "<p>Use <code>f(1)</code> like this:</p><table><tr><td>a</td><td>b</td></tr></table>"
    "<ul>\n  <li>one</li>\n  <li>two<br>three</li>\n</ul><h2>Done &#8212; caf&eacute;</h2>"
    "<!-- hidden --><script>alert(1)</script><style>p {}</style>   \n\t <p>end</p></div>"
)


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
