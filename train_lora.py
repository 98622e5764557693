"""LoRA / QLoRA supervised fine-tuning on long chain-of-thought demonstrations (Sky-T1 recipe).

    python train_lora.py --demo                                 # CPU: the tiny student learns long CoT, ~2.5 minutes
    python train_lora.py --data cot17k.jsonl                    # QLoRA, Qwen2.5-32B-Instruct, paper settings, 80 GB GPU
    python train_lora.py --data cot17k.jsonl --model Qwen/Qwen2.5-7B-Instruct --quant none --lora-rank 16
    python train_lora.py --data cot17k.jsonl --output-dir out/lora --resume auto --merge
    torchrun --nproc-per-node 8 train_lora.py --data cot17k.jsonl                # QLoRA, 8 data-parallel ranks
    torchrun --nproc-per-node 4 train_lora.py --data cot17k.jsonl --quant none --fsdp   # bf16 LoRA (paper), sharded
    torchrun --nproc-per-node 8 train_lora.py --data long.jsonl --quant none --fsdp --sequence-parallel 8 \
        --max-length 131072 --micro-batch-tokens 131072          # one 128k-token row split over 8 GPUs (Ulysses)

The loop is plain PyTorch: every optimizer step takes `--samples-per-step` samples, packs them into micro-batches of
at most `--micro-batch-tokens` tokens (no padding, no attention across samples) and divides the summed loss by the
target tokens of the whole step, so gradient accumulation changes nothing but memory. sft.py holds those rules.
Under torchrun, N ranks compute the one-GPU step (distributed.py): QLoRA replicates its 4-bit base on every GPU and
sums the adapters' gradients; --fsdp shards a bf16 base and the adapters with FSDP2 (--cpu-offload: in CPU memory, the
paper's ZeRO-3 offload); --sequence-parallel N splits each packed row over N of them (sequence_parallel.py). Rank 0
writes log, checkpoints and final/; checkpoints resume on any number of ranks or machines (docs/long-context.md).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import tempfile
import time
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
    # model and adapter
    p.add_argument("--model", default="Qwen/Qwen2.5-32B-Instruct", help="base chat model, hub name or folder (paper)")
    p.add_argument("--quant", choices=["nf4", "none"], default="nf4", help="nf4: QLoRA, 32B fits one 80 GB GPU")
    p.add_argument("--lora-rank", type=int, default=64, help="adapter rank (paper: 64)")
    p.add_argument("--lora-alpha", type=int, default=128, help="adapter scale alpha/rank = 2 (paper: 128)")
    p.add_argument("--lora-dropout", type=float, default=0.0, help="paper: 0; also keeps a resumed run bit-exact")
    p.add_argument("--target-modules", default="all-linear", help="LoRA targets: all-linear (paper) or q_proj,v_proj")
    p.add_argument("--attn", choices=utils.ATTENTION, default="auto", help="auto: FlashAttention-2 on GPU, else SDPA")
    p.add_argument(
        "--precision",
        choices=utils.PRECISIONS,
        default="auto",
        help="auto: bf16 on A100/L4/H100 (paper), fp16 + loss scaling on T4/V100 (no native bf16), fp32 on CPU",
    )
    # optimisation (paper: LLaMA-Factory's AdamW, cosine schedule)
    p.add_argument("--lr", type=float, default=1e-4, help="peak learning rate (paper's LoRA run: 1e-4)")
    p.add_argument("--weight-decay", type=float, default=0.0, help="AdamW weight decay (LLaMA-Factory's default: 0)")
    p.add_argument("--warmup-ratio", type=float, default=0.1, help="linear warmup share, then cosine to 0 (paper)")
    p.add_argument("--max-grad-norm", type=float, default=1.0, help="gradient clipping, as every peer does")
    p.add_argument("--epochs", type=int, default=3, help="passes over the data (paper: 3)")
    p.add_argument("--max-steps", type=int, default=0, help="if > 0, stop after this many steps (overrides --epochs)")
    p.add_argument("--samples-per-step", type=int, default=96, help="global batch in samples (paper: 96)")
    p.add_argument("--seed", type=int, default=42, help="data order and adapter init")
    # memory: none of these change the gradient
    p.add_argument("--micro-batch-tokens", type=int, default=16384, help="tokens per packed row: the memory knob")
    p.add_argument("--no-packing", dest="packing", action="store_false", help="padded batches (the baseline)")
    p.add_argument("--loss-chunk-tokens", type=int, default=sft.LOSS_CHUNK_TOKENS, help="LM-head loss chunk; 0: full")
    p.add_argument(
        "--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=True, help="recompute activations"
    )
    p.add_argument("--offload-activations", action="store_true", help="checkpointed activations in CPU memory")
    p.add_argument("--fsdp", action="store_true", help="--quant none: shard base and adapters over the GPUs (FSDP2)")
    p.add_argument("--cpu-offload", action="store_true", help="--fsdp with the shards in CPU memory (paper: ZeRO-3)")
    p.add_argument("--sequence-parallel", type=int, default=1, help="split each packed row over N ranks (Ulysses)")
    p.add_argument("--dist-timeout", type=float, default=120, help="minutes ranks may wait for rank 0 (loads, saves)")
    p.add_argument(
        "--cpu-threads",
        type=int,
        default=0,
        help="torch's CPU threads (0: its default); a tiny model gains nothing from more than 1 (--demo's)",
    )
    # output
    p.add_argument("--output-dir", default="out/lora", help="metrics.jsonl, step-NNNNNN/, final/ adapter, merged/")
    p.add_argument("--save-every", type=int, default=50, help="steps between checkpoints (0: only at the end)")
    p.add_argument("--keep-checkpoints", type=int, default=2, help="older step-NNNNNN/ folders are deleted")
    p.add_argument("--resume", nargs="?", const="auto", help="'auto' (newest in --output-dir) or a checkpoint folder")
    p.add_argument("--merge", action="store_true", help="also write merged/ for vLLM, in --precision's dtype")
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
    p.add_argument("--dry-run", action="store_true", help="print the GPU memory plan and exit (no download)")
    p.add_argument("--gpus", type=int, default=0, help="GPUs the --dry-run plan assumes (0: WORLD_SIZE, else 1)")
    p.add_argument("--gpu-memory", type=float, help="GiB of the GPU to plan for (default: this machine's, else 79.6)")
    p.add_argument("--fit", action="store_true", help="pick the longest --micro-batch-tokens that fits, then offload")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = parser()
    args = utils.parse_with_demo(p, argv, "train_lora.py")  # --demo: the miniature (demo.py), the real code path
    if not args.data and not args.dry_run:
        p.error("--data is required (or --demo)")
    args.fsdp = args.fsdp or args.cpu_offload
    if args.fsdp and args.quant == "nf4":
        p.error("--fsdp shards a bf16 base: add --quant none (QLoRA runs data-parallel under torchrun without it)")
    if args.sequence_parallel < 1:
        p.error("--sequence-parallel must be 1 or more")
    if args.sequence_parallel > 1 and not args.packing:
        p.error("--sequence-parallel splits packed rows: drop --no-packing")
    return args


def plan_settings(args: argparse.Namespace) -> dict:
    """memory_plan's settings for this run, on --gpu-memory (else this machine's GPU) with the attention used there."""
    mode = "qlora" if args.quant == "nf4" else "lora"
    return memory_plan.run_settings(args, mode=mode, fsdp=args.fsdp, lora_rank=args.lora_rank)


def plan_memory(args: argparse.Namespace) -> tuple[dict, str]:
    """Estimated GPU memory of this run; reads only the model's shapes (offline for the paper's models)."""
    return memory_plan.report(args.model, seq_len=args.micro_batch_tokens, **plan_settings(args))


def merge_adapter(base_model: str, adapter_dir: Path, output_dir: Path, precision: str = "auto") -> str:
    """Fold the adapter into a copy of the base in the training's dtype (utils.pick_dtype: bf16 on A100/L4/H100, fp16
    on a T4, what vLLM serves there; fp32 on CPU), never into the 4-bit one: merging into NF4 loses the update."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    with tempfile.TemporaryDirectory(dir=output_dir.parent, prefix="merge-offload-") as offload:
        spill = {"offload_folder": offload} if torch.cuda.is_available() else {}
        device_map = "auto" if spill else None  # on GPU: what does not fit goes to CPU memory, then to disk
        dtype = utils.pick_dtype(utils.pick_device(), precision)
        base = AutoModelForCausalLM.from_pretrained(base_model, dtype=dtype, device_map=device_map, **spill)
        merged = PeftModel.from_pretrained(base, str(adapter_dir), **spill).merge_and_unload()
        tokenizer = utils.load_tokenizer(str(adapter_dir))

        def write(tmp: Path):
            merged.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)

        utils.save_dir_atomically(output_dir, write)
    return str(output_dir)


