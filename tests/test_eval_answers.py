"""Reading answers out of model texts and golds: GSM8K numbers, MATH's boxed answers, AQuA's
letters, programs in answers; and where each task finds its gold."""

from __future__ import annotations

from fractions import Fraction

import pytest

from selfee.eval import answers
from selfee.eval.tasks import TASKS, gold_of_row
from selfee.records import question_of_row

# (a, b, equal after normalization?)
MATH_PAIRS = [
    ("\\frac{1}{2}", "0.5", True),
    ("\\dfrac{1}{2}", "\\frac12", True),
    ("\\tfrac{3}{4}", "\\frac{3}{4}", True),
    ("1/2", "\\frac{1}{2}", True),
    ("\\frac{2}{4}", "\\frac{1}{2}", True),
    ("-\\frac{1}{2}", "-0.5", True),
    ("\\frac{-1}{2}", "-0.5", True),
    ("5.0", "5", True),
    ("5.00", "5", True),
    ("0.50", "\\frac{1}{2}", True),
    (".5", "0.5", True),
    ("90^\\circ", "90", True),
    ("90^{\\circ}", "90", True),
    ("\\left( 1, 2 \\right)", "(1,2)", True),
    ("\\left[ 0, 1 \\right)", "[0,1)", True),
    ("x = 3", "3", True),
    ("y=\\frac{1}{3}", "\\frac{1}{3}", True),
    ("10\\%", "10", True),
    ("\\$15", "15", True),
    ("5 \\text{ cm}", "5", True),
    ("12\\text{ inches}", "12", True),
    ("\\sqrt2", "\\sqrt{2}", True),
    ("2\\sqrt3", "2\\sqrt{3}", True),
    ("\\frac{\\sqrt{3}}{2}", "\\frac{\\sqrt{3}}{2}", True),
    ("\\frac{\\sqrt{3}}2", "\\frac{\\sqrt{3}}{2}", True),
    ("3 \\pi", "3\\pi", True),
    ("1,\\!000", "1,000", True),
    ("\\{1, 2\\}", "\\{1,2\\}", True),
    ("\\frac{1}{2}", "\\frac{1}{3}", False),
    ("0.5", "0.6", False),
    ("5", "-5", False),
    ("\\sqrt{2}", "\\sqrt{3}", False),
    ("(1,2)", "(2,1)", False),
    ("x^2", "x^3", False),
    ("\\frac{3}{4}", "0.7", False),
    ("2\\pi", "\\pi", False),
    ("12", "120", False),
    ("\\frac{1}{0}", "0", False),
    ("\\infty", "-\\infty", False),
    ("[0,1)", "[0,1]", False),
    ("a", "b", False),
    ("10", "10\\pi", False),
]


@pytest.mark.parametrize(("a", "b", "equal"), MATH_PAIRS)
def test_math_answers_equal_after_normalization(a: str, b: str, equal: bool) -> None:
    assert answers.math_equal(a, b) is equal
    assert answers.math_equal(b, a) is equal


def test_there_are_at_least_forty_math_pairs_both_ways() -> None:
    assert len(MATH_PAIRS) >= 40
    assert sum(e for *_, e in MATH_PAIRS) >= 15 and sum(not e for *_, e in MATH_PAIRS) >= 10


@pytest.mark.parametrize(
    ("text", "boxed"),
    [
        ("so the answer is $\\boxed{\\frac{1}{2}}$.", "\\frac{1}{2}"),
        ("first \\boxed{3}, corrected: \\boxed{4}", "4"),
        ("\\boxed{\\left( \\frac{3}{2}, 1 \\right)}", "\\left( \\frac{3}{2}, 1 \\right)"),
        ("\\fbox{7}", "7"),
        ("The answer is \\boxed 5.", "5"),
        ("no box here, 5", None),
        ("\\boxed{unclosed", None),
    ],
)
def test_the_last_boxed_answer_is_read(text: str, boxed: str | None) -> None:
    assert answers.last_boxed(text) == boxed


