"""What a task's scored samples add up to: results.json's numbers per task (accuracy, pass@k, avg@n with its error
bar and the per-sample-index accuracies, the shares with no answer or cut off, grader errors, LiveCodeBench's
difficulty levels), the table evaluate.py prints, and the statistics that compare two runs on the same problems
(a paired bootstrap interval: the trainers' --eval-tasks, demo_report.py)."""

from __future__ import annotations

import math
from statistics import fmean, stdev

import numpy as np

import utils

BOOTSTRAP_DRAWS = 2000


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased estimator of Chen et al. (2021): 1 - C(n-c, k) / C(n, k)."""
    return 1.0 if n - c < k else 1.0 - math.comb(n - c, k) / math.comb(n, k)


def summarise(problems: list[dict], samples: dict[str, list[dict]]) -> dict:
    """Per-task numbers from the scored samples of each problem id; problems may have different sample counts
    (--responses), so n is the smallest. no_answer and cut_off (the shares of samples with no extracted answer and
    cut off at the token limit, of those whose finish_reason is known) explain a low score; grader_errors counts the
    samples whose grading failed (counted as wrong; their extraction is unknown, so not as no_answer). accuracy and
    pass@k use every sample; avg@n and accuracy_by_sample the n lowest sample indices of each problem (with --n, the
    indices 0..n-1 of every problem)."""
    # by sample index, not by file order: index i of every problem is one run (--responses may list them any order)
    ordered = {p["id"]: sorted(samples[p["id"]], key=lambda s: s["sample"]) for p in problems if samples.get(p["id"])}
    rated = [(p, [s["correct"] for s in ordered[p["id"]]]) for p in problems if p["id"] in ordered]
    flat = [s for p, _ in rated for s in ordered[p["id"]]]
    finished = [s["finish_reason"] == "length" for s in flat if s.get("finish_reason") is not None]
    n = min(len(c) for _, c in rated)
    summary = {
        "problems": len(rated),
        "n": n,
        "accuracy": fmean([sum(c) / len(c) for _, c in rated]),
        "pass@k": {str(k): fmean([pass_at_k(len(c), sum(c), k) for _, c in rated]) for k in range(1, n + 1)},
        "no_answer": fmean([s["extracted"] is None and "grader_error" not in s for s in flat]),
        "cut_off": fmean(finished) if finished else None,
        "grader_errors": sum("grader_error" in s for s in flat),
    }
    if n > 1:  # the spread over samples: sample index i of every problem is one run of the benchmark
        by_sample = [fmean([c[i] for _, c in rated]) for i in range(n)]
        summary["avg@n"] = fmean(by_sample)
        summary["avg@n_stderr"] = stdev(by_sample) / math.sqrt(n)  # of the mean of n runs (evalchemy's error bar)
        summary["accuracy_by_sample"] = by_sample
    if any("thinking_tokens" in s for s in flat):  # budget-forced samples (thinking_budget.py)
        for key in ("thinking_tokens", "answer_tokens"):
            summary[key] = fmean([s.get(key) or 0 for s in flat])
        summary["thought_cut"] = fmean([bool(s.get("thought_cut")) for s in flat])
    levels = {
        level: [sum(c) / len(c) for p, c in rated if p.get("difficulty") == level]
        for level in ("easy", "medium", "hard")
    }
    levels = {level: accuracies for level, accuracies in levels.items() if accuracies}
    if levels:  # LiveCodeBench's overall score: the three levels weighted by their problem counts
        summary["difficulty"] = {level: {"problems": len(a), "accuracy": fmean(a)} for level, a in levels.items()}
        summary["difficulty_weighted_accuracy"] = fmean([a for accuracies in levels.values() for a in accuracies])
    return summary


def results_table(results: dict) -> str:
    """The printed summary: per task its problems, n, accuracy, the shares with no answer and cut off, and pass@k for
    the powers of two and n (results.json has every k <= n), then LiveCodeBench's difficulty levels under it; a line
    under the table counts the samples whose grading failed, if any."""
    shown = set()
    for r in results.values():
        shown |= {int(k) for k in r["pass@k"] if int(k) & (int(k) - 1) == 0 or int(k) == r["n"]}
    ks = sorted(shown - {1})
    spreads = any("avg@n" in r for r in results.values())  # avg@n ± its standard error, where n > 1
    blank = [""] * (len(ks) + 2 + spreads)
    rows = []
    for task, r in results.items():
        passes = [_percent(r["pass@k"][str(k)]) if str(k) in r["pass@k"] else "" for k in ks]
        shares = [_percent(r[key]) if r.get(key) is not None else "" for key in ("no_answer", "cut_off")]
        spread = [f"{_percent(r['avg@n'])} ± {_percent(r['avg@n_stderr'])}" if "avg@n" in r else ""] if spreads else []
        rows.append([task, r["problems"], r["n"], _percent(r["accuracy"]), *spread, *shares, *passes])
        for level, v in r.get("difficulty", {}).items():
            rows.append([f"  {level}", v["problems"], "", _percent(v["accuracy"]), *blank])
        if "difficulty_weighted_accuracy" in r:
            problems = sum(v["problems"] for v in r["difficulty"].values())
            rows.append(["  easy+medium+hard", problems, "", _percent(r["difficulty_weighted_accuracy"]), *blank])
    header = ["task", "problems", "n", "accuracy", *(["avg@n ± se"] if spreads else []), "no_answer", "cut_off"]
    header += [f"pass@{k}" for k in ks]
    errors = [f"{task} {r['grader_errors']}" for task, r in results.items() if r.get("grader_errors")]
    if not errors:
        return utils.format_table(header, rows)
    note = "grader errors (counted as wrong; field grader_error of samples.jsonl; --regrade-errors retries them): "
    return utils.format_table(header, rows) + "\n" + note + ", ".join(errors)


def _percent(fraction: float) -> str:
    return f"{100 * fraction:.1f}"


def bootstrap(
    cell: np.ndarray, reference: np.ndarray | None = None, draws: int = BOOTSTRAP_DRAWS, seed: int = 0
) -> tuple[float, float, float]:
    """Mean and 95% interval of cell (seeds x problems) or, with reference (seeds x problems, same problems), of
    mean(cell) - mean(reference). Problems are resampled once per draw for both (paired); seeds per cell."""
    return paired_bootstrap([(cell, 1.0)] + ([(reference, -1.0)] if reference is not None else []), draws, seed)


def paired_bootstrap(
    terms: list[tuple[np.ndarray, float]], draws: int = BOOTSTRAP_DRAWS, seed: int = 0
) -> tuple[float, float, float]:
    """Mean and 95% interval of sum(weight x mean(matrix)) over terms, each matrix seeds x problems on the same
    problems: the problems are resampled once per draw for every term (paired, so their difficulty cancels in a
    difference), the seeds per matrix."""
    rng = np.random.default_rng(seed)
    n_problems = terms[0][0].shape[1]
    stats = np.empty(draws)
    for d in range(draws):
        problems = rng.integers(0, n_problems, n_problems)
        stats[d] = sum(weight * m[rng.integers(0, len(m), len(m))][:, problems].mean() for m, weight in terms)
    point = sum(weight * m.mean() for m, weight in terms)
    low, high = np.percentile(stats, [2.5, 97.5])
    return float(point), float(low), float(high)


def majority_baseline(answers: list[str]) -> float:
    """Accuracy of always answering the commonest held-out answer: the floor any claim of learning must clear."""
    return max(answers.count(a) for a in set(answers)) / len(answers)


def percent_interval(point: float, low: float, high: float, signed: bool = False) -> str:
    sign = "+" if signed else ""
    return f"{100 * point:{sign}.1f} [{100 * low:{sign}.1f}, {100 * high:{sign}.1f}]"
