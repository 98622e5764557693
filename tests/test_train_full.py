"""train_full.py on the tiny model: one process learns and writes a loadable model, micro-batching changes nothing but
memory, two FSDP ranks (gloo, CPU) compute the one-process run and resume exactly, and --dry-run plans offline."""

import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

import distributed
import memory_plan
import sft
import tiny_model
import train_full
import utils

REPO = Path(__file__).resolve().parents[1]
# Measured on CPU/fp32: two ranks vs one process differ by at most 2.3e-7 in the step loss and 1e-9 relative in the
# gradient norm (float summation order only); resuming is bit-identical. The bounds leave room for other CPUs.
LOSS_TOLERANCE = 1e-5
RUN = dict(max_steps=4, samples_per_step=5, micro_batch_tokens=128, max_length=128, lr=1e-3, save_every=2, seed=3)


pytestmark = pytest.mark.usefixtures("one_torch_thread")
ONE_THREAD_ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # the CLI subprocesses, as one_torch_thread for this one


def cli_args(model_dir, data, out, *extra):
    """The command line of a run of the tiny model; later flags override RUN's (argparse keeps the last value)."""
    args = ["--data", str(data), "--model", str(model_dir), "--output-dir", str(out), "--attn", "sdpa"]
    for key, value in RUN.items():
        args += [f"--{key.replace('_', '-')}", str(value)]
    return args + list(extra)


def args(model_dir, data, out, *extra):
    return train_full.parse_args(cli_args(model_dir, data, out, *extra))


def torchrun(*args):
    """Two CPU ranks with the gloo backend; --standalone picks a free port."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        str(REPO / "train_full.py"),
        *args,
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=ONE_THREAD_ENV, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return result


def metrics(out: Path, key: str = "loss") -> list[float]:
    return [r[key] for r in utils.read_jsonl(out / "metrics.jsonl")]


@pytest.fixture(scope="module")
def single(tiny_model_dir, train_file, tmp_path_factory) -> Path:
    """The one-process reference run (no FSDP)."""
    out = tmp_path_factory.mktemp("single") / "run"
    train_full.main(args(tiny_model_dir, train_file, out))
    return out


@pytest.fixture(scope="module")
def two_ranks(tiny_model_dir, train_file, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("fsdp") / "run"
    result = torchrun(*cli_args(tiny_model_dir, train_file, out))
    assert "FSDP2" in result.stdout and "step 4/4 | loss" in result.stdout + result.stderr
    return out


def interrupted_copy(run: Path, to: Path, at_step: int, logged_after: int = 1) -> Path:
    """The run as a kill right after step at_step's checkpoint (plus logged_after more logged steps) would leave it."""
    shutil.copytree(run, to)
    for folder in to.iterdir():
        if folder.name == "final" or (folder.name.startswith("step-") and int(folder.name[5:]) > at_step):
            shutil.rmtree(folder)
    lines = (to / "metrics.jsonl").read_text().splitlines()
    (to / "metrics.jsonl").write_text("\n".join(lines[: at_step + logged_after]) + "\n")
    return to


def test_single_process_learns_and_writes_a_loadable_model(single, tiny_model_dir):
    curve = metrics(single)
    assert len(curve) == 4 and curve[-1] < curve[0] - 0.2, curve
    assert (single / "step-000004" / ".metadata").exists() and (single / "step-000004" / "training_state.pt").exists()
    trained = AutoModelForCausalLM.from_pretrained(single / "final")
    start = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert trained.dtype == torch.float32  # --save-dtype auto: the compute dtype, fp32 on CPU (bf16 on an A100)
    for (name, a), (_, b) in zip(trained.named_parameters(), start.named_parameters()):
        assert not torch.allclose(a, b), f"{name} did not change"
    assert (single / "final" / "tokenizer.json").exists() and (single / "final" / "run_config.json").exists()
    assert trained.generation_config.eos_token_id == start.generation_config.eos_token_id  # the model's stop tokens