@pytest.mark.parametrize(
    ("text", "number"),
    [
        ("She earns 18 * 60 = $1,080 a week.\n#### 1080", Fraction(1080)),
        ("So the total is 1,234,567 apples.", Fraction(1234567)),
        ("He pays $12.50 in all.", Fraction(25, 2)),
        ("The answer is -3.", Fraction(-3)),
        ("That is 25% of the class, i.e. 7 students", Fraction(7)),
        ("It takes 3/4 of an hour", Fraction(3, 4)),
        ("The price drops to .5 dollars", Fraction(1, 2)),
        ("After 2 days she has 40 pages left to read. The answer is 40 pages.", Fraction(40)),
        ("#### 72\nI think 80 is also close", Fraction(72)),
        ("In 2023 she read 12 books in 4 months, so 3 per month.", Fraction(3)),
        ("No numbers at all.", None),
        ("", None),
    ],
)
def test_gsm8k_reads_the_final_number(text: str, number: Fraction | None) -> None:
    assert answers.gsm8k_answer(text) == number


def test_gsm8k_gold_is_the_number_after_the_marks() -> None:
    worked = "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n48+24 = <<48+24=72>>72\n#### 72"
    assert answers.gsm8k_gold(worked) == 72
    assert answers.gsm8k_gold("#### 1,200") == 1200
    assert answers.gsm8k_gold("42") == 42
    assert answers.gsm8k_gold("a worked answer without its final mark, 42") is None
    task = TASKS["gsm8k"]
    assert task.same(task.read_answer("so 72.0 clips") or "", task.read_gold(worked))
    assert not task.same(task.read_answer("so 71 clips") or "", task.read_gold(worked))


@pytest.mark.parametrize(
    ("text", "letter"),
    [
        ("The total is 40, so the answer is (C).", "C"),
        ("Answer: B", "B"),
        ("Among the options, option D is right.", "D"),
        ("We compute ... (E) 25", "E"),
        ("It must be A) 12", "A"),
        ("Let me check (A) first; the answer is (B).", "B"),
        ("I cannot tell.", None),
    ],
)
def test_aqua_reads_the_option_letter(text: str, letter: str | None) -> None:
    assert answers.aqua_letter(text) == letter


def test_code_is_read_from_fences_or_the_whole_text() -> None:
    fenced = "Here it is:\n```python\ndef f(x):\n    return x\n```\nUsage:\n```\nf(1)\n```\n"
    assert answers.extract_code(fenced) == "def f(x):\n    return x\n\nf(1)\n"
    assert answers.extract_code("def g():\n    return 2\n") == "def g():\n    return 2\n"
    broken = "```python\ndef f(:\n```"
    assert answers.extract_code(broken) is None
    assert answers.extract_code("Just use a loop over the list.") is None
    assert answers.extract_code("```cpp\nint main() {}\n```") is None


def test_gold_comes_from_question_rows_and_instruction_rows() -> None:
    q = {"question_id": 1, "text": "How many?", "gold": "... #### 12"}
    assert question_of_row(q) == (1, "How many?", "")
    assert gold_of_row(TASKS["gsm8k"], q) == "12"
    gsm = {"id": "a1", "instruction": "How many?", "input": "", "output": "... #### 5",
           "meta": {"final_answer": "5"}}  # fmt: skip
    assert question_of_row(gsm) == ("a1", "How many?", "")
    assert question_of_row({**gsm, "input": "Ann has 5."}) == ("a1", "How many?", "Ann has 5.")
    assert gold_of_row(TASKS["gsm8k"], gsm) == "5"
    math = {"id": "m", "instruction": "x?", "input": "", "output": "So $\\boxed{\\dfrac{1}{2}}$"}
    assert gold_of_row(TASKS["math"], math) == "\\dfrac{1}{2}"
    aqua = {
        "id": "q",
        "instruction": "?",
        "output": "... The answer is C.",
        "meta": {"correct": "C"},
    }
    assert gold_of_row(TASKS["aqua"], aqua) == "C"
    mbpp = {"id": "c", "instruction": "Write f", "output": "def f(): ...",
            "meta": {"tests": ["assert f() == 1"], "test_setup_code": ""}}  # fmt: skip
    assert gold_of_row(TASKS["code"], mbpp) == {"tests": ["assert f() == 1"], "setup": ""}
    contest = {"id": "cc", "instruction": "Sum", "output": "...",
               "meta": {"io_tests": [{"input": "1 2\n", "output": "3\n"}]}}  # fmt: skip
    assert gold_of_row(TASKS["code"], contest) == {"io": [{"input": "1 2\n", "output": "3\n"}]}
    # a gold the task cannot use
    assert gold_of_row(TASKS["gsm8k"], {"question_id": 2, "text": "?", "gold": "many"}) is None
    assert gold_of_row(TASKS["code"], {"question_id": 3, "text": "?", "gold": "tests"}) is None
    assert question_of_row({"prompt": "?"}) is None
