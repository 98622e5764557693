r"""Benchmark 7: agreement of grading.grade_math with the expected verdicts of public math graders' own test suites.

    python bench/grader_agreement.py                    # all cases: the committed grader (git HEAD) and this one
    python bench/grader_agreement.py --quick            # smoke test: 40 cases
    python bench/grader_agreement.py --baseline none    # this grader only

Cases: bench/data/grader_suites.jsonl, the (prediction, gold, expected verdict) cases of Math-Verify's tests
(huggingface/Math-Verify, Apache-2.0) and of lm-evaluation-harness's math answer-check tests (EleutherAI, MIT; open
pull requests), with repository, commit, path and test of each; bench/data/build_grader_suites.py rebuilt it and says
how. Each prediction is graded as a whole model response against its gold with grade_math, by the grader of
--baseline (default: grading.py as committed in git HEAD, imported from a temporary copy) and by the working tree's
grading.py, in one run. As a reference, Math-Verify's parse/verify is also run on the raw texts (default options).
Agreement = share of verdicts equal to the expected one, per source and overall, on all cases and on the consistent
ones (the suite's grader with its default options: a few cases assert a verdict under precision=2, strict=False or
allow_set_relation_comp=True). DELIBERATE lists the cases where this grader disagrees with a suite on purpose.
"""

from __future__ import annotations

import argparse
import atexit
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import REPO_DIR, add_common_args, machine_info, machine_line, markdown_table, save_results