def test_micro_batch_size_changes_memory_not_the_curves(tiny_model_dir, train_file, tmp_path):
    """The loss is summed over micro-batches and divided by the whole step's target tokens, so splitting a step into
    more micro-batches must give the same losses and gradient norms, step after step."""
    data = sft.load_training_data([str(train_file)], str(tiny_model_dir), 256, False, False)
    steps = [sft.step_sample_ids(len(data.samples), 6, 3, step) for step in range(3)]
    assert all(len(sft.pack_step(ids, data.lengths, 256)) >= 3 for ids in steps)  # several micro-batches per step
    assert all(len(sft.pack_step(ids, data.lengths, 1024)) == 1 for ids in steps)  # one
    runs = {}
    for name, extra in {
        "256": ["--micro-batch-tokens", "256"],
        "1024": ["--micro-batch-tokens", "1024"],
        "5 per step": ["--micro-batch-tokens", "256", "--samples-per-step", "5"],
    }.items():
        out = tmp_path / name
        run = ["--max-length", "256", "--samples-per-step", "6", "--max-steps", "3", "--save-every", "0", *extra]
        train_full.main(args(tiny_model_dir, train_file, out, *run))
        runs[name] = utils.read_jsonl(out / "metrics.jsonl")
    assert [r["target_tokens"] for r in runs["256"]] == [sum(data.n_targets[i] for i in ids) for ids in steps]
    for a, b in zip(runs["256"], runs["1024"], strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5), (runs["256"], runs["1024"])
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-5), (runs["256"], runs["1024"])
        assert (a["tokens"], a["target_tokens"], a["lr"]) == (b["tokens"], b["target_tokens"], b["lr"])
    # the comparison can fail: another batch size, another curve at this tolerance
    other = runs["5 per step"]
    assert any(a["loss"] != pytest.approx(b["loss"], rel=1e-5) for a, b in zip(runs["256"], other))
    assert any(a["grad_norm"] != pytest.approx(b["grad_norm"], rel=1e-5) for a, b in zip(runs["256"], other))


def test_two_fsdp_ranks_compute_the_single_process_run(single, two_ranks, tiny_model_dir, train_file):
    # The data must exercise the uneven case: some step where one rank runs an empty (zero-weight) micro-batch.
    data = sft.load_training_data([str(train_file)], str(tiny_model_dir), 128, False, False)
    steps = [
        distributed.rank_micro_batches(
            sft.step_sample_ids(len(data.samples), 5, 3, step), data.lengths, 2, 128, sft.pack_step
        )
        for step in range(4)
    ]
    assert any([] in rank for step in steps for rank in step)
    for a, b in zip(
        utils.read_jsonl(single / "metrics.jsonl"), utils.read_jsonl(two_ranks / "metrics.jsonl"), strict=True
    ):
        assert abs(a["loss"] - b["loss"]) < LOSS_TOLERANCE, (metrics(single), metrics(two_ranks))
        assert abs(a["grad_norm"] - b["grad_norm"]) < LOSS_TOLERANCE * a["grad_norm"]
        assert (a["tokens"], a["target_tokens"], a["lr"]) == (b["tokens"], b["target_tokens"], b["lr"])
    assert len(list((two_ranks / "step-000004").glob("__*.distcp"))) == 2  # one shard file per rank
    one, two = load_file(single / "final" / "model.safetensors"), load_file(two_ranks / "final" / "model.safetensors")
    assert one.keys() == two.keys()
    for key in one:  # bf16 rounding of nearly identical fp32 weights may differ in the last bit
        torch.testing.assert_close(two[key].float(), one[key].float(), atol=1e-2, rtol=1e-2)


def test_fsdp_resume_is_exact_under_torchrun_and_in_one_process(two_ranks, tiny_model_dir, train_file, tmp_path):
    split = interrupted_copy(two_ranks, tmp_path / "split", at_step=2)
    torchrun(*cli_args(tiny_model_dir, train_file, split, "--resume", "auto"))
    assert metrics(split, "step") == [1, 2, 3, 4]
    assert max(abs(a - b) for a, b in zip(metrics(two_ranks), metrics(split))) < 1e-9, (
        metrics(two_ranks),
        metrics(split),
    )
    # the sharded checkpoint reshards: a 2-rank checkpoint resumes in a single process
    one = interrupted_copy(two_ranks, tmp_path / "one", at_step=2)
    train_full.main(args(tiny_model_dir, train_file, one, "--resume", "auto"))
    assert max(abs(a - b) for a, b in zip(metrics(two_ranks), metrics(one))) < LOSS_TOLERANCE
    assert AutoModelForCausalLM.from_pretrained(one / "final").dtype == torch.float32  # the dtype rule on CPU


