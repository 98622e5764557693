"""The synthetic task (synthetic.py) and the CPU demo (demo.py): a short run must learn, through the repo's scripts."""

import ast
import json
import re
import subprocess
import sys
from collections import Counter

import pytest
import torch
from transformers import AutoModelForCausalLM

import demo
import markup
import perturb
import sft
import synthetic
import utils

REPO = demo.utils.REPO_DIR


def thought_steps(record: dict) -> list[str]:
    parts = markup.split_thought(record["messages"][-1]["content"])
    assert parts.markup == "sky-t1"
    return perturb.split_steps(parts.thought, 40)[0]


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


def test_every_arithmetic_fact_in_a_correct_trace_is_true_except_slips_fixed_by_wait(records):
    for r in records:
        steps = thought_steps(r)
        for i, step in enumerate(steps):
            for a, op, b, result in re.findall(r"(\d+) ([-+*]) (\d+) = (\d+)", step):
                true = synthetic.OPS[op](int(a), int(b))
                if int(result) != true:  # a slip: the next step must catch it and give the true value
                    assert steps[i + 1].startswith("Wait") and f"is {true}, not {result}" in steps[i + 1]


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
    assert all("Let me verify the whole computation" in t for t in texts)  # the final verification
    assert len({r["id"] for r in records}) == len(records)


def test_steps_are_the_blank_line_paragraphs_perturb_splits_on(records):
    for r in records:
        thought = markup.split_thought(r["messages"][2]["content"]).thought
        paragraphs = thought.split("\n\n")
        assert all(len(p) > 40 for p in paragraphs)
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


def teacher_forced_accuracy(model_dir, records: list[dict]) -> dict[str, float]:
    """Share of the assistant tokens of correct held-out traces that the model predicts right (greedy, teacher-forced),
    apart for digit tokens (the arithmetic: content) and every other token (the trace's words and layout: structure);
    plus what always predicting the commonest digit would score on the digit tokens."""
    tokenizer = utils.load_tokenizer(str(model_dir))
    samples, _ = sft.build_samples(tokenizer, [r["messages"] for r in records], 4096, truncate=False)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    right, total, digits = Counter(), Counter(), Counter()
    with torch.no_grad():
        for sample in samples:
            predicted = model(torch.tensor([sample.input_ids])).logits[0].argmax(-1).tolist()
            for guess, target in zip(predicted, sample.targets):
                if target == sft.IGNORE_INDEX:
                    continue
                kind = "digit" if tokenizer.decode([target]).strip().isdigit() else "structure"
                total[kind] += 1
                right[kind] += guess == target
                if kind == "digit":
                    digits[target] += 1
    accuracy = {kind: right[kind] / total[kind] for kind in total}
    accuracy["commonest_digit"] = max(digits.values()) / total["digit"]
    return accuracy


