"""Text filters of the collection stage: HTML to text, English only, "asks something", dedup keys.

Plain functions, so each rule is tested on its own and the Ray job only applies them.
"""

from __future__ import annotations

import collections
import re
import unicodedata
from html.parser import HTMLParser

_CODE_BLOCK_RE = re.compile(r"```.*?(?:```|$)", re.DOTALL)
_INLINE_CODE_RE = re.compile(r"`[^`\n]*`")
_WORD_RE = re.compile(r"[^\W\d_]{2,}")
HTML_HINT_RE = re.compile(r"<(?:p|div|pre|code|br|ol|ul|li|h[1-6]|span|table|a)\b", re.IGNORECASE)

BLOCK_TAGS = ("p", "div", "br", "h1", "h2", "h3", "h4", "h5", "h6", "tr", "table", "ol", "ul")


def html_to_text(text: str) -> str:
    """ShareGPT answers are HTML scraped from the ChatGPT page: keep paragraphs, list items and
    code blocks (fenced), drop the markup.

    One pass over the parser's events with a stack of open tags, so time grows linearly with
    the input and nesting depth costs no recursion (a tree library took 100 s on a message
    nested 20,000 ``<div>`` deep, and grew quadratically with the number of paragraphs). Tags
    close as in a tree: an end tag closes every tag opened after its start tag, an end tag
    with no open start tag is ignored, what is open at the end closes there.
    """
    if not HTML_HINT_RE.search(text):
        return text.strip()
    parser = _PlainText()
    parser.feed(text)
    parser.close()
    plain = re.sub(r"[ \t]+\n", "\n", "".join(parser.out))
    return re.sub(r"\n{3,}", "\n\n", plain).strip()


VOID_TAGS = frozenset(
    "area base br col embed hr img input keygen link menuitem meta param source track wbr".split()
)
ASCII_SPACES = " \n\t\x0c\r"
HIDDEN_TEXT_TAGS = frozenset(("script", "style", "template", "rt", "rp"))  # not shown text


class _PlainText(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self.text: list[str] = []  # the text node being read
        self.stack: list[str] = []
        self.open: collections.Counter[str] = collections.Counter()
        self.code: list[str] | None = None  # the text of an open <pre>
        self.pre_depth = 0  # where the outermost open <pre> sits in the stack

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._end_text()
        self._push(tag)
        if tag in VOID_TAGS:
            self._pop()

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._end_text()
        self._push(tag)
        self._pop()

    def handle_endtag(self, tag: str) -> None:
        self._end_text()
        if self.open[tag]:
            while self._pop() != tag:
                pass

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    def handle_comment(self, data: str) -> None:
        self._end_text()

    def close(self) -> None:
        super().close()
        self._end_text()
        while self.stack:
            self._pop()

    def _end_text(self) -> None:
        """A text node ends at any markup. Outside <pre> and <textarea>, a node of ASCII
        spaces alone counts as one space (one newline if it holds one), as browsers show it."""
        text, self.text = "".join(self.text), []
        if not text or any(self.open[t] for t in HIDDEN_TEXT_TAGS):
            return
        if not text.strip(ASCII_SPACES) and not (self.open["pre"] or self.open["textarea"]):
            text = "\n" if "\n" in text else " "
        (self.out if self.code is None else self.code).append(text)

    def _push(self, tag: str) -> None:
        if self.code is None:
            if tag == "pre":
                self.code, self.pre_depth = [], len(self.stack)
            elif tag == "li":
                self.out.append("\n- ")
            elif tag in BLOCK_TAGS:
                self.out.append("\n")
        self.stack.append(tag)
        self.open[tag] += 1

    def _pop(self) -> str:
        tag = self.stack.pop()
        self.open[tag] -= 1
        if self.code is not None:
            if len(self.stack) == self.pre_depth:
                self.out.append(f"\n```\n{''.join(self.code).strip()}\n```\n")
                self.code = None
        elif tag in BLOCK_TAGS:
            self.out.append("\n")
        return tag


def prose(text: str) -> str:
    """The text without code, where a language identifier can be trusted."""
    return _INLINE_CODE_RE.sub(" ", _CODE_BLOCK_RE.sub(" ", text))


def is_english(text: str, min_words: int = 3) -> bool:
    """English, judged on the prose only; too little prose (code, numbers) counts as English."""
    body = prose(text)
    if len(_WORD_RE.findall(body)) < min_words:
        return True
    import py3langid

    return py3langid.classify(body)[0] == "en"


_INTERROGATIVES = {
    "what", "how", "why", "when", "where", "who", "whom", "whose", "which", "can", "could",
    "would", "should", "will", "shall", "is", "are", "was", "were", "do", "does", "did",
    "may", "might", "have", "has", "am",
}  # fmt: skip
_REQUESTS = {
    "explain", "write", "give", "list", "describe", "tell", "help", "create", "generate",
    "make", "suggest", "summarize", "summarise", "translate", "compare", "show", "provide",
    "name", "find", "calculate", "solve", "rewrite", "design", "draft", "implement", "build",
    "convert", "recommend", "define", "outline", "compose", "fix", "debug", "plan", "please",
    "act", "imagine", "pretend", "let's", "lets", "continue",
}  # fmt: skip
_REQUEST_PHRASE_RE = re.compile(
    r"\b(?:please|can you|could you|would you|i need|i want|i'd like|i would like|help me)\b",
    re.IGNORECASE,
)


def asks_something(instruction: str) -> bool:
    """An instruction worth answering: a question or a request.

    Kept: any question mark; a first word that asks (what, how, can, ...) or requests
    (write, explain, list, ...); a request phrase (please, can you, I need, ...).
    Dropped: statements and fragments ("ok", "thanks", "Here is my essay." with nothing asked).
    Upstream tested whether the *answer* ended in "?", which kept and dropped the wrong rows.
    """
    text = instruction.strip()
    if not text:
        return False
    if "?" in text:
        return True
    first = re.split(r"[\s,.:;!]+", text.lower(), maxsplit=1)[0]
    if first in _INTERROGATIVES or first in _REQUESTS:
        return len(text.split()) >= 2
    return bool(_REQUEST_PHRASE_RE.search(text))


def normalize_for_dedup(text: str) -> str:
    """Equal for instructions that differ only in case, spacing, punctuation or accents' form."""
    text = unicodedata.normalize("NFKC", text).casefold()
    text = re.sub(r"[^\w\s]", " ", text)
    return " ".join(text.split())
