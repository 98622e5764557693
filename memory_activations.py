"""Activation memory of one packed row on one GPU, with or without sequence parallelism: the part of a memory plan that
grows with the tokens. memory_plan.estimate() adds it to the model's weights, gradients and optimizer state.

    import memory_activations, memory_plan
    memory_activations.activations(memory_plan.model_shapes("Qwen/Qwen2.5-32B"), 131072, sequence_parallel=8)

Bytes per GPU (rank). The shapes dict is memory_plan.model_shapes()'s. Planning needs no torch; PyTorch's own
MemTracker checks these figures on fake tensors (bench/planner_vs_tracker.py, tests/test_memory_plan.py).
"""

from __future__ import annotations

import math

ATTENTION = ("flash_attention_2", "flex_attention", "sdpa", "eager")


def sequence_parallel_sizes(heads: int, n_gpus: int) -> list[int]:
    """The --sequence-parallel sizes a run can use: N divides the GPUs (the rest is data parallel) and the query heads
    (Ulysses gives every rank whole heads)."""
    return [n for n in range(1, n_gpus + 1) if n_gpus % n == 0 and heads % n == 0]


def check_sequence_parallel(s: dict, n: int, n_gpus: int) -> None:
    if n not in sequence_parallel_sizes(s["heads"], n_gpus):
        possible = ", ".join(map(str, sequence_parallel_sizes(s["heads"], n_gpus)))
        raise ValueError(
            f"--sequence-parallel {n} must divide the {n_gpus} GPU(s) and the model's {s['heads']} query heads: "
            f"possible {possible}"
        )


def head_sharded_kv_heads(kv_heads: int, n: int) -> int:
    """Key/value heads after the all-to-all's repeat: kv heads fewer than N (or not a multiple of it) are repeated to
    the least multiple of both, so each of the N ranks gets whole heads (Qwen2.5-32B: 8 kv heads, SP 16 -> 16)."""
    return math.lcm(kv_heads, n)


