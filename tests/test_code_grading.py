"""Tests for code_grading.py: which code a response submits and LiveCodeBench's output comparison rules.
Nothing runs here; programs run and are judged in tests/test_sandbox.py."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import code_grading  # noqa: E402


def test_extract_code_takes_last_python_block_of_the_final_answer():
    response = (
        "<think>try\n```python\nprint('draft')\n```\n</think>\nFinal:\n```cpp\nint main(){}\n```\n"
        "```Python3\nprint('first')\n```\ntext\n```py\nprint('final')\n```\n"
    )
    assert code_grading.extract_code(response) == "print('final')\n"
    sky = (
        "<|begin_of_thought|>\n```\nx = 1\n```\n<|end_of_thought|>\n"
        "<|begin_of_solution|>\n```python\ny = 2\n```\n<|end_of_solution|>"
    )
    assert code_grading.extract_code(sky) == "y = 2\n"
    assert code_grading.extract_code("plain ```\nprint(3)\n``` fence") is None  # fences sit at line starts
    assert code_grading.extract_code("```\nprint(3)\n```") == "print(3)\n"
    assert code_grading.extract_code("<think>\n```python\nprint(4)\n```\n</think> answer without code") == "print(4)\n"
    assert code_grading.extract_code("no code here") is None
    assert code_grading.extract_code("```cpp\nint main(){}\n```") is None


def test_stdout_comparison_follows_livecodebench():
    assert code_grading.outputs_match("YES\nNO  \n\n\n", "YES\nNO")
    assert code_grading.outputs_match("1.50 2\n", "1.5 2.0")  # numerically equal as Decimals
    assert not code_grading.outputs_match("YES\n", "NO\n")
    assert not code_grading.outputs_match("1\n2\n", "1 2\n")
    assert not code_grading.outputs_match("0.3333333", "0.33333333333")  # LiveCodeBench itself has no tolerance
    assert code_grading.outputs_match("0.3333333", "0.33333333333", float_tol=1e-6)
    assert code_grading.outputs_match("1e-9", "0", float_tol=1e-6)
    assert not code_grading.outputs_match("100000000000000001", "100000000000000000", float_tol=1e-6)
    assert not code_grading.outputs_match("3.141592653589793", "3.14159265358979323846264338327950")
    assert not code_grading.outputs_match("nan", "0", float_tol=1e-6)


def test_functional_values_compare_like_livecodebench():
    assert code_grading.values_match([[1, 2], 3], [[1, 2], 3])
    assert not code_grading.values_match([1, 2], [2, 1])
    assert code_grading.values_match(2.0, 2)
    assert not code_grading.values_match(0.1 + 0.2, 0.3)
    assert code_grading.values_match([0.1 + 0.2], [0.3], float_tol=1e-9)
    assert code_grading.values_match({"a": [1.0000001]}, {"a": [1]}, float_tol=1e-6)
    assert not code_grading.values_match(10**17 + 1, 10**17, float_tol=1e-6)
