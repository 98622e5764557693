r"""Benchmark 7: agreement of grading.grade_math with the expected verdicts of public math graders' own test suites.

    python bench/grader_agreement.py                    # all cases: the committed grader (git HEAD) and this one
    python bench/grader_agreement.py --quick            # smoke test: 40 cases
    python bench/grader_agreement.py --baseline none    # this grader only
    python bench/grader_agreement.py --baseline 83e1c7b 3ae5eb5 --responses a.jsonl --variants b.jsonl  # and responses

Cases: bench/data/grader_suites.jsonl, the (prediction, gold, expected verdict) cases of Math-Verify's tests
(huggingface/Math-Verify, Apache-2.0) and of lm-evaluation-harness's math answer-check tests (EleutherAI, MIT; open pull
requests), with repository, commit, path and test of each; bench/data/build_grader_suites.py rebuilt it and says how.
Each prediction is graded as a whole model response against its gold with grade_math, by the grader of --baseline
(default: grading.py as committed in git HEAD, imported from a temporary copy; several revisions may be given) and by
the working tree's grading.py, in one run; what changed is counted against the last baseline. As a reference,
Math-Verify's parse/verify is also run on the raw texts (default options). Agreement = share of verdicts equal to the
expected one, per source and overall, on all cases and on the consistent ones (the suite's grader with its default
options: a few cases assert a verdict under precision=2, strict=False or allow_set_relation_comp=True). DELIBERATE lists
the cases where this grader disagrees with a suite on purpose.
With --responses, files of whole model responses (JSONL: response, gold or answer, optionally finish_reason and a
reference verdict `correct`) are graded by every grader too: per file, how many have an answer, how many are right, and
every response whose extraction or verdict changed from the last baseline to this one, so a change of the extraction
rules shows what it does on real responses. Files given to --variants are graded so too, and two variants of each of
their responses as well: its boxes written out (\boxed{X} -> X: the same answers in prose) and cut at random points (as
a token limit cuts them, the finish reason lost: an answer found there is a draft, right only by luck).
"""

from __future__ import annotations

import argparse
import atexit
import importlib.util
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import REPO_DIR, add_common_args, machine_info, machine_line, markdown_table, repo_path, save_results

SUITES = REPO_DIR / "bench" / "data" / "grader_suites.jsonl"
CUTS = 4  # --variants: random cuts per response, in its last three quarters
GRADER_MODULES = ("grading", "answer_extraction")  # a baseline grader, all at its revision (markup.py: this tree's)
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
    "math-verify/test_all.py:651": "more working after the box, cut off mid-sentence ('... In this'): a draft",
    "math-verify/test_all.py:810": "the box the prompt asks for wins over a later 'final answer is' phrase",
    "math-verify/test_all.py:907": "an inequality and its interval are the same answer, whichever is the gold",
    "lm-eval/pr4032:test_symbolic_removals_unaffected:26": "'{,}1,2' is the list 1, 2: a comma groups only 3 digits",
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--suites", default=str(SUITES), help="JSONL of cases (id, source, prediction, gold, expected)")
    p.add_argument(
        "--baseline",
        nargs="+",
        default=["HEAD"],
        help="git revisions whose grading.py is measured alongside, the last one compared case by case ('none' = skip)",
    )
    p.add_argument(
        "--variants",
        nargs="*",
        default=[],
        help=f"response files graded as --responses and also with boxes written out and cut at {CUTS} random points",
    )
    p.add_argument("--timeout", type=float, default=5.0, help="seconds per symbolic comparison (grade_math's default)")
    p.add_argument("--limit", type=int, default=0, help="grade only the first N cases (0 = all)")
    p.add_argument(
        "--responses",
        nargs="*",
        default=[],
        help="JSONL files of whole responses (response, gold|answer, finish_reason?, correct?) graded by both graders",
    )
    add_common_args(p)
    args = p.parse_args(argv)
    if args.quick:
        args.limit = args.limit or 40
    return args


