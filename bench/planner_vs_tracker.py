"""Benchmark 8: memory_plan.py against PyTorch's own memory tracker, per category, without a GPU.

    python bench/planner_vs_tracker.py             # 7B and 32B shapes, LoRA and full SFT, SP 1 and 2 (~10 min here)
    python bench/planner_vs_tracker.py --quick     # smoke test: a 2-layer 7B shape at 2048 tokens

torch.distributed._tools.mem_tracker.MemTracker counts every tensor of a training step by category (parameters,
gradients, optimizer state, activations and backward temporaries) as it is made and freed. Under FakeTensorMode no
tensor holds memory or computes anything, so real Qwen2.5 shapes run on this CPU: the model is built on the meta device
and materialised with to_empty inside the fake mode. Fake CUDA tensors do not work on a CPU-only torch, so the step runs
on fake CPU tensors. What runs is the trainers' step: distributed.CausalLMLoss (the decoder, then sft.py's chunked
loss), activation checkpointing as utils.enable_checkpointing sets it, FSDP2 (fully_shard per decoder layer, then the
root; bf16 gathers, fp32 gradient reduction, as distributed.shard_and_load) over a fake process group of 2 ranks
(torch.testing's FakeStore and "fake" backend), PEFT's LoRA (rank 64, all linears) on a bf16 base for LoRA, fp32 master
weights for full SFT, and a fused AdamW step (the trainers' optimizer on a GPU). Stand-ins, each keeping the memory of
what it replaces:
- attention: FlashAttention-2's footprint (it keeps q, k, v, its output and the fp32 log-sum-exp for backward, and
  returns dq, dk, dv; no T x T tensor), because flash-attn cannot run here and CPU SDPA under fake tensors takes its
  masked path;
- sequence parallelism (SP 2): one rank's shard of the row (T/2 tokens through the decoder and the loss) and, around
  attention, the Ulysses all-to-alls as new tensors of the exchanged shapes (sequence shards [T/2, H] <-> head shards
  [T, H/2], key/value heads repeated up to whole heads per rank); the real all-to-all is sequence_parallel.py's, which
  needs several processes;
- the loss: sft.chunked_lm_loss selects target positions with a boolean mask, whose size fake tensors cannot know; every
  token here is a target, so the selection is a copy of all rows, which the stand-in makes.
Categories compared: parameters, gradients and optimizer state at the end of the step; activations = the peak, over the
step, of activations plus backward temporaries, against the planner's activation_checkpoints + activation_peak +
attention_mask + working_copies (FSDP's gathered layers live there). 32B runs and 7B runs are made at 2 and 4 decoder
layers and extrapolated linearly to the model's layers (every category is affine in the layers); one 7B case also runs
all 28 layers to check the extrapolation. What no tracker sees (FlashAttention-2's workspace, NCCL buffers, the caching
allocator's fragmentation) is the 8% a plan keeps free.
"""

from __future__ import annotations

import argparse
import time

import torch
from common import add_common_args, machine_info, machine_line, markdown_table, save_results

import distributed
import memory_plan
import sequence_parallel
import sft
import utils

CATEGORIES = ("parameters", "gradients", "optimizer", "activations")
WORLD = 2  # ranks of the fake process group: FSDP2 shards over them, and SP 2 splits a row over them
TOLERANCE = 0.10  # the bound, per category


# ----------------------------------------------------------------------------- stand-ins (see the docstring)


class _FlashAttentionMemory(torch.autograd.Function):
    """FlashAttention-2's memory: keeps q, k, v, the output [b, T, H, d] and the log-sum-exp [b, H, T] in fp32."""

    @staticmethod
    def forward(ctx, query, key, value):
        b, heads, tokens, dim = query.shape
        out = query.new_empty(b, tokens, heads, dim)
        ctx.save_for_backward(query, key, value, out, query.new_empty(b, heads, tokens, dtype=torch.float32))
        return out

    @staticmethod
    def backward(ctx, grad):
        query, key, value, _, _ = ctx.saved_tensors
        return torch.empty_like(query), torch.empty_like(key), torch.empty_like(value)


