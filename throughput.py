"""Training speed, estimated until a GPU measures it: a GPU's dense 16-bit peak, the FLOPs of useful work a step's
samples cost, and the tokens per second an assumed model-FLOPs utilisation (MFU) gives. memory_tables.py's speed
columns are these estimates; bench/gpu.py measures the real MFU with the same FLOPs count and the same peak table.

    python -c "import throughput; print(throughput.peak_tflops('NVIDIA A100-SXM4-80GB'))"
    python -c "import throughput; print(round(throughput.tokens_per_second('Qwen/Qwen2.5-32B-Instruct', 989)))"
"""

from __future__ import annotations

import memory_plan

# Dense (no sparsity) 16-bit tensor-core peaks, TFLOPS, from the vendors' datasheets, matched in this order against
# torch.cuda.get_device_name(): T4 65 (mixed FP16/FP32; no bf16), L4 121 (242 "with sparsity"), A100 312 (bf16), H100
# SXM 989 (1,979 with sparsity).
PEAK_TFLOPS = [
    ("H100 PCIe", 756), ("H100 NVL", 835), ("H100", 989), ("H200", 989), ("H800", 989), ("GH200", 989),
    ("B200", 2250), ("A100", 312), ("A800", 312), ("L40S", 362), ("L40", 181), ("A6000", 155), ("L4", 121),
    ("A10G", 70), ("RTX 4090", 165), ("T4", 65),
]  # fmt: skip
MFU = 0.35  # assumed model-FLOPs utilisation: what well-tuned bf16 training reaches; an estimate until measured
MEAN_SAMPLE_TOKENS = 5634  # Sky-T1-like sample lengths (bench/RESULTS.md, benchmark 2)


def peak_tflops(device_name: str) -> float | None:
    """The dense 16-bit peak of a GPU named like torch.cuda.get_device_name() ("NVIDIA A100-SXM4-40GB"), if known."""
    return next((tflops for key, tflops in PEAK_TFLOPS if key.lower() in device_name.lower()), None)


def matmul_params(shapes: dict) -> int:
    """Weights that take part in a matrix multiply per token (the '6N' of MFU): decoder linears and the LM head, not
    the embedding lookup. shapes as memory_plan.model_shapes gives them."""
    return shapes["layers"] * memory_plan.linear_params(shapes) + shapes["vocab"] * shapes["hidden"]


def training_flops(shapes: dict, sample_lengths: list[float]) -> float:
    """The useful work of training on these samples: 6 x matmul weights per token (forward 2 + backward 4) + causal
    attention scores and weighted sums, 6 x layers x hidden x length^2 per sample. LoRA skips the frozen weights'
    gradients but recomputes the checkpointed forward, which MFU does not count as work: the conventional MFU."""
    attention = 6 * shapes["layers"] * shapes["hidden"] * sum(n * n for n in sample_lengths)
    return 6 * matmul_params(shapes) * sum(sample_lengths) + attention


def tokens_per_second(model, peak_tflops: float, mean_sample: float = MEAN_SAMPLE_TOKENS, mfu: float = MFU) -> float:
    """Estimated training tokens per second on samples of mean_sample tokens: peak x MFU / FLOPs per token."""
    flops_per_token = training_flops(memory_plan.model_shapes(model), [mean_sample]) / mean_sample
    return peak_tflops * 1e12 * mfu / flops_per_token
