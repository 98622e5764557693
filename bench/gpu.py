"""Benchmark 6 (GPU): a QLoRA step at Qwen2.5-7B/32B shapes, 4k-32k tokens: peak memory, tokens/s, MFU, ours vs plain.

    python bench/gpu.py                              # both shapes, 4k/16k/32k tokens, on CUDA (~15 min on one H100)
    python bench/gpu.py --models 7b --lengths 16384  # one cell
    python bench/gpu.py --device cpu --tiny          # dry run of the same logic on a tiny shape (CI, no GPU)
    torchrun --nproc-per-node 8 bench/gpu.py --sequence-parallel 8 --methods ours,sp --lengths 32768,131072

Models are random-initialised with the real shapes of Qwen2.5-7B-Instruct and Qwen2.5-32B-Instruct (hard-coded, no
download, no AutoConfig): built on the meta device, every linear layer of the decoder swapped for a bitsandbytes
Linear4bit (transformers' replace_with_bnb_linear) and filled one layer at a time with random bf16 weights quantised to
NF4 with double quantisation on the device, so the bf16 model never exists whole. Then as train_lora.py does it:
utils.prepare_qlora (frozen, residual stream in bf16), non-reentrant gradient checkpointing, LoRA rank 64 / alpha 128
on all linear layers, AdamW over the adapter.

One batch per length holds samples drawn from the Sky-T1 length shape (lognormal, median 5000 tokens, sigma 0.5) adding
up to exactly that many tokens, all of them targets. Two methods in the same run, on the same model and samples:
  ours      one packed row (position_ids restart per sample), sft.chunked_lm_loss (no full logits)
  baseline  transformers + peft defaults: the same samples as one right-padded batch, model(..., labels=...) computing
            full-vocabulary logits and their fp32 copy
Reported per cell: peak allocated GPU memory of a step (torch.cuda.max_memory_allocated) beside memory_plan.py's
estimate for the same run (planned_gib, ours only: the plan is of train_lora.py's recipe), real tokens/s (median of
--repeats timed steps after one warm-up step), and MFU = throughput.training_flops (6 x matmul params x real tokens +
causal attention FLOPs 6 x layers x hidden x sum(sample_len^2)) / step time / the device's dense bf16 peak. Forward +
backward + the LoRA optimizer step; recomputation by checkpointing is not counted as useful work, so MFU is the
conventional one.
  sp        (under torchrun, --sequence-parallel N) ours with the row split over N GPUs (sequence_parallel.py: Ulysses
            all-to-alls, FlashAttention-2 varlen over the whole row); peak memory is the largest rank's, tokens/s the
            whole row's; planned_gib is memory_plan.py's per-GPU estimate where it knows sequence parallelism
A cell that runs out of memory is recorded as "OOM". Writes bench/results/gpu.json and its section of bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import gc
import math
import random
import statistics
import sys
import time
from functools import partial

from common import add_common_args, machine_info, machine_line, markdown_table, save_results

import distributed
import memory_plan
import sequence_parallel
import sft
import throughput
import utils

# Qwen2.5-*-Instruct config.json values (vocab 152064 rows, untied LM head, QKV bias, GQA).
SHAPES = {
    "7b": {
        "hidden_size": 3584,
        "intermediate_size": 18944,
        "num_hidden_layers": 28,
        "num_attention_heads": 28,
        "num_key_value_heads": 4,
        "vocab_size": 152064,
    },
    "32b": {
        "hidden_size": 5120,
        "intermediate_size": 27648,
        "num_hidden_layers": 64,
        "num_attention_heads": 40,
        "num_key_value_heads": 8,
        "vocab_size": 152064,
    },
    "tiny": {
        "hidden_size": 64,
        "intermediate_size": 192,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "vocab_size": 4096,
    },
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="7b,32b", help="comma list of shapes: 7b, 32b")
    p.add_argument("--lengths", default="4096,16384,32768", help="comma list of tokens per batch")
    p.add_argument("--methods", default="ours,baseline", help="comma list: ours, baseline")
    p.add_argument(
        "--device",
        choices=["cuda", "cpu"],
        default="cuda",
        help="cpu only makes sense with --tiny (a dry run of the logic)",
    )
    p.add_argument(
        "--tiny", action="store_true", help="a 2-layer, hidden-64 shape at 128/256 tokens instead of the real ones"
    )
    p.add_argument(
        "--quant", choices=["nf4", "none"], default="nf4", help="nf4 = QLoRA (the paper's setting); none = bf16 base"
    )
    p.add_argument("--lora-rank", type=int, default=64, help="paper: 64 (alpha = 2 x rank)")
    p.add_argument(
        "--loss-chunk-tokens", type=int, default=sft.LOSS_CHUNK_TOKENS, help="chunk of our loss (the trainers' default)"
    )
    p.add_argument("--repeats", type=int, default=2, help="timed steps per cell after one warm-up step")
    p.add_argument(
        "--attn",
        choices=["auto", "flash_attention_2", "sdpa", "eager"],
        default="auto",
        help="attention kernel (auto as train_lora.py)",
    )
    p.add_argument(
        "--peak-tflops", type=float, help="the device's dense bf16 peak, if its name is not in the built-in table"
    )
    p.add_argument(
        "--median-sample", type=float, default=5000, help="median sample length in tokens (Sky-T1 traces: ~5k)"
    )
    p.add_argument("--seed", type=int, default=0, help="sample lengths, token ids and weights")
    p.add_argument("--sequence-parallel", type=int, default=1, help="method sp: split each row over N ranks (torchrun)")
    add_common_args(p)
    args = p.parse_args(argv)
    if args.tiny:
        args.models, args.quick = "tiny", True  # a dry run is not a measurement: RESULTS.md is left alone
        if args.lengths == p.get_default("lengths"):
            args.lengths = "128,256"
        args.median_sample = min(args.median_sample, 48)
        args.loss_chunk_tokens = min(args.loss_chunk_tokens, 64)
    return args


# ----------------------------------------------------------------------------- model


def build_model(shape: dict, device, dtype, quant: str, attn: str):
    """A random-weight Qwen2 of the given shape on the device, its decoder linears NF4 when quant == "nf4"."""
    import bitsandbytes as bnb
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig, Qwen2Config
    from transformers.integrations.bitsandbytes import replace_with_bnb_linear

    config = Qwen2Config(
        **shape,
        max_position_embeddings=32768,
        rope_theta=1_000_000.0,
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
        use_cache=False,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=0,
    )
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=attn)
    if quant == "nf4":
        bnb_config = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=dtype
        )
        model = replace_with_bnb_linear(model, modules_to_not_convert=["lm_head"], quantization_config=bnb_config)
    generator = torch.Generator(device=device).manual_seed(0)
    for module in model.modules():
        for name, param in list(module.named_parameters(recurse=False)):
            if not param.is_meta:
                continue
            if isinstance(module, bnb.nn.Linear4bit) and name == "weight":
                weight = torch.empty(param.shape, dtype=dtype, device=device).normal_(std=0.02, generator=generator)
                module.weight = bnb.nn.Params4bit(
                    weight, requires_grad=False, quant_type="nf4", compress_statistics=True, module=module
                ).to(device)
                del weight
                continue
            value = torch.empty(param.shape, dtype=dtype, device=device)
            if name == "bias":
                value.zero_()
            elif param.dim() == 1:  # RMSNorm scales
                value.fill_(1.0)
            else:
                value.normal_(std=0.02, generator=generator)
            setattr(module, name, torch.nn.Parameter(value, requires_grad=param.requires_grad))
    # RoPE's inverse frequencies are computed at construction, so rebuild them off the meta device
    with torch.device(device):
        model.model.rotary_emb = type(model.model.rotary_emb)(config)
    leftover = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if leftover:
        raise RuntimeError(f"tensors left on the meta device: {leftover[:5]}")
    if quant == "nf4":
        model.is_loaded_in_4bit = True  # what peft and prepare_model_for_kbit_training look for
    return model


def planner_shapes(shape: dict) -> dict:
    """A SHAPES entry as memory_plan.model_shapes gives shapes, for the planner and throughput.training_flops."""
    heads = shape["num_attention_heads"]
    return {
        "hidden": shape["hidden_size"], "layers": shape["num_hidden_layers"], "heads": heads,
        "kv_heads": shape["num_key_value_heads"], "head_dim": shape["hidden_size"] // heads,
        "intermediate": shape["intermediate_size"], "vocab": shape["vocab_size"], "tied": False, "qkv_bias": True,
    }  # fmt: skip


def planned_gib(shape: dict, tokens: int, args: argparse.Namespace) -> float:
    """memory_plan.py's peak for this cell, as train_lora.py --dry-run prints it (one GPU, AdamW, checkpointing)."""
    mode = "qlora" if args.quant == "nf4" else "lora"
    plan = memory_plan.estimate(
        planner_shapes(shape),
        seq_len=tokens,
        mode=mode,
        lora_rank=args.lora_rank,
        loss_chunk_tokens=args.loss_chunk_tokens,
    )
    return plan["total"]