def load_grading(revision: str):
    """grading.py as committed at `revision`, imported as its own module from a temporary copy, with the answer
    extraction of that revision (GRADER_MODULES): the working tree's must not leak into it. Its sympy helper process
    imports that copy too (it puts the copy's folder first on its path), and finds markup.py through PYTHONPATH."""
    folder = Path(tempfile.mkdtemp(prefix=f"grading-{revision.replace('/', '_')}-"))
    atexit.register(shutil.rmtree, folder, True)
    for name in GRADER_MODULES:
        shown = subprocess.run(
            ["git", "-C", str(REPO_DIR), "show", f"{revision}:{name}.py"], capture_output=True, text=True
        )
        if shown.returncode == 0:  # a revision before a module was split out of grading.py does not have it
            (folder / f"{name}.py").write_text(shown.stdout, encoding="utf-8")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_DIR), os.environ.get("PYTHONPATH")]))
    # The copy's own imports must find the revision's modules: put its folder first and hide the loaded ones meanwhile.
    saved = {name: sys.modules.pop(name) for name in GRADER_MODULES if name in sys.modules}
    sys.path.insert(0, str(folder))
    try:
        spec = importlib.util.spec_from_file_location(f"grading_{revision.replace('/', '_')}", folder / "grading.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(folder))
        for name in GRADER_MODULES:
            sys.modules.pop(name, None)
        sys.modules.update(saved)
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


def read_responses(path: str) -> list[dict]:
    """Real responses as (response, gold, finish_reason, reference verdict or None)."""
    with open(path, encoding="utf-8") as f:
        records = [json.loads(line) for line in f if line.strip()]
    return [
        {
            "response": r["response"],
            "gold": r["gold"] if "gold" in r else r["answer"],
            "finish_reason": r.get("finish_reason"),
            "reference": None if r.get("correct") is None else str(r["correct"]).lower() == "true",
        }
        for r in records
    ]


def response_variants(responses: list[dict], seed: int = 0) -> dict[str, list[dict]]:
    """The responses as written, with every box written out (\\boxed{X} -> X), and cut at CUTS random points each."""
    from answer_extraction import all_boxes

    rng = random.Random(seed)
    written_out, cut = [], []
    for r in responses:
        text, pieces, last = r["response"], [], 0
        for start, end, content in all_boxes(text):
            if start >= last:  # a box inside a box goes with the outer one
                pieces += [text[last:start], content]
                last = end
        written_out.append({**r, "response": "".join(pieces) + text[last:]})
        for _ in range(CUTS):
            end = rng.randrange(len(text) // 4, len(text))
            cut.append({**r, "response": text[:end], "finish_reason": None, "reference": None})
    return {"as written": responses, "boxes written out": written_out, "cut at random": cut}


def grade_responses(graders: dict, responses: list[dict], timeout: float) -> tuple[list[dict], list[dict]]:
    """Per grader: answers found, right, agreement with the reference verdict; and every response whose extraction or
    verdict differs between the last two graders (the last baseline and this one)."""
    results = {
        name: [m.grade_math(r["response"], r["gold"], timeout, finish_reason=r["finish_reason"]) for r in responses]
        for name, m in graders.items()
    }
    rows = []
    for name, got in results.items():
        row = {"grader": name, "n": len(got), "answer found": sum(g["extracted"] is not None for g in got)}
        row["correct"] = sum(g["correct"] for g in got)
        referenced = [(g, r) for g, r in zip(got, responses) if r["reference"] is not None]
        if referenced:
            row["agrees with reference"] = sum(g["correct"] == r["reference"] for g, r in referenced) / len(referenced)
        rows.append(row)
    first, last = list(results.values())[-2:] if len(results) > 1 else list(results.values()) * 2
    changed = [
        {
            "line": i + 1,
            "gold": r["gold"],
            "before": before,
            "after": after,
            "ending": "..." + " ".join(r["response"].split())[-110:],
        }
        for i, (r, before, after) in enumerate(zip(responses, first, last))
        if before != after
    ]
    return rows, changed


def main(args: argparse.Namespace) -> dict:
    import grading

    machine = machine_info()
    with open(args.suites, encoding="utf-8") as f:
        cases = [json.loads(line) for line in f]
    cases = cases[: args.limit] if args.limit else cases
    graders = {"this": grading}
    if args.baseline != ["none"]:
        graders = {**{f"committed ({rev})": load_grading(rev) for rev in args.baseline}, **graders}
    verdicts, seconds = {}, {}
    for name, module in graders.items():
        module.math_equal("1", "1")  # the sympy helper's start is not part of the time
        print(f"{name}: {len(cases)} cases ...", flush=True)
        verdicts[name], seconds[name] = grade_all(
            lambda c, m=module: m.grade_math(c["prediction"], c["gold"], timeout=args.timeout)["correct"], cases
        )
    verdicts["math-verify parse/verify"], seconds["math-verify parse/verify"] = grade_all(math_verify_verdict, cases)
    rows = agreement_rows(cases, verdicts)
    first = list(graders)[-2] if len(graders) > 1 else "this"  # the last baseline
    changed_cases = [  # the suite cases whose verdict the baseline and this grader give differently
        {"id": c["id"], "expected": c["expected"], "before": graders[first].extract_answer(c["prediction"])}
        | {"after": grading.extract_answer(c["prediction"]), "now_agrees": now == c["expected"]}
        for c, was, now in zip(cases, verdicts[first], verdicts["this"])
        if was != now
    ]
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
        f"{len(cases)} cases of {repo_path(args.suites)}; agreement = share of grade_math verdicts "
        "equal to the suite's expected one; 'consistent' = verdicts asserted under the suite grader's default options "
        "(and not against mathematics); seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in seconds.items()) + "."
    )
    command = "python bench/grader_agreement.py" + (
        f" --baseline {' '.join(args.baseline)}" if args.baseline != ["HEAD"] else ""
    )
    if len(graders) > 1:
        changes = "; ".join(
            f"`{c['id']}`: `{cell(c['before'])}` -> `{cell(c['after'])}` ({'now' if c['now_agrees'] else 'no longer'} "
            "as expected)"
            for c in changed_cases
        )
        notes += f" Verdicts that changed between {first} and this: {len(changed_cases)}" + (
            f": {changes}." if changes else "."
        )
    markdown = (
        f"{machine_line(machine)}\n\n`{command}`: {notes}\n\n{table}\n\n"
        f"Cases where this grader's verdict differs from the suite's:\n\n"
        f"| case | expected equal | gold | extracted | why |\n|---|---|---|---|---|\n{miss_lines}\n"
    )
    response_rows, changed_responses = [], []
    for path in args.responses + args.variants:
        responses = read_responses(path)
        sets = response_variants(responses) if path in args.variants else {"as written": responses}
        for variant, items in sets.items():
            rows_here, changed_here = grade_responses(graders, items, args.timeout)
            file = os.path.basename(path)
            response_rows += [{"file": file, "variant": variant, **row} for row in rows_here]
            response_rows[-1]["changed"] = len(changed_here)
            if variant == "as written":
                changed_responses += [{"file": file, **change} for change in changed_here]
    if response_rows:
        columns = ["file", "variant", "grader", "n", "answer found", "correct", "agrees with reference", "changed"]
        response_table = markdown_table(response_rows, columns)
        print("\n" + response_table)
        change_lines = "\n".join(
            f"| {c['file']}:{c['line']} | `{cell(c['gold'])}` | `{cell(c['before']['extracted'])}` "
            f"{'right' if c['before']['correct'] else 'wrong'} | `{cell(c['after']['extracted'])}` "
            f"{'right' if c['after']['correct'] else 'wrong'} | {cell(c['ending'])} |"
            for c in changed_responses
        )
        given = [
            f"--{k} " + " ".join(map(os.path.basename, v))
            for k, v in (("responses", args.responses), ("variants", args.variants))
            if v
        ]
        markdown += (
            f"\nWhole responses, `{' '.join(given)}`: each graded by grade_math (with its finish_reason when the file "
            "has one); 'agrees with reference' = share of verdicts equal to the file's own; 'changed' = responses "
            "whose extraction or verdict this grader changed from the last baseline; variants (--variants files): "
            f"boxes written out, cut at {CUTS} random points each.\n\n{response_table}\n\n"
            f"Responses as written whose extraction or verdict changed ({len(changed_responses)}):\n\n"
            f"| file:line | gold | before | after | how the response ends |\n|---|---|---|---|---|\n{change_lines}\n"
        )
    payload = {
        "benchmark": "grader_agreement",
        "machine": machine,
        "config": vars(args),
        "rows": rows,
        "seconds": seconds,
        "disagreements": disagreements,
        "changed_cases": changed_cases,
        "response_rows": response_rows,
        "changed_responses": changed_responses,
    }
    save_results(args, "grader_agreement", "7. Grader agreement with public test suites", payload, markdown)
    return payload


if __name__ == "__main__":
    main(parse_args(sys.argv[1:]))
