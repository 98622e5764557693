r"""Rebuild grader_suites.jsonl: the (prediction, gold, expected verdict) cases of two public math graders' own tests.

    git clone https://github.com/huggingface/Math-Verify /tmp/Math-Verify
    python bench/data/build_grader_suites.py --math-verify /tmp/Math-Verify

Math-Verify (Apache-2.0; tests/test_all.py carries an MIT header): every `pytest.mark.parametrize` case with a gold,
a prediction and an expected 0/1, read from the test files with `ast` at the commit below. Its tests parse gold and
prediction alike from free text; our golds are bare answers, so `gold` is the gold text without its $..$ delimiters
when it is a short answer, else (a worked solution, several boxes) the answer Math-Verify itself extracts from it
(`math_verify.parse(...)[1]`, version recorded per case). Cases run with non-default options (`precision=2`,
`strict=False`, `allow_set_relation_comp=True`, `precision=5`) are marked `"consistent": false`: their verdict is
not the grader's default one; so is a case whose expected verdict contradicts mathematics (CONTRADICTIONS).
lm-evaluation-harness (MIT): the math answer-check tests of open pull requests (no math answer tests are on main),
transcribed by hand below from the pull requests' head commits, one case per assertion:
`process_results(doc, [response])` gives (response, gold = the last box of doc["solution"]); `is_equiv(a, b)` gives
(a, b); `normalize_final_answer(x) == y` gives (x, y, True).
"""

import argparse
import ast
import json
import math
import re
import subprocess
from pathlib import Path

