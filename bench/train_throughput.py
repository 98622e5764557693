"""Benchmark 3: training throughput on CPU, packed vs padded batches, as a ratio measured in one interleaved run.

    python bench/train_throughput.py            # tiny model, 48 samples of long-CoT-shaped lengths, 3 rounds (~10 min)
    python bench/train_throughput.py --quick    # smoke test

Each round runs train_lora.py (in this process, so imports are paid once) on the same data and steps, once packed
(default) and once with --no-packing, alternating which goes first so machine load hits both alike. Throughput = real
tokens (the `tokens` of metrics.jsonl, which never counts padding) / wall time of the optimizer steps (the sum of the
per-step times; tokenization, model load and saving are the same for both and left out). The absolute numbers belong
to a tiny model on a CPU; the ratio is the point. Lengths follow the Sky-T1 shape scaled down 8x so a CPU can afford
them: lognormal with median 625 tokens clipped to [100, 2048] (max-length 2048 = micro-batch-tokens, 16 samples/step).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import random
import statistics
import sys
from pathlib import Path

from common import (
    SCRATCH_DIR,
    add_common_args,
    chars_per_token,
    machine_info,
    machine_line,
    markdown_table,
    sample_records,
    save_results,
    sky_t1_response,
    tiny_model,
)

import sft
import train_lora
import utils


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="model folder (default: a cached tiny model, vocab 4096, hidden 64)")
    p.add_argument("--samples", type=int, default=48, help="records in the generated training file (one epoch is run)")
    p.add_argument("--median", type=float, default=625, help="median sample length in tokens")
    p.add_argument("--sigma", type=float, default=0.5, help="lognormal spread of lengths")
    p.add_argument("--max-length", type=int, default=2048, help="longest sample; also the micro-batch token budget")
    p.add_argument("--samples-per-step", type=int, default=16, help="global batch in samples")
    p.add_argument(
        "--rounds", type=int, default=3, help="interleaved packed/padded pairs; the median round is reported"
    )
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads; 1 because on a shared machine a spinning second thread loses 4-9x",
    )
    p.add_argument("--seed", type=int, default=0, help="lengths and data order")
    add_common_args(p)
    args = p.parse_args(argv)
    if args.quick:
        args.samples, args.median, args.max_length, args.samples_per_step, args.rounds = 4, 100, 256, 4, 1
    return args


def make_data(tokenizer, args: argparse.Namespace) -> Path:
    name = f"throughput-{args.samples}-{args.median:g}-{args.sigma}-{args.max_length}-{args.seed}.jsonl"
    path = SCRATCH_DIR / "data" / name
    if path.exists():
        return path
    rng = random.Random(args.seed)
    ratio = chars_per_token(tokenizer)
    pieces = [r["response"] for r in sample_records()]
    records = []
    for _ in range(args.samples):
        tokens = min(args.max_length - 64, max(100, round(rng.lognormvariate(math.log(args.median), args.sigma))))
        base = rng.choice(sample_records())
        records.append(
            {
                "prompt": base["prompt"],
                "response": sky_t1_response(rng, pieces, int((tokens - 40) * ratio), base["answer"]),
            }
        )
    utils.write_jsonl(path, records)
    return path


def sample_lengths(model_dir: Path, data: Path) -> list[int]:
    """Token count of each training sample, as train_lora.py tokenizes them."""
    conversations = sft.load_conversations([str(data)])[0]
    tokenized = sft.tokenize_conversations(utils.load_tokenizer(str(model_dir)), conversations)
    return [len(ids) for record in tokenized for ids, _ in record.sequences]


def one_run(
    args: argparse.Namespace, model_dir: Path, data: Path, packing: bool, round_index: int, max_steps: int = 0
) -> dict:
    out = SCRATCH_DIR / "runs" / f"throughput-{'packed' if packing else 'padded'}-{round_index}"
    metrics = out / "metrics.jsonl"
    metrics.unlink(missing_ok=True)
    argv = [
        "--data",
        str(data),
        "--model",
        str(model_dir),
        "--output-dir",
        str(out),
        "--quant",
        "none",
        "--lora-rank",
        "16",
        "--lora-alpha",
        "32",
        "--epochs",
        "1",
        "--samples-per-step",
        str(args.samples_per_step),
        "--micro-batch-tokens",
        str(args.max_length),
        "--max-length",
        str(args.max_length),
        "--save-every",
        "0",
        "--seed",
        str(args.seed),
        "--max-steps",
        str(max_steps),
    ] + ([] if packing else ["--no-packing"])
    with contextlib.redirect_stdout(io.StringIO()):
        train_lora.main(train_lora.parse_args(argv))
    steps = utils.read_jsonl(metrics)
    tokens = sum(r["tokens"] for r in steps)
    step_seconds = sum(r["tokens"] / r["tokens_per_s"] for r in steps)
    pack = sft.pack_step if packing else sft.pad_step
    lengths = sample_lengths(model_dir, data)
    micros = []
    for k in range(len(steps)):
        micros += pack(sft.step_sample_ids(len(lengths), args.samples_per_step, args.seed, k), lengths, args.max_length)
    sizes = [[lengths[i] for i in m] for m in micros]
    # What the CPU actually computes: SDPA has no variable-length kernel, so a packed row attends densely over the
    # whole row (the block-diagonal mask only zeroes the cross-sample part), while a padded batch attends over
    # rows x longest^2.
    if packing:
        computed = sum(sum(s) for s in sizes)
        dense_pairs = sum(sum(s) ** 2 for s in sizes)
    else:
        computed = sum(len(s) * max(s) for s in sizes)
        dense_pairs = sum(len(s) * max(s) ** 2 for s in sizes)
    row = {
        "batching": "packed" if packing else "padded",
        "round": round_index,
        "steps": len(steps),
        "micro_batches": len(micros),
        "real_tokens": tokens,
        "computed_tokens": computed,
        "attention_pairs_m": dense_pairs / 1e6,
        "step_s": step_seconds,
        "tokens_per_s": tokens / step_seconds,
    }
    print("  ", row, flush=True)
    return row


def main(args: argparse.Namespace) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    machine = machine_info()
    model_dir = Path(args.model) if args.model else tiny_model()
    data = make_data(utils.load_tokenizer(str(model_dir)), args)
    if not args.quick:
        # the first call pays one-time costs (lazy imports, kernel selection) that neither side should carry
        print("warm-up (untimed): one packed step ...", flush=True)
        one_run(args, model_dir, data, True, -1, max_steps=1)
    rows = []
    for round_index in range(args.rounds):
        order = [True, False] if round_index % 2 == 0 else [False, True]
        for packing in order:
            print(f"round {round_index + 1}/{args.rounds}: {'packed' if packing else 'padded'} ...", flush=True)
            rows.append(one_run(args, model_dir, data, packing, round_index))
    per_round = []
    for k in range(args.rounds):
        speed = {r["batching"]: r["tokens_per_s"] for r in rows if r["round"] == k}
        per_round.append({"round": k, "packed_over_padded": speed["packed"] / speed["padded"]})
    summary = {"median_packed_over_padded": statistics.median(r["packed_over_padded"] for r in per_round)}
    table = markdown_table(
        rows,
        [
            "batching",
            "round",
            "steps",
            "micro_batches",
            "real_tokens",
            "computed_tokens",
            "attention_pairs_m",
            "step_s",
            "tokens_per_s",
        ],
    )
    ratio_table = markdown_table(per_round, ["round", "packed_over_padded"])
    print(f"\n{table}\n\n{ratio_table}\n")
    print(f"median packed / padded real tokens/s: {summary['median_packed_over_padded']:.2f}x")
    lengths = sample_lengths(model_dir, data)
    notes = (
        f"tiny model {model_dir.name}, fp32 CPU, LoRA rank 16 (--quant none), {len(lengths)} samples "
        f"(tokens: mean {statistics.mean(lengths):.0f}, min {min(lengths)}, max {max(lengths)}), "
        f"{args.samples_per_step} samples/step, micro-batch-tokens = max-length = {args.max_length}, "
        f"{args.threads} torch thread(s), one epoch per run, {args.rounds} interleaved rounds after one untimed "
        "warm-up step. tokens_per_s = real tokens / wall time of the optimizer steps. computed_tokens counts padding; "
        "attention_pairs_m = millions of query-key pairs SDPA computes (no varlen kernel on CPU: a packed row is "
        "attended densely under a block-diagonal mask; FlashAttention-2 varlen on GPU computes only sum(len^2))."
    )
    markdown = (
        f"{machine_line(machine)}\n\n`python bench/train_throughput.py`: {notes}\n\n{table}\n\n{ratio_table}\n\n"
        f"Median packed / padded real tokens/s: **{summary['median_packed_over_padded']:.2f}x**.\n"
    )
    payload = {
        "benchmark": "train_throughput",
        "machine": machine,
        "config": vars(args),
        "rows": rows,
        "ratios": per_round,
        "summary": summary,
    }
    save_results(args, "train_throughput", "3. Training throughput on CPU", payload, markdown)
    return payload


if __name__ == "__main__":
    main(parse_args(sys.argv[1:]))
