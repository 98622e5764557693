"""The miniature's statistics and report: intervals over problems and seeds, what the trained student writes, the
table and the figures (demo.py calls these; they read only evaluate.py's samples.jsonl and the trainers' metrics).

    python demo.py --grid --report-only   # redraw docs-style table and plots from a finished or partial grid

Accuracy of a cell is the mean over its seeds of the share of held-out problems answered right. Its 95% interval is
a percentile bootstrap that resamples problems and seeds together (the two sources of noise: which problems were
drawn, which data order / adapter init / perturbation draw a seed gave). The change against the correct set is
bootstrapped paired: the same resampled problems and seeds for both cells, so problem difficulty cancels.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

import markup
import reasoning_steps
import synthetic
import utils
from task_results import BOOTSTRAP_DRAWS, bootstrap, paired_bootstrap, percent_interval

REFLECTION = re.compile(r"\b(?:wait|check|verify)\b", re.I)  # the teacher's reflection words (synthetic.py)
FACT = re.compile(r"(?<!\d)(-?\d+) ([-+*]) (\d+) = (-?\d+)")  # "14 - 5 = 9", as synthetic.py writes a fact
# The paper's Table 2 (v1; average of MATH500, AIME24, AMC23, OlympiadBench), full SFT of Qwen2.5-32B-Instruct on
# ~5k QwQ math traces; "before" is the base model. Source: paper v1 (arXiv 2502.07374), Table 2, as in docs/paper.md.
PAPER_TABLE_2 = {
    "before": 56.7, "correct": 66.3, "wrong": 63.1,
    "digits20": 64.5, "digits50": 64.2, "digits70": 62.0, "digits100": 2.7,
    "keywords20": 62.3, "keywords50": 65.9, "keywords100": 63.0,
    "shuffle33": 62.3, "shuffle67": 57.2, "shuffle100": 56.1,
    "delete33": 62.3, "delete67": 53.5, "delete100": 49.5,
    "insert33": 63.7, "insert67": 52.0, "insert100": 44.5,
}  # fmt: skip


def response_structure(samples_file: Path) -> dict:
    """What the model writes: mean tokens, thought steps (reasoning_steps.split_steps, as perturb.py cuts them),
    reflection words per response, the share of its arithmetic facts that are true (nan if it writes none: is its
    arithmetic what a content perturbation damaged?), and the share that ends with a boxed final answer."""
    samples = utils.read_jsonl(samples_file)
    steps, reflections, facts = [], [], []
    for s in samples:
        thought = markup.split_thought(s["response"]).thought or ""
        steps.append(len(reasoning_steps.split_steps(thought, synthetic.STEP_MIN_CHARS)[0]) if thought.strip() else 0)
        reflections.append(len(REFLECTION.findall(s["response"])))
        facts += [synthetic.OPS[op](int(a), int(b)) == int(c) for a, op, b, c in FACT.findall(s["response"])]
    return {
        "tokens": float(np.mean([s["tokens"] for s in samples])),
        "steps": float(np.mean(steps)),
        "reflections": float(np.mean(reflections)),
        "facts_right": float(np.mean(facts)) if facts else float("nan"),
        "final_answer": float(np.mean(["\\boxed{" in s["response"] for s in samples])),
    }


def summarise(cells: list[dict], before: np.ndarray, runs: dict[str, list[np.ndarray]]) -> list[dict]:
    """One row per cell that has finished seeds: accuracy and change vs the correct set of the same recipe (and
    the same number of steps), with intervals."""
    rows = []
    for cell in cells:
        seeds = runs.get(cell["name"])
        if not seeds:
            continue
        matrix = np.stack(seeds)
        reference = runs.get(cell["reference"]) if cell["reference"] != cell["name"] else None
        row = {**cell, "seeds": len(seeds), "accuracy": bootstrap(matrix)}
        row["vs_correct"] = bootstrap(matrix, np.stack(reference)) if reference else None
        rows.append(row)
    return rows


def table(rows: list[dict], before: np.ndarray, majority: float, settings: list[str]) -> str:
    b = bootstrap(before[None, :])
    lines = [
        *settings,
        "",
        f"Before SFT (the pretrained student, its own short chains): {percent_interval(*b)}%. "
        f"Always answering the commonest answer: {100 * majority:.1f}%.",
        "",
        "| cell | recipe | seeds | accuracy % [95% CI] | vs correct, points [95% CI] | paper (Table 2) | tokens "
        "| steps | reflection words | facts right % | final answer % | loss first -> last |",
        "|---|---|---:|---|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        delta = percent_interval(*r["vs_correct"], signed=True) if r["vs_correct"] else ""
        paper = PAPER_TABLE_2.get(r["paper_cell"]) if r["paper_cell"] else None
        paper_text = f"{paper} ({paper - PAPER_TABLE_2['correct']:+.1f})" if paper is not None else ""
        s = r["structure"]
        facts = "-" if np.isnan(s["facts_right"]) else f"{100 * s['facts_right']:.0f}"
        lines.append(
            f"| {r['label']} | {r['recipe']} | {r['seeds']} | {percent_interval(*r['accuracy'])} | {delta} | "
            f"{paper_text} | {s['tokens']:.0f} | {s['steps']:.1f} | {s['reflections']:.1f} | {facts} | "
            f"{100 * s['final_answer']:.0f} | {r['first_loss']:.3f} -> {r['last_loss']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], before: np.ndarray, path: Path) -> None:
    """Accuracy per cell with 95% error bars, content and structure halves side by side, each after the correct
    set it is compared with, the paper's Table 2 average beside ours where the paper has the cell, and the student
    before SFT as a dashed line."""
    halves = {half: [r for r in rows if r["half"] in ("reference", half)] for half in ("content", "structure")}
    fig, axes = utils.pyplot().subplots(
        1, 2, figsize=(13, 4.5), sharey=True, gridspec_kw={"width_ratios": [max(1, len(v)) for v in halves.values()]}
    )
    colours = {"full": "tab:blue", "lora": "tab:orange"}
    for ax, (half, members) in zip(axes, halves.items()):
        x = np.arange(len(members))
        acc = np.array([r["accuracy"] for r in members]).reshape(-1, 3) * 100
        ax.bar(
            x - 0.2,
            acc[:, 0],
            0.4,
            yerr=[acc[:, 0] - acc[:, 1], acc[:, 2] - acc[:, 0]],
            capsize=3,
            color=[colours[r["recipe"]] for r in members],
        )
        paper = [PAPER_TABLE_2.get(r["paper_cell"] or "", np.nan) for r in members]
        ax.bar(x + 0.2, paper, 0.4, color="lightgrey", edgecolor="grey")
        ax.axhline(100 * before.mean(), color="grey", linestyle="--", linewidth=1)
        ax.set_xticks(x, [f"{r['label']}\n({r['recipe']})" for r in members], rotation=60, fontsize=7)
        ax.set_title(f"{half} perturbations and references")
        ax.grid(axis="y", alpha=0.3)
        ax.set_ylim(0, 100)  # room above the bars for the legend
    axes[0].set_ylabel("held-out accuracy (%)")
    handles = [utils.pyplot().Rectangle((0, 0), 1, 1, color=c) for c in (*colours.values(), "lightgrey")]
    axes[1].legend(
        handles + [axes[0].lines[0]],
        ["miniature, full SFT (95% CI)", "miniature, LoRA (95% CI)", "paper Table 2 (full SFT, 32B)", "before SFT"],
        fontsize=7,
        loc="upper right",
    )
    fig.tight_layout()
    utils.save_figure(fig, path, dpi=120)


def facts_known(model_dir: Path) -> dict:
    """How well a student knows the facts its problems use (synthetic.facts with a digit 1-9 on the right), the prior
    the sweep varies: the share of facts whose every result token is the model's top choice after "Evaluate a op b."
    and "a op b = ", and the mean probability it gives the whole right result."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    known, probs = [], []
    facts = [(a, op, b) for a, op, b in synthetic.facts(synthetic.MAX_VALUE) if 1 <= b <= 9]  # a problem's operand
    for start in range(0, len(facts), 128):
        texts, starts = [], []
        for a, op, b in facts[start : start + 128]:
            prompt = [{"role": "user", "content": f"Evaluate {a} {op} {b}."}]
            head = (
                tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True) + f"{a} {op} {b} = "
            )
            texts.append(f"{head}{synthetic.OPS[op](a, b)}.")
            starts.append(len(head))
        batch = tokenizer(texts, return_offsets_mapping=True, padding=True, return_tensors="pt")
        with torch.no_grad():
            logp = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.log_softmax(-1)
        for i, head_end in enumerate(starts):
            spans = batch["offset_mapping"][i].tolist()
            end = len(texts[i]) - 1  # the result's digits, not the full stop
            positions = [t for t, (a, b) in enumerate(spans) if head_end <= a < end and b > a]
            targets = batch["input_ids"][i, positions]
            predicted = logp[i, [t - 1 for t in positions]]
            known.append(bool((predicted.argmax(-1) == targets).all()))
            probs.append(float(predicted.gather(-1, targets[:, None]).sum().exp()))
    return {"facts": len(facts), "known": float(np.mean(known)), "mean_probability": float(np.mean(probs))}