MATH_VERIFY = {"repo": "huggingface/Math-Verify", "commit": "5d148cfaaf99214c2e4ffb4bc497ab042c592a7a"}
MATH_VERIFY_FILES = [
    "tests/test_all.py",
    "tests/test_boxed.py",
    "tests/test_numina_cases.py",
    "tests/test_open_thoughts.py",
    "tests/test_strict.py",
    "tests/test_yujianll.py",
]
GOLD_OVERRIDES = {  # golds Math-Verify cannot parse: the answer its test means, by hand
    "math-verify/test_numina_cases.py:121": r"W(n) = 1 \text{ and } W(n) = -1",  # \\boxed{ never closed
}
CONTRADICTIONS = {  # expected verdicts that contradict mathematics
    "math-verify/test_yujianll.py:28": "expects 1 - 1/e to equal 1 + 1/e",
}
DEFAULT_OPTIONS = {"precision": 6, "strict": True, "allow_set_relation_comp": False}
LM_EVAL_REPO = "EleutherAI/lm-evaluation-harness"
MINERVA = ("4034", "47e871bf4c254b24ff05ac7a3f35f509aacb4678", "tests/test_minerva_math.py")
UNITS = ("4032", "1eb3dead84f4f23ad4987dd251b9fa91216aae91", "tests/test_minerva_math_utils.py")
HENDRYCKS = ("3655", "4e7a76f41c9bda4e09e893bd656f49e612de6aea", "tests/test_hendrycks_math.py")
DISPLAY = ("3741", "6d0e21d15fe0308afe5bcc5bea11b4c22c574ee1", "tests/test_hendrycks_math_utils.py")
BOXED = ("3878", "fa2fe862f7cbe4f8031561de4b96eb0bbda13a81", "tests/test_hendrycks_math_utils.py")
MULTI = ("3807", "17374dd62b93a260f95ff755333e5e98b4715230", "tests/test_hendrycks_math.py")
# (pull request, commit, path), test, prediction, gold, expected
LM_EVAL_CASES = [
    *[(MINERVA, "test_unparseable_answer_matches_itself", a, a, True) for a in
      ["(2,4)", "(-1,2,3)", "[2,5)", r"(-\infty,3]", r"\begin{pmatrix}1\\2\end{pmatrix}"]],
    *[(MINERVA, "test_parseable_answer_still_matches_itself", a, a, True) for a in ["2", r"\frac{1}{2}", "x+1",
      r"\text{east}"]],
    (MINERVA, "test_different_answers_are_not_equivalent", "(2,4)", "(3,5)", False),
    (MINERVA, "test_different_answers_are_not_equivalent", "[2,5)", "[2,6)", False),
    (MINERVA, "test_different_answers_are_not_equivalent", "(2,4)", "(4,2)", False),
    (MINERVA, "test_different_answers_are_not_equivalent", r"\text{east}", r"\text{west}", False),
    (MINERVA, "test_two_empty_answers_are_not_a_match", "", "", False),
    (MINERVA, "test_mathematically_equal_answers_still_compare_equal", r"\frac{1}{2}", "0.5", True),
    *[(UNITS, "test_latex_commands_survive_unit_removal", a, a, True) for a in
      [r"\left(1,2\right)", r"\infty", r"\square"]],
    (UNITS, "test_latex_commands_survive_unit_removal", r"5\text{cm}", "5", True),
    (UNITS, "test_unit_after_command_still_stripped", r"2\pi cm", r"2\pi", True),
    (UNITS, "test_unit_after_command_still_stripped", r"30^\circ inches", "30", True),
    *[(UNITS, "test_unit_words_still_removed", a, b, True) for a, b in
      [("12 ft", "12"), ("12ft", "12"), (r"5 \text{cm}", "5"), ("2 dollars", "2")]],
    (UNITS, "test_symbolic_removals_unaffected", "3^\\circ", "3", True),
    (UNITS, "test_symbolic_removals_unaffected", "{,}1,2", "12", True),
    (UNITS, "test_zero_separator_glued_command_kept", r"2\picm", r"2\picm", True),
    (UNITS, "test_is_equiv_end_to_end", r"\left(\frac{3}{2}\right)", r"\frac{3}{2}", True),
    (UNITS, "test_is_equiv_end_to_end", r"2\pi cm", r"2\pi", True),
    (UNITS, "test_is_equiv_end_to_end", r"30^\circ inches", "30", True),
    (HENDRYCKS, "test_boxed_response_matches", r"The domain is \boxed{[2,5)}", "[2,5)", True),
    (HENDRYCKS, "test_dollar_fallback_still_works", r"The answer is $\frac{1}{2}$", r"\frac{1}{2}", True),
    (HENDRYCKS, "test_space_form_boxed_falls_back_to_last_boxed_only_string", r"The answer is \boxed 4", "4", True),
    (HENDRYCKS, "test_space_form_boxed_terminated_by_dollar", r"So we get $\boxed 7$ as the answer.", "7", True),
    (HENDRYCKS, "test_multi_boxed_joined", r"Final answers: \boxed{3}, \boxed{5}, \boxed{7}", "3, 5, 7", True),
    (HENDRYCKS, "test_multi_boxed_deduplicated", r"So \boxed{4}. Therefore \boxed{4}.", "4", True),
    (HENDRYCKS, "test_neither_format_does_not_crash", "I don't know", "42", False),
    (HENDRYCKS, "test_is_equiv_still_rejects_unequal_answers", "3", "4", False),
    (HENDRYCKS, "test_is_equiv_still_rejects_unequal_answers", "x + 1", "x + 2", False),
    (HENDRYCKS, "test_is_equiv_sympy_symbolic_fallback", "9a + 11", "11 + 9a", True),
    (HENDRYCKS, "test_comma_separated_answers_are_not_symbolically_equated", "1,-2", "1,-3", False),
    (HENDRYCKS, "test_comma_separated_answers_are_not_symbolically_equated", "1,2", "1,3", False),
    (HENDRYCKS, "test_comma_separated_answers_are_not_symbolically_equated", "3, 5, 7", "3, 5, 9", False),
    (HENDRYCKS, "test_thousands_separator_still_compares_numerically", "58,500", "58500", True),
    (HENDRYCKS, "test_math_verify_metric_reported", r"The answer is \boxed{4}", "4", True),
    (DISPLAY, "test_inline_math_correct", "The answer is $42$.", "42", True),
    (DISPLAY, "test_display_math_correct", r"Thus the answer is \[ \boxed{42} \]", "42", True),
    (DISPLAY, "test_wrong_answer_no_match", "The answer is $7$.", "42", False),
    (DISPLAY, "test_display_math_wrong_answer", r"\[ \boxed{7} \]", "42", False),
    (BOXED, "test_extract_model_answer_from_dollar_delimiters", "The answer is $42$", "42", True),
    (BOXED, "test_extract_model_answer_from_boxed_without_dollars", r"Thus the answer is \[ \boxed{42} \]", "42", True),
    (MULTI, "test_process_results_accepts_multiple_boxed_answers",
     "### Final Answer\n\n$$\n\\boxed{3}, \\boxed{5}, \\boxed{7}\n$$", "3, 5, 7", True),
    (MULTI, "test_process_results_accepts_unordered_simple_answer_lists",
     "Final answer:\n\n$$\n\\boxed{-2}, \\boxed{1}\n$$", "1,-2", True),
    (MULTI, "test_process_results_strips_display_math_delimiters",
     "### Final Answer\n\n$$\n\\boxed{\\begin{pmatrix} -\\dfrac{1}{3} \\\\ \\dfrac{2}{3} \\\\ "
     "\\dfrac{5}{3} \\end{pmatrix}}\n$$", r"\begin{pmatrix} -1/3 \\ 2/3 \\ 5/3 \end{pmatrix}", True),
    (MULTI, "test_process_results_accepts_base_suffix_omitted_from_boxed_answer",
     "Thus, the product is:\n\n$$\n\\boxed{52}\n$$", "52_8", True),
]  # fmt: skip


