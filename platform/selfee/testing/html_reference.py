"""The tree-library HTML-to-text that the collect stage used before its one-pass converter:
the reference the converter is checked against (tests) and timed against (bench). Needs
``beautifulsoup4`` (a test extra)."""

from __future__ import annotations

import re

from selfee.collect.filters import BLOCK_TAGS, HTML_HINT_RE


def html_to_text_with_a_tree(text: str) -> str:
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
