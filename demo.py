"""The paper's experiment in miniature, on a CPU: a small pretrained student learns long CoT from a teacher's traces.

    python demo.py                                   # the correct set, full SFT and LoRA, one seed (~5 min, 2 cores)
    python demo.py --grid --seeds 3 --jobs 2         # Tables 1 and 2 in miniature, with intervals (~95 min, 2 cores)
    python demo.py --grid --conditions correct,shuffle100 --seeds 1 --output-dir /tmp/grid   # a few cells only

The student (tiny_model.py --pretrain, shipped in data/tiny-student) is the miniature "instruct model": it knows
every arithmetic fact of synthetic.py's task, can check a fact when asked, and solves problems with a short chain of
its own, without reflection. The teacher's traces (synthetic.py) are long CoT in the Sky-T1 format on harder
problems: one operation per step, slips caught with "Wait", checks by the inverse operation, and a verification by
a second computation that catches an unnoticed slip. perturb.py makes the paper's perturbed sets from them at the
paper's levels; train_full.py (the paper's Table 2 recipe) and train_lora.py (Table 1) train the student on each,
briefly and with a small learning rate, as the paper did; evaluate.py --backend hf grades held-out problems.
Every cell runs at --seeds seeds (seed = data order, adapter init and perturbation draw); demo_report.py turns
them into accuracies with 95% intervals, changes against the correct set, and what the trained student writes.
A rerun resumes: finished (cell, seed) runs are read back, not redone. Settings are fixed for every cell and
recorded with the commit in the results; they were chosen on the correct set alone, before any grid ran.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import time
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

import before_after
import demo_report
import evaluate
import perturb
import synthetic
import task_results
import tiny_model
import train_full
import train_lora
import utils


@dataclass(frozen=True)
class Cell:
    name: str
    label: str
    recipe: str  # "full" (train_full.py) or "lora" (train_lora.py)
    data: str  # "correct", "wrong", or a perturb.py kind
    ratio: float = 0.0  # perturb.py --ratio
    steps_scale: float = 1.0  # the training-length control
    half: str = "content"  # which half of the paper's finding the cell speaks to; "reference" for the correct set
    paper_cell: str = ""  # its row in the paper's Table 2, if any
    reference: str = "correct"  # the cell it is compared with
    teacher: str = "confirming"  # synthetic.py's teacher of the traces: its checks confirm, or catch slips


def _cells() -> list[Cell]:
    """The paper's Table 2 with full SFT, Table 1's LoRA on four of its rows, and the training-length control."""
    cells = [Cell("correct", "correct", "full", "correct", half="reference", paper_cell="correct")]
    cells.append(Cell("wrong", "wrong answers", "full", "wrong", paper_cell="wrong"))
    levels = {"digits": (20, 50, 70, 100), "keywords": (20, 50, 100)}
    levels |= {kind: (33, 67, 100) for kind in ("shuffle", "delete", "insert")}
    for kind, percents in levels.items():
        half = "content" if kind in ("digits", "keywords") else "structure"
        for pct in percents:
            name = f"{kind}{pct}"
            cells.append(Cell(name, f"{kind} {pct}%", "full", kind, pct / 100, half=half, paper_cell=name))
    for name, data, ratio, half in [
        ("correct", "correct", 0.0, "reference"),
        ("wrong", "wrong", 0.0, "content"),
        ("digits100", "digits", 1.0, "content"),
        ("shuffle100", "shuffle", 1.0, "structure"),
    ]:
        label = next(c.label for c in cells if c.name == name)
        cells.append(Cell(f"lora-{name}", label, "lora", data, ratio, 1.0, half, name, "lora-correct"))
    for scale, tag in ((0.25, "x0.25"), (2.0, "x2")):
        cells.append(Cell(f"digits100-{tag}", f"digits 100%, {tag} steps", "full", "digits", 1.0, scale))
    # Checks that work (issue 28): the catching teacher's traces, and its reflection removed at the paper's levels.
    for name, data, ratio in [("correct", "correct", 0.0)] + [
        (f"keywords{p}", "keywords", p / 100) for p in levels["keywords"]
    ]:
        label = next(c.label for c in cells if c.name == name) + ", catching teacher"
        half = "reference" if name == "correct" else "content"
        cells.append(
            Cell(f"catching-{name}", label, "full", data, ratio, 1.0, half, name, "catching-correct", "catching")
        )
    return cells


CELLS = _cells()
# The prior-strength axis (issue 28): students pretrained for these multiples of the shipped student's steps (300,
# 1200, 4800 steps; 1 is the shipped student), each trained on the content cells where the paper and the grid part.
# Shorter pretraining than 1/4 teaches no more facts (1/16: 9% of the task's facts known, 1/4: 8%, 1: 87%).
PRIOR_SCALES = (0.25, 1.0, 4.0)
PRIOR_CELLS = ("correct", "wrong", "digits20", "digits50", "digits100")
# What a result depends on besides its settings: the code and the shipped student (retraining it changes every cell).
MADE_FROM = ("*.py", "data/tiny-student")
TASK = "synthetic_test"  # the held-out task file's stem: evaluate.py names each sample's task by it
PROMPT_STYLE = "none"  # the bare problem, as the student was pretrained: a system prompt would be most of each sample


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--output-dir",
        help="data, runs, evaluations, results.json (default out/demo; out/grid with --grid or --prior-sweep)",
    )
    p.add_argument("--grid", action="store_true", help="every cell: Table 2 (full SFT), Table 1 (LoRA), the control")
    p.add_argument(
        "--prior-sweep",
        action="store_true",
        help="students pretrained 1/4x, 1x and 4x as long (--prior-scales), each on the content cells PRIOR_CELLS: "
        "does the cost of corrupted digits fall as the prior grows? (the paper's explanation of its content result)",
    )
    p.add_argument(
        "--prior-scales",
        default=",".join(f"{x:g}" for x in PRIOR_SCALES),
        help="with --prior-sweep: the students, as multiples of the shipped student's pretraining steps (1: shipped)",
    )
    p.add_argument("--conditions", help="comma list of cells (default: all with --grid, else correct,lora-correct)")
    p.add_argument(
        "--report-only", action="store_true", help="redraw tables and figures from the runs in --output-dir, train none"
    )
    p.add_argument("--seeds", type=int, default=1, help="seeds per cell: data order, adapter init, perturbation draw")
    p.add_argument("--jobs", type=int, default=0, help="runs at once, one core each (0: all cores)")
    p.add_argument(
        "--report-dir", help="where tables and figures go (default: docs with --grid or --prior-sweep, else output dir)"
    )
    p.add_argument("--student", default=tiny_model.STUDENT_DIR, help="the pretrained student (tiny_model.py)")
    # the task: harder than the student's pretraining problems (1-3 operations)
    p.add_argument("--train-size", type=int, default=3000, help="teacher traces (paper: ~5k math traces, Table 2)")
    p.add_argument("--test-size", type=int, default=300, help="held-out problems, disjoint from training by hash")
    p.add_argument(
        "--verification",
        choices=synthetic.VERIFICATIONS,
        default="undo",
        help="how the teacher's traces verify (synthetic.py): undo each step from the answer, chosen on the correct "
        "set alone (issue 28: one seed, 55%% against 40%% for recompute), or recompute it from the problem",
    )
    p.add_argument("--min-ops", type=int, default=synthetic.MIN_OPS, help="fewest operations per problem")
    p.add_argument("--max-ops", type=int, default=synthetic.MAX_OPS, help="most operations per problem")
    # training: short, as in the paper (Table 2: 3 epochs of ~5k samples at lr 1e-5)
    full, lora = (utils.demo_arguments(script) for script in ("train_full.py", "train_lora.py"))  # their --demo's
    p.add_argument(
        "--full-steps", type=int, default=full["max_steps"], help="train_full.py steps per run (paper: 3 epochs)"
    )
    p.add_argument(
        "--lora-steps", type=int, default=lora["max_steps"], help="train_lora.py steps per run (paper: as full SFT)"
    )
    p.add_argument("--samples-per-step", type=int, default=full["samples_per_step"], help="global batch (paper: 96)")
    p.add_argument("--full-lr", type=float, default=full["lr"], help="train_full.py peak rate (below pretraining's)")
    p.add_argument("--lora-lr", type=float, default=lora["lr"], help="train_lora.py peak rate (paper: 10x full SFT's)")
    p.add_argument(
        "--lora-rank", type=int, default=lora["lora_rank"], help="adapter rank, alpha = 2 x rank (paper: 64 on 5120)"
    )
    p.add_argument("--max-new-tokens", type=int, default=600, help="generation budget per held-out problem")
    args = p.parse_args(argv)
    known = {c.name for c in CELLS}
    every = ",".join(c.name for c in CELLS)
    args.conditions = args.conditions or (every if args.grid else "" if args.prior_sweep else "correct,lora-correct")
    unknown = [c for c in args.conditions.split(",") if c and c not in known]
    if unknown:
        p.error(f"--conditions: unknown {', '.join(unknown)} (known: {', '.join(sorted(known))})")
    if args.seeds < 1:
        p.error("--seeds must be at least 1")
    try:
        args.prior_scales = sorted({float(x) for x in args.prior_scales.split(",")} | {1.0})
    except ValueError:
        p.error(f"--prior-scales: numbers separated by commas, not {args.prior_scales!r}")
    if min(args.prior_scales) <= 0:
        p.error("--prior-scales must be positive")
    return args


SETTINGS_IGNORED = (
    "grid",
    "prior_sweep",
    "prior_scales",
    "report_only",
    "conditions",
    "output_dir",
    "jobs",
    "seeds",
    "report_dir",
)


def check_config(out: Path, args: argparse.Namespace) -> dict:
    """A folder holds one experiment: refuse to mix results made with other settings (cells and seeds may change)."""
    path = out / "demo_config.json"
    current = {k: v for k, v in vars(args).items() if k not in SETTINGS_IGNORED}
    if path.exists():
        saved = json.loads(path.read_text(encoding="utf-8"))
        changed = [f"{k} {saved.get(k)!r} -> {v!r}" for k, v in current.items() if saved.get(k) != v]
        if changed:
            raise SystemExit(
                f"{path}: this folder holds a run with other settings ({'; '.join(changed)}); use another --output-dir"
            )
    utils.atomic_write_text(path, json.dumps(current, indent=2) + "\n")
    return current


def teacher_traces(args: argparse.Namespace, data: Path, wrong: bool, teacher: str = "confirming") -> Path:
    prefix = "" if teacher == "confirming" else f"{teacher}_"
    path = data / f"train_{prefix}{'wrong' if wrong else 'correct'}.jsonl"
    if not path.exists():
        shape = (args.min_ops, args.max_ops, synthetic.MAX_VALUE)
        records = synthetic.generate(
            args.train_size, 0, "train", *shape, wrong_answers=wrong, prompt_style=PROMPT_STYLE, teacher=teacher,
            verification=args.verification,
        )  # fmt: skip
        utils.write_jsonl(path, records)
    return path


def training_set(args: argparse.Namespace, data: Path, cell: Cell, seed: int) -> Path:
    """The cell's training file: the teacher's traces, or perturb.py's output for this seed's draw."""
    if cell.data in ("correct", "wrong"):
        return teacher_traces(args, data, cell.data == "wrong", cell.teacher)
    prefix = "" if cell.teacher == "confirming" else f"{cell.teacher}_"
    path = data / f"train_{prefix}{cell.data}{round(100 * cell.ratio)}_seed{seed}.jsonl"
    if not path.exists():
        argv = ["--input", str(teacher_traces(args, data, False, cell.teacher)), "--output", str(path)]
        argv += ["--kind", cell.data]
        argv += ["--min-step-chars", str(synthetic.STEP_MIN_CHARS)]  # every paragraph of the task is one step
        perturb.main(perturb.parse_args(argv + ["--ratio", str(cell.ratio), "--seed", str(seed)]))
    return path


def evaluate_model(model_dir: Path, task_file: Path, output_dir: Path, max_new_tokens: int) -> dict:
    argv = ["--model", str(model_dir), "--tasks", str(task_file), "--backend", "hf", "--prompt-style", PROMPT_STYLE]
    argv += ["--max-tokens", str(max_new_tokens), "--batch-size", "100", "--workers", "1"]
    return evaluate.main(evaluate.parse_args(argv + ["--output-dir", str(output_dir)]))[task_file.stem]


def run_steps(args: argparse.Namespace, cell: Cell) -> int:
    return max(1, round((args.full_steps if cell.recipe == "full" else args.lora_steps) * cell.steps_scale))


def train(args: argparse.Namespace, cell: Cell, train_file: Path, run_dir: Path, seed: int) -> tuple[dict, Path]:
    """One run of the repo's trainer; returns its summary and the folder evaluate.py loads."""
    steps = run_steps(args, cell)
    argv = ["--data", str(train_file), "--model", args.student, "--output-dir", str(run_dir), "--seed", str(seed)]
    argv += ["--max-steps", str(steps), "--samples-per-step", str(args.samples_per_step)]
    # Samples are a few hundred tokens: recomputing activations would only cost time.
    max_length = utils.demo_arguments("train_full.py")["max_length"]
    argv += ["--max-length", str(max_length), "--micro-batch-tokens", str(max_length)]
    argv += ["--no-gradient-checkpointing", "--save-every", "0", "--keep-checkpoints", "1"]
    if cell.recipe == "full":
        argv += ["--lr", str(args.full_lr), "--save-dtype", "fp32"]
        return train_full.main(train_full.parse_args(argv)), run_dir / "final"
    rank = args.lora_rank
    argv += ["--lr", str(args.lora_lr), "--lora-rank", str(rank), "--lora-alpha", str(2 * rank), "--quant", "none"]
    return train_lora.main(train_lora.parse_args(argv + ["--merge"])), run_dir / "merged"


