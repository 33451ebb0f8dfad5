"""Reading the answer out of a model's text, and out of each task's gold, and comparing them.

One small function per task and direction. A text with no answer to read gives ``None``
(scored as wrong and counted as "unparsed", never guessed).

- GSM8K: the gold is the number after ``####``; a model's answer is the first number after
  its last ``####`` if it wrote one, else the last number in the text (thousands commas,
  currency signs, percent signs and trailing units are dropped). Numbers compare by value.
- MATH: the content of the last ``\\boxed{...}`` (or ``\\fbox``), normalized: ``\\left`` /
  ``\\right``, spaces, ``\\!``, degrees, ``\\$`` and ``\\%``, ``\\text{units}``, ``\\dfrac`` /
  ``\\tfrac``, ``\\frac12``, ``a/b``, ``x = 3``, trailing ``.0``; then two answers are
  equal if the strings match or both are the same number (0.5 = \\frac{1}{2}).
- AQuA: the option letter A-E ("the answer is (C)", "Answer: C", a lone "C)").
- Code: the program in the answer (its fenced blocks that parse as Python, else the whole
  text if it parses); it is run against the tests by ``selfee.eval.sandbox``.
"""

from __future__ import annotations

import ast
import re
from fractions import Fraction

# --- numbers (GSM8K, and MATH answers that are numbers) ---------------------------------

_NUMBER_RE = re.compile(
    r"(?<![\w.])-?\s?[$€£]?\s?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:/\d+)?|(?<![\w.])-?\.\d+"
)


def parse_number(text: str) -> Fraction | None:
    """A number written the ways answers write them: "1,234", "$12.50", "-3", "3/4", ".5"."""
    cleaned = re.sub(r"[\s$€£,]", "", text).rstrip(".")
    cleaned = cleaned.removesuffix("%")
    if not cleaned:
        return None
    try:
        return Fraction(cleaned)
    except (ValueError, ZeroDivisionError):
        return None


def last_number(text: str) -> Fraction | None:
    """The last number of a text ("... so she earns $1,080 a week." → 1080)."""
    for match in reversed(list(_NUMBER_RE.finditer(text))):
        value = parse_number(match.group(0))
        if value is not None:
            return value
    return None


def gsm8k_gold(gold: str) -> Fraction | None:
    """GSM8K's worked answer ends with ``#### 42``; a bare number is taken as it is."""
    tail = gold.rsplit("####", 1)[1] if "####" in gold else gold
    words = tail.split()
    return parse_number(words[0]) if len(words) == 1 or "####" in gold else None


def gsm8k_answer(text: str) -> Fraction | None:
    if "####" in text:
        for match in _NUMBER_RE.finditer(text.rsplit("####", 1)[1]):  # the first one after it
            value = parse_number(match.group(0))
            if value is not None:
                return value
    return last_number(text)


# --- MATH ------------------------------------------------------------------------------


