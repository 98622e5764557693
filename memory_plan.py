"""Will it fit? Estimated peak GPU memory per GPU, by component, before renting the GPU; and what fits a given GPU.

    python memory_plan.py --model Qwen/Qwen2.5-32B-Instruct --mode qlora                 # train_lora.py's default run
    python memory_plan.py --model Qwen/Qwen2.5-32B-Instruct --mode full --gpus 8 --cpu-offload   # the paper's full SFT
    python memory_plan.py --model Qwen/Qwen2.5-7B-Instruct --gpu-memory 14.76 --attention sdpa --fit   # a Colab T4
    python memory_plan.py --mode lora --fsdp --gpus 8 --sequence-parallel 8 --seq-len 131072    # 32B, 128k, 8 GPUs

Both trainers' --dry-run print the same plan for their configuration, and their --fit chooses (and, without --dry-run,
applies) the longest --micro-batch-tokens that fits --gpu-memory, then the fallbacks it needs. The shapes of the
Qwen2.5 family are built in, so their plans need no download; any other dense decoder is read from its config.json
(local folder or the hub). Speed is throughput.py's, estimated until measured (bench/gpu.py). The tables of what fits
which GPU (docs/fit.md, docs/long-context.md) are memory_tables.py's.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import memory_activations

# Shapes of the models the paper trains, so a memory plan needs no download; "-Instruct" shares its base's shape.
# (hidden, layers, attention heads, kv heads, intermediate, vocab, tied embeddings)
KNOWN_SHAPES = {
    "Qwen/Qwen2.5-0.5B": (896, 24, 14, 2, 4864, 151936, True),  # the small ones tie the LM head to the embeddings
    "Qwen/Qwen2.5-1.5B": (1536, 28, 12, 2, 8960, 151936, True),
    "Qwen/Qwen2.5-3B": (2048, 36, 16, 2, 11008, 151936, True),
    "Qwen/Qwen2.5-7B": (3584, 28, 28, 4, 18944, 152064, False),
    "Qwen/Qwen2.5-14B": (5120, 48, 40, 8, 13824, 152064, False),
    "Qwen/Qwen2.5-32B": (5120, 64, 40, 8, 27648, 152064, False),
    "Qwen/Qwen2.5-72B": (8192, 80, 64, 8, 29568, 152064, False),
}
GiB = 2**30
MODES = ("full", "lora", "qlora")
OPTIMIZERS = ("adamw", "adamw8bit", "paged_adamw8bit")
# What the trainers' --attn resolves to (utils.pick_attention). FlashAttention-2 and flex attention read packed samples'
# boundaries from position_ids; SDPA and eager get them as a T x T mask (estimate() counts it).
ATTENTION = memory_activations.ATTENTION
DEFAULT_GPU_GIB = 79.6  # an 80 GB card, as torch reports its memory
HEADROOM = 0.92  # share of the card a plan may fill: the rest is CUDA context, NCCL buffers and fragmentation
UNTRACKED = (
    "estimates: bf16 LoRA and full SFT under FSDP2 with FlashAttention-2, SP 1 and 2, agree with PyTorch's\n"
    "  MemTracker within 10% per component (bench/planner_vs_tracker.py); the 8% kept free for FlashAttention-2's\n"
    "  workspace, NCCL buffers, the allocator's fragmentation and bitsandbytes' 4-bit kernels: a guess no tracker sees"
)


def model_shapes(model) -> dict:
    """The shapes a plan needs: from a dict, a transformers config, a local folder, the table above or the hub."""
    if isinstance(model, dict):
        return model
    if isinstance(model, str):
        known = KNOWN_SHAPES.get(model.removesuffix("-Instruct"))
        if known and not (Path(model) / "config.json").exists():
            h, layers, heads, kv, inter, vocab, tied = known
            return {
                "hidden": h, "layers": layers, "heads": heads, "kv_heads": kv, "head_dim": h // heads,
                "intermediate": inter, "vocab": vocab, "tied": tied, "qkv_bias": True,
            }  # fmt: skip
        from transformers import AutoConfig

        try:
            model = AutoConfig.from_pretrained(model)
        except (OSError, ValueError) as e:
            raise ValueError(
                f"{model}: no config.json locally or on the hub ({e.__class__.__name__}), "
                f"and not one of {sorted(KNOWN_SHAPES)}"
            ) from None
    config = model
    if any(getattr(config, k, 0) for k in ("num_experts", "num_local_experts", "n_routed_experts")):
        raise ValueError(f"{config.model_type}: mixture-of-experts models are not covered (dense decoders only)")
    heads = config.num_attention_heads
    return {
        "hidden": config.hidden_size,
        "layers": config.num_hidden_layers,
        "heads": heads,
        "kv_heads": getattr(config, "num_key_value_heads", None) or heads,
        "head_dim": getattr(config, "head_dim", None) or config.hidden_size // heads,
        "intermediate": config.intermediate_size,
        "vocab": config.vocab_size,
        "tied": bool(getattr(config, "tie_word_embeddings", False)),
        "qkv_bias": config.model_type == "qwen2" or bool(getattr(config, "attention_bias", False)),
    }


def linear_params(s: dict) -> int:
    """Weights of one decoder layer's linears (q, k, v, o, gate, up, down), from model_shapes()."""
    h, i = s["hidden"], s["intermediate"]
    q, kv = s["heads"] * s["head_dim"], s["kv_heads"] * s["head_dim"]
    return h * q + 2 * h * kv + q * h + 3 * h * i