def run_cell(args: argparse.Namespace, out: Path, task_file: Path, cell: Cell, seed: int, where: Path) -> dict:
    """One (cell, seed) run of args.student, trained on out's data; its model and answers go under where."""
    run_dir = where / "runs" / cell.name / f"seed{seed}"
    result_file = run_dir / "result.json"
    if result_file.exists():
        return json.loads(result_file.read_text(encoding="utf-8"))
    t0 = time.time()
    summary, model_dir = train(args, cell, training_set(args, out / "data", cell, seed), run_dir, seed)
    train_s = time.time() - t0
    eval_dir = where / "eval" / cell.name / f"seed{seed}"
    shutil.rmtree(eval_dir, ignore_errors=True)  # answers of an interrupted run's model, trained again just now
    scores = evaluate_model(model_dir, task_file, eval_dir, args.max_new_tokens)
    result = {
        "cell": cell.name,
        "seed": seed,
        "steps": summary["steps"],
        "first_loss": summary["first_loss"],
        "last_loss": summary["last_loss"],
        "accuracy": scores["accuracy"],
        "train_s": round(train_s, 1),
        "eval_s": round(time.time() - t0 - train_s, 1),
    }
    utils.atomic_write_text(result_file, json.dumps(result, indent=2) + "\n")
    student = "" if where == out else f" ({where.name} student)"
    print(f"{cell.name} seed {seed}{student}: accuracy {100 * result['accuracy']:.1f}%", flush=True)
    return result


