r"""Property tests of grading.py with hypothesis: no response or gold string makes the grader raise or hang.

    python -m pytest tests/test_grading_fuzz.py -q
    FUZZ_EXAMPLES=20 python -m pytest tests/test_grading_fuzz.py -q    # 20x the examples, a fresh seed: a hunt

Responses and golds are built from the inputs that broke graders: numbers with many digits and any exponent
(1e999999999, 10^{10^{10}}), LaTeX fragments with unbalanced braces, deep nesting, Unicode digits and minus signs,
control characters and lone surrogates, prose, reasoning markup, long strings. Most examples run the fast paths with
the sympy helper replaced by a stub that records what would reach it; a few hundred run the real helper under a short
timeout. A failure found here becomes an explicit case in tests/test_grading.py (test_odd_inputs_do_not_raise).
"""

import os
import sys
import time
from pathlib import Path
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import code_grading  # noqa: E402
import grading  # noqa: E402
import symbolic  # noqa: E402

SCALE = int(os.environ.get("FUZZ_EXAMPLES", "1"))  # > 1: more examples and a random seed, to look for new failures
FUZZ = settings(
    deadline=None,  # timing is asserted per comparison below, not per example (CI machines stall)
    derandomize=SCALE == 1,  # CI runs the same examples every time
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)
FAST_PATH_S = 5.0  # the fast rules on one answer (<= MAX_ANSWER_CHARS) take milliseconds; generous for loaded CI
SYMBOLIC_TIMEOUT = 0.5
SYMBOLIC_MARGIN_S = 3.0  # over timeout + HELPER_KILL_GRACE_S: the pipe round trip on a loaded machine

DIGITS = "0123456789"
OTHER = ["٠١٢٣٤٥٦٧٨٩", "०१२३४५६७८९", "０１２３４５６７８９", "𝟎𝟏𝟐𝟑𝟒𝟓𝟔𝟕𝟖𝟗", "⁰¹²³⁴⁵⁶⁷⁸⁹"]  # Arabic, Devanagari, ...
ODD_CHARACTERS = [
    "−", "–", "²", "³", "⁻¹", "½", "π", "√", "∞", "×", "·", "°", "€", "٫", "\u00a0", "\u202f", "\ufeff", "\u200b",
    "\x00", "\x07", "\x1b", "\x7f", "\x85", "\u2028", "\r", "\t", "\ud800", "\udfff",
]  # fmt: skip
LATEX = [
    r"\frac", r"\dfrac", r"\sqrt", r"\boxed", r"\fbox", r"\text", r"\mathrm", r"\left(", r"\right)", r"\{", r"\}",
    "{", "}", "(", ")", "[", "]", "^", "_", "$", "$$", r"\(", r"\)", r"\[", r"\]", ",", ", ", ";", "=", "<", ">",
    r"\le", r"\ge", r"\pm", r"\cup", r"\infty", r"\pi", r"\times", r"\cdot", "10^", "e", "E", "%", r"\%", r"^\circ",
    r"\,", r"\!", "~", r"\begin{pmatrix}", r"\end{pmatrix}", r"\\", "&", "x", "n", "f(x)", " and ", " or ", " ", "\n",
    "**", "\\", "/", ".", "-", "+", r"\text{ cm}", " meters", " for x > 0", "(a) ", "Subproblem 1: ",
]  # fmt: skip
PROSE = [
    "The answer is ", "Therefore, ", "so the result is ", "Final Answer: ", "We get ", "I hope this helps. ",
    "This means that ", "\n\n", ". ", "<think>", "</think>", "<|begin_of_thought|>", "<|end_of_thought|>",
    "<|begin_of_solution|>", "<|end_of_solution|>", "<|im_end|>", "```python\nprint(1)\n```", "```",
]  # fmt: skip


