"""Sequence parallelism (DeepSpeed-Ulysses): one packed row split over N ranks, so a sample longer than one GPU's
activations hold still trains, with the loss and gradients of the one-GPU step.

    torchrun --nproc-per-node 8 train_full.py --data long.jsonl --cpu-offload --sequence-parallel 8 \\
        --max-length 131072 --micro-batch-tokens 131072                 # one 128k-token sample is one row

The world of R ranks is a 2-D mesh (R/N, N): N consecutive ranks form a sequence-parallel (SP) group, the R/N groups
are data parallel. Every rank of a group takes the same micro-batches (distributed.rank_micro_batches over the groups);
shard_row pads each packed row to a multiple of N with ignored tokens and keeps the rank's contiguous 1/N of it, with
the tokens' true positions (they restart at 0 in each packed sample) and the row's sample boundaries (cu_seqlens).
Embeddings, MLPs, norms, RoPE and the chunked loss are per token: they run on the shard alone. Attention is the one
place tokens meet: ulysses_attention turns the N sequence shards into N head shards with an all-to-all (every rank
then holds the whole row for heads/N heads), attends over the whole row keeping each packed sample apart
(FlashAttention-2's varlen kernel with the row's cu_seqlens on GPU, SDPA's causal kernel sample by sample
elsewhere), and turns the result back with a second all-to-all. Both all-to-alls are autograd-aware, so backward
sends the gradients back the same way. Each rank's loss is the summed cross-entropy of its shard's targets, divided by
the step's target tokens (each counted once); gradients are summed over all ranks (replicated adapters: one all-reduce;
FSDP2 shards over all ranks: its reduce-scatter), which is the one-GPU gradient whatever N.

Why Ulysses, not PyTorch's ring attention (torch.distributed.tensor.experimental.context_parallel, TRL's FSDP2 path):
ring attention there replaces SDPA's is_causal kernel over one plain causal sequence and takes no attention mask and no
cu_seqlens, so packed samples would attend to each other; it also load-balances by reordering tokens, which the packed
row's position_ids and targets would have to follow. Ulysses needs nothing from the kernel: it hands the whole row to
the ordinary varlen kernel. Its limit: N must divide the query heads (40 for Qwen2.5-32B: N in 1, 2, 4, 5, 8, 10...)
and the ranks; where the model has fewer key/value heads than N (8 for 32B) they are repeated so each rank gets whole
heads.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F

from memory_activations import sequence_parallel_sizes
from sft import IGNORE_INDEX

ATTENTION = "sequence_parallel"  # the name registered in transformers' AttentionInterface and AttentionMaskInterface


@dataclass(frozen=True)
class Layout:
    """Where this rank sits: its sequence-parallel group (size N, rank in it) and its data-parallel replica."""

    size: int = 1  # N: ranks one row is split over
    rank: int = 0  # this rank's shard of the row
    dp_size: int = 1  # data-parallel replicas (world / N): what a step's samples are split over
    dp_rank: int = 0
    group: object = None  # the SP group's ProcessGroup (None for N = 1)


def setup(n: int, rank: int, world: int, device: torch.device) -> Layout:
    """The (dp, sp) mesh of the world: N consecutive ranks per SP group (one node's GPUs when N divides a node's count,
    so the all-to-alls stay on NVLink), the groups data parallel across. N = 1: every rank its own replica."""
    check_size(n, world)
    if n == 1:
        return Layout(1, 0, world, rank)
    from torch.distributed.device_mesh import init_device_mesh

    mesh = init_device_mesh(device.type, (world // n, n), mesh_dim_names=("dp", "sp"))
    return Layout(n, mesh.get_local_rank("sp"), world // n, mesh.get_local_rank("dp"), mesh.get_group("sp"))


def check_size(n: int, world: int, heads: int | None = None) -> None:
    """N must divide the ranks (the rest is data parallel) and, once the model is known, its query heads (Ulysses gives
    each rank heads/N whole heads). One rule (memory_activations.sequence_parallel_sizes, the planner's too), one
    message listing the N that work."""
    possible = sequence_parallel_sizes(heads or world, world)
    if n not in possible:
        model = f" and the model's {heads} attention heads" if heads else ""
        raise SystemExit(
            f"--sequence-parallel {n} must divide the {world} rank(s) (torchrun's world size){model}; "
            f"possible: {', '.join(map(str, possible))}"
        )


def check_model(config, n: int, world: int) -> None:
    """N fits the heads and the ranks (check_size), and every layer attends causally over its whole sample: the row
    kernels here take no window and no logit softcap, so a model with either would train silently wrong."""
    check_size(n, world, config.num_attention_heads)
    layer_types = getattr(config, "layer_types", None)  # where a model has them, they say which layers use a window
    layers = set(layer_types or []) - {"full_attention"}
    window = None if layer_types else getattr(config, "sliding_window", None)  # Mistral: every layer, no layer_types
    if layers or (window and getattr(config, "use_sliding_window", True)):
        kinds = ", ".join(sorted(layers)) or f"sliding_window {window}"
        raise SystemExit(
            f"--sequence-parallel {n}: the model's {kinds} attention is not supported (full attention only)"
        )
    softcaps = [k for k, v in config.to_dict().items() if k.endswith("softcapping") and v is not None]
    if softcaps:
        raise SystemExit(f"--sequence-parallel {n}: the model's {', '.join(softcaps)} is not supported")


def use_ulysses(lm, layout: Layout, attn: str) -> None:
    """Route lm's attention through ulysses_attention (transformers' own registration, no fork of the modelling code:
    any model whose attention calls the AttentionInterface works), with attn's kernel over the whole row. The mask
    interface returns no mask: the local shard's position_ids would give a wrong one, the row's cu_seqlens decide."""
    if layout.size == 1:
        return
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    check_model(lm.config, layout.size, layout.size * layout.dp_size)
    kernel = "flash_attention_2" if attn == "flash_attention_2" else "sdpa"
    if kernel != attn and layout.rank == layout.dp_rank == 0:  # global rank 0; distributed.say would import back
        print(f"--sequence-parallel {layout.size}: attention over the whole row runs SDPA, not --attn {attn}")
    AttentionInterface.register(ATTENTION, partial(ulysses_attention, group=layout.group, kernel=kernel))
    AttentionMaskInterface.register(ATTENTION, lambda *args, **kwargs: None)
    lm.set_attn_implementation(ATTENTION)


def shard_row(batch: dict[str, torch.Tensor], layout: Layout) -> dict[str, torch.Tensor]:
    """This rank's contiguous 1/N of one packed row (sft.collate_packed), and the whole row's sample boundaries.

    The row is padded to a multiple of N with one more "sample" of ignored tokens (targets IGNORE_INDEX, positions
    from 0): causal attention keeps every real token from seeing it, so it changes no loss and no gradient. The
    shard's position_ids are the tokens' true positions in their samples (RoPE); sp_cu_seqlens are the row's sample
    starts and its end, which ulysses_attention receives through the decoder's keyword arguments, and sp_bounds the
    same as Python ints: every layer's attention reads them (sample slices, the longest sample) without a GPU->CPU
    sync."""
    if layout.size == 1:
        return batch
    n, length = layout.size, batch["input_ids"].shape[1]
    pad = -length % n
    ids, positions, targets = batch["input_ids"], batch["position_ids"], batch["targets"]
    if pad:
        ids = torch.cat([ids, ids.new_zeros(1, pad)], dim=1)
        positions = torch.cat([positions, torch.arange(pad).unsqueeze(0)], dim=1)
        targets = torch.cat([targets, targets.new_full((1, pad), IGNORE_INDEX)], dim=1)
    starts = (positions[0] == 0).nonzero().flatten()
    cu_seqlens = torch.cat([starts, torch.tensor([length + pad])]).to(torch.int32)  # on the CPU still: no sync
    shard = slice(layout.rank * (length + pad) // n, (layout.rank + 1) * (length + pad) // n)
    return {
        "input_ids": ids[:, shard],
        "position_ids": positions[:, shard],
        "targets": targets[:, shard],
        "sp_cu_seqlens": cu_seqlens,
        "sp_bounds": tuple(cu_seqlens.tolist()),
    }


def _all_to_all(x: torch.Tensor, group) -> torch.Tensor:
    """Chunk i of dim 0 goes to rank i; chunk i of the result came from rank i. Autograd-aware: its backward is the
    reverse all-to-all (torch.distributed.nn.functional.all_to_all_single is the deprecated spelling of this)."""
    from torch.distributed._functional_collectives import all_to_all_single_autograd, wait_tensor

    return wait_tensor(all_to_all_single_autograd(x.contiguous(), None, None, group))


def sequence_to_heads(x: torch.Tensor, group) -> torch.Tensor:
    """(1, heads, T/N, d) on each rank, its sequence shard -> (1, heads/N, T, d): its head shard of the whole row."""
    n = group.size()
    _, heads, length, dim = x.shape
    x = _all_to_all(x.reshape(n, heads // n, length, dim), group)  # [i] = rank i's tokens of my heads
    return x.transpose(0, 1).reshape(1, heads // n, n * length, dim)


def heads_to_sequence(x: torch.Tensor, group) -> torch.Tensor:
    """The inverse: (1, heads/N, T, d) -> (1, heads, T/N, d)."""
    n = group.size()
    _, heads, length, dim = x.shape
    x = _all_to_all(x.reshape(heads, n, length // n, dim).transpose(0, 1), group)  # [i] = my tokens of rank i's heads
    return x.reshape(1, n * heads, length // n, dim)


def repeat_kv_heads(key: torch.Tensor, value: torch.Tensor, heads: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Fewer key/value heads than N, or a count N does not divide (Qwen2.5-32B: 8 for 40 query heads): repeat each
    the fewest times that makes the count a multiple of N. lcm(kv, N) divides the query heads (kv and N both do), and
    query head h still meets key head h // (heads / kv) of the model, now as one of its copies on the same rank."""
    kv = key.shape[1]
    repeat = math.lcm(kv, n) // kv
    if repeat == 1:
        return key, value
    return key.repeat_interleave(repeat, dim=1), value.repeat_interleave(repeat, dim=1)