def peak_tflops(args: argparse.Namespace, device_name: str) -> float | None:
    if args.peak_tflops:
        return args.peak_tflops
    return throughput.peak_tflops(device_name)


# ----------------------------------------------------------------------------- one training step per method


def sample_lengths(total: int, median: float, rng: random.Random) -> list[int]:
    """Sky-T1-shaped sample lengths (lognormal, sigma 0.5) adding up to exactly total tokens; the last is cut to fit."""
    lengths = []
    while sum(lengths) < total:
        lengths.append(
            min(total - sum(lengths), max(round(median / 16), round(rng.lognormvariate(math.log(median), 0.5))))
        )
    return lengths


def make_samples(lengths: list[int], vocab: int, rng: random.Random) -> list[sft.Sample]:
    samples = []
    for n in lengths:
        ids = [rng.randrange(1, vocab) for _ in range(n)]
        samples.append(sft.make_sample(ids, ids))  # all targets: long-CoT samples are almost all assistant tokens
    return samples


def step_ours(model, samples, device, autocast, chunk_tokens: int) -> None:
    base = model.get_base_model()
    batch = {k: v.to(device) for k, v in sft.collate_packed(samples).items()}
    targets = batch.pop("targets")
    n_targets = int((targets != sft.IGNORE_INDEX).sum())
    with autocast:
        hidden = base.get_decoder()(**batch, use_cache=False).last_hidden_state
        loss = sft.chunked_lm_loss(hidden, base.get_output_embeddings().weight, targets, chunk_tokens)
    (loss / n_targets).backward()