def prior_student(args: argparse.Namespace, out: Path, scale: float) -> tuple[argparse.Namespace, Path, list[str]]:
    """The prior sweep's student pretrained scale x as long: its settings, its folder, its cells."""
    where = out / "prior" / f"x{scale:g}"
    return argparse.Namespace(**{**vars(args), "student": str(where / "student")}), where, list(PRIOR_CELLS)


class Inline:
    """ProcessPoolExecutor's submit without worker processes: one job (and the tests) runs in this process."""

    def submit(self, fn, *args) -> Future:
        future = Future()
        future.set_result(fn(*args))
        return future

    def __enter__(self) -> "Inline":
        return self

    def __exit__(self, *exc) -> None:
        return None


def problem_scores(samples_file: Path, ids: list[str]) -> np.ndarray:
    """0/1 per held-out problem (one greedy sample each), in ids order; a missing answer counts as wrong."""
    return before_after.per_problem(utils.read_jsonl(samples_file), TASK, ids)


def report(out: Path, config: dict, report_dir: Path | None = None) -> list[dict]:
    """Table, figures and results.json from whatever (cell, seed) runs have finished in out."""
    report_dir = report_dir or out
    report_dir.mkdir(parents=True, exist_ok=True)
    task_file = out / "data" / f"{TASK}.jsonl"
    problems = utils.read_jsonl(task_file)
    ids = [p["id"] for p in problems]
    before = problem_scores(out / "eval" / "before" / "samples.jsonl", ids)
    runs, results = {}, {}
    for cell in CELLS:
        for seed_dir in sorted((out / "eval" / cell.name).glob("seed*")):
            result_file = out / "runs" / cell.name / seed_dir.name / "result.json"
            if result_file.exists():
                runs.setdefault(cell.name, []).append(problem_scores(seed_dir / "samples.jsonl", ids))
                results.setdefault(cell.name, []).append(json.loads(result_file.read_text(encoding="utf-8")))
    rows = demo_report.summarise([asdict(c) for c in CELLS], before, runs)
    for row in rows:
        mine = results[row["name"]]
        row["first_loss"] = float(np.mean([r["first_loss"] for r in mine]))
        row["last_loss"] = float(np.mean([r["last_loss"] for r in mine]))
        structures = [demo_report.response_structure(out / "eval" / row["name"] / f"seed{r['seed']}" / "samples.jsonl")
                      for r in mine]  # fmt: skip
        row["structure"] = {k: float(np.mean([s[k] for s in structures])) for k in structures[0]}
    majority = task_results.majority_baseline([p["answer"] for p in problems])
    train_s = sum(r["train_s"] + r["eval_s"] for rs in results.values() for r in rs)
    student = Path(config["student"]).resolve()
    student = student.relative_to(utils.REPO_DIR) if student.is_relative_to(utils.REPO_DIR) else student
    commit = utils.code_commit(MADE_FROM)
    settings = [
        f"The miniature (demo.py, commit {commit}): {len(ids)} held-out problems with {config['min_ops']}-"
        f"{config['max_ops']} operations, greedy decoding, up to {config['max_new_tokens']} new tokens.",
        f"Student: {student} (tiny_model.py --pretrain). Teacher traces: {config['train_size']} "
        f"(synthetic.py). Full SFT: {config['full_steps']} steps x {config['samples_per_step']} samples at lr "
        f"{config['full_lr']}; LoRA: {config['lora_steps']} steps, rank {config['lora_rank']}, alpha "
        f"{2 * config['lora_rank']}, lr {config['lora_lr']}, all linear layers. Perturbations: perturb.py defaults "
        f"(the authors' forms), with --min-step-chars {synthetic.STEP_MIN_CHARS}: every paragraph of a trace is one "
        "step.",
        f"Intervals: 95% percentile bootstrap over problems and seeds ({task_results.BOOTSTRAP_DRAWS} draws); "
        f"'vs correct' is paired, against the correct set of the same recipe. Compute: "
        f"{utils.format_duration(train_s)} of single-core train + eval time.",
    ]
    text = demo_report.table(rows, before, majority, settings)
    utils.atomic_write_text(report_dir / "grid_results.md", text)
    demo_report.plot(rows, before, report_dir / "grid.png")
    demo_report.plot_losses(
        {r["name"]: out / "runs" / r["name"] / "seed0" / "metrics.jsonl" for r in rows
         if (out / "runs" / r["name"] / "seed0" / "metrics.jsonl").exists()},
        report_dir / "grid_loss_curves.png",
    )  # fmt: skip
    summary = {
        "before": before.mean(),
        "majority": majority,
        "rows": rows,
        "config": config,
        "commit": commit,
    }
    utils.atomic_write_text(out / "results.json", json.dumps(summary, indent=2, default=str) + "\n")
    print(text)
    return rows