def test_a_short_demo_learns_the_structure_of_held_out_traces(tmp_path):
    """The end-to-end check, through demo.py -> synthetic, train_full, evaluate (2-3 min on 2 cores). A random model
    trained with broken masking, packing, loss normalisation, saving, generation, stopping or grading does not end up
    writing well-formed Sky-T1 answers that stop at end of turn, nor predicting held-out traces token by token.

    What a run this short learns reliably is the structure: teacher-forced on 50 correct held-out traces, 98% of the
    non-digit tokens right (1% before training) and 55-66% of the digit tokens (the commonest digit alone: ~15%),
    measured at 900 and 1800 steps. Greedy held-out accuracy is not asserted: at this budget it swings between 10% and
    26% with the seed and the machine (12% here with this seed, the same before and after the layout change), around
    the 20% of always answering the commonest value, so a floor on it would test noise (docs/findings.md)."""
    out = tmp_path / "demo"
    cmd = [sys.executable, str(REPO / "demo.py"), "--output-dir", str(out), "--train-size", "3000"]
    cmd += ["--test-size", "50", "--steps", "900"]
    subprocess.run(cmd, check=True, cwd=REPO, timeout=900, capture_output=True)
    report = json.loads((out / "results.json").read_text())
    result = report["results"][0]
    assert report["before_accuracy"] == 0.0
    assert result["last_loss"] < 0.1 * result["first_loss"]
    assert (out / "loss_curve.png").stat().st_size > 0
    held_out = synthetic.generate(50, 0, "test", 2, 3, 10, prompt_style=demo.PROMPT_STYLE)
    before = teacher_forced_accuracy(out / "model", held_out)
    after = teacher_forced_accuracy(out / "runs" / "correct" / "final", held_out)
    assert before["structure"] < 0.1 and before["digit"] < 0.1, before
    assert after["structure"] >= 0.95, after
    assert after["digit"] >= 2 * after["commonest_digit"], after
    shape = re.compile(
        r"<\|begin_of_thought\|>\n\n.+\n\n<\|end_of_thought\|>\n\n<\|begin_of_solution\|>\n\n.+\\boxed\{\d+\}"
        r"\n\n<\|end_of_solution\|>",
        re.S,
    )

    def read(name: str) -> list[dict]:
        return [json.loads(line) for line in (out / "eval" / name / "samples.jsonl").read_text().splitlines()]

    def well_formed(samples: list[dict]) -> int:
        return sum(bool(shape.fullmatch(s["response"].strip())) for s in samples)

    assert well_formed(read("before")) == 0
    answers = read("correct")
    assert well_formed(answers) >= 0.9 * len(answers), (
        f"only {well_formed(answers)} of {len(answers)} answers are well-formed Sky-T1"
    )


def test_first_step_right_reads_the_restatement_and_the_first_operation(tmp_path):
    task = tmp_path / "task.jsonl"
    demo.utils.write_jsonl(
        task,
        [
            {"id": "a", "problem": "Evaluate 5 - (6 - 6).", "answer": "5"},
            {"id": "b", "problem": "Evaluate (3 + 3) * (1 + 1).", "answer": "12"},
            {"id": "c", "problem": "Evaluate 4 + 3.", "answer": "7"},
        ],
    )
    samples = tmp_path / "samples.jsonl"

    def write(responses: list[str]) -> None:
        demo.utils.write_jsonl(samples, [{"id": i, "response": r} for i, r in zip("abc", responses)])

    write(
        [
            # wrong arithmetic, right structure
            "We need to evaluate 5 - (6 - 6), working ...\n\nFirst, 6 - 6 = 1, ...",
            "We need to evaluate (3 + 3) * (1 + 1), working ...\n\nFirst, 3 + 3 = 6, ...",
            "We need to evaluate 4 + 3, working ...\n\nFirst, 4 + 3 = 7, ...",
        ]
    )
    assert demo.first_step_right(samples, task) == 1.0
    write(
        [
            "We need to evaluate 5 - (6 - 6), working ...\n\nFirst, 5 - 6 = 1, ...",  # outer operation first
            "We need to evaluate (3 + 3) * (1 + 2), working ...\n\nFirst, 3 + 3 = 6, ...",  # problem miscopied
            "4 + 3 = 7",
        ]
    )  # no restatement
    assert demo.first_step_right(samples, task) == 0.0


def test_grid_report_table_and_chart(tmp_path):
    results = [
        {
            "condition": c,
            "label": label,
            "accuracy": a,
            "first_step_right": f,
            "first_loss": 7.0,
            "last_loss": 0.1,
            "train_s": 60.0,
            "eval_s": 5.0,
        }
        for (c, label, _), a, f in zip(demo.CONDITIONS[:3], (0.3, 0.2, 0.1), (1.0, 0.9, 0.5))
    ]
    table = demo.grid_table(results, 0.0, demo.parse_args([]))
    assert "| digits 50% | 10.0 | -20.0 | 50 |" in table
    demo.plot_grid(results, 0.0, tmp_path / "grid.png")
    assert (tmp_path / "grid.png").stat().st_size > 10_000
