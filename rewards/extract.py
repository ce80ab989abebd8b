"""Final-answer extraction and normalisation for the `correctness` reward (pure string code, linear time).

Runs in the caller's process, on untrusted model text, so every function here is linear in the input
(one regex pass or one scan; no nested quantifiers) and never evaluates anything.

Order (docs/algorithm.md §5.2, made precise):
1. The *answer region* is the text after the last `</think>` when there is one, else the whole response.
   [decision: the spec searches the whole response for `\\boxed{}`; a box inside the thinking is scratch
   work, and a response that closed its thinking answers after it.]
2. In the region: the last `\\boxed{...}` / `\\fbox{...}` with balanced braces (escaped `\\{ \\}` don't count;
   an unclosed last box falls back to the last closed one); else the text after the last GSM8K `####` on
   its line; else what follows the last "answer is"/"answer:" to the end of its sentence, if answer-like
   (<= 100 characters, at most 3 words of prose) [addition: MATH-style "The answer is $\\frac{3}{4}$."
   would otherwise fall through to the last number, 4]; else, when the region follows `</think>`, the
   region itself if answer-like; else the last number in the region.
3. Normalisation strips `$...$`, `\\(...\\)`, `\\[...\\]`, a leading "the answer is", a currency `\\$`,
   LaTeX thousands separators, trailing punctuation, and unit words after a number (`18 dollars` -> `18`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction

MAX_PLAIN_NUMBER_CHARS = 200
"""Longer strings never take the exact-number fast path (keeps Fraction() cheap)."""

_BOX_OPEN = re.compile(r"\\(?:boxed|fbox)\s*\{")
_BRACE_TOKEN = re.compile(r"\\[{}\\]|[{}]")  # escaped braces/backslashes are skipped, not counted
_NUMBER = re.compile(r"(?<![\w.])-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|(?<![\w.])-?\.\d+")
_PLAIN_NUMBER = re.compile(r"[+-]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|[+-]?\.\d+")
_LEAD_IN = re.compile(r"^(?:so\s*,?\s*)?(?:the\s+)?(?:final\s+)?answer\s*(?:is|=|:)?\s*:?\s*", re.IGNORECASE)
_TEXT_WRAPPER = re.compile(r"\\(?:text|textbf|textit|mathrm|mathbf|mbox|operatorname)\s*\{([^{}]*)\}")
_PROSE_WORD = re.compile(r"(?<![\\A-Za-z])[A-Za-z]{2,}")
_UNIT_TAIL = re.compile(r"[A-Za-z]{2,}\.?(?:\s+[A-Za-z]{2,}\.?){0,2}")  # words separated by spaces: unambiguous
_NOT_UNITS = frozenset({"pi", "sqrt", "and", "or", "to", "times", "over", "plus", "minus", "divided", "by",
                        "of", "is", "infty", "infinity", "frac", "cdot", "degrees"})
_LATEX_SPACE = re.compile(r"(?<!\\)\\[!, ]")  # \! \, and "\ ", but not a row break "\\"
_ANSWER_PHRASE = re.compile(r"answer\s*(?:is|:)", re.IGNORECASE)
_SENTENCE_END = re.compile(r"\n|[.;!?](?:\s|$)")
_TEXT_ANSWER = re.compile(r"[a-z][a-z' -]*")


@dataclass(frozen=True)
class Extracted:
    """The final answer found in a response and where it came from."""

    text: str
    source: str
    """`boxed`, `hash` (GSM8K `####`), `answer_phrase`, `after_think`, or `last_number`."""


def answer_region(response: str) -> tuple[str, bool]:
    """(text after the last `</think>`, True) or (whole response, False)."""
    cut = response.rfind("</think>")
    if cut < 0:
        return response, False
    return response[cut + len("</think>"):], True


def last_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{...}` (or `\\fbox{...}`) whose braces balance, else None."""
    opens = list(_BOX_OPEN.finditer(text))
    if not opens:
        return None
    content = _close_box(text, opens[-1].end())
    if content is not None:
        return content
    return _last_closed_box(text, opens[0].start())


def _close_box(text: str, content_start: int) -> str | None:
    depth = 1
    for token in _BRACE_TOKEN.finditer(text, content_start):
        brace = token.group()
        if brace == "{":
            depth += 1
        elif brace == "}":
            depth -= 1
            if depth == 0:
                return text[content_start:token.start()]
    return None


def _last_closed_box(text: str, start: int) -> str | None:
    """One pass with a stack: the closed box that ends last (linear even when every box is unclosed)."""
    box_starts = {match.end() - 1 for match in _BOX_OPEN.finditer(text, start)}  # positions of their '{'
    stack: list[int] = []
    best: tuple[int, int] | None = None
    for token in _BRACE_TOKEN.finditer(text, start):
        brace = token.group()
        if brace == "{":
            stack.append(token.start())
        elif brace == "}" and stack:
            open_at = stack.pop()
            if open_at in box_starts:
                best = (open_at + 1, token.start())
    return None if best is None else text[best[0]:best[1]]