def step_baseline(model, samples, device, autocast, chunk_tokens: int) -> None:
    batch = {k: v.to(device) for k, v in sft.collate_padded(samples, 0).items()}
    batch.pop("targets")
    labels = batch["input_ids"].masked_fill(
        batch["attention_mask"] == 0, sft.IGNORE_INDEX
    )  # transformers shifts labels itself
    with autocast:
        loss = model(**batch, labels=labels, use_cache=False).loss
    loss.backward()


def step_sp(model, samples, device, autocast, chunk_tokens: int, layout=None) -> None:
    """ours with this rank's shard of the row (sequence_parallel.shard_row), the loss divided by the whole row's
    targets and the adapters' gradients summed over the ranks, as the trainers' step does."""
    import torch

    import distributed
    import sequence_parallel

    base = model.get_base_model()
    row = sft.collate_packed(samples)
    n_targets = int((row["targets"] != sft.IGNORE_INDEX).sum())
    batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in sequence_parallel.shard_row(row, layout).items()}
    targets = batch.pop("targets")
    with autocast:
        hidden = base.get_decoder()(**batch, use_cache=False).last_hidden_state
        loss = sft.chunked_lm_loss(hidden, base.get_output_embeddings().weight, targets, chunk_tokens)
    (loss / n_targets).backward()
    distributed.all_reduce_gradients([p for p in model.parameters() if p.requires_grad])