def activations(
    s: dict,
    seq_len: int,
    sequence_parallel: int = 1,
    attention: str = "flash_attention_2",
    gradient_checkpointing: bool = True,
    residual_bytes: int = 2,
    loss_chunk_tokens: int = 1024,
) -> dict:
    """Activation memory of one rank, in bytes, for a packed row of seq_len tokens split over sequence_parallel ranks.

    h = hidden, i = intermediate, q = heads x head dim, kv = kv heads x head dim, V = vocab, L = layers, N = sequence
    parallel, T = seq_len and t = ceil(T / N) the rank's shard (the row is padded to a multiple of N).
    Checkpoints: with checkpointing, each layer's input is kept (L x t x h in the residual stream's dtype,
      residual_bytes: 2 for bf16/fp16, 4 for an fp32 residual stream). Recomputing one layer in backward holds its
      saved tensors, 22h + 8kv + 8i bytes per token (norms in fp32, q/k/v before and after rotary, attention output,
      the four SwiGLU tensors; the fused attention kernels keep no T x T scores; measured for a QLoRA layer under bf16
      autocast on CPU: within 2%), x 1.25 for the gradients alive beside them with FlashAttention-2 (PyTorch's
      MemTracker on fake tensors of 7B and 32B shapes finds 1.26-1.28: bench/planner_vs_tracker.py) and x 1.5 with
      SDPA or eager, whose CPU kernels the tracker cannot stand for a GPU's. fp16 costs the same bytes as bf16.
    Sequence parallelism (DeepSpeed-Ulysses): every token-proportional tensor above is the rank's t tokens. Around
      attention an all-to-all turns the sequence shards [t, q] / [t, kv] into head shards [T, q/N] / [T, kv'/N] (kv'
      = head_sharded_kv_heads(): kv heads repeated up to whole heads per rank) and a second one turns the output
      back. The attention kernel keeps q, k, v in the head layout instead of the sequence layout (the same bytes,
      more where kv heads are repeated), and the output in both: t x (2q + 4(kv' - kv)) bytes more per layer
      ("all_to_all", inside the layer's recomputation, with their gradients as above; MemTracker agrees).
    The chunked loss runs on each rank's shard and peaks at 10 bytes x chunk x V (bf16 logits, fp32 logits and
      log-softmax, its gradient); it runs before the layers' backward, so the larger of the two peaks counts.
    Attention: FlashAttention-2 (and flex attention) read the packed samples' boundaries from position_ids (with SP:
      the row's cu_seqlens, a few bytes) and hold nothing T x T. SDPA and eager do not: for a packed row (position_ids
      restarting, no attention mask; sft.py's collate_packed) transformers 5.x's create_causal_mask finds the packed
      sequences (find_packed_sequence_indices) and, the is_causal shortcut being off, sdpa_mask materialises a
      (1, 1, T, T) bool block-diagonal mask, built once per forward and held by every checkpointed layer until
      backward ends: T^2 bytes ("attention_mask"). With SP there is no mask: sequence_parallel.py attends over the
      whole row (H/N heads) with SDPA's causal kernel one packed sample at a time, which holds nothing T x T. With a
      mask, transformers' sdpa_attention_forward repeats the kv heads to all heads (no
      enable_gqa): + 4q bytes per token in a layer's recomputation; and torch's SDPA turns the bool mask into an
      additive fp16/bf16 copy and, when T is not a multiple of 8, an aligned padded copy (attention.cpp:
      convert_boolean_attn_mask, preprocess_mask), which the memory-efficient kernel keeps for backward: + 4 T^2 bytes
      at a layer's peak. Eager also materialises the scores, about 8 x heads / N x T^2 bytes per layer (bf16 scores,
      fp32 softmax, bf16 weights), and a float mask, 4 T^2. This is what a T4 runs (no FlashAttention-2 before
      Ampere): 16384 tokens cost 1.25 GiB of masks, 32768 tokens 5 GiB.
    Without checkpointing every layer keeps what it saved, attention's too.
    """
    if attention not in ATTENTION:
        raise ValueError(f"attention must be one of {', '.join(ATTENTION)}, not {attention!r}")
    h, n_layers, i, V, T, N = s["hidden"], s["layers"], s["intermediate"], s["vocab"], seq_len, sequence_parallel
    q, kv = s["heads"] * s["head_dim"], s["kv_heads"] * s["head_dim"]
    t = -(-T // N)
    masked = attention in ("sdpa", "eager") and N == 1  # the packed row's T x T mask (see the docstring)
    per_layer = (22 * h + 8 * kv + 8 * i + (4 * q if masked else 0)) * t
    all_to_all = 0
    if N > 1:
        kv_sharded = head_sharded_kv_heads(s["kv_heads"], N) * s["head_dim"]
        all_to_all = t * (2 * q + 4 * (kv_sharded - kv))
    mask = {"sdpa": T * T, "eager": 4 * T * T}.get(attention, 0) if masked else 0
    scores = {"sdpa": 4 * T * T, "eager": 8 * s["heads"] * T * T}.get(attention, 0) if masked else 0
    # the saved tensors and the gradients beside them (see the docstring): x 1.5 for SDPA's and eager's kernels
    with_grads = 1.5 if attention in ("sdpa", "eager") else 1.25
    if gradient_checkpointing:
        checkpoints, layer_peak = n_layers * t * h * residual_bytes, with_grads * (per_layer + all_to_all) + scores
    else:
        checkpoints, layer_peak = n_layers * (per_layer + all_to_all + scores), 0.5 * (per_layer + all_to_all)
    return {
        "tokens_per_rank": t,
        "checkpoints": checkpoints,
        "layer_peak": layer_peak,
        "loss_peak": 10 * min(loss_chunk_tokens or t, t) * V,
        "all_to_all": all_to_all,
        "attention_mask": mask,
    }