def test_resume_refuses_a_checkpoint_of_other_data(single, tiny_model_dir, train_file, tmp_path):
    run = interrupted_copy(single, tmp_path / "run", at_step=2)
    with pytest.raises(SystemExit, match="different data"):
        train_full.main(args(tiny_model_dir, train_file, run, "--resume", "auto", "--max-length", "90", "--truncate"))


def test_resume_never_unpickles_code_from_a_sharded_checkpoint(single, tiny_model_dir, train_file, tmp_path):
    """DCP's .metadata is a plain pickle: one whose unpickling would create a file stops the run with one line."""

    class TouchesAFile:
        def __reduce__(self):
            return Path.touch, (tmp_path / "pwned",)

    run = interrupted_copy(single, tmp_path / "run", at_step=2)
    (run / "step-000002" / ".metadata").write_bytes(pickle.dumps(TouchesAFile()))
    with pytest.raises(SystemExit) as stop:
        train_full.main(args(tiny_model_dir, train_file, run, "--resume", "auto"))
    assert str(stop.value).startswith(f"--resume: {run / 'step-000002' / '.metadata'} holds more than tensors")
    assert "\n" not in str(stop.value) and not (tmp_path / "pwned").exists()


def test_tied_lm_head_and_cpu_offload_in_one_fsdp_process(tiny_model_dir, train_file, tmp_path):
    """Qwen2.5 up to 3B ties the LM head to the embeddings; meta-device construction must not untie them."""
    tied_dir = tmp_path / "tied"
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    model.config.tie_word_embeddings = True
    model.tie_weights()
    model.save_pretrained(tied_dir)
    utils.load_tokenizer(str(tiny_model_dir)).save_pretrained(tied_dir)
    plain, offload = tmp_path / "plain", tmp_path / "offload"
    train_full.main(args(tied_dir, train_file, plain, "--max-steps", "2", "--save-every", "0"))
    train_full.main(args(tied_dir, train_file, offload, "--max-steps", "2", "--save-every", "0", "--cpu-offload"))
    assert max(abs(a - b) for a, b in zip(metrics(plain), metrics(offload), strict=True)) < LOSS_TOLERANCE
    trained = AutoModelForCausalLM.from_pretrained(offload / "final")
    assert trained.lm_head.weight is trained.get_input_embeddings().weight
    assert not torch.allclose(trained.lm_head.weight, model.lm_head.weight)


def test_eight_bit_adamw_trains_and_resumes_exactly(tiny_model_dir, train_file, tmp_path):
    run = tmp_path / "adam8"
    eight_bit = ["--optim", "adamw8bit", "--max-steps", "2", "--save-every", "1", "--chat-template", "chatml"]
    train_full.main(args(tiny_model_dir, train_file, run, *eight_bit))
    chatml = (utils.DATA_DIR / "chatml_template.jinja").read_text(encoding="utf-8")
    assert utils.load_tokenizer(str(run / "final")).chat_template == chatml  # final/ carries the template it learned
    split = interrupted_copy(run, tmp_path / "split", at_step=1, logged_after=0)
    train_full.main(args(tiny_model_dir, train_file, split, *eight_bit, "--resume", str(split / "step-000001")))
    assert metrics(split) == metrics(run) and len(metrics(run)) == 2
    with pytest.raises(SystemExit, match="bitsandbytes optimizers cannot step FSDP"):
        train_full.main(args(tiny_model_dir, train_file, tmp_path / "x", "--optim", "adamw8bit", "--fsdp"))