SUITES = REPO_DIR / "bench" / "data" / "grader_suites.jsonl"
DECIMAL_COMMA = "a comma between digits separates list items or groups thousands, never decimals (English benchmarks)"
NO_LAST_NUMBER = "no last-number fallback: the value right after 'is' is the answer, or none is stated"
DELIBERATE = {  # case id -> why this grader disagrees with the suite's expected verdict on purpose
    "math-verify/test_all.py:70": DECIMAL_COMMA,
    "math-verify/test_all.py:71": DECIMAL_COMMA,
    "math-verify/test_all.py:72": DECIMAL_COMMA,
    "math-verify/test_all.py:87": DECIMAL_COMMA,
    "math-verify/test_all.py:85": NO_LAST_NUMBER,
    "math-verify/test_all.py:86": NO_LAST_NUMBER,
    "math-verify/test_all.py:132": "a formula broken across lines inside $..$ is still that formula",
    "math-verify/test_all.py:133": r"a formula broken across lines inside \(..\) is still that formula",
    "math-verify/test_all.py:452": "gold '1 = \\zzz = x = 0' starts with a number: an equation, not 'name = 0'",
    "math-verify/test_all.py:810": "the box the prompt asks for wins over a later 'final answer is' phrase",
    "math-verify/test_all.py:907": "an inequality and its interval are the same answer, whichever is the gold",
    "lm-eval/pr4032:test_symbolic_removals_unaffected:26": "'{,}1,2' is the list 1, 2: a comma groups only 3 digits",
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--suites", default=str(SUITES), help="JSONL of cases (id, source, prediction, gold, expected)")
    p.add_argument(
        "--baseline", default="HEAD", help="git revision whose grading.py is measured alongside ('none' = skip)"
    )
    p.add_argument("--timeout", type=float, default=5.0, help="seconds per symbolic comparison (grade_math's default)")
    p.add_argument("--limit", type=int, default=0, help="grade only the first N cases (0 = all)")
    add_common_args(p)
    args = p.parse_args(argv)
    if args.quick:
        args.limit = args.limit or 40
    return args


def load_grading(revision: str):
    """grading.py as committed at `revision`, imported as its own module from a temporary copy. Its sympy helper
    process imports that copy too, and finds markup.py through PYTHONPATH."""
    source = subprocess.run(
        ["git", "-C", str(REPO_DIR), "show", f"{revision}:grading.py"], check=True, capture_output=True, text=True
    ).stdout
    folder = Path(tempfile.mkdtemp(prefix=f"grading-{revision.replace('/', '_')}-"))
    atexit.register(shutil.rmtree, folder, True)
    (folder / "grading.py").write_text(source, encoding="utf-8")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_DIR), os.environ.get("PYTHONPATH")]))
    spec = importlib.util.spec_from_file_location(f"grading_{revision.replace('/', '_')}", folder / "grading.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def math_verify_verdict(case: dict) -> bool:
    """Math-Verify on the raw texts with its default options: the suites' own grader, as a reference."""
    from math_verify import parse, verify

    try:
        return bool(verify(parse(case["gold_text"]), parse(case["prediction"])))
    except Exception:  # a crash is a wrong verdict, as in a harness
        return False


def cell(value) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def grade_all(grade, cases: list[dict]) -> tuple[list[bool], float]:
    start = time.perf_counter()
    verdicts = [grade(case) for case in cases]
    return verdicts, time.perf_counter() - start


def agreement_rows(cases: list[dict], verdicts: dict[str, list[bool]]) -> list[dict]:
    rows = []
    for source in sorted({c["source"] for c in cases}) + ["all"]:
        for subset in ("all", "consistent"):
            picked = [
                i
                for i, c in enumerate(cases)
                if source in ("all", c["source"]) and (subset == "all" or c["consistent"])
            ]
            row = {"source": source, "cases": subset, "n": len(picked)}
            for grader, got in verdicts.items():
                row[grader] = sum(got[i] == cases[i]["expected"] for i in picked) / max(1, len(picked))
            rows.append(row)
    return rows


def main(args: argparse.Namespace) -> dict:
    import grading

    machine = machine_info()
    with open(args.suites, encoding="utf-8") as f:
        cases = [json.loads(line) for line in f]
    cases = cases[: args.limit] if args.limit else cases
    graders = {"this": grading}
    if args.baseline != "none":
        graders = {f"committed ({args.baseline})": load_grading(args.baseline), **graders}
    verdicts, seconds = {}, {}
    for name, module in graders.items():
        module.math_equal("1", "1")  # the sympy helper's start is not part of the time
        print(f"{name}: {len(cases)} cases ...", flush=True)
        verdicts[name], seconds[name] = grade_all(
            lambda c, m=module: m.grade_math(c["prediction"], c["gold"], timeout=args.timeout)["correct"], cases
        )
    verdicts["math-verify parse/verify"], seconds["math-verify parse/verify"] = grade_all(math_verify_verdict, cases)
    rows = agreement_rows(cases, verdicts)
    disagreements = [
        {
            "id": c["id"],
            "expected": c["expected"],
            "consistent": c["consistent"],
            "inconsistent_because": c.get("inconsistent_because"),
            "deliberate": DELIBERATE.get(c["id"]),
            "gold": c["gold"],
            "extracted": grading.extract_answer(c["prediction"]),
            "prediction": c["prediction"] if len(c["prediction"]) <= 160 else "..." + c["prediction"][-150:],
        }
        for c, got in zip(cases, verdicts["this"])
        if got != c["expected"]
    ]
    table = markdown_table(rows, ["source", "cases", "n", *verdicts])
    print("\n" + table)
    consistent_misses = [d for d in disagreements if d["consistent"]]
    undeclared = [d["id"] for d in consistent_misses if not d["deliberate"]]
    print(f"\nthis grader disagrees on {len(disagreements)} cases ({len(consistent_misses)} consistent, of which "
          f"{len(consistent_misses) - len(undeclared)} on purpose); not on purpose: {undeclared}")  # fmt: skip
    miss_lines = "\n".join(
        f"| `{d['id']}` | {'yes' if d['expected'] else 'no'} | `{cell(d['gold'])}` | `{cell(d['extracted'])}` | "
        f"{d['deliberate'] or d['inconsistent_because'] or 'not on purpose'} |"
        for d in disagreements
    )
    notes = (
        f"{len(cases)} cases of {os.path.relpath(args.suites, REPO_DIR)}; agreement = share of grade_math verdicts "
        "equal to the suite's expected one; 'consistent' = verdicts asserted under the suite grader's default options "
        "(and not against mathematics); seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in seconds.items()) + "."
    )
    markdown = (
        f"{machine_line(machine)}\n\n`python bench/grader_agreement.py`: {notes}\n\n{table}\n\n"
        f"Cases where this grader's verdict differs from the suite's:\n\n"
        f"| case | expected equal | gold | extracted | why |\n|---|---|---|---|---|\n{miss_lines}\n"
    )
    payload = {
        "benchmark": "grader_agreement",
        "machine": machine,
        "config": vars(args),
        "rows": rows,
        "seconds": seconds,
        "disagreements": disagreements,
    }
    save_results(args, "grader_agreement", "7. Grader agreement with public test suites", payload, markdown)
    return payload


if __name__ == "__main__":
    main(parse_args(sys.argv[1:]))
