"""Benchmark 4: scoring throughput, math answers compared per second and code tests run per second in the sandbox.

    python bench/scoring.py            # all bundled maths golds x (right, wrong); 120 LiveCodeBench problems (~5 min)
    python bench/scoring.py --quick    # smoke test
    python bench/scoring.py --baseline HEAD --code-problems 3   # maths before/after a grading.py change, same run
    python bench/scoring.py --baseline 83e1c7b 3ae5eb5          # several baselines, same responses, same run

Maths: every gold of data/eval/{aime24,amc23,math500,olympiadbench}.jsonl (grading.answer_from_record) against two
long-CoT-shaped responses (about 3k characters of reasoning in Sky-T1 markup, then \\boxed{...}): one right (the gold,
half of them in an equivalent form: decimal for fractions, swapped order for multi-answer golds) and one wrong (another
item's gold). Each is graded with grading.grade_math (extraction + math_equal, the symbolic fallback included), on one
process, then on a process pool with one worker per core. Agreement with the intended verdict is reported too, so a
fast but wrong grader does not look good. With --baseline REV [REV ...], grading.py as committed at each REV (imported
from a temporary copy with its answer extraction, bench/grader_agreement.load_grading) grades the same responses right
after, in the same run.
Code: LiveCodeBench problems of data/eval/livecodebench.jsonl with their real public tests (stdin and functional), each
run by sandbox.run_tests against a trivially correct program: one that looks the expected output up from the test
input. It measures the sandbox's cost per test (process start, isolation, per-test fork, comparison), not the cost
of running real solutions. Sequential (per core), then a pool with one worker per core.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import json
import os
import random
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from fractions import Fraction

from common import (
    add_common_args,
    machine_info,
    machine_line,
    markdown_table,
    sample_records,
    save_results,
    sky_t1_response,
)

import utils

MATH_BENCHMARKS = ("aime24", "amc23", "math500", "olympiadbench")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--math-items", type=int, default=0, help="golds to use (0 = all 1245)")
    p.add_argument(
        "--code-problems", type=int, default=120, help="LiveCodeBench problems to run (each has 1-6 public tests)"
    )
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="pool size for the parallel rows")
    p.add_argument("--reasoning-chars", type=int, default=3000, help="length of the reasoning before the final answer")
    p.add_argument("--seed", type=int, default=0, help="response text and the choice of wrong answers")
    p.add_argument(
        "--baseline",
        nargs="+",
        default=["none"],
        help="git revisions whose grading.py is timed on the same responses (e.g. HEAD)",
    )
    add_common_args(p)
    args = p.parse_args(argv)
    if args.quick:
        args.math_items, args.code_problems, args.reasoning_chars = 12, 3, 500
    return args


# ----------------------------------------------------------------------------- maths


def equivalent_form(gold: str) -> str:
    """The same answer written differently, where a simple rewrite exists: what a grader must still accept."""
    try:
        value = Fraction(gold.replace(" ", ""))
        return f"{float(value):g}" if value.denominator in (2, 4, 5, 8, 10, 20, 25) else gold
    except (ValueError, ZeroDivisionError):
        pass
    frac = gold.replace("\\dfrac", "\\frac")
    if frac.startswith("\\frac{") and frac.count("{") == 2 and frac.endswith("}"):
        num, den = frac[len("\\frac{") : -1].split("}{")
        if num.lstrip("-").isdigit() and den.isdigit():
            return f"{int(num) / int(den):g}" if int(den) in (2, 4, 5, 8, 10) else f"{num}/{den}"
    return gold


def as_text(gold) -> str:
    """A gold answer as a response would state it: multi-answer golds comma-separated."""
    return ", ".join(gold) if isinstance(gold, list) else gold


def math_cases(args: argparse.Namespace) -> list[tuple[str, object, bool]]:
    """(response, gold, should_be_correct) pairs: each gold once right, once wrong."""
    import grading

    rng = random.Random(args.seed)
    golds = []
    for name in MATH_BENCHMARKS:
        golds += [grading.answer_from_record(r) for r in utils.read_jsonl(utils.DATA_DIR / "eval" / f"{name}.jsonl")]
    if args.math_items:
        golds = rng.sample(golds, args.math_items)
    pieces = [r["response"] for r in sample_records()]
    cases = []
    for i, gold in enumerate(golds):
        right = as_text(gold)
        if i % 2:
            right = ", ".join(reversed(gold)) if isinstance(gold, list) else equivalent_form(gold)
        wrong = as_text(golds[(i + 1 + rng.randrange(len(golds) - 1)) % len(golds)])
        for answer, correct in ((right, True), (wrong, False)):
            if not correct and wrong == as_text(gold):
                continue
            cases.append((sky_t1_response(rng, pieces, args.reasoning_chars, answer), gold, correct))
    return cases


def grade_one(case, grader: str = "grading") -> bool:
    response, gold, _ = case
    return importlib.import_module(grader).grade_math(response, gold)["correct"]


def time_math(cases, workers: int, grader: str = "grading") -> dict:
    grade = functools.partial(grade_one, grader=grader)  # a baseline copy is in sys.modules: forked workers see it
    importlib.import_module(grader).math_equal("1", "1")  # the sympy helper's start is not part of the time
    t0 = time.perf_counter()
    if workers == 1:
        verdicts = [grade(c) for c in cases]
    else:
        with ProcessPoolExecutor(workers) as pool:
            verdicts = list(pool.map(grade, cases, chunksize=8))
    seconds = time.perf_counter() - t0
    agree = sum(v == c[2] for v, c in zip(verdicts, cases)) / len(cases)
    return {
        "task": "math",
        "grader": grader,
        "workers": workers,
        "items": len(cases),
        "seconds": seconds,
        "per_s": len(cases) / seconds,
        "agreement": agree,
    }


# ----------------------------------------------------------------------------- code


def oracle_program(problem: dict) -> str:
    """A correct-by-construction program for the problem's tests: it maps each test input to its expected output."""
    tests = problem["tests"]
    if tests[0]["testtype"] == "stdin":
        table = {t["input"].strip(): t["output"] for t in tests}
        return f"import sys\nANSWERS = {table!r}\nprint(ANSWERS[sys.stdin.read().strip()], end='')\n"
    import sandbox

    table = {}
    for t in tests:
        call_args = [json.loads(line) for line in t["input"].split("\n") if line.strip()]
        table[json.dumps(call_args, sort_keys=True)] = json.loads(t["output"])
    return (
        f"import json\nANSWERS = json.loads({json.dumps(json.dumps(table))})\n"
        f"class Solution:\n    def {sandbox.method_name(problem['starter_code'])}(self, *args):\n"
        f"        return ANSWERS[json.dumps(list(args), sort_keys=True)]\n"
    )