def prior_report(out: Path, args: argparse.Namespace, report_dir: Path) -> list[dict]:
    """The prior sweep's table, figure and prior_results.json: per student, the facts it knows and its accuracy
    before SFT, and each content cell against that student's own correct set."""
    ids = [p["id"] for p in utils.read_jsonl(out / "data" / f"{TASK}.jsonl")]
    cells = [asdict(c) for c in CELLS if c.name in PRIOR_CELLS]
    students = {1.0: (args, out)} | {s: prior_student(args, out, s)[:2] for s in args.prior_scales if s != 1.0}
    entries = []
    for scale, (student_args, where) in sorted(students.items()):
        if not (where / "eval" / "before" / "results.json").exists():  # as run_all: a finished evaluation only
            continue
        runs = {}
        for cell in cells:
            for seed_dir in sorted((where / "eval" / cell["name"]).glob("seed*")):
                if (where / "runs" / cell["name"] / seed_dir.name / "result.json").exists():
                    runs.setdefault(cell["name"], []).append(problem_scores(seed_dir / "samples.jsonl", ids))
        before = problem_scores(where / "eval" / "before" / "samples.jsonl", ids)
        entries.append({
            "scale": scale,
            "pretraining_steps": tiny_model.pretraining_steps(scale),
            "facts": demo_report.facts_known(Path(student_args.student)),
            "before": task_results.bootstrap(before[None, :]),
            "rows": demo_report.summarise(cells, before, runs),
            "runs": runs,
        })  # fmt: skip
    text = demo_report.prior_table(entries, utils.code_commit(MADE_FROM), len(ids), args.seeds)
    utils.atomic_write_text(report_dir / "prior_sweep.md", text)
    demo_report.plot_prior(entries, report_dir / "prior_sweep.png")
    kept = [{k: v for k, v in e.items() if k != "runs"} for e in entries]
    utils.atomic_write_text(out / "prior_results.json", json.dumps(kept, indent=2, default=str) + "\n")
    print(text)
    return kept


