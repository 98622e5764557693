"""Benchmark 9: peak memory per rank of one long-context training step, sequence parallel 2 vs 1, on CPU.

    python bench/sequence_parallel_memory.py            # one 16k-token sample, with and without checkpointing (~8 min)
    python bench/sequence_parallel_memory.py --quick    # 2k tokens, no short runs: the smoke test

Each configuration is one step of `train_lora.py --quant none` on a single sample of --tokens tokens (one packed row):
in one process for SP 1, under torchrun with two gloo ranks and `--sequence-parallel 2` for SP 2, on a tiny Qwen2
(hidden 256, 8 query heads over 4 key/value heads, 2 layers). The trainer's peak_mem_gb is, on CPU, the peak resident
set of the largest rank. The same run on a --base-tokens sample gives what does not depend on the row (Python, torch,
the model, gloo); the difference is the step's own memory: activations, the all-to-all buffers, the loss chunks.
That difference is what sequence parallelism divides by N; the rest is paid once per rank.

glibc's malloc keeps large freed blocks in its heap once its dynamic mmap threshold has grown, so the resident set would
follow the allocator's history rather than the live tensors (measured here: without this, SP 2 and SP 1 showed the same
0.8 GiB). Every run sets MALLOC_MMAP_THRESHOLD_=65536, which hands freed tensors back to the system.
"""

from __future__ import annotations

import argparse
import sys

from common import (
    REPO_DIR,
    SCRATCH_DIR,
    add_common_args,
    machine_info,
    machine_line,
    markdown_table,
    record_of_tokens,
    repo_path,
    run_measured,
    save_results,
    tiny_model,
)

import utils

ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": "1"}  # one thread per rank: ranks do not compete


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, default=16384, help="the sample's length: one row (the paper's cap)")
    p.add_argument("--base-tokens", type=int, default=1024, help="the short run whose peak is subtracted")
    p.add_argument("--hidden-size", type=int, default=256, help="tiny model width (8 query heads at 256)")
    add_common_args(p)
    args = p.parse_args(argv)
    if args.quick:
        args.tokens = 2048
    return args


def one_step(model, data, sp: int, checkpointing: bool, tokens: int, name: str) -> dict:
    out = SCRATCH_DIR / "sequence_parallel_memory" / name
    flags = ["--data", str(data), "--model", str(model), "--output-dir", str(out), "--quant", "none"]
    flags += ["--max-steps", "1", "--samples-per-step", "1", "--save-every", "0", "--attn", "sdpa"]
    flags += ["--max-length", str(tokens), "--micro-batch-tokens", str(tokens), "--sequence-parallel", str(sp)]
    flags += [] if checkpointing else ["--no-gradient-checkpointing"]
    launcher = [sys.executable]
    if sp > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(sp)]
    done = run_measured(launcher + [str(REPO_DIR / "train_lora.py"), *flags], env=ENV, timeout_s=3600)
    if not done["ok"]:
        raise RuntimeError(f"{name} failed:\n{done['output'][-3000:]}")
    record = utils.read_jsonl(out / "metrics.jsonl")[-1]
    return {"peak_rss_gib": record["peak_mem_gb"], "loss": record["loss"], "wall_s": round(done["wall_s"], 1)}


def main(args: argparse.Namespace) -> dict:
    machine = machine_info()
    model = tiny_model(hidden_size=args.hidden_size)
    tokenizer = utils.load_tokenizer(str(model))
    data = {}
    for n in (args.tokens, args.base_tokens):
        data[n] = SCRATCH_DIR / "sequence_parallel_memory" / f"sample-{n}.jsonl"
        utils.write_jsonl(data[n], [record_of_tokens(tokenizer, n)])
    rows = []
    for checkpointing in (True,) if args.quick else (True, False):
        for sp in (1, 2):
            tag = f"sp{sp}-{'ckpt' if checkpointing else 'nockpt'}"
            long = one_step(model, data[args.tokens], sp, checkpointing, args.tokens, f"{tag}-long")
            row = {"sp": sp, "gradient_checkpointing": checkpointing, "tokens": args.tokens}
            row.update(peak_rss_gib=long["peak_rss_gib"], loss=long["loss"], wall_s=long["wall_s"])
            if not args.quick:  # the smoke test skips the short runs: half the launches
                base = one_step(model, data[args.base_tokens], sp, checkpointing, args.tokens, f"{tag}-base")
                row.update(
                    base_rss_gib=base["peak_rss_gib"], step_gib=round(long["peak_rss_gib"] - base["peak_rss_gib"], 3)
                )
            rows.append(row)
            print(row, flush=True)
    ratios = []
    for checkpointing in sorted({r["gradient_checkpointing"] for r in rows}, reverse=True):
        one, two = (
            next(r for r in rows if r["sp"] == sp and r["gradient_checkpointing"] == checkpointing) for sp in (1, 2)
        )
        ratios.append(
            {
                "gradient_checkpointing": checkpointing,
                "step_sp2_over_sp1": round(two["step_gib"] / one["step_gib"], 3) if one.get("step_gib") else None,
                "peak_sp2_over_sp1": round(two["peak_rss_gib"] / one["peak_rss_gib"], 3),
                "same_loss": abs(two["loss"] - one["loss"]) <= 1e-5 * abs(one["loss"]),
            }
        )
    columns = ["sp", "gradient_checkpointing", "tokens", "peak_rss_gib", "base_rss_gib", "step_gib", "loss", "wall_s"]
    table = markdown_table(rows, columns)
    ratio_table = markdown_table(ratios, list(ratios[0]))
    model_rel = repo_path(model)
    notes = (
        f"one step of `train_lora.py --quant none` on one {args.tokens}-token sample, tiny Qwen2 `{model_rel}` (hidden "
        f"{args.hidden_size}), SP 1 in one process vs SP 2 over two gloo ranks; peak RSS of the largest rank; step = "
        f"peak minus the same run on a {args.base_tokens}-token sample; MALLOC_MMAP_THRESHOLD_=65536 (see the script)."
    )
    markdown = (
        f"{machine_line(machine)}\n\n`python bench/sequence_parallel_memory.py`: {notes}\n\n{table}\n\n{ratio_table}\n"
    )
    print(table + "\n\n" + ratio_table)
    payload = {"machine": machine, "config": {**vars(args), "model": model_rel}, "rows": rows, "ratios": ratios}
    save_results(args, "sequence_parallel_memory", "9. Sequence parallelism: memory per rank", payload, markdown)
    return payload


if __name__ == "__main__":
    main(parse_args())
