"""Text filters of the collection stage: HTML to text, English only, "asks something", dedup keys.

Plain functions, so each rule is tested on its own and the Ray job only applies them.
"""

from __future__ import annotations

import re
import unicodedata

_CODE_BLOCK_RE = re.compile(r"```.*?(?:```|$)", re.DOTALL)
_INLINE_CODE_RE = re.compile(r"`[^`\n]*`")
_WORD_RE = re.compile(r"[^\W\d_]{2,}")
_HTML_HINT_RE = re.compile(r"<(?:p|div|pre|code|br|ol|ul|li|h[1-6]|span|table|a)\b", re.IGNORECASE)

BLOCK_TAGS = ("p", "div", "br", "h1", "h2", "h3", "h4", "h5", "h6", "tr", "table", "ol", "ul")


def html_to_text(text: str) -> str:
    """ShareGPT answers are HTML scraped from the ChatGPT page: keep paragraphs, list items and
    code blocks (fenced), drop the markup."""
    if not _HTML_HINT_RE.search(text):
        return text.strip()
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(text, "html.parser")
    for pre in soup.find_all("pre"):
        code = pre.get_text()
        pre.replace_with(f"\n```\n{code.strip()}\n```\n")
    for li in soup.find_all("li"):
        li.insert_before("\n- ")
    for tag in soup.find_all(BLOCK_TAGS):
        tag.insert_before("\n")
        tag.insert_after("\n")
    plain = soup.get_text()
    plain = re.sub(r"[ \t]+\n", "\n", plain)
    return re.sub(r"\n{3,}", "\n\n", plain).strip()


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
