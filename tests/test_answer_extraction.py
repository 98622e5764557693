r"""Tests for answer_extraction.py's prose rules: answers a reader sees in a finished response without \boxed{}, and
none in a response cut off or ending mid-reasoning. Boxes, answer phrases and whole made-up responses per rule are
tested in tests/test_grading.py.

python -m pytest tests/test_answer_extraction.py -q
"""

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from answer_extraction import extract_answer  # noqa: E402
from grading import grade_math  # noqa: E402


def load_prose_responses() -> list[dict]:
    with open(ROOT / "tests" / "data" / "grading" / "prose_responses.jsonl", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


@pytest.mark.parametrize("case", load_prose_responses(), ids=lambda c: c["rule"])
def test_prose_responses(case):
    """Whole responses (tests/data/grading/prose_responses.jsonl) around the endings quoted in issue 26, with their
    gold answers: a commentary paragraph or a closing remark after the concluding sentence, a bold or display value
    ending the final paragraph, a bold value inside the conclusion; and cut-off or mid-reasoning endings that have no
    answer although the gold stands last in them."""
    result = grade_math(case["response"], case["gold"], finish_reason=case.get("finish_reason"))
    assert result == {"extracted": case["extracted"], "correct": case["correct"]}


@pytest.mark.parametrize(
    "text, expected",
    [
        # The endings, as quoted.
        (
            "So, again, k=4 gives the smallest |m - n| = 3. Therefore, the minimal |m - n| is 3. "
            "I think that's the answer.",
            "3",
        ),
        (
            "Therefore, the total number of different battalions that can be sent is indeed 225. "
            "I think that's the final answer.",
            "225",
        ),
        ("... the smallest positive integer that satisfies this inequality is *n* = **5**.", "5"),
        ("Thus, the smallest positive integer that satisfies this inequality is *n* = **5**.", "5"),
        ("Using Hubble's law for small shifts:\n\nv/c = z = **0.033**", "0.033"),
        (
            "Therefore, the remainder when $(n + 2)(n + 4)(n + 6)$ is divided by 7 is 3.\n\nThis problem demonstrates "
            "how working modulo a prime keeps the numbers small.",
            "3",
        ),
        # docs/evaluation.md's example of each prose rule ("How a math answer is graded"), word for word.
        ("So the area of the triangle is 12 square units.", "12"),
        ("Thus, the smallest positive integer is *n* = **5**.", "5"),
        ("v/c = z = **0.033**", "0.033"),
        ("Adding the two shifts:\n\n$$z = 0.033$$\n\nI think that's the final answer.", "z = 0.033"),
        ("Therefore, the total is indeed 225. I think that's the final answer.", "225"),
        (
            "Therefore, the total is indeed 225.\n\nThis problem demonstrates how binomial coefficients multiply.",
            "225",
        ),
        # Closing remarks: several sentences, a pleasantry, a clause after the value, a remark after a bold line.
        ("Collecting the terms, the total comes out as\n\n**12**\n\nHope this helps!", "12"),
        ("Thus, the smallest such integer is **7**, which is what we wanted.", "7"),
        ("The last step gives\n\n\\[\nx = \\frac{3}{4}\n\\]\n\nwhich is the required ratio.", "x = \\frac{3}{4}"),
        ("So x = 4.\n\nThis was a nice problem. It combines two ideas. Both are standard.", "x = 4"),
        ("The total is\n\n**The answer is 42**\n\nThat's it.", "42"),
        ("The share of the budget is\n\n$28$ percent", "28"),  # a unit right after the value
    ],
)
def test_prose_answers(text, expected):
    assert extract_answer(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        # Visibly stops mid-sentence: cut off, whatever stands before the cut.
        "Therefore, the total is 12. Now we check the other case, where the",
        "Therefore, the total is 12 = 3 +",
        "So the answer is 12, and",
        "Thus the count is **5**, and for the second case we",
        r"The answer is \boxed{5}. Let me double-check the arithmetic: 2 + 3 =",  # a box followed by more working
        r"The answer is \boxed{5}. So the",
        "So the answer is a",  # no colon: "a" may open "a prime number"
        # A thought that never closed, with a bold number in the middle of it.
        "<think>\nThe count for the first case is **5**, and now for the second case we",
        "<|begin_of_thought|>\nThe count for the first case is **5**.\n\nNow for the second case.",
        # The last paragraph goes on reasoning: a question, a check, a case to come.
        "<think>\nSo x = 4.\n\nNow let me check the second case: if y = 2 then the sum is 6.",
        "<think>\nThe first two cases give 2 and 4.\n\nHmm, so the total is 6?",
        "So x = 4 in the first case.\n\nNow the second case: if y = 2 then the sum is 6.",
        "Therefore x = 5. Let me check the other case.",  # docs/evaluation.md's example
        # A thought cut off after closing-remark-like text: a sentence cut mid-word, a plan, a given.
        "<think>\nSo x = 4.\n\nWhere D is the diameter of the orbit, which is approximatel",
        "<think>\nThe equation is\n\n\\[\\dot{y} + 5y = 10\\]\n\nThis is a linear equation. I can solve it with an "
        "integrating factor.\n\n",
        "<think>\nSolving for p:\n\n\\[p = \\sqrt{2mK}\\]\n\nI know the mass of a proton is \\( m = 1.672 \\times "
        "10^{-27} \\) kg.",
        # A value that is not stated as a result, or followed by more reasoning.
        "We have\n\n$$x^2 + y^2$$\n\nwhich we now minimize.",
        "The sum is **5** apples plus 3 more per box.",
        # A closing sentence with maths or a conclusion word is read, not looked past as a remark.
        "Thus x = 4.\n\nSo the answer does not depend on y.",
        "Therefore, x = 4.\n\nThis problem demonstrates how working modulo 7 keeps the numbers small.",
    ],
)
def test_no_answer_when_cut_off_or_mid_reasoning(text):
    assert extract_answer(text) is None


@pytest.mark.parametrize(
    "text, gold",
    [
        # A finished response whose box is followed only by the words of a remark that ends mid-sentence keeps its box.
        (r"The answer is \boxed{5}. I hope this is what you were looking for", "5"),
        (r"Thus \boxed{7}, which is the number we were asked for", "7"),
        ("**Answer:** \\boxed{7}\n\n---\n\n*Note: computed with the", "7"),
        # A choice letter after "answer is:" is an answer, not an article cut off before its noun.
        ("So the answer is: a", "a"),
    ],
)
def test_box_or_choice_before_an_unfinished_remark_is_the_answer(text, gold):
    assert grade_math(text, gold) == {"extracted": gold, "correct": True}
    assert grade_math(text, gold, finish_reason="length")["extracted"] is None  # cut off at the token limit: none
    if "boxed" in text:  # a thought that never closed counts no box before a cut
        assert extract_answer("<think>\n" + text) is None


def test_token_limit_has_no_answer_whatever_it_ends_with():
    response = "<think>\nAll cases are checked. Therefore, the answer is 225.\n\nI think that's the final answer."
    assert grade_math(response, "225") == {"extracted": "225", "correct": True}
    assert grade_math(response, "225", finish_reason="length") == {"extracted": None, "correct": False}
