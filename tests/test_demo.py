"""The synthetic task (synthetic.py), the miniature (demo.py, demo_report.py) and the README's first command."""

import ast
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

import demo
import demo_report
import markup
import reasoning_steps
import synthetic
import task_results
import train_full
import train_lora

REPO = demo.utils.REPO_DIR
HELD_OUT = demo.utils.DATA_DIR / "sample" / "synthetic_heldout.jsonl"
PROGRESS_BAR = re.compile(r"\|\s*\d+/\d+ \[")  # tqdm's "| 12/500 [" (the per-step lines are not counted either)


def thought_steps(record: dict) -> list[str]:
    parts = markup.split_thought(record["messages"][-1]["content"])
    assert parts.markup == "sky-t1"
    return reasoning_steps.split_steps(parts.thought, synthetic.STEP_MIN_CHARS)[0]


def evaluate_expression(problem: str) -> int:
    """Recompute an answer independently of the generator: parse the expression with Python's own parser."""
    expression = re.fullmatch(r"Evaluate (.+)\.", problem).group(1)
    return eval(compile(ast.parse(expression, mode="eval"), "<problem>", "eval"), {"__builtins__": {}})


def problem_of(record: dict) -> str:
    return re.search(r"Evaluate [^.]+\.", record["messages"][-2]["content"]).group(0)


@pytest.fixture(scope="module")
def records():
    return synthetic.generate(300, seed=1)


def test_answers_are_right_and_stated_in_boxed(records):
    for r in records:
        assert r["answer"] == str(evaluate_expression(problem_of(r)))
        assert r["messages"][-1]["content"].count("\\boxed{") == 1
        assert f"\\boxed{{{r['answer']}}}" in r["messages"][-1]["content"]


def test_every_arithmetic_fact_in_a_correct_trace_is_true_except_slips_that_are_caught(records):
    """A slip is caught at once ("Wait" in the next step) or, if it went unnoticed, by the final verification, which
    names it; either way the trace ends on the true value."""
    caught_late = 0
    for r in records:
        steps = thought_steps(r)
        for i, step in enumerate(steps):
            if step.startswith("Let me verify") or step.startswith("Wait, the first computation"):
                continue
            for a, op, b, result in re.findall(r"(\d+) ([-+*]) (\d+) = (\d+)", step):
                true = synthetic.OPS[op](int(a), int(b))
                if int(result) == true:
                    continue
                if steps[i + 1].startswith("Wait, that is not right"):
                    assert f"is {true}, not {result}" in steps[i + 1]
                else:
                    assert f"Wait, the first computation has a slip: {a} {op} {b} is {true}, not {result}." in steps[-1]
                    caught_late += 1
        verification = next(s for s in steps if s.startswith("Let me verify by computing it again"))
        for a, op, b, result in re.findall(r"(\d+) ([-+*]) (\d+) = (\d+)", verification):
            assert synthetic.OPS[op](int(a), int(b)) == int(result)
    assert caught_late > 0  # the default miss rate makes some


def test_a_missed_slip_is_caught_by_the_verification_and_repaired():
    repaired = 0
    for r in synthetic.generate(50, seed=2, miss_rate=1.0):
        steps = thought_steps(r)
        if "This also gives" in steps[-1]:  # the slip was absorbed (e.g. a factor 0 follows): nothing to repair
            continue
        assert steps[-1].startswith("Wait, the first computation has a slip")
        assert steps[-1].endswith(f"So the answer is {r['answer']}.")
        assert f"This gives {r['answer']}, not " in steps[-2]
        repaired += 1
    assert repaired >= 40


