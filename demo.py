"""The whole experiment in miniature, on a CPU: a tiny model learns a synthetic long-CoT task from scratch.

    python demo.py                  # ~11 min on one core: held-out accuracy 0% -> 25%, first step right 0% -> 100%
    python demo.py --grid           # the paper's Table 2 at toy scale (correct vs each perturbation), ~70 min, 2 cores
    python demo.py --grid --conditions correct,shuffle100,digits100 --output-dir /tmp/grid   # a few cells only

Every stage is the repo's own script: synthetic.py writes the data, perturb.py perturbs it, train_full.py trains a tiny
random Qwen2 (tiny_model.py) from scratch, evaluate.py --backend hf generates greedily and grades held-out
problems. Full training, not LoRA: a random model has nothing for a low-rank update to adapt, and its frozen random
embeddings and LM head would have to carry the whole task. A run that learns therefore also checks the plumbing end
to end: masking, packing, loss normalisation, checkpointing, generation, stopping at <|im_end|> and grading.
Rerunning the same command resumes: finished conditions are read back, not redone.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import re
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

import evaluate
import perturb
import synthetic
import tiny_model
import train_full
import utils

# (name, label, how the training set is made): "correct" | "wrong" | (perturb.py kind, ratio). The paper's Table 2 rows.
CONDITIONS = [
    ("correct", "correct", "correct"),
    ("wrong", "wrong answers", "wrong"),
    ("digits50", "digits 50%", ("digits", 0.5)),
    ("digits100", "digits 100%", ("digits", 1.0)),
    ("keywords100", "keywords 100%", ("keywords", 1.0)),
    ("shuffle33", "shuffle 33%", ("shuffle", 0.33)),
    ("shuffle100", "shuffle 100%", ("shuffle", 1.0)),
    ("delete33", "delete 33%", ("delete", 0.33)),
    ("delete100", "delete 100%", ("delete", 1.0)),
    ("insert33", "insert 33%", ("insert", 0.33)),
    ("insert100", "insert 100%", ("insert", 1.0)),
]
PROMPT_STYLE = "none"  # the bare problem: Sky-T1's system prompt would be most of every sample's tokens on a CPU budget
# Samples are ~150-400 tokens. A packed micro-batch attends over its whole length with a block-diagonal mask on CPU
# (no varlen kernel), so its cost grows with the square of the length: two samples per micro-batch is fastest
# (measured per 4-sample step: 0.128 s at 512 tokens, 0.162 s at 1024). Longer samples are dropped, and counted.
MICRO_BATCH_TOKENS = 512


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output-dir", help="data, model, runs, tables and plots (default out/demo, or out/grid)")
    p.add_argument("--grid", action="store_true", help="train on the correct set and on each perturbation (Table 2)")
    p.add_argument(
        "--conditions", default=",".join(name for name, _, _ in CONDITIONS), help="with --grid: comma list of cells"
    )
    # the task: 2-3 operations give thoughts of 4-9 steps and responses of ~110-350 tokens
    p.add_argument(
        "--train-size", type=int, default=16000, help="training problems, each seen once (3000 seen 2.7x: 26%% vs 37%%)"
    )
    p.add_argument(
        "--test-size", type=int, default=100, help="held-out problems, disjoint from training by construction"
    )
    p.add_argument("--min-ops", type=int, default=2, help="fewest operations per problem")
    p.add_argument("--max-ops", type=int, default=3, help="most operations per problem")
    p.add_argument("--max-value", type=int, default=10, help="largest intermediate value: arithmetic is learned last")
    # the model: the LM head is most of a tiny model's compute (vocab 4096 runs 1.4x slower)
    p.add_argument("--vocab-size", type=int, default=1024, help="tokenizer and embedding rows of the tiny model")
    p.add_argument("--hidden-size", type=int, default=128, help="width of the tiny model")
    p.add_argument("--layers", type=int, default=2, help="decoder layers of the tiny model")
    # training: the format is learned in ~300 steps, copying and bracket choice by ~2000, arithmetic last
    p.add_argument("--steps", type=int, default=4000, help="optimizer steps per training run")
    p.add_argument("--samples-per-step", type=int, default=4, help="2000 x 4 did no worse than 1000 x 8 (26%% vs 24%%)")
    p.add_argument(
        "--lr", type=float, default=3e-3, help="from scratch takes a far larger rate than fine-tuning (1e-5)"
    )
    p.add_argument("--max-new-tokens", type=int, default=400, help="generation budget; longest response ~350 tokens")
    p.add_argument("--seed", type=int, default=0, help="fixes data, initial weights and data order")
    p.add_argument(
        "--jobs", type=int, default=0, help="with --grid: cells trained at once, one core each (0: all cores)"
    )
    args = p.parse_args(argv)
    known = {name for name, _, _ in CONDITIONS}
    unknown = [c for c in args.conditions.split(",") if c not in known]
    if unknown:
        p.error(f"--conditions: unknown {', '.join(unknown)} (known: {', '.join(known)})")
    return args


def check_config(out: Path, args: argparse.Namespace) -> None:
    """A folder holds one experiment: refuse to mix results made with other settings. The cells may change, so
    `demo.py --grid --output-dir out/demo` reuses the demo's model, evaluation before training and correct cell."""
    path = out / "demo_config.json"
    current = {k: v for k, v in vars(args).items() if k not in ("grid", "conditions", "output_dir", "jobs")}
    if path.exists():
        saved = json.loads(path.read_text(encoding="utf-8"))
        changed = [f"{k} {saved.get(k)!r} -> {v!r}" for k, v in current.items() if saved.get(k) != v]
        if changed:
            raise SystemExit(
                f"{path}: this folder holds a run with other settings ({'; '.join(changed)}); use another --output-dir"
            )
    utils.atomic_write_text(path, json.dumps(current, indent=2) + "\n")