def run_all(args: argparse.Namespace, out: Path, task_file: Path, students: dict) -> None:
    """Every (student, cell, seed) run not finished yet, in a pool of --jobs processes; each student is graded before
    SFT first. A missing prior-sweep student is pretrained in the pool, ahead of the runs, which start as workers free
    up; its own runs wait for it."""
    jobs = max(
        1, min(args.jobs or os.cpu_count() or 1, sum(len(names) for _, _, names in students.values()) * args.seeds)
    )
    pool = Inline() if jobs == 1 else ProcessPoolExecutor(
        jobs, mp_context=multiprocessing.get_context("spawn"), initializer=torch.set_num_threads, initargs=(1,)
    )  # fmt: skip
    with pool:  # the runs are independent, and one thread per run is fastest for a model this small (see setup)
        missing = [scale for scale, (a, _, _) in students.items() if not (Path(a.student) / "config.json").exists()]
        pretraining = {s: pool.submit(tiny_model.pretrain_student, students[s][0].student, 0, s) for s in missing}
        runs = []
        for scale, (student_args, where, names) in sorted(students.items(), key=lambda s: s[0] in pretraining):
            if scale in pretraining:  # it ran in the pool meanwhile
                pretraining[scale].result()
            if not (where / "eval" / "before" / "results.json").exists():
                evaluate_model(Path(student_args.student), task_file, where / "eval" / "before", args.max_new_tokens)
            todo = sorted(((c, s) for c in CELLS if c.name in names for s in range(args.seeds)),
                          key=lambda cs: -run_steps(args, cs[0]))  # fmt: skip  # longest first: workers end together
            runs += [pool.submit(run_cell, student_args, out, task_file, c, s, where) for c, s in todo]
        for run in runs:
            run.result()


