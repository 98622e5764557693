r"""What counts as a pass on LiveCodeBench-style tests: which code a response submits, and when its output is right.

    python -c "import code_grading as g; print(g.extract_code('<think>draft</think>\n\`\`\`python\nprint(1)\n\`\`\`'))"
    python -c "import code_grading as g; print(g.outputs_match('1.50 2', '1.5 2.0'), g.values_match(0.1 + 0.2, 0.3))"
    python -m pytest tests/test_code_grading.py -q

extract_code finds the program: the last fenced Python block of the final answer. outputs_match (what a stdin program
printed) and values_match (what a functional solution returned) are LiveCodeBench's comparison rules, with an optional
float tolerance for problems that state one. This module runs nothing. sandbox.py runs the program and, on the host,
judges each test with these rules; sandbox.grade_code is the whole path (extract, run, verdict) and sandbox.method_name
picks the function a functional test calls, because both decide what runs.
Imports go sandbox -> code_grading, never back: the sandbox's host side needs these rules to give a verdict, so they
are a leaf it imports, and what runs code stays with the runner. The sandbox itself never imports this module (its
supervisor runs alone and starts in about 70 ms), so expected outputs and the rules that read them stay on the host.
The math counterparts are answer_extraction.py (where the answer is) and grading.py (is it the gold).
"""

import math
import re
from decimal import Decimal, InvalidOperation

from markup import solution_part

_PYTHON_FENCES = ("", "python", "python3", "py", "py3")
# A fence opens and closes at the start of a line, so ``` inside a string literal does not end a block.
_FENCE = re.compile(r"^[ \t]*```[ \t]*([\w+-]*)[^\n]*\n(.*?)^[ \t]*```", re.MULTILINE | re.DOTALL)


def extract_code(response: str) -> str | None:
    """The last fenced Python block, searched first in the final answer (after the reasoning)."""
    for text in (solution_part(response), response):
        blocks = [body for lang, body in _FENCE.findall(text or "") if lang.lower() in _PYTHON_FENCES]
        if blocks and blocks[-1].strip():
            return blocks[-1]
    return None


def outputs_match(got: str, expected: str, float_tol: float = 0.0) -> bool:
    """LiveCodeBench's stdout rule: same stripped lines; a differing line still matches when both
    parse as numbers that are equal as Decimals (so 1.50 == 1.5). float_tol > 0 also accepts
    non-integer numbers within that absolute-or-relative error, for problems that state one."""
    got_lines, expected_lines = _stripped_lines(got), _stripped_lines(expected)
    return len(got_lines) == len(expected_lines) and all(
        g == e or _numbers_match(g, e, float_tol) for g, e in zip(got_lines, expected_lines)
    )


def _stripped_lines(text: str) -> list[str]:
    return [line.strip() for line in text.strip().split("\n")]


def _numbers_match(got_line: str, expected_line: str, float_tol: float) -> bool:
    try:
        got, expected = [Decimal(t) for t in got_line.split()], [Decimal(t) for t in expected_line.split()]
        return len(got) == len(expected) and all(
            g == e
            or (
                float_tol > 0
                and g.is_finite()
                and e.is_finite()
                # integers stay exact: 10**17 and 10**17+1 are different answers at any tolerance
                and min(g.as_tuple().exponent, e.as_tuple().exponent) < 0
                and abs(g - e) <= Decimal(float_tol) * max(1, abs(e))
            )
            for g, e in zip(got, expected)
        )
    except (InvalidOperation, ArithmeticError):
        return False


def values_match(got, expected, float_tol: float = 0.0) -> bool:
    """Functional results after a JSON round trip (so tuples already are lists), compared with ==
    as LiveCodeBench does, recursing so that float_tol can apply inside lists and dicts."""
    if isinstance(got, list) and isinstance(expected, list):
        return len(got) == len(expected) and all(values_match(g, e, float_tol) for g, e in zip(got, expected))
    if isinstance(got, dict) and isinstance(expected, dict):
        return got.keys() == expected.keys() and all(values_match(got[k], expected[k], float_tol) for k in got)
    if got == expected:
        return True
    try:
        return (
            float_tol > 0
            and isinstance(got, (int, float))
            and isinstance(expected, (int, float))
            and (isinstance(got, float) or isinstance(expected, float))
            and math.isclose(got, expected, rel_tol=float_tol, abs_tol=float_tol)
        )
    except OverflowError:
        return False