def test_fp16_keeps_fp32_master_weights_and_resumes_with_its_loss_scale(single, tiny_model_dir, train_file, tmp_path):
    """--precision fp16 (a T4's choice; CPU autocast computes fp16 too): the checkpoint's weights and Adam state are
    fp32, each step logs its loss scale, the curve follows fp32's, final/ is fp16 (--save-dtype auto); a resumed run,
    in one process or FSDP-sharded, goes on with the checkpoint's scale and skips the steps that overflow."""
    from torch.distributed.checkpoint import FileSystemReader

    run = tmp_path / "fp16"
    train_full.main(args(tiny_model_dir, train_file, run, "--precision", "fp16"))
    saved = FileSystemReader(str(run / "step-000004")).read_metadata().state_dict_metadata
    assert {meta.properties.dtype for meta in saved.values() if hasattr(meta, "properties")} == {torch.float32}
    assert any(".exp_avg_sq" in key for key in saved)  # the check covers Adam's moments
    assert AutoModelForCausalLM.from_pretrained(run / "final").dtype == torch.float16
    records = utils.read_jsonl(run / "metrics.jsonl")
    assert [(r["loss_scale"], r["skipped_steps"]) for r in records] == [(2.0**16, 0)] * 4
    assert "loss_scale" not in utils.read_jsonl(single / "metrics.jsonl")[0]  # bf16 and fp32 need no scale
    assert metrics(run) == pytest.approx(metrics(single), rel=2e-3) and metrics(run) != metrics(single)
    for sharding in ([], ["--fsdp"]):  # FSDP2: the inf/nan check on DTensor shards
        cut = interrupted_copy(run, tmp_path / f"cut{len(sharding)}", at_step=2, logged_after=0)
        state = torch.load(cut / "step-000002" / "training_state.pt", weights_only=True)
        state["grad_scaler"]["scale"], state["skipped_steps"] = 2.0**100, 1  # overflows every fp16 backward
        torch.save(state, cut / "step-000002" / "training_state.pt")
        train_full.main(args(tiny_model_dir, train_file, cut, "--precision", "fp16", "--resume", *sharding))
        resumed = utils.read_jsonl(cut / "metrics.jsonl")[2:]
        assert [(r["loss_scale"], r["skipped_steps"]) for r in resumed] == [(2.0**100, 2), (2.0**99, 3)]
        assert {r["lr"] for r in resumed} == {records[2]["lr"]}  # the schedule waits for a step that is taken


def test_bad_data_fails_before_the_model_loads(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "Q", "response": "A"}\n{"prompt": "Q"}\n')
    with pytest.raises(SystemExit, match=r"bad.jsonl:2: unknown record shape"):
        train_full.main(args("/nonexistent/never-loaded", bad, tmp_path / "o"))


def test_flags_and_their_checks():
    defaults = train_full.parse_args(["--data", "x.jsonl"])
    assert defaults.gradient_checkpointing and defaults.packing and defaults.optim == "adamw" and defaults.gpus == 0
    assert defaults.precision == "auto" and defaults.save_dtype == "auto"  # the dtype rule: utils.pick_dtype
    assert not train_full.parse_args(["--data", "x.jsonl", "--no-gradient-checkpointing"]).gradient_checkpointing
    with pytest.raises(SystemExit):
        train_full.parse_args([])  # --data is required (except for --demo and --dry-run)
    demo = train_full.parse_args(["--demo"])  # data/demo_sft.json's arguments
    assert demo.model == tiny_model.STUDENT_DIR and demo.output_dir == "out/demo-full" and demo.save_dtype == "fp32"
    assert train_full.parse_args(["--demo", "--max-steps", "3"]).max_steps == 3  # the command line wins
    with pytest.raises(SystemExit, match="must be >= --max-length"):
        train_full.main(train_full.parse_args(["--data", "x.jsonl", "--micro-batch-tokens", "100"]))


