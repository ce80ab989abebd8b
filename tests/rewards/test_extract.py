"""Answer extraction and normalisation (pure string code)."""

from __future__ import annotations

from fractions import Fraction

import pytest

from rewards.extract import (
    Extracted,
    answer_region,
    extract_answer,
    extract_gold,
    last_answer_phrase,
    last_boxed,
    last_hash_answer,
    last_number,
    normalize,
    plain_number,
    text_answer,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("\\boxed{5}", "5"),
        ("a \\boxed{1} b \\boxed{2} c", "2"),
        ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
        ("\\boxed {7}", "7"),
        ("\\fbox{8}", "8"),
        ("\\boxed{\\{1,2\\}}", "\\{1,2\\}"),  # escaped braces don't count
        ("\\boxed{a\\\\}", "a\\\\"),  # an escaped backslash does not escape the closing brace
        ("\\boxed{1} then \\boxed{2", "1"),  # unclosed last box: the last closed one
        ("\\boxed{\\boxed{3}}", "3"),  # nested: the box opened last
        ("\\boxed{x} \\boxed{{y}", "x"),
        ("no box here", None),
        ("\\boxed{", None),
        ("\\boxed{" * 1000, None),
    ],
)
def test_last_boxed(text, expected):
    assert last_boxed(text) == expected


def test_regions_hash_numbers_and_phrases():
    assert answer_region("<think>a</think>b</think> c") == (" c", True)
    assert answer_region("plain") == ("plain", False)
    assert last_hash_answer("x\n#### 72\nmore") == " 72"
    assert last_hash_answer("no hashes") is None
    assert last_number("from 3 to -4.5 and 1,000 items") == "1,000"
    assert last_number("x-3") == "3"  # a minus between terms is not a sign
    assert last_number("version 2.5.1") == "2.5"
    assert last_number("none") is None
    assert last_answer_phrase("So the answer is: $\\frac{3}{4}$. Done.") == "\\frac{3}{4}"
    assert last_answer_phrase("The answer is 3.5 apples.\nNext") == "3.5"
    assert last_answer_phrase("nothing") is None


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        ("the result \\boxed{42}", Extracted("42", "boxed")),
        ("work\n#### 1,234", Extracted("1,234", "hash")),
        ("Thus the final answer is $\\frac{1}{2}$.", Extracted("\\frac{1}{2}", "answer_phrase")),
        ("<think>\\boxed{9}</think>The answer: 10", Extracted("10", "answer_phrase")),
        ("<think>steps</think> $\\sqrt{2}$ ", Extracted("\\sqrt{2}", "after_think")),
        ("<think>steps</think>It is clearly seen from the figure that 7 works.", Extracted("7", "last_number")),
        ("she has 5 apples and 6 pears", Extracted("6", "last_number")),
        ("<think>\\boxed{9}</think>", None),  # nothing after the thinking
        ("no numbers", None),
    ],
)
def test_extract_answer_order(response, expected):
    assert extract_answer(response) == expected


def test_extract_gold():
    assert extract_gold("so\n#### 72") == "72"
    assert extract_gold("The answer is $\\boxed{\\frac{3}{4}}$.") == "\\frac{3}{4}"
    assert extract_gold(" 1,000 ") == "1,000"
    assert extract_gold("\\boxed{}") == ""


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("$\\frac{1}{2}$", "\\frac{1}{2}"),
        ("\\(x+1\\)", "x+1"),
        ("\\[ 3 \\]", "3"),
        ("The final answer is 12.", "12"),
        ("\\$18.00", "18.00"),
        ("$18", "18"),
        ("1{,}000", "1,000"),
        ("1\\!000", "1000"),
        ("18 dollars", "18"),
        ("5\\text{ cm}", "5"),
        ("5 square units.", "5"),
        ("2 pi", "2 pi"),  # not a unit
        ("3 and 4", "3 and 4"),
        ("\\begin{pmatrix}1\\\\ 2\\end{pmatrix}", "\\begin{pmatrix}1\\\\ 2\\end{pmatrix}"),  # row break kept
    ],
)
def test_normalize(raw, expected):
    assert normalize(raw) == expected


def test_plain_number_and_text_answer():
    assert plain_number("-1,000.50") == Fraction(-200100, 200)
    assert plain_number(".5") == Fraction(1, 2)
    assert plain_number("1e5") is None  # exponents never take the fast path
    assert plain_number("1" * 201) is None
    assert plain_number("1/2") is None
    assert text_answer("\\text{Monday}") == "monday"
    assert text_answer("(B)") == "b"
    assert text_answer("\\textbf{Yes}.") == "yes"
    assert text_answer("x^2") is None
    assert text_answer("12") is None


def test_linear_time_on_adversarial_input():
    # Each of these would be quadratic or worse with a naive scan/regex; they must finish at once.
    for text in ["\\boxed{" * 20_000, "{" * 100_000 + "\\boxed{1", "1," * 50_000, "answer is " * 10_000,
                 "9" * 100_000 + " units", "</think>" * 10_000 + "x"]:
        extract_answer(text)
        extract_gold(text)
        normalize(text)