def literal(node: ast.AST):
    try:
        return ast.literal_eval(node)
    except ValueError:  # f"{math.sqrt(17):.15f}" in test_float_precision
        return eval(compile(ast.Expression(node), "<case>", "eval"), {"math": math, "__builtins__": {}})


def call_options(func: ast.FunctionDef) -> dict:
    """Keyword options of the compare_strings(...)/verify(...) call in a test's body."""
    for node in ast.walk(func):
        if isinstance(node, ast.Call) and getattr(node.func, "id", "") in ("compare_strings", "verify"):
            return {kw.arg: ast.unparse(kw.value) for kw in node.keywords}
    return {}


def bare_gold(text: str) -> str:
    """The gold as our graders take it: a bare answer."""
    from math_verify import parse

    if "boxed" not in text and len(text) <= 100:
        return re.sub(r"^\s*\\[(\[]|\\[)\]]\s*$", "", re.sub(r"(?<!\\)\$", "", text)).strip()
    parsed = parse(text)
    return parsed[1] if len(parsed) > 1 else text


def math_verify_cases(checkout: Path) -> list[dict]:
    from importlib.metadata import version

    cases = []
    for path in MATH_VERIFY_FILES:
        source = git_show(checkout, MATH_VERIFY["commit"], path)
        for func in ast.parse(source).body:
            if not isinstance(func, ast.FunctionDef):
                continue
            fixed = call_options(func)
            for decorator in func.decorator_list:
                names = [n.strip() for n in literal(decorator.args[0]).split(",")] if decorator.args else []
                if not {"gold", "pred"} <= set(names):
                    continue
                for element in decorator.args[1].elts:
                    params = dict(zip(names, map(literal, element.elts)))
                    options = {k: params[v] if v in params else ast.literal_eval(v) for k, v in fixed.items()}
                    options.pop("match_types", None)
                    defaults = all(DEFAULT_OPTIONS.get(k) == v for k, v in options.items())
                    case_id = f"math-verify/{path.rsplit('/', 1)[1]}:{element.lineno}"
                    if any(c["id"] == case_id for c in cases):  # two cases on one line
                        case_id += f"+{element.col_offset}"
                    cases.append(
                        {
                            "id": case_id,
                            "source": "math-verify",
                            **MATH_VERIFY,
                            "path": path,
                            "test": func.name,
                            "licence": "Apache-2.0 (repository); MIT header in tests/test_all.py",
                            "prediction": params["pred"],
                            "gold_text": params["gold"],
                            "gold": GOLD_OVERRIDES.get(case_id) or bare_gold(params["gold"]),
                            "gold_from": f"math-verify {version('math-verify')}",
                            "expected": bool(params.get("expected", params.get("result"))),
                            "options": options,
                            "consistent": defaults and case_id not in CONTRADICTIONS,
                            "inconsistent_because": None if defaults else "non-default options",
                        }
                    )
    for case in cases:
        case["inconsistent_because"] = CONTRADICTIONS.get(case["id"], case["inconsistent_because"])
    return cases


def lm_eval_cases() -> list[dict]:
    cases = []
    for i, ((pull, commit, path), test, prediction, gold, expected) in enumerate(LM_EVAL_CASES):
        cases.append(
            {
                "id": f"lm-eval/pr{pull}:{test}:{i}",
                "source": "lm-evaluation-harness",
                "repo": LM_EVAL_REPO,
                "commit": commit,
                "path": path,
                "test": test,
                "licence": "MIT",
                "prediction": prediction,
                "gold_text": gold,
                "gold": gold,
                "expected": expected,
                "options": {},
                "consistent": True,
                "inconsistent_because": None,
            }
        )
    return cases


def git_show(checkout: Path, commit: str, path: str) -> str:
    return subprocess.run(
        ["git", "-C", str(checkout), "show", f"{commit}:{path}"], check=True, capture_output=True, text=True
    ).stdout


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--math-verify", type=Path, required=True, help="a clone of huggingface/Math-Verify (any git dir)")
    p.add_argument("--output", type=Path, default=Path(__file__).with_name("grader_suites.jsonl"), help="JSONL out")
    args = p.parse_args()
    cases = math_verify_cases(args.math_verify) + lm_eval_cases()
    with open(args.output, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(case, ensure_ascii=False) + "\n" for case in cases)
    print(f"{len(cases)} cases -> {args.output}")


if __name__ == "__main__":
    main()
