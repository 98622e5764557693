"""What both trainers share about running as several processes (torchrun): one home for the process group, the
token-balanced split of a step's samples over the ranks, the global loss normalisation's collectives, gradient sums
and clipping across ranks, the optimizer step with fp16's loss scaling, and FSDP2 sharding of a model.

The rule that makes N ranks compute the one-process step: every rank takes its share of the same `--samples-per-step`
samples (rank_micro_batches), divides its summed loss by the target tokens of the WHOLE step (all ranks), and the
gradients are summed, never averaged, across ranks (all_reduce_gradients for replicated adapters, FSDP2 set to sum
for shards). Every function here is a no-op or identity in one process.
"""

from __future__ import annotations

import os
from datetime import timedelta

import torch

import sequence_parallel
import sft


def launched() -> bool:
    """Started by torchrun (or accelerate launch) with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init(timeout: timedelta, cpu_offload: bool = False) -> tuple[int, int, torch.device]:
    """Join torchrun's process group (or make a one-process group for --fsdp without torchrun); one GPU per rank. The
    timeout: the others wait in a collective while rank 0 alone reads a 32B checkpoint and later writes final/.
    cpu_offload: the AdamW step runs on the CPU, so each rank gets its share of the cores (torchrun gives it one)."""
    import torch.distributed as dist

    import utils

    if cpu_offload and utils.cpu_threads_per_rank():
        torch.set_num_threads(utils.cpu_threads_per_rank())

    cuda = torch.cuda.is_available()
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    # gloo beside NCCL for collectives on CPU tensors: with --cpu-offload the shards the weights load into live there
    backend = "cpu:gloo,cuda:nccl" if cuda else "gloo"
    if not dist.is_initialized():
        if "RANK" in os.environ:
            dist.init_process_group(backend, device_id=device if cuda else None, timeout=timeout)
        else:
            dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1, timeout=timeout)
    return dist.get_rank(), dist.get_world_size(), device


def active() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def barrier() -> None:
    if active():
        torch.distributed.barrier()


def finish() -> None:
    """Leave the process group once every rank is done (rank 0 may still merge or write alone afterwards)."""
    if active():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def rank_micro_batches(
    sample_ids: list[int], lengths: list[int], replicas: int, micro_batch_tokens: int, pack
) -> list[list[list[int]]]:
    """Every data-parallel replica's micro-batches for one step (a replica: one rank, or one sequence-parallel group
    whose ranks all take its micro-batches), computed identically on every rank without communication.

    Samples go longest first to the replica with the fewest tokens so far (replicas finish together). FSDP needs the
    same number of forward/backward passes on every rank, so short lists are padded with empty micro-batches.
    """
    shares, loads = [[] for _ in range(replicas)], [0] * replicas
    for i in sorted(sample_ids, key=lambda i: (-lengths[i], i)):
        r = loads.index(min(loads))
        shares[r].append(i)
        loads[r] += lengths[i]
    per_rank = [pack(share, lengths, micro_batch_tokens) for share in shares]
    n = max(len(m) for m in per_rank)
    return [m + [[]] * (n - len(m)) for m in per_rank]


def empty_micro_batch(pad_id: int) -> list[sft.Sample]:
    """Stands in for a real micro-batch on a replica with fewer of them, so every rank runs the same forward/backward
    passes (FSDP's collectives); its loss is weighted by zero. One token: a forward needs an input (the chunked loss
    gives the LM head its zero gradient whatever the targets)."""
    return [sft.Sample([pad_id], [pad_id])]


def accumulate_step(
    model,
    data: sft.TrainingData,
    sample_ids: list[int],
    micro_batch_tokens: int,
    pack,
    collate,
    device,
    autocast,
    scaler: torch.amp.GradScaler,
    layout: sequence_parallel.Layout,
) -> tuple[float, int, int]:
    """Forward and backward of this rank's share of one optimizer step; gradients accumulate in the parameters.

    Each micro-batch's summed loss is divided by the target tokens of the WHOLE step (all samples, all ranks), fixed
    before any micro-batch runs: with gradients summed over micro-batches and ranks, that is the one-process gradient
    of the mean over the step's target tokens, not a mean of micro-batch means (which would over-weight short ones).
    Under fp16 the backward runs on the loss times the scaler's scale (make_grad_scaler); the gradients keep it until
    scaled_optimizer_step. Returns the step's summed loss and token count over all ranks, and its target tokens.

    Sequence parallelism (layout.size N > 1): the samples are split over the data-parallel replicas (world / N), every
    rank of a replica's SP group takes the same micro-batches and runs its shard of each row (shard_row); the shards'
    targets are disjoint, so the summed losses add up to the row's, and each token is counted by the group's rank 0.
    """
    n_targets = sum(data.n_targets[i] for i in sample_ids)
    loss_sum, n_tokens = 0.0, 0
    shares = rank_micro_batches(sample_ids, data.lengths, layout.dp_size, micro_batch_tokens, pack)
    for micro in shares[layout.dp_rank]:
        weight = 1.0 if micro else 0.0
        batch = collate([data.samples[i] for i in micro] or empty_micro_batch(data.tokenizer.pad_token_id))
        batch = sequence_parallel.shard_row(batch, layout)  # N = 1: the whole row
        with autocast:
            micro_loss = model({k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()})  # sp_bounds
        scaler.scale(micro_loss * (weight / n_targets)).backward()
        loss_sum += weight * micro_loss.item()
        n_tokens += sum(data.lengths[i] for i in micro) if layout.rank == 0 else 0
    loss_sum, n_tokens = sum_over_ranks(loss_sum, n_tokens, device)
    return loss_sum, n_tokens, n_targets


def sum_over_ranks(loss_sum: float, n_tokens: int, device: torch.device) -> tuple[float, int]:
    """The step's summed loss and token count over all ranks (float64: the sum must not depend on the rank count)."""
    if not active():
        return loss_sum, n_tokens
    totals = torch.tensor([loss_sum, n_tokens], dtype=torch.float64, device=device)
    torch.distributed.all_reduce(totals)
    return totals[0].item(), int(totals[1].item())