def test_the_catching_teacher_makes_the_students_slips_and_a_check_catches_each():
    """Issue 28's teacher: the slips the SFT student makes (a problem copied wrong, another operation taken, a wrong
    fact, a verification gone astray) each followed by a check that finds it, and still the true answer."""
    seen = dict.fromkeys(["copy", "operation", "fact", "verification"], 0)
    for r in synthetic.generate(300, seed=1, teacher="catching", miss_rate=0.0):
        steps, problem = thought_steps(r), problem_of(r)[len("Evaluate ") : -1]
        assert r["answer"] == str(evaluate_expression(problem_of(r)))
        assert f"\\boxed{{{r['answer']}}}" in r["messages"][-1]["content"]
        if problem not in steps[0]:
            assert steps[1].endswith(f"it is {problem}, not {steps[0][20:].split(',')[0]}. Fixing it, we need to "
                                     f"evaluate {problem}.")  # fmt: skip
            seen["copy"] += 1
        for i, step in enumerate(steps[:-1]):
            fact = re.fullmatch(r"[A-Z][a-z ]+, (\d+) ([-+*]) (\d+) = (\d+)\.", step)
            if fact is None or step.startswith("Let me"):
                continue
            a, op, b, result = fact.groups()
            if int(result) != synthetic.OPS[op](int(a), int(b)):  # a wrong fact: the check after it fails
                assert steps[i + 1].startswith("Let me check that step") and "Wait, that is not right" in steps[i + 1]
                assert f"is {synthetic.OPS[op](int(a), int(b))}, not {result}. Fixing it" in steps[i + 1]
                seen["fact"] += 1
            elif steps[i + 1].startswith("Let me check that step against the problem."):  # another operation taken
                after, right_op, right_digit = re.search(r"after (\d+) it has (\S) (\d+), not ", steps[i + 1]).groups()
                assert re.search(rf"{after}\)* {re.escape(right_op)} {right_digit}\b", problem)  # what the problem has
                assert f"not {op} {b}. Fixing it, {a} {right_op} {right_digit} = " in steps[i + 1]  # names the slip
                seen["operation"] += 1
        if "Let me check the verification against the problem" in steps[-1]:
            assert "This gives " in steps[-2] and steps[-1].endswith(f"So the answer is {r['answer']}.")
            seen["verification"] += 1
    assert min(seen.values()) >= 10, seen  # every kind, at about TEACHER_SLIPS' rates


def test_the_undo_verification_leads_back_to_the_problem_or_names_the_slip_and_redoes_from_it():
    named = 0
    for r in synthetic.generate(200, seed=2, verification="undo"):
        steps, first_digit = thought_steps(r), re.search(r"\d", problem_of(r)).group(0)
        verification = next(s for s in steps if s.startswith("Let me verify by undoing each step from the answer: "))
        facts = re.findall(r"(\d+) ([-+*]) (\d+) = (\d+)(, not \d+)?", verification)
        assert all(synthetic.OPS[op](int(a), int(b)) == int(c) for a, op, b, c, _ in facts)  # a true inverse each
        assert not any(slip for *_, slip in facts[:-1])  # only the last can fail to lead back: the slip is named
        if steps[-1].startswith("Wait, the first computation has a slip"):
            assert facts[-1][4] and steps[-1].endswith(f"So the answer is {r['answer']}.")
            named += 1
        else:
            assert verification.endswith(f"This leads back to the start, so the answer is {r['answer']}.")
            assert facts[-1][3] == first_digit or facts[-1][1] == "*"  # undone back to the problem's first digit
    assert named > 5  # the default miss rate makes some
    with pytest.raises(ValueError, match="verification must be one of"):
        synthetic.generate(1, verification="twice")


def test_the_confirming_teacher_is_the_default_and_its_checks_always_hold(records):
    assert synthetic.generate(20, seed=1) == synthetic.generate(20, seed=1, teacher="confirming")
    checks = [s for r in records for s in thought_steps(r) if s.startswith("Let me check")]
    assert checks and all(s.endswith("holds.") for s in checks)
    with pytest.raises(ValueError, match="teacher must be one of"):
        synthetic.generate(1, teacher="lenient")


def test_the_student_writes_short_chains_of_two_operations_a_step():
    node = synthetic.Node
    inner = node(28, "*", node(4, "-", node(7), node(3)), node(7, "+", node(2), node(5)))
    expression = node(19, "-", inner, node(9))
    assert synthetic.short_solution(expression) == "((7 - 3) * (2 + 5)) - 9 = (4 * 7) - 9 = 19.\n\n\\boxed{19}"
    for e in synthetic.sample_problems(200, 0, "train", 1, 3, synthetic.MAX_VALUE):
        text = synthetic.short_solution(e)
        assert text.endswith(f"\\boxed{{{e.value}}}") and text.count(" = ") == (len(synthetic.post_order(e)) + 1) // 2
        assert not re.search(r"wait|check|verify", text, re.I)