def _number(sign: str, integer: str, decimals: str, shape: str, exponent: int, count: int) -> str:
    text = sign + integer + decimals
    if shape in ("e", "E"):
        return f"{text}{shape}{exponent}"
    if shape == "times":
        return rf"{text}\times 10^{{{exponent}}}"
    if shape == "power":
        return f"{sign}10^{{{exponent}}}"
    if shape == "tower":  # 10^{10^{10^{...}}}, the closing braces not always all there
        return "10^{" * (count % 6 + 1) + str(exponent) + "}" * (count % 7)
    if shape == "fraction":
        return text + "/" + ["0", "3", "7" * 50, "1" * 5000][count % 4]
    if shape == "latex":
        return rf"\frac{{{text}}}{{{count}}}"
    if shape == "commas":
        return text + ",000" * count
    return text


# Module-level strategies drawn with st.builds: a composite building its strategies on every draw is 3x slower.
DIGIT_RUNS = st.one_of(
    st.integers(0, 10**40).map(str),
    st.builds(str.__mul__, st.sampled_from(DIGITS), st.integers(100, 3000)),  # past Decimal's 28-digit context
    st.builds(lambda n, digits: str(n).translate(str.maketrans(DIGITS, digits)), st.integers(), st.sampled_from(OTHER)),
)
NUMBERS = st.builds(  # as models write them: any digits, decimals, thousands separators, any exponent
    _number,
    st.sampled_from(["", "-", "−", "+"]),
    DIGIT_RUNS,
    st.one_of(st.just(""), DIGIT_RUNS.map(lambda digits: "." + digits)),
    st.sampled_from(["plain", "plain", "e", "E", "times", "power", "tower", "fraction", "latex", "commas"]),
    st.one_of(st.integers(-1100, 1100), st.integers(-(10**12), 10**12)),
    st.integers(1, 400),
)
FRAGMENTS = st.one_of(
    NUMBERS,
    st.sampled_from(LATEX),
    st.sampled_from(ODD_CHARACTERS),
    st.sampled_from(PROSE),
    st.text(max_size=4),  # any Unicode at all
)
ANSWERS = st.lists(FRAGMENTS, max_size=8).map("".join)
NESTED = st.builds(  # deep nesting, balanced or not: \frac{\frac{..., \sqrt{\sqrt{..., {{{{...
    lambda opener, depth, inner, closer, closed: opener * depth + inner + closer * min(depth, closed),
    st.sampled_from([r"\frac{", r"\sqrt{", r"\boxed{", "{", "(", r"\left(", r"\text{", r"\{", "[", "10^{"]),
    st.integers(1, 1000),
    ANSWERS,
    st.sampled_from(["}", ")", r"\right)", r"\}", "]"]),
    st.integers(0, 1000),
)