def make_training_set(args: argparse.Namespace, data: Path, name: str, how) -> Path:
    path = data / f"train_{name}.jsonl"
    if path.exists():
        return path
    if how in ("correct", "wrong"):
        shape = (args.min_ops, args.max_ops, args.max_value)
        records = synthetic.generate(
            args.train_size, args.seed, "train", *shape, wrong_answers=how == "wrong", prompt_style=PROMPT_STYLE
        )
        utils.write_jsonl(path, records)
    else:
        kind, ratio = how
        source = make_training_set(args, data, "correct", "correct")
        argv = ["--input", str(source), "--output", str(path), "--kind", kind, "--ratio", str(ratio)]
        perturb.main(perturb.parse_args(argv + ["--seed", str(args.seed)]))
    return path


def evaluate_model(args: argparse.Namespace, model_dir: Path, task_file: Path, output_dir: Path) -> float:
    argv = ["--model", str(model_dir), "--tasks", str(task_file), "--backend", "hf", "--prompt-style", PROMPT_STYLE]
    argv += ["--max-tokens", str(args.max_new_tokens), "--batch-size", "50", "--workers", "1"]
    argv += ["--output-dir", str(output_dir)]
    return evaluate.main(evaluate.parse_args(argv))[task_file.stem]["accuracy"]


def first_step_right(samples_file: Path, task_file: Path) -> float:
    """Share of held-out answers that restate the problem exactly and then start with its first operation, the leftmost
    innermost bracket: the structure of the solution, apart from whether its arithmetic is right."""
    problems = {p["id"]: p["problem"].removeprefix("Evaluate ").removesuffix(".") for p in utils.read_jsonl(task_file)}
    samples = utils.read_jsonl(samples_file)
    right = 0
    for sample in samples:
        expression = problems[sample["id"]]
        innermost = re.search(r"\((\d+ [-+*] \d+)\)", expression)
        _, restated, rest = sample["response"].partition(f"evaluate {expression},")
        first_fact = re.search(r"(\d+ [-+*] \d+) =", rest)
        right += bool(
            restated and first_fact and first_fact.group(1) == (innermost.group(1) if innermost else expression)
        )
    return right / len(samples)


def train(args: argparse.Namespace, model_dir: Path, train_file: Path, run_dir: Path) -> dict:
    # Samples are a few hundred tokens: recomputing activations would only cost time, and fp32 keeps the weights exact.
    argv = ["--data", str(train_file), "--model", str(model_dir), "--output-dir", str(run_dir), "--lr", str(args.lr)]
    argv += ["--max-steps", str(args.steps), "--samples-per-step", str(args.samples_per_step), "--seed", str(args.seed)]
    argv += ["--max-length", str(MICRO_BATCH_TOKENS), "--micro-batch-tokens", str(MICRO_BATCH_TOKENS)]
    argv += ["--no-gradient-checkpointing", "--save-every", "0", "--keep-checkpoints", "1", "--save-dtype", "fp32"]
    return train_full.main(train_full.parse_args(argv))


