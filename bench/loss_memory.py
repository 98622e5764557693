"""Benchmark 1: peak memory of the LM-head loss, full logits (naive) vs chunked (ours), and of a whole training step.

    python bench/loss_memory.py                  # both parts (~45 min on 2 busy cores; --parts loss ~15 min)
    python bench/loss_memory.py --parts loss     # only the isolated LM head + cross-entropy
    python bench/loss_memory.py --quick          # smoke test

Part "loss": forward + backward of LM head + cross-entropy at vocab 152064 on CPU in fp32 (train_lora.py's CPU dtype),
sft.full_logits_lm_loss vs sft.chunked_lm_loss, each in a fresh subprocess that reports its peak RSS (getrusage)
minus the RSS of its inputs (CPU has no allocator statistics). The LM head is frozen, as in LoRA/QLoRA: the gradient
flows to the hidden states only. Every position is a target (an all-assistant sequence), so chunking skips nothing.
The hidden size does not change the logits' memory (tokens x vocab), only the run time, so it defaults to 64: 5120 would
take hours of CPU matmuls per run at 16k tokens on 2 cores. (At 5120, both losses also hold the hidden states' gradient,
tokens x 5120 x 4 B = 0.3 GiB at 16k, and ours a masked copy of the hidden states, another 0.3 GiB.)

Part "train": peak RSS (/usr/bin/time -v) of one full step of train_lora.py on a tiny model with Qwen2.5's vocabulary
(`python tiny_model.py DIR --vocab-size 152064 --hidden-size 64`) on one assistant-heavy sample filling
--max-length, with --loss-chunk-tokens 4096 vs 0.

Naive runs that would not fit the machine are stopped by a watchdog at the memory budget (available memory minus a
reserve for the machine's other processes) and retried at the next shorter length; the table says which lengths fit.
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import sys
import time
from pathlib import Path

from common import (
    REPO_DIR,
    SCRATCH_DIR,
    add_common_args,
    last_json_line,
    machine_info,
    machine_line,
    markdown_table,
    memory_budget_bytes,
    record_of_tokens,
    run_measured,
    save_results,
    tiny_model,
)

import sft
import utils

GIB = 2**30


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--parts", default="loss,train", help="comma list: loss (isolated LM head + CE), train (one train_lora.py step)"
    )
    p.add_argument("--vocab-size", type=int, default=152064, help="Qwen2.5's embedding rows")
    p.add_argument(
        "--hidden-size", type=int, default=64, help="loss part: LM head width (memory does not depend on it, time does)"
    )
    p.add_argument("--tokens", type=int, default=16384, help="sequence length ours always runs at (the paper's 16k)")
    p.add_argument(
        "--fallback-tokens",
        default="12288,8192,6144,4096,2048",
        help="shorter lengths tried, in order, when naive does not fit",
    )
    p.add_argument(
        "--train-tokens",
        help="part train: comma list of lengths, longest first (default: --tokens, then --fallback-tokens)",
    )
    p.add_argument(
        "--chunk-tokens", type=int, default=4096, help="chunk of sft.chunked_lm_loss (train_lora.py's default)"
    )
    p.add_argument("--model", help="part train: model folder to use instead of building the 152k-vocab tiny model")
    p.add_argument(
        "--budget-gib", type=float, help="memory budget per run (default: available memory minus a 3 GiB reserve)"
    )
    p.add_argument("--child", choices=["naive", "chunked"], help=argparse.SUPPRESS)  # internal: one measured loss run
    add_common_args(p)
    args = p.parse_args(argv)
    if args.quick:
        args.tokens, args.fallback_tokens, args.train_tokens = 2048, "1024", "512"
        args.chunk_tokens, args.vocab_size = 256, 32768
    return args


# ----------------------------------------------------------------------------- child: one measured loss run


def rss_now_bytes() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * resource.getpagesize()


def child(args: argparse.Namespace) -> None:
    import torch

    torch.manual_seed(0)
    # In-place init: no temporary copies that would raise the baseline peak.
    hidden = torch.empty(args.tokens, args.hidden_size).normal_().requires_grad_()
    weight = torch.empty(args.vocab_size, args.hidden_size).normal_(std=0.02)
    targets = torch.randint(args.vocab_size, (args.tokens,))
    gc.collect()
    baseline = max(rss_now_bytes(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    t0 = time.time()
    if args.child == "naive":
        loss = sft.full_logits_lm_loss(hidden, weight, targets)
    else:
        loss = sft.chunked_lm_loss(hidden, weight, targets, args.chunk_tokens)
    loss.backward()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(
        json.dumps(
            {
                "baseline_rss_bytes": baseline,
                "peak_rss_bytes": peak,
                "loss_peak_bytes": peak - baseline,
                "seconds": time.time() - t0,
                "loss": loss.item(),
                "grad_norm": hidden.grad.norm().item(),
            }
        )
    )


# ----------------------------------------------------------------------------- parent


def loss_run(args: argparse.Namespace, mode: str, tokens: int, budget: int) -> dict:
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        mode,
        "--tokens",
        str(tokens),
        "--vocab-size",
        str(args.vocab_size),
        "--hidden-size",
        str(args.hidden_size),
        "--chunk-tokens",
        str(args.chunk_tokens),
    ]
    print(f"loss {mode} at {tokens} tokens ...", flush=True)
    run = run_measured(cmd, budget)
    row = {"part": "loss", "loss": mode, "tokens": tokens, "fits": run["ok"], "wall_s": run["wall_s"]}
    if run["ok"]:
        result = last_json_line(run["output"])
        row.update(
            extra_gib=result["loss_peak_bytes"] / GIB,
            peak_rss_gib=result["peak_rss_bytes"] / GIB,
            seconds=result["seconds"],
            loss_value=result["loss"],
            grad_norm=result["grad_norm"],
        )
    else:
        row["note"] = over_budget_note(run, budget)
    print("  ", {k: v for k, v in row.items() if k != "part"}, flush=True)
    return row


def over_budget_note(run: dict, budget: int) -> str:
    if run["over_budget"]:
        return f"does not fit: passed the {budget / GIB:.1f} GiB budget"
    output = run["output"].strip()
    if output:
        return f"failed (exit {run['returncode']}): " + output.splitlines()[-1][-200:]
    return f"failed (exit {run['returncode']})"


def train_run(args: argparse.Namespace, model_dir: Path, mode: str, tokens: int, budget: int) -> dict:
    data = SCRATCH_DIR / "data" / f"{model_dir.name}-one-sample-{tokens}.jsonl"
    if not data.exists():
        utils.write_jsonl(data, [record_of_tokens(utils.load_tokenizer(str(model_dir)), tokens - 16)])
    out = SCRATCH_DIR / "runs" / f"train-step-{mode}-{tokens}"
    cmd = [
        sys.executable,
        "train_lora.py",
        "--model",
        str(model_dir),
        "--data",
        str(data),
        "--max-steps",
        "1",
        "--quant",
        "none",
        "--max-length",
        str(tokens),
        "--micro-batch-tokens",
        str(tokens),
        "--samples-per-step",
        "1",
        "--save-every",
        "0",
        "--output-dir",
        str(out),
        "--loss-chunk-tokens",
        str(args.chunk_tokens if mode == "chunked" else 0),
    ]
    print(f"train step {mode} at {tokens} tokens ...", flush=True)
    run = run_measured(cmd, budget, cwd=REPO_DIR)
    row = {"part": "train", "loss": mode, "tokens": tokens, "fits": run["ok"], "wall_s": run["wall_s"]}
    if run["ok"]:
        metrics = utils.read_jsonl(out / "metrics.jsonl")[-1]
        row.update(
            peak_rss_gib=run["max_rss_bytes"] / GIB,
            sample_tokens=metrics["tokens"],
            seconds=metrics["tokens"] / metrics["tokens_per_s"],
        )
    else:
        row["note"] = over_budget_note(run, budget)
    print("  ", {k: v for k, v in row.items() if k != "part"}, flush=True)
    return row


def compare(run, tokens_list: list[int]) -> list[dict]:
    """Ours at the full length; naive at the longest length that fits, and ours again there for a same-length ratio."""
    rows = [run("chunked", tokens_list[0])]
    for tokens in tokens_list:
        naive = run("naive", tokens)
        rows.append(naive)
        if naive["fits"]:
            if tokens != tokens_list[0]:
                rows.append(run("chunked", tokens))
            break
    return rows


def ratios(rows: list[dict], part: str, metric: str) -> list[dict]:
    """naive / chunked at the same length, naive at its longest fitting length / chunked at the full length, and, when
    naive did not fit at the full length, naive extrapolated linearly to it (its logits grow linearly with tokens;
    marked as such).
    """
    fitted = {(r["loss"], r["tokens"]): r for r in rows if r["part"] == part and r["fits"]}
    if not any(mode == "chunked" for mode, _ in fitted):
        return []
    longest = max(t for m, t in fitted if m == "chunked")
    out = []
    for (mode, tokens), naive in fitted.items():
        if mode != "naive" or ("chunked", tokens) not in fitted:
            continue
        out.append(
            {
                "part": part,
                "naive_tokens": tokens,
                "chunked_tokens": tokens,
                "naive_over_chunked": naive[metric] / fitted["chunked", tokens][metric],
            }
        )
        if longest != tokens:
            out.append(
                {
                    "part": part,
                    "naive_tokens": tokens,
                    "chunked_tokens": longest,
                    "naive_over_chunked": naive[metric] / fitted["chunked", longest][metric],
                }
            )
            if part == "loss":  # the isolated loss's extra memory is all logits-sized buffers, so it scales with tokens
                out.append(
                    {
                        "part": part,
                        "naive_tokens": f"{longest} (extrapolated x{longest / tokens:g})",
                        "chunked_tokens": longest,
                        "naive_over_chunked": naive[metric] * longest / tokens / fitted["chunked", longest][metric],
                    }
                )
    return out


def main(args: argparse.Namespace) -> dict:
    if args.child:
        child(args)
        return {}
    machine = machine_info()
    budget = int(args.budget_gib * GIB) if args.budget_gib else memory_budget_bytes()
    tokens_list = [args.tokens] + [int(t) for t in args.fallback_tokens.split(",") if t]
    parts = args.parts.split(",")
    print(f"memory budget per run: {budget / GIB:.1f} GiB")
    rows = []
    if "loss" in parts:
        rows += compare(lambda mode, tokens: loss_run(args, mode, tokens, budget), tokens_list)
    if "train" in parts:
        model_dir = Path(args.model) if args.model else tiny_model(args.vocab_size, 64)
        train_tokens = [int(t) for t in args.train_tokens.split(",")] if args.train_tokens else tokens_list
        rows += compare(lambda mode, tokens: train_run(args, model_dir, mode, tokens, budget), train_tokens)
    summary = ratios(rows, "loss", "extra_gib") + ratios(rows, "train", "peak_rss_gib")
    table = markdown_table(rows, ["part", "loss", "tokens", "fits", "extra_gib", "peak_rss_gib", "seconds", "note"])
    ratio_table = markdown_table(summary, ["part", "naive_tokens", "chunked_tokens", "naive_over_chunked"])
    print("\n" + table + "\n\n" + ratio_table)
    notes = (
        f"vocab {args.vocab_size}, fp32 on CPU, chunk {args.chunk_tokens} tokens; "
        f"part loss: hidden {args.hidden_size}, frozen LM head, "
        "extra_gib = peak RSS minus the RSS of the inputs, per fresh subprocess; part train: one step of "
        "`train_lora.py --quant none --max-steps 1 --samples-per-step 1 --max-length N --micro-batch-tokens N` "
        f"on the tiny model (vocab {args.vocab_size}, hidden 64), "
        "peak_rss_gib = /usr/bin/time -v maximum resident set of the whole process. "
        f"Memory budget per run {budget / GIB:.1f} GiB (available minus a reserve); "
        "a run past it is stopped and counted as not fitting."
    )
    markdown = (
        f"{machine_line(machine)}\n\n`python bench/loss_memory.py`: {notes}\n\n{table}\n\n"
        f"Ratios (naive / chunked):\n\n{ratio_table}\n"
    )
    payload = {
        "benchmark": "loss_memory",
        "machine": machine,
        "config": vars(args),
        "budget_gib": budget / GIB,
        "rows": rows,
        "ratios": summary,
    }
    save_results(args, "loss_memory", "1. Loss memory", payload, markdown)
    return payload


if __name__ == "__main__":
    main(parse_args(sys.argv[1:]))