def test_pretraining_covers_every_fact_and_checks_and_stays_off_the_held_out_problems():
    records = synthetic.pretraining_records(300, seed=0)
    users = [r["messages"][0]["content"] for r in records]
    for a, op, b in synthetic.facts(synthetic.MAX_VALUE):
        assert f"Evaluate {a} {op} {b}." in users
    assert ("Evaluate 14 - 9.", "14 - 9 = 5.\n\n\\boxed{5}") in [
        (u, r["messages"][1]["content"]) for u, r in zip(users, records)
    ]
    checks = [r["messages"][1]["content"] for r in records if r["messages"][0]["content"].startswith("Check ")]
    assert any(c.endswith("holds.") for c in checks) and any("Wait, that is not right" in c for c in checks)
    held_out = {p["problem"] for p in synthetic.task_records(300)}
    assert not held_out & set(users)
    # No long CoT before SFT: the markup's lines may be among the paragraphs to repeat, a whole thought never is.
    assert not any(re.search("<[|]begin_of_thought[|]>.+<[|]end_of_thought[|]>", m["content"], re.S) for r in records
                   for m in r["messages"])  # fmt: skip
    asked = [r["messages"][1]["content"] for r in records if r["messages"][0]["content"].endswith("step by step.")]
    assert asked and not any(re.search(r"wait|check|verify", a, re.I) for a in asked)  # a plain chain when asked


def test_wrong_answer_traces_end_on_a_wrong_answer_with_the_true_gold():
    for r in synthetic.generate(100, seed=1, wrong_answers=True):
        stated = re.search(r"\\boxed\{(\d+)\}", r["messages"][-1]["content"]).group(1)
        assert r["answer"] == str(evaluate_expression(problem_of(r))) != stated


def test_sky_t1_format_and_schema(records):
    shape = re.compile(
        r"<\|begin_of_thought\|>\n\n.+\n\n<\|end_of_thought\|>\n\n<\|begin_of_solution\|>\n\n.+\\boxed\{\d+\}"
        r"\n\n<\|end_of_solution\|>",
        re.S,
    )
    for r in records:
        assert (
            set(r) == {"id", "messages", "domain", "answer", "source"}
            and r["domain"] == "math"
            and r["source"] == "synthetic"
        )
        assert [m["role"] for m in r["messages"]] == ["system", "user", "assistant"]
        assert r["messages"][0]["content"] == markup.SKY_T1_SYSTEM_PROMPT
        assert r["messages"][1]["content"].startswith("Return your final response within \\boxed{}. Evaluate ")
        assert shape.fullmatch(r["messages"][2]["content"])
    texts = [r["messages"][2]["content"] for r in records]
    assert any("Wait, that is not right" in t for t in texts)  # a caught and fixed error
    assert any("Let me check" in t for t in texts)  # a step that checks an earlier one
    assert all("Let me verify by computing it again" in t for t in texts)  # the final verification
    assert len({r["id"] for r in records}) == len(records)


def test_steps_are_the_blank_line_paragraphs_perturb_splits_on(records):
    for r in records:
        thought = markup.split_thought(r["messages"][2]["content"]).thought
        paragraphs = thought.split("\n\n")
        assert all(len(p) > synthetic.STEP_MIN_CHARS for p in paragraphs)
        assert thought_steps(r) == paragraphs  # nothing merged: every paragraph is one step
        assert len(paragraphs) >= 4  # intro, at least two operations, final verification


def test_train_and_test_are_disjoint_and_deterministic():
    train = {problem_of(r) for r in synthetic.generate(2000, seed=0)}
    test = {t["problem"] for t in synthetic.task_records(400, seed=0)}
    assert len(train) == 2000 and len(test) == 400
    assert not train & test
    assert all(synthetic.split_of(p) == "test" for p in test)
    assert synthetic.generate(20, seed=0) == synthetic.generate(20, seed=0)
    assert synthetic.generate(20, seed=0) != synthetic.generate(20, seed=1)


def test_task_file_cli_writes_what_evaluate_loads(tmp_path):
    out = tmp_path / "test.jsonl"
    subprocess.run(
        [
            sys.executable,
            str(REPO / "synthetic.py"),
            "--output",
            str(out),
            "--size",
            "30",
            "--split",
            "test",
            "--task-file",
            "--max-value",
            "30",
        ],
        check=True,
        cwd=REPO,
        capture_output=True,
    )
    name, problems = demo.evaluate.load_task(str(out))
    assert name == "test" and len(problems) == 30
    assert all(p["kind"] == "math" and p["answer"] == str(evaluate_expression(p["problem"])) for p in problems)
    assert all(0 <= int(p["answer"]) <= 30 for p in problems)