STEPS = {"ours": step_ours, "baseline": step_baseline, "sp": step_sp}


def measure_cell(model, optimizer, method: str, samples, args, device, autocast) -> dict:
    import torch

    cuda = device.type == "cuda"
    times, peak, out_of_memory = [], 0.0, False
    try:
        for k in range(1 + args.repeats):
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats(device)
            t0 = time.perf_counter()
            step = STEPS[method] if method != "sp" else partial(step_sp, layout=args.layout)
            step(model, samples, device, autocast, args.loss_chunk_tokens)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if cuda:
                torch.cuda.synchronize()
            if k:
                times.append(time.perf_counter() - t0)
            peak = max(peak, utils.peak_memory_gb(device))
    except torch.OutOfMemoryError:
        out_of_memory = True
    if method == "sp":  # every rank's peak and OOM: the cell is the largest rank's
        import distributed

        peak = distributed.max_over_ranks(peak, device)
        out_of_memory = distributed.max_over_ranks(float(out_of_memory), device) > 0
    # Outside the except block, so the traceback (and the activations its frames hold) is already gone.
    optimizer.zero_grad(set_to_none=True)
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    if out_of_memory:
        return {"status": "OOM"}
    return {"status": "ok", "peak_mem_gb": peak, "step_s": statistics.median(times)}


def run_model(name: str, args, device, dtype, attn, peak_flops: float | None) -> list[dict]:
    import torch
    from peft import LoraConfig, get_peft_model

    shape = SHAPES[name]
    print(f"building {name} ({args.quant}) on {device} ...", flush=True)
    t0 = time.time()
    try:
        model = build_model(shape, device, dtype, args.quant, attn)
    except torch.OutOfMemoryError:
        gc.collect()
        torch.cuda.empty_cache()
        print(f"  {name} does not fit this device even before training", flush=True)
        return [{"model": name, "method": method, "status": "OOM (weights)"} for method in args.methods.split(",")]
    if args.quant == "nf4":
        model = utils.prepare_qlora(model)
    utils.enable_checkpointing(model)
    lora = LoraConfig(
        r=args.lora_rank,
        lora_alpha=2 * args.lora_rank,
        lora_dropout=0.0,
        target_modules="all-linear",
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, lora)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5, fused=device.type == "cuda")
    static_gb = torch.cuda.memory_allocated(device) / 2**30 if device.type == "cuda" else None
    print(
        f"  built in {time.time() - t0:.0f}s; {sum(p.numel() for p in params) / 1e6:.1f}M trainable; "
        f"weights on device {static_gb if static_gb is None else round(static_gb, 1)} GB",
        flush=True,
    )
    autocast = (
        torch.autocast(device.type, dtype=dtype) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    )
    rng = random.Random(args.seed)
    rows = []
    for tokens in [int(t) for t in args.lengths.split(",")]:
        lengths = sample_lengths(tokens, args.median_sample, rng)
        samples = make_samples(lengths, shape["vocab_size"], rng)
        useful_flops = throughput.training_flops(planner_shapes(shape), lengths)
        for method in args.methods.split(","):
            print(f"  {name} {tokens} tokens ({len(lengths)} samples) {method} ...", flush=True)
            if method == "sp":
                sequence_parallel.use_ulysses(model.get_base_model(), args.layout, attn)
            else:
                model.get_base_model().set_attn_implementation(attn)
            cell = measure_cell(model, optimizer, method, samples, args, device, autocast)
            row = {
                "model": name,
                "tokens": tokens,
                "samples": len(lengths),
                "longest": max(lengths),
                "method": method,
                **cell,
                "weights_gb": static_gb,
            }
            if method == "ours":
                row["planned_gib"] = planned_gib(shape, tokens, args)
            if method == "sp":
                row["sequence_parallel"] = args.layout.size
            if cell["status"] == "ok":
                row["tokens_per_s"] = tokens / cell["step_s"]
                row["mfu"] = useful_flops / cell["step_s"] / peak_flops if peak_flops else None
            print("   ", row, flush=True)
            rows.append(row)
    del model, optimizer, params
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rows