def run_one_problem(problem: dict) -> tuple[int, int]:
    import sandbox

    results = sandbox.run_tests(oracle_program(problem), problem["tests"], problem["starter_code"])
    return sum(r["passed"] for r in results), len(results)


def time_code(problems: list[dict], workers: int) -> dict:
    t0 = time.perf_counter()
    if workers == 1:
        outcomes = [run_one_problem(p) for p in problems]
    else:
        with ProcessPoolExecutor(workers) as pool:
            outcomes = list(pool.map(run_one_problem, problems))
    seconds = time.perf_counter() - t0
    passed, total = sum(p for p, _ in outcomes), sum(n for _, n in outcomes)
    return {
        "task": "code tests",
        "workers": workers,
        "items": total,
        "seconds": seconds,
        "per_s": total / seconds,
        "agreement": passed / total,
        "problems_per_s": len(problems) / seconds,
    }


def main(args: argparse.Namespace) -> dict:
    import sandbox

    machine = machine_info()
    machine["sandbox_isolation"] = sandbox.isolation_mode()
    cases = math_cases(args)
    problems = utils.read_jsonl(utils.DATA_DIR / "eval" / "livecodebench.jsonl")
    problems = [p for p in problems if p["tests"]]
    problems = random.Random(args.seed).sample(problems, min(args.code_problems, len(problems)))
    graders = ["grading"]
    if args.baseline != ["none"]:
        from grader_agreement import load_grading

        for revision in args.baseline:
            baseline = load_grading(revision)
            sys.modules[baseline.__name__] = baseline
            graders.append(baseline.__name__)
    rows = []
    for workers in (1, args.workers):
        for grader in graders:
            print(f"maths: {len(cases)} responses, {grader}, {workers} process(es) ...", flush=True)
            rows.append(time_math(cases, workers, grader))
            print("  ", rows[-1], flush=True)
    for workers in (1, args.workers):
        print(f"code: {len(problems)} problems, {workers} process(es) ...", flush=True)
        rows.append(time_code(problems, workers))
        print("  ", rows[-1], flush=True)
    columns = ["task", "grader", "workers", "items", "seconds", "per_s", "agreement", "problems_per_s"]
    table = markdown_table(rows, columns)
    print("\n" + table)
    notes = (
        f"maths: {len(cases)} graded responses (each gold right + wrong, ~{args.reasoning_chars} chars of reasoning "
        "each), grading.grade_math; agreement = share of verdicts equal to the intended one. "
        f"code: {len(problems)} LiveCodeBench problems, their public tests, a lookup program that passes them; "
        f"agreement = share of tests passed; sandbox isolation '{machine['sandbox_isolation']}'. "
        "workers > 1 = ProcessPoolExecutor. grader: grading = this working tree"
        + "".join(f", {name} = grading.py at {name.split('_', 1)[1]}" for name in graders[1:])
        + (", same responses, right after." if len(graders) > 1 else ".")
    )
    markdown = f"{machine_line(machine)}\n\n`python bench/scoring.py`: {notes}\n\n{table}\n"
    payload = {"benchmark": "scoring", "machine": machine, "config": vars(args), "rows": rows}
    save_results(args, "scoring", "4. Scoring throughput", payload, markdown)
    return payload


if __name__ == "__main__":
    main(parse_args(sys.argv[1:]))