def main(args: argparse.Namespace) -> dict:
    if args.fit:  # before anything reads the settings: what fits the target GPU, and why (a notebook just adds --fit)
        memory_plan.fit_run(args, plan_settings(args))
    if args.dry_run:
        print("config:", json.dumps(vars(args), indent=1))
        plan, text = plan_memory(args)
        print(text)
        return plan
    summary = train(args)
    if summary is None:  # not rank 0: rank 0 alone merges and reports, after every rank has finished training
        return {}
    if args.merge:  # train() has returned: its model, optimizer, scheduler and gradients went with it
        gc.collect()
        torch.cuda.empty_cache()
        out = Path(args.output_dir)
        summary["merged"] = merge_adapter(args.model, out / "final", out / "merged", args.precision)
    print("done:", json.dumps(summary))
    if args.eval_tasks:  # the base model and the trained one on held-out problems (the merged model, if there is one)
        out, template = Path(args.output_dir), (args.chat_template, args.chat_template_kwargs)
        trained, adapter = (summary["merged"], None) if args.merge else (args.model, summary["adapter"])
        tasks = (args.eval_tasks, args.eval_args)
        summary["eval"] = before_after.compare(args.model, trained, *tasks, out, *template, adapter)
    return summary


def train(args: argparse.Namespace) -> dict | None:
    # ---------------------------------------------------------------- setup
    if args.micro_batch_tokens < args.max_length:
        raise SystemExit(f"--micro-batch-tokens {args.micro_batch_tokens} must be >= --max-length {args.max_length}")
    out = Path(args.output_dir)
    several, timeout = distributed.launched() or args.fsdp, timedelta(minutes=args.dist_timeout)
    rank, world, device = distributed.init(timeout, args.cpu_offload) if several else (0, 1, utils.pick_device())
    layout = sequence_parallel.setup(args.sequence_parallel, rank, world, device)  # (data parallel, sequence parallel)
    is_main, say = rank == 0, distributed.say
    dtype = utils.pick_dtype(device, args.precision)
    attn = utils.pick_attention(args.attn, device)
    say(utils.changed_settings(args, parser(), out))
    say(f"device {device} x {world} | FSDP2 {args.fsdp} | compute {dtype} | attention {attn} | quant {args.quant}")
    if world > 1:
        say(f"sequence parallel {layout.size} x data parallel {layout.dp_size}")
    if args.cpu_threads:  # on a tiny model, a second thread waiting for a busy core stalls every op (demo.py)
        torch.set_num_threads(args.cpu_threads)
    torch.manual_seed(args.seed)  # the same adapter initialisation on every rank and for any rank count
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
    if device.type == "cuda":  # the plan is of GPU memory
        try:
            say(f"estimated peak GPU memory {plan_memory(args)[0]['total']:.1f} GiB (--dry-run for the breakdown)")
        except ValueError as e:  # an architecture the planner does not know must not stop training
            say(f"no memory estimate: {e}")

    # ---------------------------------------------------------------- model
    from peft import LoraConfig, get_peft_model, set_peft_model_state_dict

    if args.fsdp and not is_main:  # parameters on the meta device: rank 0 sends each rank its shards
        lm = distributed.empty_model(args.model, dtype, attn)
    else:  # --fsdp: rank 0 reads the base into CPU memory, once; otherwise each rank holds its own copy on its GPU
        lm = utils.load_model(args.model, torch.device("cpu") if args.fsdp else device, dtype, attn, args.quant)
    sequence_parallel.use_ulysses(lm, layout, attn)  # N > 1: each rank attends over the whole row for heads/N heads
    if args.quant == "nf4":  # frozen, and kept in the compute dtype: the residual stream stays 16-bit
        lm = utils.prepare_qlora(lm)
    if args.gradient_checkpointing:
        utils.enable_checkpointing(lm, args.offload_activations)
    targets = args.target_modules if args.target_modules == "all-linear" else args.target_modules.split(",")
    lora = dict(r=args.lora_rank, lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout, target_modules=targets)
    peft_model = get_peft_model(lm, LoraConfig(**lora, task_type="CAUSAL_LM"))
    if is_main:
        peft_model.print_trainable_parameters()
    start_step = 0
    resume_dir = checkpoints.resolve_resume(args.resume, out)
    if resume_dir and (is_main or not args.fsdp):  # the adapter goes in before sharding, as the weights do
        from safetensors.torch import load_file

        set_peft_model_state_dict(peft_model, load_file(resume_dir / "adapter_model.safetensors"))
    # Both modes train through the same module, so checkpoints name parameters alike ("lm.model.layers.0...").
    model = distributed.CausalLMLoss(peft_model.get_base_model(), args.loss_chunk_tokens)
    if args.fsdp:
        distributed.shard_and_load(model, model.state_dict() if is_main else {}, device, dtype, args.cpu_offload)
    params = [p for p in model.parameters() if p.requires_grad]
    fused = device.type == "cuda" and not args.cpu_offload
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay, fused=fused)
    warmup = math.ceil(args.warmup_ratio * total_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, utils.cosine_schedule(warmup, total_steps))
    scaler, skipped_steps = distributed.make_grad_scaler(dtype, device), 0  # fp16: loss scaling; else a no-op
    if resume_dir:
        state = checkpoints.load_training_state(resume_dir, data.fingerprint)
        distributed.load_optimizer_state(model, optimizer, state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        skipped_steps = distributed.restore_grad_scaler(scaler, state)
        checkpoints.set_rng_state(state["rng"])
        start_step = state["step"]
        if is_main:
            checkpoints.truncate_metrics(out, start_step)
        say(f"resumed from {resume_dir} at step {start_step}")

    def save_checkpoint(folder: Path, step: int, with_state: bool):
        """Every rank helps gather the adapter (and optimizer state) to rank 0, which writes the folder."""
        adapter, optimizer_state = distributed.trainable_state(model, optimizer if with_state else None)
        if not is_main:
            return
        adapter = {"base_model.model." + key.removeprefix("lm."): value for key, value in adapter.items()}

        def write(tmp: Path):
            peft_model.save_pretrained(tmp, state_dict=adapter)  # PEFT's own format: what from_pretrained reads
            tokenizer.save_pretrained(tmp)
            utils.write_run_config(tmp, args)
            if with_state:
                state = {"step": step, "optimizer": optimizer_state, "scheduler": scheduler.state_dict()}
                state.update(grad_scaler=scaler.state_dict(), skipped_steps=skipped_steps)
                state.update(rng=checkpoints.rng_state(), data_fingerprint=data.fingerprint, world_size=world)
                torch.save(state, tmp / "training_state.pt")

        utils.save_dir_atomically(folder, write)
        checkpoints.prune_checkpoints(out, args.keep_checkpoints)

    # ---------------------------------------------------------------- loop
    from tqdm import tqdm

    # FSDP casts to the compute dtype itself; one GPU or a replica computes in bf16 or fp16 under autocast
    use_autocast = dtype != torch.float32 and not args.fsdp
    autocast = torch.autocast(device.type, dtype=dtype) if use_autocast else nullcontext()
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
        if not args.fsdp:  # FSDP2 has summed its shards' gradients already
            distributed.all_reduce_gradients(params)
        lr = scheduler.get_last_lr()[0]
        # unscale (fp16), clip, step unless a gradient is inf/nan, update the loss scale
        grad_norm, loss_scale, stepped = distributed.scaled_optimizer_step(
            optimizer, scaler, params, args.max_grad_norm, device
        )
        if stepped:  # as Hugging Face's Trainer: a step fp16 skipped does not advance the schedule
            scheduler.step()
        skipped_steps += not stepped
        optimizer.zero_grad(set_to_none=True)

        record = {"step": step + 1, "loss": loss_sum / n_targets, "lr": lr, "grad_norm": grad_norm}
        if scaler.is_enabled():
            record.update(loss_scale=loss_scale, skipped_steps=skipped_steps)
        record.update(tokens=n_tokens, target_tokens=n_targets, tokens_per_s=n_tokens / (time.time() - t0))
        peak = distributed.max_over_ranks(utils.peak_memory_gb(device), device)
        record.update(peak_mem_gb=peak, epoch=step // steps_per_epoch)
        losses.append(record["loss"])
        if is_main:
            bar.write(logger.log(record))
        bar.update(1)
        if args.save_every and (step + 1) % args.save_every == 0 and step + 1 < total_steps:
            save_checkpoint(out / f"step-{step + 1:06d}", step + 1, with_state=True)
    bar.close()
    if logger:
        logger.close()

    # ---------------------------------------------------------------- save
    if start_step < total_steps:
        save_checkpoint(out / f"step-{total_steps:06d}", total_steps, with_state=True)
    save_checkpoint(out / "final", total_steps, with_state=False)
    distributed.finish()  # every rank is done before rank 0 merges
    summary = {"steps": total_steps, "first_loss": losses[0] if losses else None, "world_size": world}
    summary.update(last_loss=losses[-1] if losses else None, adapter=str(out / "final"))
    return summary if is_main else None


if __name__ == "__main__":
    main(parse_args())
