"""Benchmark 2: how much of each micro-batch is real tokens, padded batching vs our packing (pure computation, seconds).

    python bench/packing.py            # synthetic Sky-T1-like lengths (17k samples) + real long-CoT if available
    python bench/packing.py --quick    # smoke test

For every optimizer step of one epoch (samples-per-step samples, shuffled as train_lora.py does), each strategy splits
the step into micro-batches of at most --micro-batch-tokens tokens:
  padded      sft.pad_step: rows sorted by length, every row padded to the longest (the --no-packing baseline)
  packed      sft.pack_step: first-fit decreasing into one row per micro-batch, no padding (train_lora.py's default)
  sequential  naive packing in data order (next-fit, no sorting, samples never cut), as simple packing collators do
  one_per_batch  batch size 1 with gradient accumulation (no padding, no packing), the common long-CoT SFT setting
Reported: micro-batches (forward passes) per epoch; fill = real tokens / (micro-batches x token budget), the share of
the memory budget that does useful work; and for padded, real / computed tokens (the rest is padding the GPU computes).

Length distributions: "synthetic": lognormal (median 5000, sigma 0.5) clipped to [300, 16384], 17k samples, like
Sky-T1_data_17k (most traces 2k-12k tokens, a tail to 16k). "real": the 43 long-CoT traces of
data/sample/sky_t1_minerva_math.jsonl (the paper's own Minerva outputs, data/sample/README.md; or any --real file),
chat-templated with the Sky-T1 system prompt and tokenized with the tiny tokenizer (these traces are short, ~1.5k
tokens).
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import sys
from pathlib import Path

from common import (
    REPO_DIR,
    add_common_args,
    machine_info,
    machine_line,
    markdown_table,
    repo_path,
    save_results,
    tiny_model,
)

import markup
import sft
import utils

REAL_COT = REPO_DIR / "data" / "sample" / "sky_t1_minerva_math.jsonl"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--samples", type=int, default=17000, help="synthetic dataset size (Sky-T1: 17k)")
    p.add_argument("--median", type=float, default=5000, help="median synthetic length in tokens")
    p.add_argument("--sigma", type=float, default=0.5, help="lognormal spread: 0.5 puts 90%% of samples in 2.2k-11.4k")
    p.add_argument("--max-length", type=int, default=16384, help="longest sample (the paper's 16k context)")
    p.add_argument("--budgets", default="16384,32768", help="comma list of --micro-batch-tokens values")
    p.add_argument("--samples-per-step", type=int, default=96, help="global batch in samples (paper: 96)")
    p.add_argument("--real", default=str(REAL_COT), help="real long-CoT JSONL (problem/response); skipped if absent")
    p.add_argument("--model", help="tokenizer folder for the real traces (default: a cached tiny model)")
    p.add_argument("--seed", type=int, default=0, help="length sampling and epoch shuffle")
    add_common_args(p)
    args = p.parse_args(argv)
    if args.quick:
        args.samples, args.budgets = 600, "16384"
    return args


def synthetic_lengths(n: int, median: float, sigma: float, max_length: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    return [min(max_length, max(300, round(rng.lognormvariate(math.log(median), sigma)))) for _ in range(n)]


def real_lengths(path: Path, model_dir: str | None) -> list[int] | None:
    if not path.exists():
        print(f"real long-CoT file {path} not found: skipping the real distribution")
        return None
    tokenizer = utils.load_tokenizer(model_dir or str(tiny_model()))
    conversations = [
        sft.to_messages({"system": markup.SKY_T1_SYSTEM_PROMPT, "prompt": r["problem"], "response": r["response"]})
        for r in utils.read_jsonl(path)
    ]
    return [len(ids) for record in sft.tokenize_conversations(tokenizer, conversations) for ids, _ in record.sequences]


def pack_sequential(sample_ids: list[int], lengths: list[int], budget: int) -> list[list[int]]:
    """Naive packing: in data order, open a new micro-batch whenever the next sample does not fit."""
    bins, used = [], budget + 1
    for i in sample_ids:
        if used + lengths[i] > budget:
            bins.append([])
            used = 0
        bins[-1].append(i)
        used += lengths[i]
    return bins


def pack_one_per_batch(sample_ids: list[int], lengths: list[int], budget: int) -> list[list[int]]:
    """One sample per forward pass: per_device_train_batch_size=1 + gradient accumulation, the usual long-CoT recipe."""
    return [[i] for i in sample_ids]


STRATEGIES = {
    "padded": sft.pad_step,
    "packed": sft.pack_step,
    "sequential": pack_sequential,
    "one_per_batch": pack_one_per_batch,
}


def measure_epoch(lengths: list[int], budget: int, samples_per_step: int, seed: int, pack) -> dict:
    n_micro, computed, per_micro_fill = 0, 0, []
    steps = math.ceil(len(lengths) / samples_per_step)
    for step in range(steps):
        for micro in pack(sft.step_sample_ids(len(lengths), samples_per_step, seed, step), lengths, budget):
            real = sum(lengths[i] for i in micro)
            computed += len(micro) * max(lengths[i] for i in micro) if pack is sft.pad_step else real
            per_micro_fill.append(real / budget)
            n_micro += 1
    real_total = sum(lengths)
    return {
        "micro_batches_per_epoch": n_micro,
        "micro_batches_per_step": n_micro / steps,
        "fill": real_total / (n_micro * budget),
        "median_micro_fill": statistics.median(per_micro_fill),
        "real_over_computed": real_total / computed,
    }


def main(args: argparse.Namespace) -> dict:
    machine = machine_info()
    distributions = {"synthetic": synthetic_lengths(args.samples, args.median, args.sigma, args.max_length, args.seed)}
    real = None if args.quick and not args.model else real_lengths(Path(args.real), args.model)
    if real:
        distributions["real"] = real
    rows = []
    for dist, lengths in distributions.items():
        for budget in [int(b) for b in args.budgets.split(",")]:
            for name, pack in STRATEGIES.items():
                rows.append(
                    {
                        "lengths": dist,
                        "samples": len(lengths),
                        "mean_len": statistics.mean(lengths),
                        "micro_batch_tokens": budget,
                        "strategy": name,
                        **measure_epoch(lengths, budget, args.samples_per_step, args.seed, pack),
                    }
                )
    ratios = []
    for row in rows:
        if row["strategy"] == "packed":
            padded = next(
                r
                for r in rows
                if r["strategy"] == "padded"
                and r["lengths"] == row["lengths"]
                and r["micro_batch_tokens"] == row["micro_batch_tokens"]
            )
            ratios.append(
                {
                    "lengths": row["lengths"],
                    "micro_batch_tokens": row["micro_batch_tokens"],
                    "fill_packed_over_padded": row["fill"] / padded["fill"],
                    "forward_passes_padded_over_packed": (
                        padded["micro_batches_per_epoch"] / row["micro_batches_per_epoch"]
                    ),
                }
            )
    columns = [
        "lengths",
        "samples",
        "mean_len",
        "micro_batch_tokens",
        "strategy",
        "micro_batches_per_epoch",
        "micro_batches_per_step",
        "fill",
        "median_micro_fill",
        "real_over_computed",
    ]
    table = markdown_table(rows, columns)
    ratio_table = markdown_table(
        ratios, ["lengths", "micro_batch_tokens", "fill_packed_over_padded", "forward_passes_padded_over_packed"]
    )
    print(table + "\n\n" + ratio_table)
    notes = (
        f"samples-per-step {args.samples_per_step}; "
        f"synthetic = lognormal(median {args.median:g}, sigma {args.sigma}) clipped to [300, {args.max_length}], "
        f"seed {args.seed}; real = {repo_path(args.real)}"
        + ("" if real else " (absent: skipped)")
        + ", chat-templated, tiny tokenizer. fill = real tokens / (micro-batches x budget)."
    )
    markdown = f"{machine_line(machine)}\n\n`python bench/packing.py`: {notes}\n\n{table}\n\nRatios:\n\n{ratio_table}\n"
    payload = {"benchmark": "packing", "machine": machine, "config": vars(args), "rows": rows, "ratios": ratios}
    save_results(args, "packing", "2. Packing efficiency", payload, markdown)
    return payload


if __name__ == "__main__":
    main(parse_args(sys.argv[1:]))
