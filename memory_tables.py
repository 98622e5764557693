"""The tables of what fits which GPU (docs/fit.md, docs/long-context.md): planner estimates (memory_plan.py; speed:
throughput.py), labelled so until a GPU measures them (bench/gpu.py). Each is generated here, so that it can be
regenerated when the planner changes; tests/test_memory_plan.py checks that the docs hold the generated tables.

    python memory_tables.py --fit-table        # QLoRA of Qwen2.5 1.5B-32B on one T4, L4, A100 40/80 GB
    python memory_tables.py --long-context     # bf16 LoRA and full SFT of 7B-32B on 2-8 x 80 GB, with and without SP
"""

from __future__ import annotations

import argparse

from memory_activations import sequence_parallel_sizes
from memory_plan import DEFAULT_GPU_GIB, FIT_STEP, fit, longest_fitting, model_shapes
from throughput import MEAN_SAMPLE_TOKENS, MFU, peak_tflops, tokens_per_second

# Memory as torch reports it (GiB): T4 15,843,721,216 bytes and A100 40 GB 42,405,855,232 bytes (CUDA deviceQuery);
# L4: nvidia-smi's 23,034 MiB less the ~0.25-0.5 GiB the driver keeps (as on T4 and A100); 80 GB: the planner's default.
# A T4 (compute capability 7.5) has no FlashAttention-2: utils.pick_attention gives it SDPA.
TABLE_GPUS = (
    ("T4 16 GB", 14.76, "T4", "sdpa"),
    ("L4 24 GB", 22.0, "L4", "flash_attention_2"),
    ("A100 40 GB", 39.49, "A100", "flash_attention_2"),
    ("A100 80 GB", DEFAULT_GPU_GIB, "A100", "flash_attention_2"),
)
TABLE_MODELS = ("Qwen/Qwen2.5-1.5B-Instruct", "Qwen/Qwen2.5-7B-Instruct", "Qwen/Qwen2.5-14B-Instruct")
TABLE_MODELS += ("Qwen/Qwen2.5-32B-Instruct",)
TABLE_LIMIT = 32768  # Qwen2.5's native context (max_position_embeddings); the paper trains at 16384