def cost_change(
    strong: tuple[np.ndarray, np.ndarray], weak: tuple[np.ndarray, np.ndarray], draws: int = BOOTSTRAP_DRAWS
) -> tuple[float, float, float]:
    """How much a perturbation's cost (cell - its correct set) differs between two students: (strong cell - strong
    correct) - (weak cell - weak correct), with a 95% interval; problems resampled once per draw for all four
    (paired), seeds per matrix."""
    (cell, correct), (weak_cell, weak_correct) = strong, weak
    return paired_bootstrap([(cell, 1.0), (correct, -1.0), (weak_cell, -1.0), (weak_correct, 1.0)], draws)


def prior_table(entries: list[dict], commit: str, problems: int, seeds: int) -> str:
    """The prior sweep as markdown: one row per student, the digits cells as cost against its own correct set, and
    how much each cost changes from the weakest to the strongest student."""
    names = ["wrong", "digits20", "digits50", "digits100"]
    lines = [
        f"The prior sweep (`python demo.py --prior-sweep --seeds {seeds}`, commit {commit}): students pretrained "
        "for a multiple of the shipped student's steps, each trained with full SFT on the same traces and graded on "
        f"the same {problems} held-out problems. Facts known: the share of the task's facts the student completes "
        "right (greedy), and the mean probability of the right result. Costs are paired against the same student's "
        "correct set; 95% bootstrap intervals over problems and seeds.",
        "",
        "| pretraining | facts known % (mean p) | before SFT % | correct % | wrong answers, points | digits 20% | "
        "digits 50% | digits 100% |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for e in entries:
        rows = {r["name"]: r for r in e["rows"]}
        correct = percent_interval(*rows["correct"]["accuracy"]) if "correct" in rows else ""
        costs = [percent_interval(*rows[n]["vs_correct"], signed=True) if rows.get(n, {}).get("vs_correct") else ""
                 for n in names]  # fmt: skip
        f = e["facts"]
        lines.append(
            f"| {e['scale']:g}x ({e['pretraining_steps']} steps) | {100 * f['known']:.1f} "
            f"({f['mean_probability']:.2f}) | {percent_interval(*e['before'])} | {correct} | {' | '.join(costs)} |"
        )
    done = [e for e in entries if "correct" in e["runs"]]
    for weak, strong in zip(done, done[1:]):  # each student against the next weaker one
        lines += ["", f"Change of each cost from the {weak['scale']:g}x to the {strong['scale']:g}x student "
                  "(positive: the stronger prior loses less), points [95% CI]:", ""]  # fmt: skip
        for n in (n for n in names if n in weak["runs"] and n in strong["runs"]):
            pair = [(np.stack(e["runs"][n]), np.stack(e["runs"]["correct"])) for e in (strong, weak)]
            lines.append(f"- {n}: {percent_interval(*cost_change(*pair), signed=True)}")
    return "\n".join(lines) + "\n"


def plot_prior(entries: list[dict], path: Path) -> None:
    """Cost of each content cell against prior strength (pretraining steps, log scale), with 95% error bars; and
    the correct set, the student before SFT and the facts it knows on the right."""
    fig, (left, right) = utils.pyplot().subplots(1, 2, figsize=(11, 4))
    x = np.array([e["pretraining_steps"] for e in entries])
    for name, colour in (("wrong", "tab:green"), ("digits20", "tab:orange"), ("digits50", "tab:red"),
                         ("digits100", "tab:purple")):  # fmt: skip
        points = [next((r["vs_correct"] for r in e["rows"] if r["name"] == name and r["vs_correct"]), None)
                  for e in entries]  # fmt: skip
        have = [i for i, p in enumerate(points) if p]
        if have:
            v = np.array([points[i] for i in have]) * 100
            left.errorbar(x[have], v[:, 0], yerr=[v[:, 0] - v[:, 1], v[:, 2] - v[:, 0]], capsize=3, marker="o",
                          color=colour, label=name)  # fmt: skip
    left.axhline(0, color="grey", linewidth=1)
    left.set(xscale="log", xlabel="pretraining steps of the student", ylabel="points vs its correct set",
             title="cost of each content perturbation")  # fmt: skip
    left.legend(fontsize=7)
    for key, label, colour in (("correct", "correct set", "tab:blue"), ("before", "before SFT", "grey")):
        v = [e["before"] if key == "before" else next((r["accuracy"] for r in e["rows"] if r["name"] == key), None)
             for e in entries]  # fmt: skip
        have = [i for i, p in enumerate(v) if p]
        a = np.array([v[i] for i in have]) * 100
        if have:
            right.errorbar(x[have], a[:, 0], yerr=[a[:, 0] - a[:, 1], a[:, 2] - a[:, 0]], capsize=3, marker="o",
                           color=colour, label=label)  # fmt: skip
    right.plot(x, [100 * e["facts"]["known"] for e in entries], marker="s", color="black", label="facts known")
    right.set(xscale="log", xlabel="pretraining steps of the student", ylabel="%", ylim=(0, 100),
              title="the student: facts, before and after SFT")  # fmt: skip
    right.legend(fontsize=7)
    for ax in (left, right):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    utils.save_figure(fig, path, dpi=120)


def plot_losses(metrics_files: dict[str, Path], path: Path) -> None:
    fig, ax = utils.pyplot().subplots(figsize=(8, 4.5))
    for name, metrics_file in metrics_files.items():
        metrics = utils.read_jsonl(metrics_file)
        ax.plot([m["step"] for m in metrics], [m["loss"] for m in metrics], label=name, linewidth=1)
    ax.set(xlabel="optimizer step", ylabel="train loss (per target token)", yscale="log", title="Training loss, seed 0")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, ncol=3)
    fig.tight_layout()
    utils.save_figure(fig, path, dpi=120)