def test_lora_demo_lifts_the_student_beyond_its_own_accuracy_and_the_majority_answer_quietly(tmp_path):
    """The README's first command, as a test that can fail (~3-5 min on 2 cores), run as a user runs it: LoRA SFT of
    the pretrained student on the bundled teacher traces must raise held-out accuracy on 200 problems above the
    student's own before SFT and above always answering the commonest answer, each by more than the 95% interval, and
    say so in few lines, with no warning. An inverted loss mask makes it fail (0.0% after SFT); positions that run on
    across packed samples do not (27.5% vs 37.5%: RoPE is relative), so packing is guarded by test_sft.py
    (docs/findings.md, "What the CI test catches")."""
    out = tmp_path / "lora-demo"
    cmd = [sys.executable, str(REPO / "train_lora.py"), "--demo", "--output-dir", str(out)]
    run = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stderr[-3000:]
    shown = [line for line in re.split(r"[\r\n]|\x1b\[A", run.stdout + run.stderr) if line.strip()]  # tqdm's rewrites
    shown = [line for line in shown if not re.match(r"\s*step \d+/\d+ \|", line) and not PROGRESS_BAR.search(line)]
    assert len(shown) <= 60, "\n".join(shown)
    assert not [line for line in shown if re.search(r"warn|failed|deprecat", line, re.I)], "\n".join(shown)
    result = json.loads((out / "eval" / "before_after.json").read_text())["synthetic_heldout"]
    before, after = np.array(result["before"]), np.array(result["after"])
    majority = task_results.majority_baseline([p["answer"] for p in demo.utils.read_jsonl(HELD_OUT)])
    assert len(after) == 200
    _, gain_low, _ = task_results.bootstrap(after[None, :], before[None, :])
    _, after_low, _ = task_results.bootstrap(after[None, :])
    assert gain_low > 0, f"before {before.mean():.3f}, after {after.mean():.3f}: no gain beyond the interval"
    assert after_low > majority, f"after {after.mean():.3f} (low {after_low:.3f}) vs majority {majority:.3f}"
    headline = f"{100 * before.mean():.1f}% before -> {100 * after.mean():.1f}% after"
    assert f"synthetic_heldout, 200 problems: {headline}" in run.stdout  # the one summary line
    losses = [r["loss"] for r in demo.utils.read_jsonl(out / "metrics.jsonl")]
    assert np.mean(losses[-3:]) <= 0.5 * np.mean(losses[:3])


def test_the_demo_held_out_file_is_what_synthetic_writes_for_the_test_split():
    """The trainers' --demo grades on the bundled file `synthetic.py --split test --task-file --size 200` writes."""
    assert train_lora.parse_args(["--demo"]).eval_tasks == train_full.parse_args(["--demo"]).eval_tasks == str(HELD_OUT)
    assert demo.utils.read_jsonl(HELD_OUT) == synthetic.task_records(200)