def fit_table(limit: int = TABLE_LIMIT, step: int = FIT_STEP) -> tuple[list[dict], str]:
    """QLoRA (rank 64, all linears, one GPU, checkpointing on) of each model on each GPU: the longest sample that
    fits, what it needs, and the estimated throughput. Returns the rows and docs/fit.md's markdown table."""
    rows = []
    for model in TABLE_MODELS:
        for gpu, gib, kind, attention in TABLE_GPUS:
            settings = {"mode": "qlora", "lora_rank": 64, "gpu_gib": gib, "attention": attention}
            result = fit(model, limit, step, **settings)
            without = fit(model, limit, step, offload_available=False, **settings)["tokens"]
            tokens = result["tokens"]
            speed = tokens_per_second(model, peak_tflops(kind), min(MEAN_SAMPLE_TOKENS, tokens / 2)) if tokens else 0
            rows.append({"model": model, "gpu": gpu, "gpu_gib": gib, "attention": attention, "tokens": tokens})
            rows[-1].update(flags=result["flags"], total_gib=result["plan"]["total"], tokens_per_s=speed)
            rows[-1]["without_offload"] = without
    lines = [
        "| model | GPU (GiB usable, attention) | longest sample, tokens | needs | est. peak | without offload | "
        f"est. tokens/s (MFU {MFU}) | est. hours per 10M tokens |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        name = row["model"].removeprefix("Qwen/").removesuffix("-Instruct")
        gpu = f"{row['gpu']} ({row['gpu_gib']:.1f}, {'FA2' if row['attention'] == 'flash_attention_2' else 'SDPA'})"
        if not row["tokens"]:
            lines.append(f"| {name} | {gpu} | does not fit | | | | | |")
            continue
        tokens = f"{row['tokens']}" + (" (the cap)" if row["tokens"] == limit else "")
        needs = " ".join(f"`{flag}`" for flag in row["flags"]) or "nothing more"
        hours = 1e7 / row["tokens_per_s"] / 3600
        without = row["without_offload"] or "does not fit"
        lines.append(
            f"| {name} | {gpu} | {tokens} | {needs} | {row['total_gib']:.1f} GiB | {without} | "
            f"{row['tokens_per_s']:,.0f} | {hours:.1f} |"
        )
    return rows, "\n".join(lines)


# ----------------------------------------------------------------------------- long context: sequence parallelism

LONG_MODELS = ("Qwen/Qwen2.5-7B-Instruct", "Qwen/Qwen2.5-14B-Instruct", "Qwen/Qwen2.5-32B-Instruct")
LONG_GPUS = (2, 4, 8)
# the search's cap: Qwen2.5-7B/14B-Instruct-1M (the same shapes) read 1M tokens; the others 32768, 131072 with YaRN
LONG_LIMIT = 2**20
LONG_RUNS = (  # (name in the table, the trainer flags, estimate()'s settings)
    ("bf16 LoRA", "train_lora.py --quant none --fsdp", {"mode": "lora", "fsdp": True, "lora_rank": 64}),
    ("full SFT", "train_full.py --cpu-offload", {"mode": "full", "cpu_offload": True}),
)


def long_context_table(limit: int = LONG_LIMIT, step: int = FIT_STEP) -> tuple[list[dict], str]:
    """The longest sample (one sample a packed row, gradient checkpointing on, FlashAttention-2, 80 GB cards) for bf16
    LoRA (rank 64, FSDP2) and full SFT (FSDP2 with CPU offload) of each model on 2, 4 and 8 GPUs, without sequence
    parallelism and with each row split over all the GPUs (or the most that divide the model's query heads: 7B has
    28). Returns the rows and docs/long-context.md's markdown table."""
    rows = []
    for model in LONG_MODELS:
        heads = model_shapes(model)["heads"]
        for run, command, settings in LONG_RUNS:
            for gpus in LONG_GPUS:
                sp = max(sequence_parallel_sizes(heads, gpus))
                row = {"model": model, "run": run, "command": command, "gpus": gpus, "sequence_parallel": sp}
                for n, key in ((1, "sp1"), (sp, "spn")):
                    planned = {**settings, "n_gpus": gpus, "sequence_parallel": n, "gpu_gib": DEFAULT_GPU_GIB}
                    row[key] = longest_fitting(model, limit, step, **planned)
                rows.append(row)
    lines = [
        "| model | training | GPUs | longest sample, SP 1 | longest sample, SP = GPUs |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        name = row["model"].removeprefix("Qwen/").removesuffix("-Instruct")
        heads = model_shapes(row["model"])["heads"]
        short = f" ({heads} query heads)" if row["sequence_parallel"] < row["gpus"] else ""
        spn = "does not fit" if not row["spn"] else f"{row['spn']}"
        lines.append(
            f"| {name} | {row['run']} (`{row['command']}`) | {row['gpus']} x 80 GB | {row['sp1'] or 'does not fit'} | "
            f"{spn} at SP {row['sequence_parallel']}{short} |"
        )
    return rows, "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--fit-table", action="store_true", help="QLoRA of Qwen2.5 on one T4, L4, A100 40 GB or 80 GB")
    p.add_argument("--long-context", action="store_true", help="bf16 LoRA and full SFT on 2-8 x 80 GB, SP 1 and N")
    args = p.parse_args(argv)
    if not (args.fit_table or args.long_context):
        p.error("name a table: --fit-table or --long-context")
    return args


def main(args: argparse.Namespace) -> dict:
    tables = {}
    if args.fit_table:
        tables["fit_table"] = fit_table()
    if args.long_context:
        tables["long_context"] = long_context_table()
    print("\n\n".join(table for _, table in tables.values()))
    return {name: rows for name, (rows, _) in tables.items()}


if __name__ == "__main__":
    main(parse_args())