def main(args: argparse.Namespace) -> list[dict]:
    # ---------------------------------------------------------------- setup
    t_start = time.time()
    # The model's matrices are too small to split across threads, and a second OpenMP thread that waits for a busy core
    # makes every op stall: measured 0.15 s per 750-token step on one thread, 0.1-2.4 s on two beside another process.
    torch.set_num_threads(1)
    grid_like = args.grid or args.prior_sweep
    out = Path(args.output_dir or ("out/grid" if grid_like else "out/demo"))
    out.mkdir(parents=True, exist_ok=True)
    config = check_config(out, args)
    task_file = out / "data" / f"{TASK}.jsonl"
    if args.report_only and not task_file.exists():
        raise SystemExit(f"{out}: no runs to report (no {task_file.name}); run without --report-only first")
    if not args.report_only:
        tiny_model.ensure_student(args.student)

        # ------------------------------------------------------------ data: held-out problems, teacher traces
        if not task_file.exists():
            shape = (args.min_ops, args.max_ops, synthetic.MAX_VALUE)
            utils.write_jsonl(task_file, synthetic.task_records(args.test_size, 0, *shape))
        teacher_traces(args, out / "data", wrong=False)

    # ---------------------------------------------------------------- the students, each before SFT, then every run
    # (args, where its runs go, cell names): the shipped student's runs are the grid's; a prior-sweep student has its
    # own folder, and is pretrained first where it is missing (minutes; 4x: ~40 min on one core).
    asked = [c for c in args.conditions.split(",") if c]
    students = {1.0: (args, out, asked + [c for c in PRIOR_CELLS if args.prior_sweep and c not in asked])}
    if args.prior_sweep:
        students |= {scale: prior_student(args, out, scale) for scale in args.prior_scales if scale != 1.0}
    if not args.report_only:
        run_all(args, out, task_file, students)

    # ---------------------------------------------------------------- report
    report_dir = Path(args.report_dir or ("docs" if grid_like else out))
    rows = report(out, config, report_dir) if asked else []  # the grid's table only where grid cells were asked
    if args.prior_sweep:
        prior_report(out, args, report_dir)
    print(f"wall time {utils.format_duration(time.time() - t_start)}")
    return rows


if __name__ == "__main__":
    main(parse_args())
