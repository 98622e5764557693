"""The trainers' after-training hook (before_after.py, --eval-tasks) and the direction of the imports: the trainers
never import the miniature (demo.py, tiny_model.py and what only they use)."""

import ast
import json

import pytest

import before_after
import train_full
import utils

MINIATURE = {"demo", "demo_report", "tiny_model", "synthetic"}
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def imported_scripts(module: str) -> set[str]:
    """The repository's modules that module imports, at the top or inside a function."""
    names = set()
    for node in ast.walk(ast.parse((utils.REPO_DIR / f"{module}.py").read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.split(".")[0])
    return {name for name in names if (utils.REPO_DIR / f"{name}.py").exists()}


def test_the_trainers_and_what_they_import_never_import_the_miniature():
    for trainer in ("train_lora", "train_full"):
        reached, todo = set(), [trainer]
        while todo:
            for name in imported_scripts(todo.pop()) - reached:
                reached.add(name)
                todo.append(name)
        assert "before_after" in reached and not reached & MINIATURE, (trainer, sorted(reached & MINIATURE))


def test_eval_tasks_grades_the_base_and_the_trained_model_and_writes_the_per_problem_lists(
    tiny_model_dir, train_file, tmp_path, capsys
):
    tasks = tmp_path / "sums.jsonl"
    utils.write_jsonl(tasks, [{"id": f"s{i}", "problem": f"What is {i} + 1?", "answer": str(i + 1)} for i in range(4)])
    argv = ["--data", str(train_file), "--model", str(tiny_model_dir), "--output-dir", str(tmp_path / "run")]
    argv += ["--max-steps", "1", "--samples-per-step", "2", "--max-length", "128", "--micro-batch-tokens", "128"]
    argv += ["--eval-tasks", str(tasks), "--eval-args", "--backend hf --max-tokens 4 --workers 1 --prompt-style none"]
    summary = train_full.main(train_full.parse_args(argv))
    result = summary["eval"]["sums"]
    assert result["problems"] == 4 and result["majority"] == 0.25 and len(result["change"]) == 3
    lists = json.loads((tmp_path / "run" / "eval" / "before_after.json").read_text())["sums"]
    assert lists["ids"] == ["s0", "s1", "s2", "s3"] and len(lists["before"]) == len(lists["after"]) == 4
    for name in ("before", "after"):  # each model's own evaluate.py folder
        assert json.loads((tmp_path / "run" / "eval" / name / "config.json").read_text())["max_tokens"] == 4
    out = capsys.readouterr().out
    assert "sums, 4 problems: " in out and "(paired 95% bootstrap); always the commonest answer: 25.0%" in out
    assert "settings: " in out and (tmp_path / "run" / "run_config.json").exists()


def test_per_problem_accuracy_and_the_shown_answer():
    samples = [{"task": "t", "id": "a", "correct": True}, {"task": "t", "id": "a", "correct": False}]
    samples += [{"task": "u", "id": "b", "correct": True}]
    assert before_after.per_problem(samples, "t", ["a", "b"]).tolist() == [0.5, 0.0]  # b: not answered in task t
    long = "\n\n".join(f"line {i}" for i in range(before_after.SHOWN_LINES + 5))
    assert before_after.shown(long).splitlines()[-1] == "[... 5 more lines]"
    assert before_after.shown("a\n\nb") == "a\nb"