def test_demo_cli_runs_resumes_and_reports(tmp_path):
    """demo.py end to end at toy size: data, perturbation, both trainers, evaluation, the report; a rerun reads the
    finished runs back instead of training again."""
    out = tmp_path / "grid"
    cmd = [sys.executable, str(demo.utils.REPO_DIR / "demo.py"), "--output-dir", str(out), "--report-dir", str(out)]
    cmd += ["--conditions", "correct,shuffle100,lora-correct", "--train-size", "40", "--test-size", "12"]
    cmd += ["--full-steps", "3", "--lora-steps", "3", "--samples-per-step", "2", "--max-new-tokens", "60"]
    cmd += ["--jobs", "1"]
    first = subprocess.run(cmd, capture_output=True, text=True, cwd=demo.utils.REPO_DIR, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert [r["name"] for r in results["rows"]] == ["correct", "shuffle100", "lora-correct"]
    assert (out / "grid_results.md").read_text().count("\n| ") >= 4 and (out / "grid.png").stat().st_size > 10_000
    assert (out / "data" / "train_shuffle100_seed0.jsonl").exists()
    again = subprocess.run(cmd, capture_output=True, text=True, cwd=demo.utils.REPO_DIR, timeout=600)
    assert again.returncode == 0 and "step 1/" not in again.stdout + again.stderr  # nothing trained twice
    changed = subprocess.run(cmd[:-2] + ["--jobs", "1", "--full-steps", "4"], capture_output=True, text=True, cwd=out)
    assert changed.returncode != 0 and "other settings (full_steps 3 -> 4)" in changed.stderr


def test_facts_known_tells_the_shipped_student_from_a_random_one(tmp_path):
    shipped = demo_report.facts_known(REPO / "data" / "tiny-student")
    assert shipped["facts"] == 339 and shipped["known"] > 0.8 and 0.5 < shipped["mean_probability"] < 1
    random_student = demo.tiny_model.make_tiny_model(tmp_path / "random", **demo.tiny_model.STUDENT_SHAPE)
    assert demo_report.facts_known(random_student)["known"] < 0.05


def test_cost_change_pairs_four_cells_and_finds_a_smaller_cost():
    rng = np.random.default_rng(0)
    easy = rng.random(300) < 0.5
    correct = np.stack([easy | (rng.random(300) < 0.4) for _ in range(3)]).astype(float)
    weak_digits = np.stack([easy & (rng.random(300) < 0.3) for _ in range(3)]).astype(float)
    point, low, high = demo_report.cost_change((correct, correct), (weak_digits, correct))
    assert abs(point - (correct.mean() - weak_digits.mean())) < 1e-12 and 0 < low < point < high


def test_prior_sweep_pretrains_each_student_and_reports_the_digits_cost_against_it(tmp_path, monkeypatch):
    """--prior-sweep at toy size: a weaker student pretrained in place, the shipped student's runs shared with the
    grid's folder, a table row per student, and a rerun that trains nothing again."""
    monkeypatch.setattr(demo, "PRIOR_CELLS", ("correct", "digits100"))
    monkeypatch.setattr(demo.tiny_model, "STUDENT_PRETRAINING", {"short_problems": 40, "steps": 8,
                                                                 "samples_per_step": 4, "lr": 3e-3})  # fmt: skip
    out = tmp_path / "grid"
    argv = [
        "--prior-sweep",
        "--prior-scales",
        "0.25",
        "--output-dir",
        str(out),
        "--report-dir",
        str(out),
        "--train-size",
        "30",
    ]
    argv += [
        "--test-size",
        "10",
        "--full-steps",
        "2",
        "--samples-per-step",
        "2",
        "--max-new-tokens",
        "40",
        "--jobs",
        "1",
    ]
    assert demo.main(demo.parse_args(argv)) == []  # no grid cells asked for: only the sweep's report
    student = out / "prior" / "x0.25" / "student"
    assert (
        "--pretrain-scale 0.25" in (student / "MADE_BY.md").read_text()
        and "'steps': 2" in (student / "MADE_BY.md").read_text()
    )
    for where in (out, out / "prior" / "x0.25"):
        assert {p.parent.parent.name for p in where.glob("runs/*/seed0/result.json")} == {"correct", "digits100"}
    table = (out / "prior_sweep.md").read_text()
    assert "| 0.25x (2 steps) |" in table and "| 1x (8 steps) |" in table and "- digits100: " in table
    assert (out / "prior_sweep.png").stat().st_size > 10_000
    mtime = (out / "runs" / "correct" / "seed0" / "result.json").stat().st_mtime
    demo.main(demo.parse_args(argv))
    assert (out / "runs" / "correct" / "seed0" / "result.json").stat().st_mtime == mtime


def test_bootstrap_intervals_cover_the_truth_and_pair_the_problems():
    rng = np.random.default_rng(0)
    easy = rng.random(300) < 0.5  # problem difficulty shared by both cells
    cell = np.stack([easy | (rng.random(300) < 0.3) for _ in range(3)]).astype(float)
    reference = np.stack([easy.astype(float)] * 3)
    point, low, high = task_results.bootstrap(cell)
    assert low < point < high and high - low < 0.15
    delta, d_low, d_high = task_results.bootstrap(cell, reference)
    assert abs(delta - (cell.mean() - reference.mean())) < 1e-12 and d_low > 0
    assert d_high - d_low < high - low  # pairing cancels the shared difficulty
    assert task_results.majority_baseline(["1", "2", "2", "3"]) == 0.5


def test_response_structure_counts_steps_reflections_true_facts_and_final_answers(tmp_path):
    samples = tmp_path / "samples.jsonl"
    long = synthetic.generate(1, seed=3, prompt_style="none")[0]["messages"][-1]["content"]
    demo_report.utils.write_jsonl(
        samples, [{"response": long, "tokens": 300}, {"response": "3 + 4 = 7.\n\n\\boxed{7}", "tokens": 20}]
    )
    s = demo_report.response_structure(samples)
    steps = len(markup.split_thought(long).thought.split("\n\n"))
    assert s["tokens"] == 160 and s["steps"] == (steps + 1) / 2 and s["final_answer"] == 1.0  # a short answer: 1 step
    assert s["reflections"] == len(re.findall(r"\b(?:wait|check|verify)\b", long, re.I)) / 2 > 0
    demo_report.utils.write_jsonl(
        samples, [{"response": "First, 3 + 4 = 7. Next, 7 - 9 = -2, -2 * 3 = 6.", "tokens": 9}]
    )
    assert demo_report.response_structure(samples)["facts_right"] == 2 / 3  # 3 + 4 and 7 - 9 true, -2 * 3 false
    demo_report.utils.write_jsonl(samples, [{"response": "\\boxed{7}", "tokens": 3}])
    assert np.isnan(demo_report.response_structure(samples)["facts_right"])  # no fact written: nothing to score
