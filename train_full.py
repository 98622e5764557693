"""Full-parameter supervised fine-tuning on long chain-of-thought demonstrations (the paper's main recipe).

    python train_full.py --demo                                                # CPU: the tiny student learns long CoT
    python train_full.py --dry-run --model Qwen/Qwen2.5-32B-Instruct --gpus 8     # memory per GPU, before renting any
    python train_full.py --data cot17k.jsonl --model Qwen/Qwen2.5-7B-Instruct --optim paged_adamw8bit   # one 80 GB GPU
    torchrun --nproc-per-node 8 train_full.py --data cot17k.jsonl --cpu-offload   # the paper: 32B on 8 GPUs
    torchrun --nproc-per-node 8 train_full.py --data long.jsonl --cpu-offload --sequence-parallel 8 \
        --max-length 131072 --micro-batch-tokens 131072                    # one 128k-token row over 8 GPUs (Ulysses)

One process: the plain model on one device, fp32 master weights under bf16 autocast (fp16 with loss scaling on a T4,
--precision). Under torchrun (2+ processes, or --fsdp / --cpu-offload): PyTorch FSDP2 shards parameters, gradients and
optimizer state over every rank, gathers one decoder layer at a time in bf16 and reduces gradients in fp32. Each
optimizer step takes the same `--samples-per-step` samples a single process would, splits them over the ranks by token
count, packs each share into micro-batches of at most `--micro-batch-tokens` and normalises by the target tokens of the
whole step on all ranks, so N GPUs compute the one-GPU gradient. --sequence-parallel N splits each packed row over N
ranks (sequence_parallel.py; the rest are data parallel). Multi-node: add --nnodes/--rdzv-backend c10d/--rdzv-endpoint
to torchrun (docs/long-context.md); --output-dir must be on a filesystem every node sees (checkpoints are written by all
ranks). FSDP2 partitions as the paper's DeepSpeed ZeRO-3 does, and CPUOffloadPolicy plays ZeRO-Offload's part:
docs/multi-gpu.md compares the two.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import time
import warnings
from contextlib import nullcontext
from datetime import timedelta
from functools import partial
from pathlib import Path

import torch

import before_after
import checkpoints
import distributed
import memory_plan
import sequence_parallel
import sft
import utils


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # data
    p.add_argument("--data", action="append", default=[], help="training JSONL/JSON; repeat for several (shapes mix)")
    p.add_argument("--max-length", type=int, default=16384, help="longest sample in tokens; longer are dropped (paper)")
    p.add_argument("--truncate", action="store_true", help="cut over-long samples instead of dropping them")
    p.add_argument("--skip-bad", action="store_true", help="count and skip malformed records instead of stopping")
    p.add_argument("--chat-template", default="model", help="model (its own), chatml or a Jinja file; evaluate.py too")
    p.add_argument(
        "--chat-template-kwargs",
        type=utils.chat_template_kwargs,
        default={},
        metavar="JSON",
        help="variables for the template, e.g. '{\"enable_thinking\": false}' (Qwen3); evaluate.py takes the same",
    )
    # model
    p.add_argument("--model", default="Qwen/Qwen2.5-32B-Instruct", help="base chat model, hub name or folder (paper)")
    p.add_argument("--attn", choices=utils.ATTENTION, default="auto", help="auto: FlashAttention-2 on GPU, else SDPA")
    p.add_argument(
        "--precision",
        choices=utils.PRECISIONS,
        default="auto",
        help="auto: bf16 on A100/L4/H100 (paper), fp16 + loss scaling on T4/V100 (no native bf16), fp32 on CPU",
    )
    # optimisation (paper: LLaMA-Factory's AdamW, cosine schedule)
    p.add_argument("--optim", choices=memory_plan.OPTIMIZERS, default="adamw", help="8-bit: bitsandbytes, one GPU")
    p.add_argument("--lr", type=float, default=1e-5, help="peak learning rate (paper's full SFT: 1e-5)")
    p.add_argument("--weight-decay", type=float, default=0.0, help="AdamW weight decay (LLaMA-Factory's default: 0)")
    p.add_argument("--warmup-ratio", type=float, default=0.1, help="linear warmup share, then cosine to 0 (paper)")
    p.add_argument("--max-grad-norm", type=float, default=1.0, help="gradient clipping, as every peer does")
    p.add_argument("--epochs", type=int, default=3, help="passes over the data (paper: 3)")
    p.add_argument("--max-steps", type=int, default=0, help="if > 0, stop after this many steps (overrides --epochs)")
    p.add_argument("--samples-per-step", type=int, default=96, help="global batch in samples, all GPUs (paper: 96)")
    p.add_argument("--seed", type=int, default=42, help="data order")
    # memory: none of these change the gradient
    p.add_argument("--micro-batch-tokens", type=int, default=16384, help="tokens per packed row (per GPU without SP)")
    p.add_argument("--no-packing", dest="packing", action="store_false", help="padded batches (the baseline)")
    p.add_argument("--loss-chunk-tokens", type=int, default=sft.LOSS_CHUNK_TOKENS, help="LM-head loss chunk; 0: full")
    p.add_argument(
        "--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=True, help="recompute activations"
    )
    p.add_argument("--offload-activations", action="store_true", help="checkpointed layer inputs in CPU memory")
    p.add_argument("--fsdp", action="store_true", help="FSDP even in one process (torchrun with 2+ always is)")
    p.add_argument("--cpu-offload", action="store_true", help="FSDP with weights, grads, Adam state in CPU memory")
    p.add_argument("--sequence-parallel", type=int, default=1, help="split each packed row over N ranks (Ulysses)")
    p.add_argument("--dist-timeout", type=float, default=120, help="minutes ranks may wait for rank 0 (loads, saves)")
    p.add_argument(
        "--cpu-threads",
        type=int,
        default=0,
        help="torch's CPU threads (0: its default); a tiny model gains nothing from more than 1 (--demo's)",
    )
    # output
    p.add_argument("--output-dir", default="out/full", help="metrics.jsonl, step-NNNNNN/ (sharded), final/ model")
    p.add_argument(
        "--save-dtype", choices=["auto", *utils.DTYPES], default="auto", help="final/'s dtype; auto: --precision's"
    )
    p.add_argument("--save-every", type=int, default=50, help="steps between checkpoints (0: only at the end)")
    p.add_argument("--keep-checkpoints", type=int, default=2, help="older step-NNNNNN/ are deleted (32B: ~390 GB)")
    p.add_argument("--resume", nargs="?", const="auto", help="'auto' (newest in --output-dir) or a checkpoint folder")
    p.add_argument("--wandb", metavar="PROJECT", help="also log to this Weights & Biases project")
    p.add_argument(
        "--eval-tasks",
        metavar="TASKS",
        help="after training, evaluate.py --tasks TASKS on the base model and the trained one: one line per task, "
        "accuracy before -> after with a paired 95%% interval (before_after.py)",
    )
    p.add_argument(
        "--eval-args", default="", help="evaluate.py options for --eval-tasks, e.g. '--n 4' (replaces --demo's preset)"
    )
    p.add_argument(
        "--demo",
        action="store_true",
        help="the miniature on CPU: data/demo_sft.json's arguments (the pretrained tiny student, the bundled teacher "
        "traces, 200 held-out problems; no download); flags given with it override them",
    )
    p.add_argument("--dry-run", action="store_true", help="print the memory plan per GPU and exit (no download)")
    p.add_argument("--gpus", type=int, default=0, help="GPUs the --dry-run plan assumes (0: WORLD_SIZE, else 1)")
    p.add_argument("--gpu-memory", type=float, help="GiB of the GPU to plan for (default: this machine's, else 79.6)")
    p.add_argument("--fit", action="store_true", help="pick the longest --micro-batch-tokens that fits, then offloads")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = parser()
    args = utils.parse_with_demo(p, argv, "train_full.py")  # --demo: the miniature (demo.py), the real code path
    if not args.data and not args.dry_run:
        p.error("--data is required (or --demo, or --dry-run)")
    if args.sequence_parallel < 1:
        p.error("--sequence-parallel must be 1 or more")
    if args.sequence_parallel > 1 and not args.packing:
        p.error("--sequence-parallel splits packed rows: drop --no-packing")
    return args


def plan_settings(args: argparse.Namespace) -> dict:
    """memory_plan's settings for this run, on --gpu-memory (else this machine's GPU) with the attention used there."""
    return memory_plan.run_settings(args, mode="full", optimizer=args.optim)


def dry_run(args: argparse.Namespace) -> dict:
    """The memory plan for this configuration; if it does not fit, which single change would make it fit."""
    plan, text = memory_plan.report(args.model, seq_len=args.micro_batch_tokens, **plan_settings(args))
    print(text)
    return plan


def load_sharded(model: distributed.CausalLMLoss, args: argparse.Namespace, device, dtype, rank: int) -> None:
    """Shard the empty model, then let rank 0 read the checkpoint and send each rank its shards: no rank ever holds
    the whole model in fp32 (8 ranks x 131 GB for 32B), and rank 0 holds it once in its stored dtype. 16-bit compute,
    fp32 gradient reduction, fp32 master shards for the optimizer; on CPU (tests) everything stays fp32."""
    from transformers import AutoModelForCausalLM

    full = {}
    if rank == 0:
        weights = AutoModelForCausalLM.from_pretrained(args.model, dtype="auto").state_dict()
        full = {f"lm.{k}": v for k, v in weights.items()}
    distributed.shard_and_load(model, full, device, dtype, args.cpu_offload)


def main(args: argparse.Namespace) -> dict:
    # ---------------------------------------------------------------- setup
    if args.fit:  # before anything reads the settings: what fits the target GPU, and why (a notebook just adds --fit)
        memory_plan.fit_run(args, plan_settings(args))
    if args.dry_run:
        return dry_run(args)
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import state_dict as dcp_state

    sharded = distributed.launched() or args.fsdp or args.cpu_offload
    if sharded and args.optim != "adamw":
        raise SystemExit(f"--optim {args.optim}: bitsandbytes optimizers cannot step FSDP's shards; use adamw")
    if args.micro_batch_tokens < args.max_length:
        raise SystemExit(f"--micro-batch-tokens {args.micro_batch_tokens} must be >= --max-length {args.max_length}")
    timeout = timedelta(minutes=args.dist_timeout)
    rank, world, device = distributed.init(timeout, args.cpu_offload) if sharded else (0, 1, utils.pick_device())
    layout = sequence_parallel.setup(args.sequence_parallel, rank, world, device)  # (data parallel, sequence parallel)
    is_main = rank == 0

    say = distributed.say
    out = Path(args.output_dir)
    dtype = utils.pick_dtype(device, args.precision)
    attn = utils.pick_attention(args.attn, device)
    say(utils.changed_settings(args, parser(), out))
    sharding = ("FSDP2 + CPU offload" if args.cpu_offload else "FSDP2") if sharded else "single process"
    say(f"device {device} x {world} | {sharding} | compute {dtype}, fp32 master weights | attention {attn}")
    if world > 1:
        say(f"sequence parallel {layout.size} x data parallel {layout.dp_size}")
    if args.cpu_threads:  # on a tiny model, a second thread waiting for a busy core stalls every op (demo.py)
        torch.set_num_threads(args.cpu_threads)
    torch.manual_seed(args.seed)
    if args.demo:
        utils.require_demo_student(args.model)

    # ---------------------------------------------------------------- data: all validated before the model loads
    data = sft.load_training_data(
        args.data,
        args.model,
        args.max_length,
        args.truncate,
        args.skip_bad,
        args.chat_template,
        args.chat_template_kwargs,
    )
    samples, lengths, tokenizer = data.samples, data.lengths, data.tokenizer
    steps_per_epoch = math.ceil(len(samples) / args.samples_per_step)
    total_steps = args.max_steps or args.epochs * steps_per_epoch
    pack = sft.pack_step if args.packing else sft.pad_step
    collate = sft.collate_packed if args.packing else partial(sft.collate_padded, pad_id=tokenizer.pad_token_id)
    say(data.report)
    out.mkdir(parents=True, exist_ok=True)  # only now: bad data leaves no empty run folder behind
    if is_main:
        utils.write_run_config(out, args)
    micro_batches = math.ceil(  # the step's samples are split over the data-parallel replicas
        args.samples_per_step * sum(lengths) / len(lengths) / args.micro_batch_tokens / layout.dp_size
    )
    say(f"schedule: {steps_per_epoch} steps/epoch, {total_steps} steps, ~{micro_batches} micro-batches/step per rank")

    # ---------------------------------------------------------------- model
    from transformers import AutoModelForCausalLM, GenerationConfig

    if sharded:
        lm = distributed.empty_model(args.model, torch.float32, attn)  # fp32 master shards
    else:
        lm = utils.load_model(args.model, device, torch.float32, attn)  # fp32 master weights; autocast computes 16-bit
    sequence_parallel.use_ulysses(lm, layout, attn)  # N > 1: each rank attends over the whole row for heads/N heads
    if args.gradient_checkpointing:
        utils.enable_checkpointing(lm, args.offload_activations)
    model = distributed.CausalLMLoss(lm, args.loss_chunk_tokens)
    if sharded:
        load_sharded(model, args, device, dtype, rank)
    params = [p for p in model.parameters() if p.requires_grad]
    say(f"model: {sum(p.numel() for p in params) / 1e9:.3f}B trainable parameters")
    if args.optim == "adamw":
        fused = device.type == "cuda" and not args.cpu_offload
        optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay, fused=fused)
    else:
        import bitsandbytes as bnb

        optimizer_class = bnb.optim.AdamW8bit if args.optim == "adamw8bit" else bnb.optim.PagedAdamW8bit
        optimizer = optimizer_class(params, lr=args.lr, weight_decay=args.weight_decay)
    warmup = math.ceil(args.warmup_ratio * total_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, utils.cosine_schedule(warmup, total_steps))
    scaler, skipped_steps = distributed.make_grad_scaler(dtype, device), 0  # fp16: loss scaling; else a no-op

    start_step = 0
    resume_dir = checkpoints.resolve_resume(args.resume, out)
    if resume_dir:
        state = checkpoints.load_training_state(resume_dir, data.fingerprint)
        model_state, optimizer_state = dcp_state.get_state_dict(model, optimizer)
        # resharded to this run's ranks: a 2-rank checkpoint resumes in one process, or on 8
        checkpoints.load_distributed_checkpoint({"model": model_state, "optim": optimizer_state}, resume_dir)
        dcp_state.set_state_dict(model, optimizer, model_state_dict=model_state, optim_state_dict=optimizer_state)
        scheduler.load_state_dict(state["scheduler"])
        skipped_steps = distributed.restore_grad_scaler(scaler, state)
        checkpoints.set_rng_state(state["rng"])
        start_step = state["step"]
        if is_main:
            checkpoints.truncate_metrics(out, start_step)
        say(f"resumed from {resume_dir} at step {start_step} (saved by {state['world_size']} rank(s), now {world})")

    def save_checkpoint(folder: Path, step: int):
        """Sharded: every rank writes its part of model and optimizer state; rank 0 renames the folder into place."""
        tmp = folder.with_name(folder.name + ".tmp")
        if is_main:
            shutil.rmtree(tmp, ignore_errors=True)
        distributed.barrier()
        model_state, optimizer_state = dcp_state.get_state_dict(model, optimizer)
        with warnings.catch_warnings():  # in one process, DCP (torch 2.13) warns at every save that it assumes one
            warnings.filterwarnings("ignore", "torch.distributed is disabled", UserWarning)
            dcp.save({"model": model_state, "optim": optimizer_state}, checkpoint_id=str(tmp))
        if is_main:
            state = {"step": step, "scheduler": scheduler.state_dict(), "rng": checkpoints.rng_state()}
            state.update(grad_scaler=scaler.state_dict(), skipped_steps=skipped_steps)
            state.update(data_fingerprint=data.fingerprint, world_size=world)
            torch.save(state, tmp / "training_state.pt")
            utils.write_run_config(tmp, args)
            if folder.exists():
                shutil.rmtree(folder)
            os.replace(tmp, folder)
            checkpoints.prune_checkpoints(out, args.keep_checkpoints)
        distributed.barrier()

    def save_final(folder: Path):
        """Gather the full weights to rank 0 and write an ordinary Hugging Face folder (vLLM, from_pretrained)."""
        full = dcp_state.get_model_state_dict(
            model, options=dcp_state.StateDictOptions(full_state_dict=True, cpu_offload=True)
        )
        if is_main:
            save_dtype = dtype if args.save_dtype == "auto" else utils.DTYPES[args.save_dtype]
            weights = {key.removeprefix("lm."): full.pop(key).to(save_dtype) for key in list(full)}

            def write(tmp: Path):
                with torch.device("meta"):  # a clean model object around the gathered tensors: no copy, no FSDP
                    clean = AutoModelForCausalLM.from_config(lm.config, dtype=save_dtype)
                clean.load_state_dict(weights, assign=True)
                try:
                    clean.generation_config = GenerationConfig.from_pretrained(args.model)  # the model's stop tokens
                except OSError:
                    pass
                clean.save_pretrained(tmp)
                tokenizer.save_pretrained(tmp)
                utils.write_run_config(tmp, args)

            utils.save_dir_atomically(folder, write)
        distributed.barrier()

    # ---------------------------------------------------------------- loop
    from tqdm import tqdm

    # FSDP casts to 16 bits itself. Autocast's weight cache would keep a 16-bit copy of the model alive until backward.
    autocast = nullcontext()
    if dtype != torch.float32 and not sharded:
        autocast = torch.autocast(device.type, dtype=dtype, cache_enabled=False)
    logger = utils.StepLogger(out, total_steps, start_step, args.wandb, vars(args)) if is_main else None
    bar = tqdm(total=total_steps, initial=start_step, desc="train", dynamic_ncols=True, disable=not is_main)
    model.train()
    losses = []
    for step in range(start_step, total_steps):
        t0 = time.time()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        sample_ids = sft.step_sample_ids(len(samples), args.samples_per_step, args.seed, step)
        # this rank's share of the step; each loss / the step's target tokens on ALL ranks, then summed over ranks
        loss_sum, n_tokens, n_targets = distributed.accumulate_step(
            model, data, sample_ids, args.micro_batch_tokens, pack, collate, device, autocast, scaler, layout
        )
        lr = scheduler.get_last_lr()[0]
        # unscale (fp16), clip, step unless a gradient is inf/nan, update the loss scale
        grad_norm, loss_scale, stepped = distributed.scaled_optimizer_step(
            optimizer, scaler, params, args.max_grad_norm, device
        )
        if stepped:  # as Hugging Face's Trainer: a step fp16 skipped does not advance the schedule
            scheduler.step()
        skipped_steps += not stepped
        optimizer.zero_grad(set_to_none=True)
        peak = distributed.max_over_ranks(utils.peak_memory_gb(device), device)

        record = {"step": step + 1, "loss": loss_sum / n_targets, "lr": lr, "grad_norm": grad_norm}
        if scaler.is_enabled():
            record.update(loss_scale=loss_scale, skipped_steps=skipped_steps)
        record.update(tokens=n_tokens, target_tokens=n_targets, tokens_per_s=n_tokens / (time.time() - t0))
        record.update(peak_mem_gb=peak, epoch=step // steps_per_epoch)
        losses.append(record["loss"])
        if is_main:
            bar.write(logger.log(record))
        bar.update(1)
        if args.save_every and (step + 1) % args.save_every == 0 and step + 1 < total_steps:
            save_checkpoint(out / f"step-{step + 1:06d}", step + 1)
    bar.close()
    if logger:
        logger.close()

    # ---------------------------------------------------------------- save
    if start_step < total_steps:
        save_checkpoint(out / f"step-{total_steps:06d}", total_steps)
    save_final(out / "final")
    summary = {"steps": total_steps, "first_loss": losses[0] if losses else None}
    summary.update(last_loss=losses[-1] if losses else None, model=str(out / "final"), world_size=world)
    say("done:", json.dumps(summary))
    distributed.finish()
    if args.eval_tasks and is_main:  # the base model and the trained one on held-out problems
        tasks, template = (args.eval_tasks, args.eval_args), (args.chat_template, args.chat_template_kwargs)
        summary["eval"] = before_after.compare(args.model, str(out / "final"), *tasks, out, *template)
    return summary


if __name__ == "__main__":
    main(parse_args())