def run_condition(
    args: argparse.Namespace, out: Path, model_dir: Path, task_file: Path, name: str, label: str, how
) -> dict:
    result_file = out / "runs" / name / "result.json"
    if result_file.exists():
        print(f"{name}: already done, reading {result_file}")
        return json.loads(result_file.read_text(encoding="utf-8"))
    t0 = time.time()
    train_file = make_training_set(args, out / "data", name, how)
    summary = train(args, model_dir, train_file, out / "runs" / name)
    train_s = time.time() - t0
    accuracy = evaluate_model(args, out / "runs" / name / "final", task_file, out / "eval" / name)
    result = {
        "condition": name,
        "label": label,
        "steps": summary["steps"],
        "first_loss": summary["first_loss"],
        "last_loss": summary["last_loss"],
        "accuracy": accuracy,
        "train_s": round(train_s, 1),
        "eval_s": round(time.time() - t0 - train_s, 1),
    }
    utils.atomic_write_text(result_file, json.dumps(result, indent=2) + "\n")
    return result


def plot_losses(out: Path, names: list[str], path: Path) -> None:
    fig, ax = utils.pyplot().subplots(figsize=(7, 4))
    for name in names:
        metrics = utils.read_jsonl(out / "runs" / name / "metrics.jsonl")
        ax.plot([m["step"] for m in metrics], [m["loss"] for m in metrics], label=name, linewidth=1)
    ax.set(xlabel="optimizer step", ylabel="train loss (per target token)", yscale="log", title="Training loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    utils.save_figure(fig, path, dpi=120)


def plot_grid(results: list[dict], before: float, path: Path) -> None:
    colours = {"correct": "tab:green", "wrong": "tab:blue", "digits": "tab:blue", "keywords": "tab:blue"}
    fig, ax = utils.pyplot().subplots(figsize=(10, 4))
    x = list(range(len(results)))
    bars = ax.bar(
        [i - 0.2 for i in x],
        [100 * r["accuracy"] for r in results],
        width=0.4,
        label="answer right",
        color=[colours.get(r["condition"].rstrip("0123456789"), "tab:orange") for r in results],
    )
    ax.bar_label(bars, fmt="%.0f", fontsize=7)
    bars = ax.bar(
        [i + 0.2 for i in x],
        [100 * r["first_step_right"] for r in results],
        width=0.4,
        color="lightgrey",
        edgecolor="grey",
        label="first step right (restates the problem, starts at the right bracket)",
    )
    ax.bar_label(bars, fmt="%.0f", fontsize=7)
    ax.set_xticks(x, [r["label"] for r in results])
    ax.axhline(100 * before, color="grey", linestyle="--", linewidth=1, label=f"before training ({100 * before:.0f}%)")
    ax.set(
        ylabel="held-out problems (%)",
        ylim=(0, 110),
        title="Toy Table 2: green = correct, blue = content, orange = structure",
    )
    ax.tick_params(axis="x", labelrotation=35, labelsize=8)
    ax.legend(fontsize=8)
    fig.tight_layout()
    utils.save_figure(fig, path, dpi=120)


def grid_table(results: list[dict], before: float, args: argparse.Namespace) -> str:
    correct = next((r["accuracy"] for r in results if r["condition"] == "correct"), None)
    lines = [
        f"Held-out accuracy on {args.test_size} synthetic problems, greedy; before training: {100 * before:.1f}%.",
        f"Model: random Qwen2, hidden {args.hidden_size}, {args.layers} layers, trained from scratch; "
        f"{args.steps} steps x "
        f"{args.samples_per_step} samples, lr {args.lr}, {args.train_size} training problems, seed {args.seed}.",
        "",
        "| training set | accuracy (%) | vs correct | first step right (%) | train loss first -> last "
        "| train + eval time |",
        "|---|---:|---:|---:|---|---:|",
    ]
    for r in results:
        delta = f"{100 * (r['accuracy'] - correct):+.1f}" if correct is not None else ""
        lines.append(
            f"| {r['label']} | {100 * r['accuracy']:.1f} | {delta} | {100 * r['first_step_right']:.0f} | "
            f"{r['first_loss']:.3f} -> {r['last_loss']:.3f} | "
            f"{utils.format_duration(r['train_s'] + r['eval_s'])} |"
        )
    return "\n".join(lines) + "\n"


def main(args: argparse.Namespace) -> dict:
    # ---------------------------------------------------------------- setup
    t_start = time.time()
    # The model's matrices are too small to split across threads, and a second OpenMP thread that waits for a busy core
    # makes every op stall: measured 0.15 s per 750-token step on one thread, 0.1-2.4 s on two beside another process.
    torch.set_num_threads(1)
    out = Path(args.output_dir or ("out/grid" if args.grid else "out/demo"))
    out.mkdir(parents=True, exist_ok=True)
    check_config(out, args)
    names = args.conditions.split(",") if args.grid else ["correct"]
    chosen = [c for c in CONDITIONS if c[0] in names]

    # ---------------------------------------------------------------- data: held-out problems, the correct training set
    task_file = out / "data" / "synthetic_test.jsonl"
    if not task_file.exists():
        utils.write_jsonl(
            task_file, synthetic.task_records(args.test_size, args.seed, args.min_ops, args.max_ops, args.max_value)
        )
    correct_file = make_training_set(args, out / "data", "correct", "correct")

    # ---------------------------------------------------------------- model: random weights, a tokenizer of the task
    model_dir = out / "model"
    if not (model_dir / "config.json").exists():
        texts = [m["content"] for r in utils.read_jsonl(correct_file)[:1000] for m in r["messages"]]
        shape = {"vocab_size": args.vocab_size, "hidden_size": args.hidden_size, "layers": args.layers}

        def write(tmp: Path):
            tiny_model.make_tiny_model(tmp, **shape, seed=args.seed, tokenizer_vocab=args.vocab_size, extra_texts=texts)

        utils.save_dir_atomically(model_dir, write)
    before = evaluate_model(args, model_dir, task_file, out / "eval" / "before")

    # ---------------------------------------------------------------- train and evaluate each condition
    jobs = min(args.jobs or os.cpu_count() or 1, len(chosen))
    if jobs == 1:
        results = [run_condition(args, out, model_dir, task_file, *condition) for condition in chosen]
    else:  # the cells are independent, and one thread per run is fastest for a model this small (see setup)
        with ProcessPoolExecutor(
            jobs, mp_context=multiprocessing.get_context("spawn"), initializer=torch.set_num_threads, initargs=(1,)
        ) as pool:
            results = list(pool.map(run_condition, *zip(*[(args, out, model_dir, task_file, *c) for c in chosen])))

    # ---------------------------------------------------------------- report
    for r in results:  # read from the saved answers, so cells finished before a rerun are measured the same way
        r["first_step_right"] = first_step_right(out / "eval" / r["condition"] / "samples.jsonl", task_file)
    wall = time.time() - t_start
    plot_losses(out, [r["condition"] for r in results], out / "loss_curve.png")
    report = {"before_accuracy": before, "results": results, "wall_s": round(wall, 1), "config": vars(args)}
    utils.atomic_write_text(out / "results.json", json.dumps(report, indent=2) + "\n")
    if args.grid:
        table = grid_table(results, before, args)
        utils.atomic_write_text(out / "grid_results.md", table)
        plot_grid(results, before, out / "grid.png")
        print(table)
        wrote = ", ".join(str(out / name) for name in ("grid_results.md", "grid.png", "results.json"))
        print(f"wall time {utils.format_duration(wall)}; wrote {wrote}")
    else:
        r = results[0]
        rows = [
            ["steps", r["steps"]],
            ["train loss first -> last", f"{r['first_loss']:.3f} -> {r['last_loss']:.3f}"],
            ["held-out accuracy before", f"{100 * before:.1f}%"],
            ["held-out accuracy after", f"{100 * r['accuracy']:.1f}%"],
            ["first step right", f"{100 * r['first_step_right']:.1f}% (restates the problem, starts inside out)"],
            ["wall time", utils.format_duration(wall)],
        ]
        print("\n".join(f"{name:<28}{value}" for name, value in rows))
        print(f"wrote {out / 'results.json'} and {out / 'loss_curve.png'}")
    return report


if __name__ == "__main__":
    main(parse_args())