def last_hash_answer(text: str) -> str | None:
    """The rest of the line after the last GSM8K `####`, else None."""
    cut = text.rfind("####")
    if cut < 0:
        return None
    return text[cut + 4:].split("\n", 1)[0]


def last_number(text: str) -> str | None:
    """The last number (`-3`, `1,000`, `2.5`) in the text, else None."""
    last = None
    for last in _NUMBER.finditer(text):  # noqa: B007 - we want the final match
        pass
    return None if last is None else last.group()


def last_answer_phrase(text: str) -> str | None:
    """What follows the last "answer is" / "answer:" up to the end of its sentence, normalised; else None."""
    last = None
    for last in _ANSWER_PHRASE.finditer(text):  # noqa: B007 - we want the final match
        pass
    if last is None:
        return None
    rest = text[last.end():last.end() + 1000].lstrip(" :")
    end = _SENTENCE_END.search(rest)
    return normalize(rest if end is None else rest[:end.start()])


def _answer_like(candidate: str) -> bool:
    """Short, with at most 3 words of prose outside LaTeX commands and \\text{}."""
    return bool(candidate) and len(candidate) <= 100 and len(_PROSE_WORD.findall(_TEXT_WRAPPER.sub("", candidate))) <= 3


def extract_answer(response: str) -> Extracted | None:
    """The final answer of a response (see the module docstring for the order), normalised."""
    region, after_think = answer_region(response)
    boxed = last_boxed(region)
    if boxed is not None:
        return Extracted(normalize(boxed), "boxed")
    hashed = last_hash_answer(region)
    if hashed is not None and normalize(hashed):
        return Extracted(normalize(hashed), "hash")
    phrase = last_answer_phrase(region)
    if phrase is not None and _answer_like(phrase):
        return Extracted(phrase, "answer_phrase")
    if after_think:
        tail = normalize(region)
        if _answer_like(tail):
            return Extracted(tail, "after_think")
    number = last_number(region)
    return None if number is None else Extracted(normalize(number), "last_number")


def extract_gold(answer: str) -> str:
    """The final answer inside a dataset's gold field: its last `\\boxed{}`, else its `####` line, else the
    whole field; normalised. Empty string when there is nothing."""
    boxed = last_boxed(answer)
    if boxed is not None:
        return normalize(boxed)
    hashed = last_hash_answer(answer)
    if hashed is not None:
        return normalize(hashed)
    return normalize(answer)


def normalize(text: str) -> str:
    """Strip delimiters, lead-ins, currency, thousands separators, trailing punctuation and unit words."""
    text = text.strip()
    for _ in range(3):  # nested wrappers such as "$\\(x\\)$"; bounded
        before = text
        if len(text) >= 2 and text[0] == "$" and text[-1] == "$":
            text = text.strip("$").strip()
        for left, right in (("\\(", "\\)"), ("\\[", "\\]")):
            if text.startswith(left) and text.endswith(right) and len(text) >= 4:
                text = text[2:-2].strip()
        text = _LEAD_IN.sub("", text, count=1).strip()
        text = text.rstrip(".,;:").strip()  # not "!": 5! is an answer
        if text == before:
            break
    if text.startswith("\\$"):
        text = text[2:].strip()
    elif text.startswith("$"):
        text = text[1:].strip()
    text = _LATEX_SPACE.sub(lambda m: " " if m.group() == "\\ " else "", text.replace("{,}", ","))
    return _strip_units(text)


def _strip_units(text: str) -> str:
    """`18 dollars`, `5\\text{ cm}` -> the number; anything else unchanged."""
    number = _NUMBER.match(text)
    if number is None or number.end() == len(text):
        return text
    if len(text) - number.end() > 60:
        return text
    tail = _TEXT_WRAPPER.sub(lambda m: " " + m.group(1) + " ", text[number.end():]).strip()
    if not tail or not _UNIT_TAIL.fullmatch(tail):
        return text
    if any(word.strip(".").lower() in _NOT_UNITS for word in tail.split()):
        return text
    return number.group()


def plain_number(text: str) -> Fraction | None:
    """Exact value of a plain decimal number (`-1,000.50`), else None. No exponents, no expressions."""
    if len(text) > MAX_PLAIN_NUMBER_CHARS or not _PLAIN_NUMBER.fullmatch(text):
        return None
    return Fraction(text.replace(",", ""))


def text_answer(text: str) -> str | None:
    """A word answer (`Monday`, `\\text{(B)}`, `yes`) lower-cased with wrappers removed, else None."""
    unwrapped = _TEXT_WRAPPER.sub(lambda m: m.group(1), text).replace("$", "").strip()
    if len(unwrapped) >= 3 and unwrapped[0] == "(" and unwrapped[-1] == ")":
        unwrapped = unwrapped[1:-1]
    unwrapped = " ".join(unwrapped.rstrip(".").lower().split())
    if not unwrapped or len(unwrapped) > 100 or not _TEXT_ANSWER.fullmatch(unwrapped):
        return None
    return unwrapped