def last_boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{...}`` / ``\\fbox{...}`` (braces nested), or of
    ``\\boxed 5``; None without one."""
    at = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if at < 0:
        return None
    rest = text[at:].removeprefix("\\boxed").removeprefix("\\fbox")
    if rest.startswith(" ") and not rest.lstrip().startswith("{"):
        token = rest.split()
        return token[0].rstrip("$.") if token else None
    if not rest.startswith("{"):
        return None
    depth = 0
    for i, char in enumerate(rest):
        depth += {"{": 1, "}": -1}.get(char, 0)
        if depth == 0:
            return rest[1:i]
    return None


_UNIT_TEXT_RE = re.compile(r"\\(?:text|mbox|mathrm)\{\s*[a-zA-Z ]*\}")
_FRAC_SHORT_RE = re.compile(r"\\frac(\d)(\d)")
_FRAC_HALF_RE = re.compile(r"\\frac(\{(?:[^{}]|\{[^{}]*\})*\})(\d)")  # one level nested
_SQRT_SHORT_RE = re.compile(r"\\sqrt(\w)")
_SLASH_FRAC_RE = re.compile(r"^(-?\d+)/(\d+)$")
_LHS_RE = re.compile(r"^[a-zA-Z](?:_\d)?=")


def normalize_math(answer: str) -> str:
    """A MATH answer in one canonical spelling (see the module docstring)."""
    s = answer.strip().replace("\n", "")
    for old, new in (("\\!", ""), ("\\left", ""), ("\\right", ""), ("dfrac", "frac"),
                     ("tfrac", "frac"), ("^{\\circ}", ""), ("^\\circ", ""), ("\\$", ""),
                     ("$", ""), ("\\%", ""), ("%", ""), ("\\,", ""), ("\\;", ""),
                     ("\\ ", "")):  # fmt: skip
        s = s.replace(old, new)
    s = _UNIT_TEXT_RE.sub("", s)
    s = s.replace(" ", "").rstrip(".")
    s = _LHS_RE.sub("", s)  # "x=3" → "3"
    s = _SQRT_SHORT_RE.sub(r"\\sqrt{\1}", s)
    s = _FRAC_SHORT_RE.sub(r"\\frac{\1}{\2}", s)
    s = _FRAC_HALF_RE.sub(r"\\frac\1{\2}", s)
    s = _SLASH_FRAC_RE.sub(r"\\frac{\1}{\2}", s)
    if s.startswith("."):
        s = "0" + s
    s = re.sub(r"(\d)\.0+$", r"\1", s)  # "5.0" → "5"
    return s


_FRAC_RE = re.compile(r"^(-?)\\frac\{(-?\d+)\}\{(-?\d+)\}$")


def math_value(normalized: str) -> Fraction | None:
    """The number a normalized MATH answer is, when it is one ("\\frac{1}{2}", "-0.5", "3")."""
    frac = _FRAC_RE.match(normalized)
    if frac:
        sign, num, den = frac.groups()
        if int(den) == 0:
            return None
        return Fraction(int(num), int(den)) * (-1 if sign else 1)
    if re.fullmatch(r"-?\d+(?:\.\d+)?", normalized):
        return Fraction(normalized)
    return None


def math_equal(a: str, b: str) -> bool:
    na, nb = normalize_math(a), normalize_math(b)
    if na == nb:
        return True
    va, vb = math_value(na), math_value(nb)
    return va is not None and va == vb


# --- AQuA ------------------------------------------------------------------------------

_AQUA_PATTERNS = [
    re.compile(r"answer\s*(?:is|:)?\s*(?:option\s*)?\(?([A-E])\b\)?", re.IGNORECASE),
    re.compile(r"option\s*\(?([A-E])\b\)?", re.IGNORECASE),
    re.compile(r"\(([A-E])\)"),
    re.compile(r"(?:^|\s)([A-E])\)"),
    re.compile(r"^\s*([A-E])\s*[.:]?\s*$", re.MULTILINE),
]


def aqua_letter(text: str) -> str | None:
    """The option a text chooses; patterns in order of how sure they are, the last match."""
    for pattern in _AQUA_PATTERNS:
        found = pattern.findall(text)
        if found:
            return found[-1].upper()
    return None


def aqua_gold(gold: str) -> str | None:
    stripped = gold.strip()
    if re.fullmatch(r"\(?[A-Ea-e]\)?\.?", stripped):
        return stripped.strip("().").upper()
    return aqua_letter(gold)


# --- code ------------------------------------------------------------------------------

_FENCE_RE = re.compile(r"```[ \t]*([\w+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)


def _parses(code: str) -> bool:
    try:
        ast.parse(code)
    except (SyntaxError, ValueError):
        return False
    return True


def extract_code(text: str) -> str | None:
    """The Python program in an answer: its fenced blocks that parse (joined), or the whole
    text when it parses as Python; None when there is no program."""
    blocks = [
        body
        for language, body in _FENCE_RE.findall(text)
        if language.lower() in ("", "python", "python3", "py") and body.strip()
    ]
    good = [b for b in blocks if _parses(b)]
    if good:
        return "\n\n".join(b.strip("\n") for b in good) + "\n"
    if not blocks and text.strip() and _parses(text):
        return text.strip("\n") + "\n"
    return None
