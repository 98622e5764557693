"""Will it fit? Estimated peak GPU memory per GPU, by component, before renting the GPU.

    python memory_plan.py --model Qwen/Qwen2.5-32B-Instruct --mode qlora                 # train_lora.py's default run
    python memory_plan.py --model Qwen/Qwen2.5-32B-Instruct --mode full --gpus 8 --cpu-offload   # the paper's full SFT
    python memory_plan.py --model Qwen/Qwen2.5-7B-Instruct --mode full --optim adamw8bit --seq-len 32768
    python memory_plan.py --model Qwen/Qwen2.5-32B-Instruct --mode lora --gpus 4 --fsdp       # the paper's LoRA run

Both trainers' --dry-run print the same plan for their configuration. The shapes of the Qwen2.5 family are built in,
so their plans need no download; any other dense decoder is read from its config.json (local folder or the hub).
"""

from __future__ import annotations

import argparse
from pathlib import Path

# Shapes of the models the paper trains, so a memory plan needs no download; "-Instruct" shares its base's shape.
# (hidden, layers, attention heads, kv heads, intermediate, vocab, tied embeddings)
KNOWN_SHAPES = {
    "Qwen/Qwen2.5-7B": (3584, 28, 28, 4, 18944, 152064, False),
    "Qwen/Qwen2.5-14B": (5120, 48, 40, 8, 13824, 152064, False),
    "Qwen/Qwen2.5-32B": (5120, 64, 40, 8, 27648, 152064, False),
    "Qwen/Qwen2.5-72B": (8192, 80, 64, 8, 29568, 152064, False),
}
GiB = 2**30
MODES = ("full", "lora", "qlora")
OPTIMIZERS = ("adamw", "adamw8bit", "paged_adamw8bit")
HEADROOM = 0.92  # share of the card a plan may fill: the rest is CUDA context, NCCL buffers and fragmentation


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
    gpu_gib: float = 79.6,
) -> dict:
    """Estimated peak memory per GPU in GiB, by component, for one micro-batch of seq_len packed tokens.

    model: hub name, local folder, transformers config or a model_shapes() dict. P = parameters, L = layers,
    h = hidden, i = intermediate, kv = kv heads x head dim, V = vocab, T = seq_len, A = LoRA parameters
    (r x (in + out) for every linear of every decoder layer, PEFT's "all-linear").

    mode="full" (train_full.py): fp32 master weights 4P, fp32 gradients 4P, optimizer 8P (AdamW: two fp32 moments) or
      2P (bitsandbytes 8-bit; paged = may spill to CPU). Sharded over n_gpus with FSDP when n_gpus > 1 or
      cpu_offload; cpu_offload moves all three to CPU memory. FSDP working copies: the root unit (embeddings, final
      norm, LM head) stays gathered in bf16 through forward and backward (2 x root), plus one decoder layer gathered
      and one prefetched in bf16, its bf16 gradient and fp32 reduce-scatter buffer (10 x layer). One GPU without
      FSDP: bf16 copies made by autocast for one layer and the LM head at a time (its cache is off).
    mode="lora" / "qlora" (train_lora.py; without fsdp, n_gpus > 1 means data-parallel replicas): frozen base in bf16
      (2P); qlora: decoder linears in NF4 with double quantisation (4.127 bits), the rest (embeddings, norms, biases,
      LM head) in bf16, as utils.prepare_qlora leaves it, plus one layer dequantised to bf16 at a time. Adapters 16A
      (fp32 weights, gradients and AdamW moments) or 10A (8-bit moments). lora with fsdp (or cpu_offload, which
      implies it): base and adapter states sharded over n_gpus (in CPU memory with cpu_offload); working copies: the
      root unit gathered in bf16 (2 x root), one decoder layer gathered and one prefetched in bf16 (4 x layer, no
      gradient: the base is frozen), and one layer's adapters gathered, their gradient and reduce buffer (10 x A / L).
    Activations: with checkpointing, each layer's input is kept (L x T x h in the residual stream's dtype: bf16, but
      fp32 on the single-GPU full path, whose fp32 master weights keep it fp32 under autocast), on CPU with
      offload_activations. Recomputing one layer in backward holds its saved tensors, 22h + 8kv + 8i bytes per token
      (norms in fp32, q/k/v before and after rotary, attention output, the four SwiGLU tensors; FlashAttention/SDPA
      keep no T x T scores; measured for a QLoRA layer under bf16 autocast on CPU: within 2%), x 1.5 for the
      gradients alive beside them. The chunked loss peaks at 10 bytes x chunk x V (bf16 logits, fp32 logits and
      log-softmax, its gradient); it runs before the layers' backward, so the larger of the two counts.
    Not counted: CUDA context, NCCL buffers, allocator fragmentation: "fits" leaves 8% of gpu_gib (79.6 = an 80 GB card)
    for them. Expect the estimate within ~15% of torch.cuda.max_memory_allocated.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be full, lora or qlora, not {mode!r}")
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be adamw, adamw8bit or paged_adamw8bit, not {optimizer!r}")
    s = model_shapes(model)
    h, n_layers, i, V, T = s["hidden"], s["layers"], s["intermediate"], s["vocab"], seq_len
    q, kv = s["heads"] * s["head_dim"], s["kv_heads"] * s["head_dim"]
    layer_linear = h * q + 2 * h * kv + q * h + 3 * h * i
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
    per_layer = (22 * h + 8 * kv + 8 * i) * T
    checkpoints = n_layers * T * h * act_bytes if gradient_checkpointing else n_layers * per_layer
    layer_peak = 1.5 * per_layer if gradient_checkpointing else 0.5 * per_layer
    loss_peak = 10 * min(loss_chunk_tokens or T, T) * V
    gpu = {name: 0.0 if on_cpu else value for name, value in states.items()}
    gpu["working_copies"] = working
    gpu["activation_checkpoints"] = 0.0 if offload_activations and gradient_checkpointing else checkpoints
    gpu["activation_peak"] = max(layer_peak, loss_peak)
    plan.update({k: v / GiB for k, v in gpu.items()})
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
    lines = [
        f"memory plan: {plan['model']} ({plan['params_billion']:.2f}B params), {plan['mode']}, {plan['optim']}, "
        f"{plan['seq_len']} tokens/micro-batch, {how}{offload}"
    ]
    if "lora_params_million" in plan:
        lines.append(f"  adapters                  {plan['lora_params_million']:.1f}M trainable params")
    for key in ("weights", "gradients", "optimizer", "working_copies", "activation_checkpoints", "activation_peak"):
        note = " (paged: spills to CPU under pressure)" if key == "optimizer" and plan["pageable"] else ""
        lines.append(f"  {key:<25} {plan[key]:7.2f} GiB per GPU{note}")
    lines.append(
        f"  {'total':<25} {plan['total']:7.2f} GiB per GPU   (+ {plan['cpu_per_gpu']:.1f} GiB CPU memory per GPU)"
    )
    if not plan["fits"]:
        verdict = "does NOT fit"
    elif plan["total"] <= HEADROOM * plan["gpu_gib"]:
        verdict = "fits"
    else:
        verdict = "fits only by paging optimizer state to CPU in"
    lines.append(f"  -> {verdict} a {plan['gpu_gib']:.1f} GiB GPU (8% kept for CUDA context, NCCL, fragmentation)")
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
        changes = [("--offload-activations", {"offload_activations": True})]
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
    p.add_argument("--loss-chunk-tokens", type=int, default=1024, help="chunked LM-head loss; 0 = full logits")
    p.add_argument("--gpu-gib", type=float, default=79.6, help="memory of one GPU in GiB (79.6 = an 80 GB card)")
    return p.parse_args(argv)


def main(args: argparse.Namespace) -> dict:
    plan, text = report(
        args.model,
        n_gpus=args.gpus,
        seq_len=args.seq_len,
        mode=args.mode,
        optimizer=args.optim,
        lora_rank=args.lora_rank,
        fsdp=args.fsdp,
        cpu_offload=args.cpu_offload,
        gradient_checkpointing=args.gradient_checkpointing,
        offload_activations=args.offload_activations,
        loss_chunk_tokens=args.loss_chunk_tokens,
        gpu_gib=args.gpu_gib,
    )
    print(text)
    return plan


if __name__ == "__main__":
    main(parse_args())