def estimate(
    model,
    n_gpus: int = 1,
    seq_len: int = 16384,
    mode: str = "full",
    optimizer: str = "adamw",
    lora_rank: int = 64,
    fsdp: bool = False,
    cpu_offload: bool = False,
    gradient_checkpointing: bool = True,
    offload_activations: bool = False,
    loss_chunk_tokens: int = 1024,  # sft.LOSS_CHUNK_TOKENS (not imported: planning needs no torch)
    gpu_gib: float = DEFAULT_GPU_GIB,
    attention: str = "flash_attention_2",
    sequence_parallel: int = 1,
    packing: bool = True,
) -> dict:
    """Estimated peak memory per GPU in GiB, by component, for one micro-batch of seq_len packed tokens.

    model: hub name, local folder, transformers config or a model_shapes() dict. P = parameters, L = layers,
    h = hidden, i = intermediate, kv = kv heads x head dim, V = vocab, T = seq_len, A = LoRA parameters
    (r x (in + out) for every linear of every decoder layer, PEFT's "all-linear").

    mode="full" (train_full.py): fp32 master weights 4P, fp32 gradients 4P, optimizer 8P (AdamW: two fp32 moments) or
      2P (bitsandbytes 8-bit; paged = may spill to CPU). Sharded over n_gpus with FSDP when n_gpus > 1 or
      cpu_offload; cpu_offload moves all three to CPU memory. FSDP working copies: see "Sharded" below. One GPU
      without FSDP: bf16 copies made by autocast for one layer and the LM head at a time (its cache is off).
    mode="lora" / "qlora" (train_lora.py; without fsdp, n_gpus > 1 means data-parallel replicas): frozen base in bf16
      (2P); qlora: decoder linears in NF4 with double quantisation (4.127 bits), the rest (embeddings, norms, biases,
      LM head) in bf16, as utils.prepare_qlora leaves it, plus one layer dequantised to bf16 at a time. Adapters 16A
      (fp32 weights, gradients and AdamW moments) or 10A (8-bit moments). lora with fsdp (or cpu_offload, which
      implies it): base and adapter states sharded over n_gpus (in CPU memory with cpu_offload).
    Sharded (FSDP2), as PyTorch's MemTracker follows a step (bench/planner_vs_tracker.py): the peak is the largest of
      four moments ("peak_phase"): the decoder layers' backward (checkpoints, one layer's recomputation, one decoder
      layer gathered and one prefetched in bf16, and for full SFT their bf16 gradient and fp32 reduce-scatter buffer,
      10 x layer, plus the LM head's bf16 gradient, 2Vh, unsharded until backward ends, and bf16 copies of the
      decoder layers' local fp32 shards, cast for the all-gathers and kept through the step, 2 x L x layer / n_gpus
      (not with cpu_offload: on the CPU); for LoRA 4 x layer and one
      layer's adapters gathered, their gradient and reduce buffer, 10 x A / L); the loss (checkpoints, the chunked
      loss, the root unit: embeddings, final norm and LM head gathered in bf16, 2 x root); the root's all-gather at
      the start of forward (its buffer and the gathered copy, 4 x root); and for full SFT the root's gradient
      reduce-scatter at the end of backward (6 x root + 2 x root / n_gpus). The plan's components are those of the
      moment that peaks.
    Activations (checkpoints, the peak of one layer's recomputation or of the chunked loss, SDPA's T x T mask): per
      rank, memory_activations.activations(), with the residual stream in bf16 but fp32 on the single-GPU full path,
      whose fp32 master weights keep it fp32 under autocast; checkpoints on CPU with offload_activations.
    sequence_parallel N (Ulysses, under torchrun): each packed row is split over N ranks, which hold t = T / N tokens of
      activations each plus the all-to-all's head-sharded copies; N divides n_gpus and the query heads. States are
      sharded (or replicated) over all n_gpus as without it. It splits packed rows: packing False rules it out.
    Not counted: CUDA context, NCCL buffers, allocator fragmentation: "fits" leaves 8% of gpu_gib (79.6 = an 80 GB card)
    for them. Expect the estimate within ~15% of torch.cuda.max_memory_allocated.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be full, lora or qlora, not {mode!r}")
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be adamw, adamw8bit or paged_adamw8bit, not {optimizer!r}")
    s = model_shapes(model)
    memory_activations.check_sequence_parallel(s, sequence_parallel, n_gpus)
    if sequence_parallel > 1 and not packing:
        raise ValueError(f"--sequence-parallel {sequence_parallel} splits packed rows: it needs packing")
    h, n_layers, i, V, T = s["hidden"], s["layers"], s["intermediate"], s["vocab"], seq_len
    q, kv = s["heads"] * s["head_dim"], s["kv_heads"] * s["head_dim"]
    layer_linear = linear_params(s)
    layer = layer_linear + 2 * h + (q + 2 * kv if s["qkv_bias"] else 0)
    root = V * h * (1 if s["tied"] else 2) + h
    params = n_layers * layer + root
    optimizer_bytes = {"adamw": 8, "adamw8bit": 2, "paged_adamw8bit": 2}[optimizer]
    if mode == "qlora" and (fsdp or cpu_offload):
        raise ValueError("qlora is not sharded: FSDP shards a bf16 base (mode lora); QLoRA replicates over GPUs")
    sharded = (mode == "full" and (n_gpus > 1 or cpu_offload)) or (mode == "lora" and (fsdp or cpu_offload))
    on_cpu = cpu_offload and sharded

    plan = {
        "model": model if isinstance(model, str) else "custom",
        "params_billion": params / 1e9,
        "n_gpus": n_gpus,
        "mode": mode,
        "optim": optimizer,
        "seq_len": T,
        "sharded": sharded,
        "cpu_offload": on_cpu,
        "attention": attention,
        "sequence_parallel": sequence_parallel,
    }
    if mode == "full":
        local = params / n_gpus if sharded else params
        states = {"weights": 4 * local, "gradients": 4 * local, "optimizer": optimizer_bytes * local}
        working = 2 * root + 10 * layer if sharded else 2 * layer + 2 * V * h
    else:
        adapters = lora_rank * n_layers * ((h + q) + 2 * (h + kv) + (q + h) + 2 * (h + i) + (i + h))
        quantized = n_layers * layer_linear if mode == "qlora" else 0
        base = 2 * params if mode == "lora" else quantized * 4.127 / 8 + 2 * (params - quantized)
        states = {"weights": base + 4 * adapters, "gradients": 4 * adapters, "optimizer": optimizer_bytes * adapters}
        working = 2 * layer_linear if mode == "qlora" else 0
        if sharded:
            states = {name: value / n_gpus for name, value in states.items()}
            working = 2 * root + 4 * layer + 10 * adapters / n_layers
        plan["lora_params_million"] = adapters / 1e6
    act_bytes = 4 if mode == "full" and not sharded else 2  # the residual stream's dtype: what checkpoints keep
    plan["residual_bytes"] = act_bytes
    act = memory_activations.activations(
        s, T, sequence_parallel, attention, gradient_checkpointing, act_bytes, loss_chunk_tokens
    )
    checkpoints = act["checkpoints"]
    kept = 0.0 if offload_activations and gradient_checkpointing else checkpoints
    # the moments a step can peak at: (name, working copies, checkpoints kept, activation peak, mask)
    phases = [("step", working, kept, max(act["layer_peak"], act["loss_peak"]), act["attention_mask"])]
    if sharded:  # FSDP2, as PyTorch's MemTracker follows it (bench/planner_vs_tracker.py)
        # full SFT: the LM head's bf16 gradient, unsharded until backward ends, and bf16 copies of the decoder layers'
        # local fp32 shards, which FSDP2 casts for its all-gathers and MemTracker sees kept through the step (in CPU
        # memory with cpu_offload, where the shards are)
        held = 2 * V * h + (0 if on_cpu else 2 * n_layers * layer / n_gpus) if mode == "full" else 0
        layer_work = 10 * layer if mode == "full" else 4 * layer + 10 * adapters / n_layers
        phases = [
            ("the decoder layers' backward", layer_work + held, kept, act["layer_peak"], act["attention_mask"]),
            ("the loss", 2 * root + held, kept, act["loss_peak"], act["attention_mask"]),
            ("the root unit's all-gather", 4 * root + held, 0, 0, 0),
        ]
        if mode == "full":
            phases.append(("the root unit's gradient reduce-scatter", 6 * root + 2 * root / n_gpus, 0, 0, 0))
    phase, *at_peak = max(phases, key=lambda p: sum(p[1:]))
    plan["peak_phase"] = phase
    gpu = {name: 0.0 if on_cpu else value for name, value in states.items()}
    names = ("working_copies", "activation_checkpoints", "activation_peak", "attention_mask")
    gpu.update(zip(names, at_peak))
    plan.update({k: v / GiB for k, v in gpu.items()})
    plan["all_to_all"] = act["all_to_all"] / GiB  # part of activation_peak when the layer's recomputation is the peak
    plan["total"] = sum(gpu.values()) / GiB
    cpu_states = sum(states.values()) if on_cpu else 0
    plan["cpu_per_gpu"] = (cpu_states + (checkpoints if offload_activations else 0)) / GiB
    plan["pageable"] = plan["optimizer"] if optimizer == "paged_adamw8bit" and not on_cpu else 0.0
    plan["gpu_gib"] = gpu_gib
    plan["fits"] = plan["total"] - plan["pageable"] <= HEADROOM * gpu_gib
    return plan


def format_plan(plan: dict) -> str:
    """The plan as a small table, one line per component."""
    how = ("FSDP-sharded over " if plan["sharded"] else "replicated on ") + f"{plan['n_gpus']} GPU(s)"
    offload = ", CPU offload" if plan["cpu_offload"] else ""
    n = plan["sequence_parallel"]
    split = f", sequence-parallel {n} ({-(-plan['seq_len'] // n)} tokens per GPU)" if n > 1 else ""
    lines = [
        f"memory plan: {plan['model']} ({plan['params_billion']:.2f}B params), {plan['mode']}, {plan['optim']}, "
        f"{plan['seq_len']} tokens/micro-batch, {how}{offload}, {plan['attention']}{split}"
    ]
    if "lora_params_million" in plan:
        lines.append(f"  adapters                  {plan['lora_params_million']:.1f}M trainable params")
    notes = {
        "optimizer": " (paged: spills to CPU under pressure)" if plan["pageable"] else "",
        "attention_mask": " (the packed row's T x T mask: no FlashAttention-2)",
        "activation_peak": f" (of it {plan['all_to_all']:.2f} GiB for Ulysses' all-to-all layout)" if n > 1 else "",
    }
    keys = ["weights", "gradients", "optimizer", "working_copies", "activation_checkpoints", "activation_peak"]
    for key in keys + (["attention_mask"] if plan["attention_mask"] else []):
        lines.append(f"  {key:<25} {plan[key]:7.2f} GiB per GPU{notes.get(key, '')}")
    lines.append(
        f"  {'total':<25} {plan['total']:7.2f} GiB per GPU   (+ {plan['cpu_per_gpu']:.1f} GiB CPU memory per GPU)"
    )
    if not plan["fits"]:
        verdict = "does NOT fit"
    elif plan["total"] <= HEADROOM * plan["gpu_gib"]:
        verdict = "fits"
    else:
        verdict = "fits only by paging optimizer state to CPU in"
    if plan["peak_phase"] != "step":
        lines.append(f"  (the components at the step's peak: {plan['peak_phase']})")
    lines.append(f"  -> {verdict} a {plan['gpu_gib']:.1f} GiB GPU (8% kept for CUDA context, NCCL, fragmentation)")
    lines.append(f"  {UNTRACKED}")
    return "\n".join(lines)


def report(model, **settings) -> tuple[dict, str]:
    """The plan, its table and, when it does not fit, each single flag that would make it fit."""
    plan = estimate(model, **settings)
    lines = [format_plan(plan)]
    params_gib = plan["params_billion"] * 1e9 / GiB
    if plan["mode"] == "full":
        lines.append(
            f"  rank 0 CPU memory: ~{2 * params_gib:.0f} GiB to read the bf16 checkpoint, "
            f"~{4 * params_gib:.0f} GiB to gather final/"
        )
    elif plan["sharded"]:
        lines.append(f"  rank 0 CPU memory: ~{2 * params_gib:.0f} GiB to read the bf16 checkpoint")
    if not plan["fits"]:
        larger = larger_sequence_parallel(model, settings)
        fitting = [n for n in larger if estimate(model, **{**settings, "sequence_parallel": n})["fits"]]
        changes = [(f"--sequence-parallel {n}", {"sequence_parallel": n}) for n in fitting[:1]]  # the smallest
        changes.append(("--offload-activations", {"offload_activations": True}))
        if plan["mode"] == "full":
            if plan["n_gpus"] == 1 and not plan["cpu_offload"]:
                changes.insert(0, ("--optim paged_adamw8bit", {"optimizer": "paged_adamw8bit"}))
            changes.append(("--cpu-offload", {"cpu_offload": True, "optimizer": "adamw"}))
        elif plan["mode"] == "lora":
            if plan["n_gpus"] > 1 and not plan["sharded"]:
                changes.append(("--fsdp", {"fsdp": True}))
            changes.append(("--fsdp --cpu-offload", {"fsdp": True, "cpu_offload": True}))
            changes.append(("--quant nf4", {"mode": "qlora", "fsdp": False, "cpu_offload": False}))
        for flag, change in changes:
            alt = estimate(model, **{**settings, **change})
            if alt["fits"]:
                paged = f" ({alt['pageable']:.1f} GiB of it pageable optimizer state)" if alt["pageable"] else ""
                lines.append(
                    f"  would fit with {flag}: {alt['total']:.1f} GiB per GPU{paged}, "
                    f"{alt['cpu_per_gpu']:.1f} GiB CPU memory per GPU"
                )
    return plan, "\n".join(lines)


# ----------------------------------------------------------------------------- --fit: the longest sample a GPU allows

FIT_STEP = 512  # token budgets are searched in multiples of this
OFFLOAD_NOTE = "needs transformers >= 5.23: activation_checkpointing_enable(offload=True)"


def larger_sequence_parallel(model, settings: dict) -> list[int]:
    """The --sequence-parallel sizes above the configured one that this model and GPU count allow, smallest first;
    none without packing (the trainers' --no-packing pads rows, which sequence_parallel.shard_row cannot split)."""
    if not settings.get("packing", True):
        return []
    heads, n = model_shapes(model)["heads"], settings.get("sequence_parallel", 1)
    return [m for m in memory_activations.sequence_parallel_sizes(heads, settings.get("n_gpus", 1)) if m > n]


def longest_fitting(model, limit: int, step: int = FIT_STEP, **settings) -> int:
    """The largest token budget that fits: limit itself, else the largest multiple of step below it; 0 if none.
    A binary search: every component of a plan grows with its tokens."""
    if estimate(model, seq_len=limit, **settings)["fits"]:
        return limit
    low, high = 0, (limit - 1) // step
    while low < high:
        middle = (low + high + 1) // 2
        if estimate(model, seq_len=middle * step, **settings)["fits"]:
            low = middle
        else:
            high = middle - 1
    return low * step


def fallbacks(model, settings: dict, offload_available: bool = True) -> list[tuple[str, dict]]:
    """What --fit tries, in order, each on top of the ones before: the run as configured; activation checkpointing
    (when off); each larger --sequence-parallel the GPUs and the model's heads allow (a row split over more GPUs:
    activations shrink, the all-to-alls stay on the node's fast links); its checkpoints in CPU memory; then, for full
    SFT on one GPU, paged 8-bit AdamW (state pages to CPU under pressure); then the sharded weights, gradients and
    optimizer state in CPU memory (full SFT and bf16 LoRA). Cheaper in speed first: offloading activations costs a
    PCIe round trip per layer, --cpu-offload the optimizer step on the CPU."""
    mode, change, steps = settings.get("mode", "full"), {}, [("as configured", {})]
    if not settings.get("gradient_checkpointing", True):
        change = {"gradient_checkpointing": True}
        steps.append(("--gradient-checkpointing", change))
    for n in larger_sequence_parallel(model, settings):
        change = {**change, "sequence_parallel": n}
        steps.append((f"--sequence-parallel {n}", change))
    if offload_available and not settings.get("offload_activations"):
        change = {**change, "offload_activations": True}
        steps.append((f"--offload-activations ({OFFLOAD_NOTE})", change))
    one_gpu = settings.get("n_gpus", 1) == 1 and not settings.get("cpu_offload")
    if mode == "full" and one_gpu and settings.get("optimizer", "adamw") != "paged_adamw8bit":
        change = {**change, "optimizer": "paged_adamw8bit"}
        steps.append(("--optim paged_adamw8bit", change))
    if mode in ("full", "lora") and not settings.get("cpu_offload"):  # bitsandbytes cannot step FSDP's shards
        change = {**change, "cpu_offload": True, **({"optimizer": "adamw"} if mode == "full" else {"fsdp": True})}
        steps.append(("--cpu-offload", change))
    return steps


def flags(change: dict, settings: dict) -> list[str]:
    """The trainer flags that make a fallback's change."""
    out = [f"--{key.replace('_', '-')}" for key in ("gradient_checkpointing", "offload_activations") if key in change]
    if "cpu_offload" in change:
        out.append("--cpu-offload")
    if change.get("optimizer", settings.get("optimizer", "adamw")) != settings.get("optimizer", "adamw"):
        out.append(f"--optim {change['optimizer']}")
    if "sequence_parallel" in change:
        out.append(f"--sequence-parallel {change['sequence_parallel']}")
    return out


def fit(model, limit: int = 16384, step: int = FIT_STEP, offload_available: bool = True, **settings) -> dict:
    """The longest token budget (a packed micro-batch; so also the longest sample) that fits settings' GPU (gpu_gib),
    up to limit, trying fallbacks() in order: the first that reaches limit is chosen, else the one that reaches
    furthest (the cheaper on a tie). Returns tokens (0: nothing fits), the settings changed, their flags, the chosen
    plan and one line per decision."""
    gpu = settings.get("gpu_gib", DEFAULT_GPU_GIB)
    lines, tried = [], []
    if not offload_available and not settings.get("offload_activations"):
        lines.append(f"--offload-activations not tried: it {OFFLOAD_NOTE}")
    for name, change in fallbacks(model, settings, offload_available):
        tokens = longest_fitting(model, limit, step, **{**settings, **change})
        found = f"{tokens} tokens fit" if tokens else f"nothing fits, not even {min(step, limit)} tokens"
        lines.append(f"{'+ ' if tried else ''}{name}: {found}")
        tried.append((tokens, change))
        if tokens == limit:
            break
    tokens, change = max(tried, key=lambda t: t[0])  # max keeps the first of equals: the cheaper
    for key in ("gradient_checkpointing", "offload_activations"):  # taken on the way: still needed with the rest?
        lighter = {k: v for k, v in change.items() if k != key}
        if key not in change or not lighter or not tokens:  # alone, it is a rung that did no better than before it
            continue
        if longest_fitting(model, limit, step, **{**settings, **lighter}) >= tokens:
            change = lighter
            lines.append(f"--{key.replace('_', '-')} dropped: not needed with the rest")
    configured = settings.get("sequence_parallel", 1)
    for n in [configured, *larger_sequence_parallel(model, settings)] if tokens else []:
        if n >= change.get("sequence_parallel", 0):  # the one chosen (or none taken): nothing smaller found
            break
        smaller = {k: v for k, v in change.items() if k != "sequence_parallel"}
        smaller |= {"sequence_parallel": n} if n != configured else {}
        if longest_fitting(model, limit, step, **{**settings, **smaller}) >= tokens:  # fewer GPUs a row: more replicas
            lines.append(f"--sequence-parallel {change['sequence_parallel']} lowered to {n}: enough with the rest")
            change = smaller
            break
    chosen = flags(change, settings)
    plan = estimate(model, seq_len=tokens or limit, **{**settings, **change})
    paged = f", {plan['pageable']:.1f} GiB of it pageable optimizer state" if plan["pageable"] else ""
    estimated = f"{gpu:.1f} GiB GPU (est. {plan['total']:.1f} GiB{paged})"
    if not tokens:
        lines.append(f"chosen: nothing; {plan['model']} does not fit a {gpu:.1f} GiB GPU this way")
    elif tokens == limit:
        lines.append(
            f"chosen: {' '.join(chosen) or 'the settings as configured'}: all {limit} tokens fit a {estimated}"
        )
    else:
        how = " ".join([*chosen, f"--micro-batch-tokens {tokens}"])
        lines.append(
            f"chosen: {how}: the longest of the options tried, {tokens} of the {limit} wanted, on a {estimated}"
        )
    lines = [f"fit: {line}" for line in lines]
    return {"tokens": tokens, "change": change, "flags": chosen, "plan": plan, "lines": lines}


# ----------------------------------------------------------------------------- the trainers' --gpu-memory and --fit


def target_gpu(gpu_memory: float | None, attn: str) -> dict:
    """The GPU a trainer plans for, and the attention its run will use there: --gpu-memory, else the GPU of this
    machine, else an 80 GB card; --attn auto: what utils.pick_attention picks on this machine's GPU (SDPA on a T4 or
    without flash-attn), FlashAttention-2 without a GPU (docs/gpu.md's install, on Ampere or newer)."""
    import torch

    import utils

    detected = torch.cuda.is_available()
    gib = gpu_memory or DEFAULT_GPU_GIB
    if detected and not gpu_memory:
        gib = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory / GiB
    attention = attn
    if attn == "auto":
        attention = utils.pick_attention(attn, torch.device("cuda")) if detected else "flash_attention_2"
    return {"gpu_gib": gib, "attention": attention, "detected": detected}


def run_settings(args: argparse.Namespace, **specific) -> dict:
    """estimate()'s settings for a trainer's arguments: what both trainers share, plus their own (mode, optimizer...).
    The plan assumes WORLD_SIZE GPUs under torchrun, else --gpus, else one."""
    target = target_gpu(args.gpu_memory, args.attn)
    n_gpus = args.gpus or int(os.environ.get("WORLD_SIZE", "1"))
    if args.sequence_parallel > 1:  # one clear line, before anything loads; a model unknown offline is checked later
        try:
            memory_activations.check_sequence_parallel(model_shapes(args.model), args.sequence_parallel, n_gpus)
        except ValueError as e:
            if "--sequence-parallel" in str(e):
                raise SystemExit(f"{e} (--gpus or WORLD_SIZE: {n_gpus})") from None
    return {
        "n_gpus": n_gpus,
        "cpu_offload": args.cpu_offload,
        "gradient_checkpointing": args.gradient_checkpointing,
        "offload_activations": args.offload_activations,
        "loss_chunk_tokens": args.loss_chunk_tokens,
        "sequence_parallel": args.sequence_parallel,
        "packing": args.packing,
        "gpu_gib": target["gpu_gib"],
        "attention": target["attention"],
        **specific,
    }


def can_offload_activations() -> bool:
    """utils.enable_checkpointing's condition for --offload-activations (transformers >= 5.23)."""
    from transformers import PreTrainedModel

    return hasattr(PreTrainedModel, "activation_checkpointing_enable")


NO_GPU = "no GPU detected: --fit needs --gpu-memory to plan for one; settings unchanged"


def fit_run(args: argparse.Namespace, settings: dict) -> dict:
    """--fit for both trainers: the longest --micro-batch-tokens (and, when shorter, --max-length) up to the configured
    one that fits the target GPU, with the first fallbacks() it needs, written into args so that the run (or its
    --dry-run plan) uses them; prints one line per decision (rank 0). Without --dry-run, a fallback this environment
    cannot run is not tried, and nothing fitting stops the run before it loads anything."""
    printer = os.environ.get("RANK", "0") == "0"  # under torchrun, rank 0 speaks for all
    detected = target_gpu(None, args.attn)["detected"]
    source = "--gpu-memory"
    if args.gpu_memory is None:
        source = "this machine's GPU" if detected else "no GPU detected: an 80 GB card, the planner's default"
    if args.gpu_memory is None and not detected and not args.dry_run:
        result = {"tokens": None, "change": {}, "lines": [NO_GPU]}
    else:
        offload_available = args.dry_run or can_offload_activations()
        result = fit(args.model, args.micro_batch_tokens, offload_available=offload_available, **settings)
        result["lines"].insert(0, f"fit: for a {settings['gpu_gib']:.1f} GiB GPU ({source}), {settings['attention']}")
    for line in result["lines"] if printer else []:
        print(line)
    if result["tokens"] is None:
        return result
    if not result["tokens"]:
        if not args.dry_run:
            raise SystemExit(f"--fit: {args.model} does not fit a {settings['gpu_gib']:.1f} GiB GPU; see above")
        return result
    for key, value in result["change"].items():
        setattr(args, {"optimizer": "optim"}.get(key, key), value)
    args.micro_batch_tokens, args.max_length = result["tokens"], min(args.max_length, result["tokens"])
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="Qwen/Qwen2.5-32B-Instruct", help="hub name or local folder (its config.json)")
    p.add_argument("--mode", choices=MODES, default="qlora", help="full: train_full.py; lora/qlora: train_lora.py")
    p.add_argument("--gpus", type=int, default=1, help="GPUs; full SFT shards over them, LoRA replicates (or --fsdp)")
    p.add_argument("--seq-len", type=int, default=16384, help="tokens per packed micro-batch (--micro-batch-tokens)")
    p.add_argument("--optim", choices=OPTIMIZERS, default="adamw", help="optimizer whose state is counted")
    p.add_argument("--lora-rank", type=int, default=64, help="adapter rank (paper: 64)")
    p.add_argument("--fsdp", action="store_true", help="lora: shard base and adapters over the GPUs (FSDP2)")
    p.add_argument("--cpu-offload", action="store_true", help="FSDP with the sharded state in CPU memory")
    p.add_argument("--offload-activations", action="store_true", help="checkpointed activations in CPU memory")
    p.add_argument(
        "--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=True, help="recompute activations"
    )
    p.add_argument("--sequence-parallel", type=int, default=1, help="split each packed row over N GPUs (Ulysses)")
    p.add_argument("--loss-chunk-tokens", type=int, default=1024, help="chunked LM-head loss; 0 = full logits")
    p.add_argument(
        "--gpu-memory",
        type=float,
        default=DEFAULT_GPU_GIB,
        help="memory of one GPU in GiB, as torch reports it (79.6: an 80 GB card; T4 14.76, A100 40 GB 39.49)",
    )
    p.add_argument(
        "--attention",
        choices=ATTENTION,
        default="flash_attention_2",
        help="what the run attends with: sdpa on a T4 (no FlashAttention-2 before Ampere) adds the packed T x T mask",
    )
    p.add_argument("--fit", action="store_true", help="the longest --seq-len (up to the one given) that fits, and how")
    return p.parse_args(argv)


def main(args: argparse.Namespace) -> dict:
    settings = dict(
        n_gpus=args.gpus,
        mode=args.mode,
        optimizer=args.optim,
        lora_rank=args.lora_rank,
        fsdp=args.fsdp,
        cpu_offload=args.cpu_offload,
        gradient_checkpointing=args.gradient_checkpointing,
        offload_activations=args.offload_activations,
        loss_chunk_tokens=args.loss_chunk_tokens,
        sequence_parallel=args.sequence_parallel,
        gpu_gib=args.gpu_memory,
        attention=args.attention,
    )
    if args.fit:
        result = fit(args.model, args.seq_len, **settings)
        print("\n".join(result["lines"]))
        print(format_plan(result["plan"]))
        return result
    plan, text = report(args.model, seq_len=args.seq_len, **settings)
    print(text)
    return plan


if __name__ == "__main__":
    main(parse_args())