def main(args: argparse.Namespace) -> dict:
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print(
            "bench/gpu.py: no CUDA device here, skipping the GPU benchmark "
            "(for a dry run of its logic: --device cpu --tiny)"
        )
        return {"skipped": "no CUDA device"}
    if args.device == "cpu" and not args.tiny:
        raise SystemExit("--device cpu needs --tiny: the real shapes would take hours on a CPU")
    device = torch.device(args.device)
    rank, world = 0, 1
    if distributed.launched():  # --sequence-parallel: one process per GPU under torchrun
        from datetime import timedelta

        rank, world, device = distributed.init(timedelta(minutes=30))
    args.layout = sequence_parallel.setup(args.sequence_parallel, rank, world, device)
    if "sp" in args.methods.split(",") and args.layout.size == 1:
        raise SystemExit("method sp: run under torchrun with --sequence-parallel N (N > 1)")
    dtype = utils.pick_dtype(device)  # the trainers' choice: bf16, fp16 on a T4/V100, fp32 on CPU
    attn = utils.pick_attention(args.attn, device)
    machine = machine_info()
    peak_flops = (peak_tflops(args, machine.get("gpu", "")) or 0) * 1e12 or None
    torch.manual_seed(args.seed)
    rows = []
    for name in args.models.split(","):
        rows += run_model(name, args, device, dtype, attn, peak_flops)
    ratios = []
    for ours in (r for r in rows if r["method"] == "ours" and r["status"] == "ok"):
        base = next(
            (
                r
                for r in rows
                if r["method"] == "baseline" and r["model"] == ours["model"] and r["tokens"] == ours["tokens"]
            ),
            None,
        )
        if base and base["status"] == "ok":
            ratios.append(
                {
                    "model": ours["model"],
                    "tokens": ours["tokens"],
                    "memory_baseline_over_ours": base["peak_mem_gb"] / ours["peak_mem_gb"],
                    "speed_ours_over_baseline": ours["tokens_per_s"] / base["tokens_per_s"],
                }
            )
    table = markdown_table(
        rows,
        [
            "model",
            "tokens",
            "samples",
            "longest",
            "method",
            "sequence_parallel",
            "status",
            "peak_mem_gb",
            "planned_gib",
            "weights_gb",
            "step_s",
            "tokens_per_s",
            "mfu",
        ],
    )
    ratio_table = markdown_table(ratios, ["model", "tokens", "memory_baseline_over_ours", "speed_ours_over_baseline"])
    if rank == 0:
        print("\n" + table + "\n\n" + ratio_table)
    notes = (
        f"device {machine.get('gpu', args.device)}, "
        f"peak bf16 {peak_flops / 1e12 if peak_flops else 'unknown'} TFLOP/s, "
        f"attention {attn}, quant {args.quant}, LoRA rank {args.lora_rank} all-linear, gradient checkpointing, "
        f"loss chunk {args.loss_chunk_tokens}, median of {args.repeats} steps after a warm-up. "
        "baseline = same samples padded into one batch, transformers' full-logits loss."
    )
    markdown = f"{machine_line(machine)}\n\n`python bench/gpu.py`: {notes}\n\n{table}\n\nRatios:\n\n{ratio_table}\n"
    config = {k: v for k, v in vars(args).items() if k != "layout"}
    payload = {"benchmark": "gpu", "machine": machine, "config": config, "rows": rows, "ratios": ratios}
    if rank == 0:  # under torchrun, rank 0 alone writes
        save_results(args, "gpu", "6. GPU: QLoRA step at Qwen2.5-7B/32B shapes", payload, markdown)
    distributed.finish()
    return payload


if __name__ == "__main__":
    main(parse_args(sys.argv[1:]))