def max_over_ranks(value: float, device: torch.device) -> float:
    if not active():
        return value
    t = torch.tensor(value, dtype=torch.float64, device=device)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return t.item()


def all_reduce_gradients(params: list[torch.Tensor]) -> None:
    """Sum the gradients of replicated parameters (LoRA adapters beside a per-rank 4-bit base) over the ranks. A
    parameter no micro-batch reached on this rank contributes zeros, so every rank joins every all-reduce."""
    if not active() or torch.distributed.get_world_size() == 1:
        return
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        torch.distributed.all_reduce(p.grad)


def clip_grad_norm(params: list[torch.Tensor], max_norm: float, device: torch.device) -> float:
    """Global L2 norm, then scale. FSDP shards (DTensor gradients) are disjoint, so their squares add up over ranks:
    one all-reduce of one number on the GPU, wherever the shards live (CPU memory with --cpu-offload). Replicated
    gradients, already summed, are the same on every rank: no collective."""
    from torch.distributed.tensor import DTensor

    grads = [p.grad for p in params if p.grad is not None]
    sharded = any(isinstance(g, DTensor) for g in grads)
    grads = [g.to_local() if isinstance(g, DTensor) else g for g in grads]
    # float64: a float32 norm of a 100k-element shard is off by up to 1e-4 on a single CPU thread
    squares = sum(torch.linalg.vector_norm(g, dtype=torch.float64).square().to(device) for g in grads)
    squares = torch.as_tensor(squares, dtype=torch.float64, device=device)
    if sharded and active():
        torch.distributed.all_reduce(squares)
    norm = squares.sqrt().item()
    scale = max_norm / (norm + 1e-6)
    if scale < 1:
        torch._foreach_mul_(grads, scale)
    return norm


def make_grad_scaler(dtype: torch.dtype, device: torch.device) -> torch.amp.GradScaler:
    """fp16's loss scaling, and under bf16 or fp32 a disabled scaler whose calls change nothing (their exponent range
    is fp32's), so both trainers' loops read the same whatever the dtype (utils.pick_dtype: fp16 on a T4 or V100).

    fp16 stops at 6e-8 (6e-5 for full precision): the backward of a loss divided by a step's ~10^5 target tokens
    flushes many gradients to zero there. The scaler multiplies the loss by 2^16 before backward, so the fp16 backward
    carries gradients 65536 x larger, and divides the fp32 gradients back before the clip and the step. A scale so
    large that some gradient overflows to inf or nan skips that step and halves the scale; 2000 clean steps in a row
    double it (torch's defaults). Under FSDP2 every rank sees only its shards' gradients: DTensor reduces the inf/nan
    flag over the ranks (max), so all skip the same steps."""
    return torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)


def scaled_optimizer_step(
    optimizer, scaler: torch.amp.GradScaler, params: list[torch.Tensor], max_norm: float, device: torch.device
) -> tuple[float, float, bool]:
    """One optimizer step on the gradients accumulate_step left (summed over ranks already): unscale them (fp16),
    clip the TRUE gradients to max_norm, step unless one is inf or nan, then update the scale.

    Returns the gradient norm, the loss scale this step's backward used (1.0 without fp16) and whether the optimizer
    stepped (a skipped step halves the scale: the test Hugging Face accelerate uses)."""
    scaler.unscale_(optimizer)  # before the clip: clipping scaled gradients would clip 65536 x too hard
    grad_norm = clip_grad_norm(params, max_norm, device)
    loss_scale = scaler.get_scale()
    scaler.step(optimizer)
    scaler.update()
    return grad_norm, loss_scale, scaler.get_scale() >= loss_scale