def _response(shape: str, prose: str, answer: str, repeats: int) -> str:
    if shape == "boxed":
        return f"{prose}\\boxed{{{answer}}}"
    if shape == "phrase":
        return f"{prose}The final answer is {answer}"
    if shape == "sentence":
        return f"{prose}\n\nTherefore, the value is {answer}."
    if shape == "thought":
        return f"<think>\n{prose}\n</think>\n\n{answer}"
    if shape == "sky-t1":
        return f"<|begin_of_thought|>{prose}<|end_of_thought|><|begin_of_solution|>{answer}<|end_of_solution|>"
    if shape == "repeated":  # long: up to ~20 KB of a repeated pattern (test_megabyte_responses: 1 MB)
        return (prose + answer) * min(repeats, 20_000 // max(1, len(prose + answer)))
    return prose + answer


RESPONSES = st.builds(
    _response,
    st.sampled_from(["boxed", "phrase", "sentence", "bare", "thought", "sky-t1", "repeated"]),
    st.lists(st.one_of(st.sampled_from(PROSE), FRAGMENTS), max_size=5).map("".join),
    st.one_of(ANSWERS, ANSWERS, NESTED),
    st.integers(1, 20_000),
)
GOLDS = st.one_of(
    NUMBERS,
    ANSWERS,
    st.integers(-(10**40), 10**40),
    st.floats(),  # nan and inf included
    st.lists(st.one_of(NUMBERS, ANSWERS), min_size=1, max_size=4),
)


def stub_symbolic(pred: str, gold: str, timeout: float) -> bool:
    """In place of the helper process: what reaches it must be within the documented limits."""
    assert len(pred) + len(gold) <= grading.MAX_SYMBOLIC_CHARS and timeout > 0
    return False


def timed(call, *args, **kwargs):
    start = time.monotonic()
    result = call(*args, **kwargs)
    return result, time.monotonic() - start


@settings(FUZZ, max_examples=9000 * SCALE)
@given(response=RESPONSES, gold=GOLDS, finish=st.sampled_from([None, "stop", "length"]))
def test_grade_math_never_raises(response, gold, finish):
    with mock.patch.object(symbolic, "symbolic_equal", stub_symbolic):
        result, seconds = timed(grading.grade_math, response, gold, timeout=SYMBOLIC_TIMEOUT, finish_reason=finish)
    assert isinstance(result["correct"], bool) and isinstance(result["extracted"], (str, type(None)))
    assert seconds < FAST_PATH_S, (seconds, response[:200], gold)


@settings(FUZZ, max_examples=1000 * SCALE)
@given(pred=st.one_of(ANSWERS, NUMBERS, NESTED), gold=GOLDS)
def test_math_equal_never_raises_either_way_round(pred, gold):
    with mock.patch.object(symbolic, "symbolic_equal", stub_symbolic):
        for a, b in [(pred, gold)] + ([(gold, pred)] if isinstance(gold, str) else []):
            result, seconds = timed(grading.math_equal, a, b, timeout=SYMBOLIC_TIMEOUT)
            assert isinstance(result, bool) and seconds < FAST_PATH_S, (seconds, a[:200], b)


@settings(FUZZ, max_examples=500 * SCALE)
@given(pred=st.one_of(ANSWERS, NUMBERS), gold=st.one_of(NUMBERS, ANSWERS))
def test_symbolic_comparisons_end_within_their_timeout(pred, gold):
    """The real helper process: each comparison it gets ends within its timeout and the kill grace, however hard
    (a helper killed for overrunning is restarted by the next comparison; its start-up is not counted)."""
    compare, start_helper = symbolic.symbolic_equal, symbolic.SymbolicHelper._start
    slowest, startup = [], []

    def timed_compare(*args):
        started = len(startup)
        result, seconds = timed(compare, *args)
        slowest.append(seconds - sum(startup[started:]))
        return result

    def timed_start(helper):
        startup.append(timed(start_helper, helper)[1])

    with (
        mock.patch.object(symbolic, "symbolic_equal", timed_compare),
        mock.patch.object(symbolic.SymbolicHelper, "_start", timed_start),
    ):
        assert isinstance(grading.math_equal(pred, gold, timeout=SYMBOLIC_TIMEOUT), bool)
    limit = SYMBOLIC_TIMEOUT + symbolic.HELPER_KILL_GRACE_S + SYMBOLIC_MARGIN_S
    assert max(slowest, default=0) < limit, (slowest, pred[:200], gold[:200])


MEGABYTE_RESPONSES = {  # the first four were quadratic in answer extraction (hours for 1 MB)
    "spaces": " " * 2**20,
    "newlines": "\n" * 2**20,
    "unclosed display math": r"\[" * 2**19,
    "unclosed inline math": r"\(" * 2**19,
    "prose": "So the answer is 3 and x = 4. " * (2**20 // 30),
    "thought": "<think>" + "x " * 2**19 + "</think> \\boxed{3}",
}


@pytest.mark.parametrize("name", MEGABYTE_RESPONSES)
def test_megabyte_responses_are_graded_in_linear_time(name):
    response = MEGABYTE_RESPONSES[name]
    with mock.patch.object(symbolic, "symbolic_equal", stub_symbolic):
        result, seconds = timed(grading.grade_math, response, "3")
    assert isinstance(result["correct"], bool)
    assert code_grading.extract_code(response) is None  # no closed code block in any of them
    assert seconds < 30, f"{name}: {seconds:.1f} s for 1 MB (each took under 1 s when measured; quadratic is hours)"
