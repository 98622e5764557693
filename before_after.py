"""The trained model against its base on held-out tasks: what the trainers' --eval-tasks prints after training.

    python train_lora.py --data cot.jsonl --merge --eval-tasks math500,aime24 --eval-args "--max-tokens 32768"
    python train_full.py --data cot.jsonl --eval-tasks my_problems.jsonl --eval-args "--backend hf --limit 50"
    python train_lora.py --demo      # data/demo_sft.json's --eval-tasks: the student's 200 held-out problems

evaluate.py runs on the base model, then on the trained one (--eval-args passes any of its options; its defaults are
the paper's), into OUTPUT_DIR/eval/before and OUTPUT_DIR/eval/after. Per task, one line: accuracy before -> after and
the change with a paired 95% bootstrap interval over problems (task_results.bootstrap: the same resampled problems
for both runs, so problem difficulty cancels), beside always giving the commonest answer where the task has answers;
then one problem the training fixed, with both answers. OUTPUT_DIR/eval/before_after.json holds the per-problem
accuracies behind each line.
"""

from __future__ import annotations

import json
import shlex
import shutil
from pathlib import Path

import numpy as np

import evaluate
import task_results
import utils

SHOWN_LINES = 30  # of an answer printed as the example; the whole answer is in samples.jsonl


def per_problem(samples: list[dict], task: str, ids: list[str]) -> np.ndarray:
    """Mean correctness of each problem's samples, in ids order (a problem without samples counts as wrong)."""
    right = {}
    for s in samples:
        if s["task"] == task:
            right.setdefault(s["id"], []).append(bool(s["correct"]))
    return np.array([np.mean(right[i]) if i in right else 0.0 for i in ids])


def shown(response: str) -> str:
    """An answer as printed: without blank lines, cut after SHOWN_LINES lines."""
    lines = [line for line in response.splitlines() if line.strip()]
    cut = len(lines) - SHOWN_LINES
    return "\n".join(lines[:SHOWN_LINES] + ([f"[... {cut} more lines]"] if cut > 0 else []))


def compare(
    base_model: str,
    trained_model: str,
    tasks: str,
    eval_args: str,
    output_dir: Path,
    chat_template: str = "model",
    chat_template_kwargs: dict | None = None,
    adapter: str | None = None,
) -> dict:
    """Evaluate base_model and trained_model (or base_model with adapter) on tasks (evaluate.py --tasks), with the chat
    template they were trained with; print one line per task and one fixed problem; return the numbers per task."""
    folder = Path(output_dir) / "eval"
    common = ["--tasks", tasks, "--chat-template", chat_template]
    common += ["--chat-template-kwargs", json.dumps(chat_template_kwargs or {}), *shlex.split(eval_args)]
    runs = {"before": ["--model", base_model], "after": ["--model", trained_model]}
    if adapter:
        runs["after"] += ["--adapter", adapter]
    samples = {}
    for name, model in runs.items():
        shutil.rmtree(folder / name, ignore_errors=True)  # answers of an earlier run's models: nothing to resume
        evaluate.main(evaluate.parse_args([*model, *common, "--output-dir", str(folder / name)]))
        samples[name] = utils.read_jsonl(folder / name / "samples.jsonl")
    summary, lists, lines = {}, {}, []
    for spec in tasks.split(","):
        task, problems = evaluate.load_task(spec.strip())
        answered = {s["id"] for s in samples["after"] if s["task"] == task}  # all, or evaluate.py's --limit
        ids = [p["id"] for p in problems if p["id"] in answered]
        before, after = (per_problem(samples[name], task, ids) for name in ("before", "after"))
        answers = [p["answer"] for p in problems if p["id"] in answered and "answer" in p]
        majority = task_results.majority_baseline(answers) if answers else None
        summary[task] = {
            "problems": len(ids),
            "before": task_results.bootstrap(before[None, :]),
            "after": task_results.bootstrap(after[None, :]),
            "change": task_results.bootstrap(after[None, :], before[None, :]),
            "majority": majority,
        }
        lists[task] = {"ids": ids, "before": before.tolist(), "after": after.tolist()}
        commonest = f"; always the commonest answer: {100 * majority:.1f}%" if majority is not None else ""
        lines.append(
            f"{task}, {len(ids)} problems: {100 * before.mean():.1f}% before -> {100 * after.mean():.1f}% after, "
            f"{task_results.percent_interval(*summary[task]['change'], signed=True)} points (paired 95% bootstrap)"
            f"{commonest}"
        )
        fixed = [i for i, b, a in zip(ids, before, after) if a > b]
        if fixed and len(lines) == 1:  # one example, from the first task
            problem = next(p for p in problems if p["id"] == fixed[0])
            first = {n: next(s for s in samples[n] if (s["task"], s["id"]) == (task, fixed[0])) for n in runs}
            answer = f" (answer {problem['answer']})" if "answer" in problem else ""
            print(f"\none problem the training fixed ({task} {fixed[0]}): {problem['problem']}{answer}")
            for name in runs:
                print(f"--- {name} training ---\n{shown(first[name]['response'])}")
    utils.atomic_write_text(folder / "before_after.json", json.dumps(lists) + "\n")
    print("\n" + "\n".join(lines), f"(per problem: {folder / 'before_after.json'})", sep="\n")
    return summary