class _AllToAll(torch.autograd.Function):
    """An all-to-all's memory: a new tensor of the exchanged shape; its backward, one of the input's."""

    @staticmethod
    def forward(ctx, x, shape):
        ctx.input_shape = x.shape
        return x.new_empty(shape)

    @staticmethod
    def backward(ctx, grad):
        return grad.new_empty(ctx.input_shape), None


SEQUENCE_PARALLEL = {"n": 1}  # the SP size the stand-in attention simulates (set by track_step)


def ulysses_standin(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """transformers' attention interface: query [b, H, t, d], key/value [b, KV, t, d] -> output [b, t, H, d]."""
    n = SEQUENCE_PARALLEL["n"]
    if n > 1:
        b, heads, t, d = query.shape
        key, value = sequence_parallel.repeat_kv_heads(key, value, heads, n)  # whole heads per rank
        kv_heads = key.shape[1]
        query = _AllToAll.apply(query, (b, heads // n, t * n, d))
        key = _AllToAll.apply(key, (b, kv_heads // n, t * n, d))
        value = _AllToAll.apply(value, (b, kv_heads // n, t * n, d))
        out = _FlashAttentionMemory.apply(query, key, value)
        return _AllToAll.apply(out, (b, t, heads, d)), None
    return _FlashAttentionMemory.apply(query, key, value), None


def _chunked_loss_all_targets(hidden, lm_head_weight, targets, chunk_tokens=sft.LOSS_CHUNK_TOKENS, softcap=None):
    """sft.chunked_lm_loss when every token is a target: hidden[keep] is then a copy of all rows."""
    hidden, targets = hidden.reshape(-1, hidden.shape[-1]).clone(), targets.reshape(-1)
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, targets.numel(), chunk_tokens):
        chunk = slice(start, start + chunk_tokens)
        total = total + torch.utils.checkpoint.checkpoint(
            sft._chunk_ce_sum, hidden[chunk], lm_head_weight, targets[chunk], softcap, use_reentrant=False
        )
    return total


# ----------------------------------------------------------------------------- the tracked step


def _register_standins() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, flash_attention_mask

    AttentionInterface.register("memory_standin", ulysses_standin)
    AttentionMaskInterface.register("memory_standin", flash_attention_mask)  # no T x T mask, as FlashAttention-2


def _fake_process_group() -> None:
    if not torch.distributed.is_initialized():
        from torch.testing._internal.distributed.fake_pg import FakeStore

        torch.distributed.init_process_group("fake", store=FakeStore(), rank=0, world_size=WORLD)


def config_for(model: str, layers: int):
    """A transformers config of the model's shapes (memory_plan's table: no download) with `layers` decoder layers."""
    from transformers import Qwen2Config

    s = memory_plan.model_shapes(model)
    return Qwen2Config(
        hidden_size=s["hidden"], num_hidden_layers=layers, num_attention_heads=s["heads"],
        num_key_value_heads=s["kv_heads"], intermediate_size=s["intermediate"], vocab_size=s["vocab"],
        tie_word_embeddings=s["tied"], max_position_embeddings=32768,
    )  # fmt: skip


def make_tracker():
    """PyTorch's MemTracker, keeping the peak of activations + backward temporaries (it keeps the total's), and
    hooking only the gradients of trainable parameters (it hooks every parameter's: a frozen LoRA base refuses)."""
    from torch.distributed._tools.mem_tracker import MemTracker, _MemRefType

    class Tracker(MemTracker):
        activation_peak = 0

        def _update_peak_stats(self, peak_state):
            super()._update_peak_stats(peak_state)
            for snap in self._curr_mem_snap.values():
                self.activation_peak = max(self.activation_peak, snap[_MemRefType.ACT] + snap[_MemRefType.TEMP])

        def _track_module_params_and_buffers(self, module, install_grad_hooks=True):
            tracked = super()._track_module_params_and_buffers(module, install_grad_hooks=False)
            for param in module.parameters() if install_grad_hooks else []:
                if param.requires_grad and param not in self._param_to_grad_hook_handles:

                    def grad_hook(grad):
                        self._update_and_maybe_create_winfos(grad, _MemRefType.GRAD)

                    self._param_to_grad_hook_handles[param] = (
                        param.register_hook(grad_hook),
                        param.register_post_accumulate_grad_hook(lambda p: grad_hook(p.grad)),
                    )
            return tracked

    return Tracker()


def track_step(model: str, layers: int, tokens: int, mode: str, sequence_parallel: int) -> dict:
    """One training step of rank 0 under FakeTensorMode and MemTracker: GiB per category, and seconds."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    from transformers import AutoModelForCausalLM

    t0 = time.time()
    _register_standins()
    _fake_process_group()
    SEQUENCE_PARALLEL["n"] = sequence_parallel
    local = -(-tokens // sequence_parallel)  # this rank's shard of the row
    dtype = torch.bfloat16 if mode == "lora" else torch.float32  # LoRA: bf16 base; full SFT: fp32 master weights
    with torch.device("meta"):
        lm = AutoModelForCausalLM.from_config(
            config_for(model, layers), dtype=dtype, attn_implementation="memory_standin"
        )
        utils.enable_checkpointing(lm)
        if mode == "lora":  # PEFT swaps tensors, which fake tensors refuse: the adapters are made on meta, then filled
            from peft import LoraConfig, get_peft_model

            config = LoraConfig(r=64, lora_alpha=128, target_modules="all-linear", task_type="CAUSAL_LM")
            lm = get_peft_model(lm, config).get_base_model()
    step = distributed.CausalLMLoss(lm, sft.LOSS_CHUNK_TOKENS)
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    for layer in lm.get_decoder().layers:
        fully_shard(layer, mp_policy=policy)
    fully_shard(step, mp_policy=policy)
    chunked, sft.chunked_lm_loss = sft.chunked_lm_loss, _chunked_loss_all_targets
    try:
        with FakeTensorMode(allow_non_fake_inputs=True):
            step.to_empty(device="cpu")
            params = [p for p in step.parameters() if p.requires_grad]
            optimizer = torch.optim.AdamW(params, lr=1e-4, fused=True)
            batch = {
                "input_ids": torch.zeros(1, local, dtype=torch.long),
                "position_ids": torch.arange(local)[None],
                "targets": torch.zeros(1, local, dtype=torch.long),
            }
            tracker = make_tracker()
            tracker.track_external(step, optimizer)
            with tracker:
                step(batch).backward()
                optimizer.step()
                end = tracker.get_tracker_snapshot("current")
    finally:
        sft.chunked_lm_loss = chunked
    snap = {getattr(k, "value", k): v for k, v in next(iter(end.values())).items()}
    gib = {
        "parameters": snap["Parameter"],
        "gradients": snap["Gradient"],
        "optimizer": snap["Optstate"],
        "activations": tracker.activation_peak,
    }
    return {k: v / 2**30 for k, v in gib.items()} | {"seconds": time.time() - t0}


def planned(model: str, layers: int, tokens: int, mode: str, sequence_parallel: int) -> dict:
    """memory_plan's figures for the tracked configuration, in the same categories."""
    shapes = {**memory_plan.model_shapes(model), "layers": layers}
    plan = memory_plan.estimate(
        shapes, n_gpus=WORLD, seq_len=tokens, mode=mode, fsdp=mode == "lora", sequence_parallel=sequence_parallel
    )
    activations = sum(
        plan[k] for k in ("activation_checkpoints", "activation_peak", "attention_mask", "working_copies")
    )
    categories = {"parameters": plan["weights"], "gradients": plan["gradients"], "optimizer": plan["optimizer"]}
    return categories | {"activations": activations, "peak_phase": plan["peak_phase"]}


def compare(model: str, tokens: int, mode: str, sequence_parallel: int, layers: tuple, depth: int = 0) -> dict:
    """Tracker and planner at `depth` decoder layers (default: the model's): tracked at `layers` and extrapolated
    linearly from two depths, or tracked at one depth equal to `depth`."""
    depth = depth or memory_plan.model_shapes(model)["layers"]
    runs = {n: track_step(model, n, tokens, mode, sequence_parallel) for n in layers}
    if len(layers) == 1:
        tracked = runs[layers[0]]
    else:
        low, high = layers
        tracked = {k: runs[low][k] + (runs[high][k] - runs[low][k]) / (high - low) * (depth - low) for k in CATEGORIES}
    plan = planned(model, depth, tokens, mode, sequence_parallel)
    row = {"model": model.removeprefix("Qwen/"), "mode": mode, "tokens": tokens, "sp": sequence_parallel}
    row["tracked_layers"] = "+".join(map(str, layers)) + ("" if len(layers) == 1 else f" -> {depth}")
    for k in CATEGORIES:
        row[f"{k}_tracker"], row[f"{k}_planner"] = tracked[k], plan[k]
        row[f"{k}_diff"] = plan[k] / tracked[k] - 1 if tracked[k] else 0.0
    row["planner_peak"] = plan["peak_phase"]
    row["worst_diff"] = max(abs(row[f"{k}_diff"]) for k in CATEGORIES)
    row["seconds"] = sum(r["seconds"] for r in runs.values())
    return row


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p)
    p.add_argument(
        "--tokens",
        type=int,
        default=32768,
        help="tokens of the packed row (all ranks of an SP group): long enough that the layers' backward is the peak "
        "at 2 layers too, which the extrapolation to the model's depth needs",
    )
    return p.parse_args(argv)


def main(args: argparse.Namespace) -> dict:
    machine = machine_info()
    if args.quick:
        cases = [("Qwen/Qwen2.5-7B", 32768, mode, sp, (2,), 2) for mode in ("lora", "full") for sp in (1, 2)]
    else:
        cases = [
            (model, args.tokens, mode, sp, (2, 4), 0)
            for model in ("Qwen/Qwen2.5-7B", "Qwen/Qwen2.5-32B")
            for mode in ("lora", "full")
            for sp in (1, 2)
        ]
        cases.append(("Qwen/Qwen2.5-7B", args.tokens, "lora", 2, (28,), 0))  # the extrapolation, checked at full depth
    rows = []
    for model, tokens, mode, sp, layers, depth in cases:  # --quick: a 2-layer 7B shape, planned at its own depth
        rows.append(compare(model, tokens, mode, sp, layers, depth))
        row = rows[-1]
        print(
            f"{row['model']} {mode} SP {sp} ({row['tracked_layers']} layers): worst {row['worst_diff']:+.1%}",
            flush=True,
        )
    columns = ["model", "mode", "tokens", "sp", "tracked_layers"]
    columns += [f"{k}_{side}" for k in CATEGORIES for side in ("tracker", "planner", "diff")]
    columns += ["planner_peak", "seconds"]
    table = markdown_table(
        [{**r, **{f"{k}_diff": f"{r[f'{k}_diff']:+.1%}" for k in CATEGORIES}} for r in rows], columns
    )
    print(table)
    worst = max(r["worst_diff"] for r in rows)
    summary = f"worst disagreement over every category and case: {worst:.1%} (bound {TOLERANCE:.0%})"
    print(summary)
    markdown = (
        f"{machine_line(machine)}\n\n`python bench/planner_vs_tracker.py`: GiB per GPU (rank 0 of {WORLD}: FSDP2 "
        "shards over both; SP 2 splits the row over both), tracker = PyTorch's MemTracker on fake tensors of the real "
        "shapes (stand-ins for FlashAttention-2 and the all-to-alls: see the script's docstring), planner = "
        "memory_plan.estimate; diff = planner / tracker - 1. LoRA: bf16 base, rank 64 on all linears, `--fsdp`; full: "
        "fp32 master weights, FSDP2; both with gradient checkpointing and the chunked loss (1024-token chunks).\n\n"
        f"{table}\n\n{summary}.\n"
    )
    payload = {"machine": machine, "config": vars(args), "rows": rows, "worst_diff": worst}
    save_results(args, "planner_vs_tracker", "8. Memory planner vs PyTorch's MemTracker", payload, markdown)
    return payload


if __name__ == "__main__":
    main(parse_args())