def row_attention(query, key, value, cu_seqlens, bounds, kernel: str, scaling, dropout: float) -> torch.Tensor:
    """Causal attention over the whole packed row, (1, h, T, d) in and out, each packed sample on its own: the varlen
    kernel of FlashAttention-2 on GPU; elsewhere SDPA's causal kernel on each sample in turn, which is the
    block-diagonal causal mask without building it (at 16k tokens its float form alone takes 1 GiB)."""
    if kernel == "flash_attention_2" and query.is_cuda:
        from flash_attn import flash_attn_varlen_func  # GPU only: the varlen kernel takes the row's cu_seqlens

        cu_seqlens = cu_seqlens.to(query.device)  # already there when the batch was moved (no copy)
        longest = max(b - a for a, b in zip(bounds, bounds[1:]))
        q, k, v = (t[0].transpose(0, 1) for t in (query, key, value))  # (T, h, d)
        out = flash_attn_varlen_func(q, k, v, cu_seqlens, cu_seqlens, longest, longest, dropout, scaling, causal=True)
        return out.transpose(0, 1).unsqueeze(0)
    samples = [
        F.scaled_dot_product_attention(
            query[:, :, a:b],
            key[:, :, a:b],
            value[:, :, a:b],
            dropout_p=dropout,
            is_causal=True,
            scale=scaling,
            enable_gqa=True,
        )
        for a, b in zip(bounds, bounds[1:])
    ]
    return torch.cat(samples, dim=2)


def ulysses_attention(
    module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask,
    *,
    group,
    kernel: str,
    scaling: float | None = None,
    dropout: float = 0.0,
    sp_cu_seqlens: torch.Tensor | None = None,
    sp_bounds: tuple[int, ...] | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """transformers' attention-function contract: query (1, heads, T/N, d), key and value (1, kv_heads, T/N, d) of
    this rank's shard -> (1, T/N, heads, d). attention_mask is None (use_ulysses's mask function)."""
    if sp_cu_seqlens is None or sp_bounds is None:
        raise ValueError("sequence-parallel attention needs the row's sp_cu_seqlens and sp_bounds (shard_row)")
    if kwargs.get("sliding_window") is not None or kwargs.get("softcap") is not None:  # check_model stops these
        raise ValueError("sequence-parallel attention takes no sliding window and no softcap")
    key, value = repeat_kv_heads(key, value, query.shape[1], group.size())
    query, key, value = (sequence_to_heads(t, group) for t in (query, key, value))
    out = row_attention(query, key, value, sp_cu_seqlens, sp_bounds, kernel, scaling, dropout)  # dropout: 0.0 in eval
    return heads_to_sequence(out, group).transpose(1, 2).contiguous(), None