def test_dry_run_plans_the_trainers_configuration_offline(monkeypatch, capsys):
    """The figures themselves are tested in test_memory_plan.py; here, that every flag reaches the plan."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def dry_run(*flags):
        return train_full.main(train_full.parse_args(["--dry-run", *flags]))

    seven = dry_run("--model", "Qwen/Qwen2.5-7B-Instruct", "--optim", "adamw8bit")
    assert seven == memory_plan.estimate("Qwen/Qwen2.5-7B-Instruct", optimizer="adamw8bit")
    assert seven["n_gpus"] == 1 and not seven["sharded"] and not seven["fits"]
    assert "would fit with --optim paged_adamw8bit" in capsys.readouterr().out
    plan = dry_run("--gpus", "8")  # the default model: Qwen2.5-32B-Instruct
    assert plan["model"] == "Qwen/Qwen2.5-32B-Instruct" and plan["n_gpus"] == 8 and plan["sharded"]
    offload = dry_run("--gpus", "8", "--cpu-offload")
    assert offload["cpu_offload"] and offload["weights"] == 0 and offload["fits"]
    monkeypatch.setenv("WORLD_SIZE", "4")  # under torchrun the plan assumes its world size
    assert dry_run()["n_gpus"] == 4
    knobs = dry_run("--micro-batch-tokens", "4096", "--loss-chunk-tokens", "0", "--no-gradient-checkpointing")
    expected = memory_plan.estimate(
        "Qwen/Qwen2.5-32B-Instruct", n_gpus=4, seq_len=4096, loss_chunk_tokens=0, gradient_checkpointing=False
    )
    assert knobs == expected
    assert dry_run("--offload-activations")["activation_checkpoints"] == 0
    monkeypatch.delenv("WORLD_SIZE")
    row = ["--gpus", "8", "--cpu-offload", "--max-length", "131072", "--micro-batch-tokens", "131072"]
    split = dry_run("--sequence-parallel", "8", *row)  # issue 30: one 128k-token row over 8 GPUs
    assert split == memory_plan.estimate(
        "Qwen/Qwen2.5-32B-Instruct", n_gpus=8, cpu_offload=True, seq_len=131072, sequence_parallel=8
    )
    assert split["fits"] and not dry_run(*row)["fits"]


def test_cli_dry_run_offline():
    cmd = [
        sys.executable,
        str(REPO / "train_full.py"),
        "--dry-run",
        "--model",
        "Qwen/Qwen2.5-32B-Instruct",
        "--gpus",
        "8",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(cmd + ["--cpu-offload"], capture_output=True, text=True, cwd=REPO, env=env, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "32.76B params" in result.stdout and "FSDP-sharded over 8 GPU(s), CPU offload" in result.stdout
    assert "-> fits" in result.stdout and "rank 0 CPU memory" in result.stdout


def test_fit_takes_paged_adamw_then_cpu_offload_as_needed(monkeypatch, capsys):
    """--fit for full SFT on one GPU: checkpoints in CPU memory, then paged 8-bit AdamW, then the whole state in CPU
    memory (FSDP2 in one process, AdamW), whichever is first to fit; written into the run's settings."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    paged = train_full.parse_args(["--dry-run", "--fit", "--gpu-memory", "32", "--model", "Qwen/Qwen2.5-3B-Instruct"])
    plan = train_full.main(paged)
    assert paged.optim == "paged_adamw8bit" and paged.offload_activations and not paged.cpu_offload
    assert plan["fits"] and plan["pageable"] > 0 and plan["optim"] == "paged_adamw8bit"
    offload = train_full.parse_args(["--data", "x.jsonl", "--fit", "--gpu-memory", "16", "--optim", "adamw8bit"])
    offload.model = "Qwen/Qwen2.5-7B-Instruct"
    memory_plan.fit_run(offload, train_full.plan_settings(offload))
    assert offload.cpu_offload and offload.optim == "adamw" and offload.micro_batch_tokens == 16384
    out = capsys.readouterr().out
    assert "fit: + --optim paged_adamw8bit: nothing fits" in out and "fit: chosen: --cpu-offload --optim adamw" in out


def test_cli_dry_run_fit_offline():
    cmd = [sys.executable, str(REPO / "train_full.py"), "--dry-run", "--fit", "--gpu-memory", "16"]
    cmd += ["--model", "Qwen/Qwen2.5-7B-Instruct"]
    env = {**ONE_THREAD_ENV, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "fit: chosen: --cpu-offload: all 16384 tokens fit a 16.0 GiB GPU" in result.stdout
    assert "FSDP-sharded over 1 GPU(s), CPU offload" in result.stdout and "-> fits a 16.0 GiB GPU" in result.stdout