def restore_grad_scaler(scaler: torch.amp.GradScaler, state: dict) -> int:
    """A checkpoint's loss scale, so that a resumed fp16 run goes on with the scale it had (not 2^16 again, with its
    skipped steps); returns the steps the run has skipped so far. A checkpoint of a bf16 or fp32 run (or of an older
    version) has no scale: fp16 then starts from torch's default."""
    if scaler.is_enabled() and state.get("grad_scaler"):
        scaler.load_state_dict(state["grad_scaler"])
    return state.get("skipped_steps", 0)


class CausalLMLoss(torch.nn.Module):
    """Decoder, LM head and summed chunked cross-entropy as one module: FSDP's root unit gathers the embeddings,
    final norm and LM head around this forward, and the full logits of a 16k-token sequence never exist. Both trainers
    train through it, so parameter names ("lm.model.layers.0...") are the same with and without FSDP."""

    def __init__(self, lm, loss_chunk_tokens: int):
        super().__init__()
        self.lm, self.loss_chunk_tokens = lm, loss_chunk_tokens

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return sft.summed_loss(self.lm, batch, self.loss_chunk_tokens)


def shard_and_load(
    model: CausalLMLoss,
    full_state: dict[str, torch.Tensor],
    device: torch.device,
    param_dtype: torch.dtype,
    cpu_offload: bool,
) -> None:
    """FSDP2: shard each decoder layer, then the root; then rank 0's full state dict (empty on the other ranks, whose
    model may live on the meta device) is sent out shard by shard: no rank but 0 ever holds the whole model.

    Gathers run in param_dtype, gradients reduce in fp32 and are summed across ranks (the loss is already divided by
    the step's global target count). cpu_offload: shards (and the optimizer state made from them) in CPU memory.
    Frozen parameters (a LoRA base) are gathered but never reduced.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
    from torch.distributed.fsdp import CPUOffloadPolicy, FSDPModule, MixedPrecisionPolicy, OffloadPolicy, fully_shard

    policy = {
        "mp_policy": MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32),
        "offload_policy": CPUOffloadPolicy(pin_memory=device.type == "cuda") if cpu_offload else OffloadPolicy(),
    }
    buffers = dict(model.named_buffers())  # rotary tables: made at construction, not in the checkpoint: keep them
    model.to("meta")  # a loaded model (rank 0's) too: fully_shard would copy it whole to the GPU; full_state keeps it
    for layer in model.lm.get_decoder().layers:
        fully_shard(layer, **policy)
    fully_shard(model, **policy)
    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.set_gradient_divide_factor(1.0)
            module.set_force_sum_reduction_for_comms(True)
    model.to_empty(device="cpu" if cpu_offload else device)
    for name, value in buffers.items():
        owner, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(owner), leaf, value.to(device))
    set_model_state_dict(model, full_state, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))


def say(*parts) -> None:
    """print, on rank 0 only: N ranks would print every line N times."""
    if not active() or torch.distributed.get_rank() == 0:
        print(*parts)


def empty_model(name_or_dir: str, dtype: torch.dtype, attn: str):
    """The model's modules with parameters on the meta device (no memory): allocated only once sharded."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    with init_empty_weights(include_buffers=False):  # buffers (rotary tables) are computed, not read: keep them real
        config = AutoConfig.from_pretrained(name_or_dir)
        lm = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=attn)
    lm.tie_weights()  # init_empty_weights re-creates each parameter, which unties a tied LM head
    return lm


def trainable_state(model: torch.nn.Module, optimizer=None) -> tuple[dict, dict | None]:
    """The trainable parameters (and the optimizer's state) whole and by name, in CPU memory on rank 0 (FSDP: empty
    on the others). Every rank must call it: FSDP gathers the shards. Saved this way, a checkpoint resumes on any
    number of ranks, with or without FSDP."""
    from torch.distributed.checkpoint import state_dict as dcp_state

    whole = dcp_state.StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=True)
    params = dcp_state.get_model_state_dict(model, options=whole)
    return params, dcp_state.get_optimizer_state_dict(model, optimizer, options=whole) if optimizer else None


def load_optimizer_state(model: torch.nn.Module, optimizer, state: dict) -> None:
    """trainable_state's optimizer state into this run's optimizer: FSDP shards it for this rank count."""
    from torch.distributed.checkpoint import state_dict as dcp_state
    from torch.distributed.fsdp import FSDPModule

    whole = dcp_state.StateDictOptions(full_state_dict=isinstance(model, FSDPModule))  # unsharded needs no collective
    dcp_state.set_optimizer_state_dict(model, optimizer, state, options=whole)
