"""train_lora.py end to end on the tiny model: QLoRA learns, resume is exact, micro-batching changes nothing but memory,
merge is faithful, bad data stops before the model loads, the CLI contract holds, and two ranks under torchrun (gloo,
CPU; replicated or FSDP2-sharded) compute the one-process run and write the same outputs."""

import json
import os
import shutil
import subprocess
import sys
import weakref
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

import checkpoints
import distributed
import memory_plan
import sft
import tiny_model
import train_lora
import utils

REPO = Path(__file__).resolve().parents[1]
RUN = ["--quant", "none", "--lora-rank", "8", "--lora-alpha", "16", "--lr", "1e-2", "--max-steps", "6"]
RUN += ["--samples-per-step", "4", "--micro-batch-tokens", "256", "--max-length", "256", "--save-every", "0"]
RUN += ["--seed", "3"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")
ONE_THREAD_ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # the CLI subprocesses, as one_torch_thread for this one


def args(model_dir, data, out, *extra):
    """A run of the tiny model; later flags override RUN's (argparse keeps the last value)."""
    return train_lora.parse_args(
        ["--data", str(data), "--model", str(model_dir), "--output-dir", str(out), *RUN, *extra]
    )


def metrics(out: Path, key: str = "loss") -> list[float]:
    return [r[key] for r in utils.read_jsonl(out / "metrics.jsonl")]


def test_qlora_nf4_trains_and_loss_falls(tiny_model_dir, train_file, tmp_path):
    summary = train_lora.main(args(tiny_model_dir, train_file, tmp_path / "q", "--quant", "nf4", "--max-steps", "12"))
    curve = metrics(tmp_path / "q")
    assert len(curve) == 12
    assert sum(curve[-3:]) / 3 < sum(curve[:3]) / 3 - 0.3, curve
    assert summary["last_loss"] == curve[-1] and summary["first_loss"] == curve[0]
    adapter_config = json.loads((tmp_path / "q" / "final" / "adapter_config.json").read_text())
    linears = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert adapter_config["r"] == 8 and {m.split(".")[-1] for m in adapter_config["target_modules"]} == linears


def test_qlora_keeps_the_residual_stream_in_bf16_as_the_plan_assumes(tiny_model_dir):
    """One QLoRA step under bf16 autocast (on CPU, as on GPU): every decoder layer reads, and checkpointing keeps, bf16
    hidden states; the frozen weights outside the 4-bit linears are bf16, the adapters fp32; and memory_plan's figures
    for this model are what is really held. PEFT's prepare_model_for_kbit_training alone makes all of it fp32."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    def one_step(prepare, dtype=torch.bfloat16):
        model = prepare(utils.load_model(str(tiny_model_dir), torch.device("cpu"), dtype, "sdpa", "nf4"))
        utils.enable_checkpointing(model)
        model = get_peft_model(
            model, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM")
        )
        lm, layer_inputs = model.get_base_model(), []

        def record_input(_, args, kwargs):
            layer_inputs.append(args[0] if args else kwargs["hidden_states"])

        for layer in lm.model.layers:
            layer.register_forward_pre_hook(record_input, with_kwargs=True)
        batch = sft.collate_packed([sft.make_sample(list(range(5, 70)), list(range(5, 70)))])
        with torch.autocast("cpu", dtype=dtype):
            loss = sft.summed_loss(lm, batch, loss_chunk_tokens=16)
        loss.backward()
        return model, {x.dtype for x in layer_inputs}, loss

    model, hidden, loss = one_step(utils.prepare_qlora)
    plan = memory_plan.estimate(str(tiny_model_dir), mode="qlora", lora_rank=8, seq_len=65)
    assert hidden == {torch.bfloat16} and torch.finfo(torch.bfloat16).bits // 8 == plan["residual_bytes"] == 2
    assert loss.dtype == torch.float32 and loss.isfinite()  # the loss itself is computed from fp32 logits
    kinds = {(type(p).__name__, p.dtype, p.requires_grad) for p in model.parameters()}
    frozen_16 = ("Parameter", torch.bfloat16, False)
    assert kinds == {("Params4bit", torch.uint8, False), frozen_16, ("Parameter", torch.float32, True)}
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in model.parameters() if p.requires_grad)
    held = sum(p.numel() * p.element_size() for p in model.parameters())
    held += sum(p.quant_state.absmax.numel() for p in model.parameters() if hasattr(p, "quant_state"))  # uint8 absmax
    assert held / memory_plan.GiB == pytest.approx(plan["weights"], rel=0.03)
    # fp16 (a T4) keeps the same layout in fp16: the memory plan holds there too
    model, hidden, loss = one_step(utils.prepare_qlora, torch.float16)
    assert hidden == {torch.float16} and loss.dtype == torch.float32 and loss.isfinite()
    assert {(type(p).__name__, p.dtype, p.requires_grad) for p in model.parameters()} == kinds - {frozen_16} | {
        ("Parameter", torch.float16, False)
    }
    # the check has teeth: PEFT's own preparation alone leaves the residual stream and the rest of the weights fp32
    _, hidden, _ = one_step(lambda m: prepare_model_for_kbit_training(m, use_gradient_checkpointing=False))
    assert hidden == {torch.float32}


def test_micro_batch_size_changes_memory_not_the_curves(tiny_model_dir, train_file, tmp_path):
    """The loss is summed over micro-batches and divided by the whole step's target tokens, so splitting a step into
    more micro-batches must give the same losses and gradient norms, step after step."""
    data = sft.load_training_data([str(train_file)], str(tiny_model_dir), 256, False, False)
    steps = [sft.step_sample_ids(len(data.samples), 6, 3, step) for step in range(3)]
    assert all(len(sft.pack_step(ids, data.lengths, 256)) >= 3 for ids in steps)  # several micro-batches per step
    assert all(len(sft.pack_step(ids, data.lengths, 1024)) == 1 for ids in steps)  # one
    step_targets = [sum(data.n_targets[i] for i in ids) for ids in steps]
    runs = {}
    for name, extra in {
        "256": ["--micro-batch-tokens", "256"],
        "1024": ["--micro-batch-tokens", "1024"],
        "5 per step": ["--micro-batch-tokens", "256", "--samples-per-step", "5"],
    }.items():
        out = tmp_path / name
        train_lora.main(args(tiny_model_dir, train_file, out, "--samples-per-step", "6", "--max-steps", "3", *extra))
        runs[name] = utils.read_jsonl(out / "metrics.jsonl")
    assert [r["target_tokens"] for r in runs["256"]] == step_targets
    for a, b in zip(runs["256"], runs["1024"], strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5), (runs["256"], runs["1024"])
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-5), (runs["256"], runs["1024"])
        assert (a["tokens"], a["target_tokens"], a["lr"]) == (b["tokens"], b["target_tokens"], b["lr"])
    # the comparison can fail: another batch size, another curve at this tolerance
    other = runs["5 per step"]
    assert any(a["loss"] != pytest.approx(b["loss"], rel=1e-5) for a, b in zip(runs["256"], other))
    assert any(a["grad_norm"] != pytest.approx(b["grad_norm"], rel=1e-5) for a, b in zip(runs["256"], other))


def test_resume_reproduces_the_uninterrupted_run(tiny_model_dir, train_file, tmp_path):
    straight = tmp_path / "straight"
    train_lora.main(args(tiny_model_dir, train_file, straight))
    split = tmp_path / "split"
    train_lora.main(args(tiny_model_dir, train_file, split, "--save-every", "3"))
    # simulate a kill after step 3's checkpoint: step 6 and its metrics never happened
    shutil.rmtree(split / "step-000006")
    shutil.rmtree(split / "final")
    lines = (split / "metrics.jsonl").read_text().splitlines()
    (split / "metrics.jsonl").write_text("\n".join(lines[:4]) + "\n")  # step 4 was logged before the kill
    train_lora.main(args(tiny_model_dir, train_file, split, "--save-every", "3", "--resume", "auto"))
    assert metrics(split, "step") == list(range(1, 7))
    for a, b in zip(metrics(straight), metrics(split), strict=True):
        assert abs(a - b) < 1e-6, (metrics(straight), metrics(split))


def cut_with_loss_scale(run: Path, to: Path, at_step: int, scale: float, skipped: int) -> Path:
    """The run as a kill right after step at_step's checkpoint leaves it, with this loss scale and skipped-step count
    in the checkpoint (as an fp16 run on a GPU reaches: the tiny model never overflows at torch's 2^16)."""
    shutil.copytree(run, to)
    for folder in to.iterdir():
        if folder.name in ("final", "merged") or (folder.name.startswith("step-") and int(folder.name[5:]) > at_step):
            shutil.rmtree(folder)
    checkpoints.truncate_metrics(to, at_step)
    state_file = to / f"step-{at_step:06d}" / "training_state.pt"
    state = torch.load(state_file, weights_only=True)
    state["grad_scaler"]["scale"], state["skipped_steps"] = scale, skipped
    torch.save(state, state_file)
    return to


def test_fp16_path_stores_the_base_in_fp16_and_resumes_with_its_loss_scale(
    tiny_model_dir, train_file, tmp_path, monkeypatch
):
    """--precision fp16 (a T4's choice; CPU autocast computes fp16 too): the frozen base is stored in fp16 while the
    adapters and Adam's state stay fp32, each step logs its loss scale, the curve follows fp32's, merged/ is fp16; and
    a resumed run goes on with the checkpoint's scale, skipping (not stepping, not advancing the schedule) while a
    gradient overflows."""
    loaded = []
    load_model = utils.load_model

    def keep(*a, **kw):
        loaded.append(load_model(*a, **kw))
        return loaded[-1]

    monkeypatch.setattr(utils, "load_model", keep)
    fp16, fp32 = tmp_path / "fp16", tmp_path / "fp32"
    train_lora.main(args(tiny_model_dir, train_file, fp16, "--precision", "fp16", "--save-every", "3", "--merge"))
    assert {(p.dtype, p.requires_grad) for p in loaded[0].parameters()} == {
        (torch.float16, False),
        (torch.float32, True),
    }
    adam = torch.load(fp16 / "step-000006" / "training_state.pt", weights_only=True)["optimizer"]["state"]
    assert {v.dtype for moments in adam.values() for v in moments.values()} == {torch.float32}
    assert AutoModelForCausalLM.from_pretrained(fp16 / "merged").dtype == torch.float16
    records = utils.read_jsonl(fp16 / "metrics.jsonl")
    assert [(r["loss_scale"], r["skipped_steps"]) for r in records] == [(2.0**16, 0)] * 6
    train_lora.main(args(tiny_model_dir, train_file, fp32))
    assert "loss_scale" not in utils.read_jsonl(fp32 / "metrics.jsonl")[0]  # bf16 and fp32 need no scale
    assert metrics(fp16) == pytest.approx(metrics(fp32), rel=2e-3) and metrics(fp16) != metrics(fp32)

    # a scale of 2^100 overflows every fp16 backward: steps 4 to 6 are skipped, each halving it
    cut = cut_with_loss_scale(fp16, tmp_path / "cut", at_step=3, scale=2.0**100, skipped=1)
    train_lora.main(args(tiny_model_dir, train_file, cut, "--precision", "fp16", "--save-every", "3", "--resume"))
    resumed = utils.read_jsonl(cut / "metrics.jsonl")[3:]
    assert [(r["loss_scale"], r["skipped_steps"]) for r in resumed] == [(2.0**100, 2), (2.0**99, 3), (2.0**98, 4)]
    assert {r["lr"] for r in resumed} == {records[3]["lr"]}  # the schedule waits for a step that is taken
    before = load_file(fp16 / "step-000003" / "adapter_model.safetensors")
    after = load_file(cut / "final" / "adapter_model.safetensors")
    assert all(torch.equal(before[key], after[key]) for key in before)


def test_resume_refuses_a_checkpoint_of_other_data(tiny_model_dir, train_file, tmp_path):
    out = tmp_path / "run"
    train_lora.main(args(tiny_model_dir, train_file, out, "--max-steps", "2", "--save-every", "1"))
    other = ["--resume", "--max-length", "40", "--micro-batch-tokens", "40", "--truncate", "--max-steps", "3"]
    with pytest.raises(SystemExit, match="different data"):
        train_lora.main(args(tiny_model_dir, train_file, out, *other))


def test_resume_never_unpickles_code_from_a_checkpoint(tiny_model_dir, train_file, tmp_path):
    """A training_state.pt from elsewhere whose unpickling would create a file: the run stops with one line naming it,
    and the file never appears (the state is read with weights_only=True)."""

    class TouchesAFile:
        def __reduce__(self):
            return Path.touch, (tmp_path / "pwned",)

    out = tmp_path / "run"
    train_lora.main(args(tiny_model_dir, train_file, out, "--max-steps", "1", "--save-every", "1"))
    state_file = out / "step-000001" / "training_state.pt"
    torch.save({**torch.load(state_file, weights_only=True), "note": TouchesAFile()}, state_file)
    with pytest.raises(SystemExit) as stop:
        train_lora.main(args(tiny_model_dir, train_file, out, "--max-steps", "2", "--resume"))
    assert str(stop.value).startswith(f"--resume: {state_file} holds more than tensors and plain values")
    assert "\n" not in str(stop.value) and not (tmp_path / "pwned").exists()


def test_merged_model_matches_base_plus_adapter(tiny_model_dir, train_file, tmp_path):
    """merged/ in bf16 (an A100's dtype, what vLLM serves there): every merged weight is base + scale * B @ A, rounded
    once to bf16."""
    from peft import PeftModel

    out = tmp_path / "m"
    train_lora.main(args(tiny_model_dir, train_file, out, "--max-steps", "3"))
    train_lora.merge_adapter(str(tiny_model_dir), out / "final", out / "merged", precision="bf16")
    merged = AutoModelForCausalLM.from_pretrained(out / "merged")
    assert merged.dtype == torch.bfloat16 and not any("lora" in n for n, _ in merged.named_parameters())
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    adapted = PeftModel.from_pretrained(base, out / "final")
    expected = {k: v.clone() for k, v in adapted.merge_and_unload().state_dict().items()}  # fp32 merge of fp32 weights
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).state_dict()
    changed = 0
    for name, weight in merged.state_dict().items():
        torch.testing.assert_close(weight.float(), expected[name], atol=1e-3, rtol=1e-2, msg=name)  # bf16 rounding
        changed += not torch.allclose(weight.float(), base[name], atol=1e-3, rtol=1e-2)
    assert changed >= 7 * 2  # every linear of both layers moved by more than bf16 rounding
    assert (out / "merged" / "tokenizer.json").exists()


def test_merge_runs_after_everything_of_training_is_freed(tiny_model_dir, train_file, tmp_path, monkeypatch):
    """On a GPU the bf16 base is reloaded for merging; the 4-bit model, the optimizer (and the scheduler holding it,
    ~4 GB of Adam state on 32B at rank 64) must be gone by then, not kept alive by the training loop's frame."""
    import peft

    alive, at_merge = [], {}
    get_peft_model, adamw = peft.get_peft_model, torch.optim.AdamW

    def tracked_peft_model(*a, **kw):
        model = get_peft_model(*a, **kw)
        alive.append(weakref.ref(model))
        return model

    def tracked_adamw(*a, **kw):
        optimizer = adamw(*a, **kw)
        alive.append(weakref.ref(optimizer))
        return optimizer

    def merge(base_model, adapter_dir, output_dir, precision):
        at_merge["alive"] = [ref() for ref in alive if ref() is not None]
        return str(output_dir)

    monkeypatch.setattr(peft, "get_peft_model", tracked_peft_model)
    monkeypatch.setattr(torch.optim, "AdamW", tracked_adamw)
    monkeypatch.setattr(train_lora, "merge_adapter", merge)
    summary = train_lora.main(args(tiny_model_dir, train_file, tmp_path / "m", "--max-steps", "1", "--merge"))
    assert len(alive) == 2 and at_merge["alive"] == [] and summary["merged"] == str(tmp_path / "m" / "merged")


def test_bad_data_fails_before_the_model_loads(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "Q", "response": "A"}\n{"prompt": "Q"}\n')
    with pytest.raises(SystemExit, match=r"bad.jsonl:2: unknown record shape"):
        train_lora.main(args("/nonexistent/never-loaded", bad, tmp_path / "o"))


def test_cli_bad_bytes_exit_with_one_line(tiny_model_dir, tmp_path):
    bad = tmp_path / "BAD.jsonl"
    good = b'{"prompt": "What is 1 + 1?", "response": "2"}\n'
    bad.write_bytes(good * 2 + '{"prompt": "caf\xe9", "response": "3"}\n'.encode("latin-1"))
    cmd = [sys.executable, str(REPO / "train_lora.py"), "--data", str(bad), "--model", str(tiny_model_dir)]
    result = subprocess.run(
        cmd + ["--output-dir", str(tmp_path / "o")], capture_output=True, text=True, cwd=REPO, env=ONE_THREAD_ENV
    )
    assert result.returncode != 0
    assert "Traceback" not in result.stdout + result.stderr
    naming = [line for line in (result.stdout + result.stderr).splitlines() if "BAD.jsonl:" in line]
    assert naming == [f"data error: {bad}:3: not UTF-8 text (byte 0xe9)"]
    assert result.stderr.strip().splitlines()[-1] == naming[0]  # the last word, on stderr


def test_cli_contract(tiny_model_dir, train_file, tmp_path):
    out = tmp_path / "cli"
    cmd = [sys.executable, str(REPO / "train_lora.py"), "--data", str(train_file), "--model", str(tiny_model_dir)]
    cmd += ["--output-dir", str(out), "--quant", "nf4", "--lora-rank", "4", "--lora-alpha", "8", "--lr", "1e-3"]
    cmd += ["--max-steps", "2", "--max-length", "512", "--samples-per-step", "4", "--micro-batch-tokens", "512"]
    cmd += ["--save-every", "1", "--seed", "1", "--attn", "sdpa", "--merge", "--chat-template", "chatml"]
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=ONE_THREAD_ENV)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "step 2/2 | loss" in result.stdout + result.stderr
    records = utils.read_jsonl(out / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2]
    assert {"step", "loss", "lr", "grad_norm", "tokens", "tokens_per_s", "peak_mem_gb"} <= set(records[0])
    assert (out / "step-000001" / "training_state.pt").exists() and (out / "step-000002" / "run_config.json").exists()
    final_files = ["adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "tokenizer_config.json"]
    for name in final_files + ["run_config.json"]:
        assert (out / "final" / name).exists(), name
    assert json.loads((out / "final" / "run_config.json").read_text())["quant"] == "nf4"
    chatml = (utils.DATA_DIR / "chatml_template.jinja").read_text(encoding="utf-8")
    assert utils.load_tokenizer(str(out / "final")).chat_template == chatml  # the template it was trained with
    merged = AutoModelForCausalLM.from_pretrained(out / "merged")
    assert merged.dtype == torch.float32  # the dtype rule on CPU (bf16 on an A100, fp16 on a T4)
    assert not any("lora" in n for n, _ in merged.named_parameters())
    # resuming a finished run does no more steps and keeps the result
    again = subprocess.run(cmd + ["--resume", "auto"], capture_output=True, text=True, cwd=REPO, env=ONE_THREAD_ENV)
    assert again.returncode == 0, again.stderr[-3000:]
    assert [r["step"] for r in utils.read_jsonl(out / "metrics.jsonl")] == [1, 2]


def test_flags_and_their_checks():
    defaults = train_lora.parse_args(["--data", "x.jsonl"])
    assert defaults.gradient_checkpointing and defaults.packing and defaults.quant == "nf4"
    assert defaults.precision == "auto"  # the dtype rule: utils.pick_dtype
    assert not train_lora.parse_args(["--data", "x.jsonl", "--no-gradient-checkpointing"]).gradient_checkpointing
    assert train_lora.parse_args(["--data", "a", "--data", "b"]).data == ["a", "b"]
    with pytest.raises(SystemExit):
        train_lora.parse_args([])  # --data is required (except for --demo and --dry-run)
    demo = train_lora.parse_args(["--demo"])  # data/demo_sft.json's arguments
    assert demo.data == [str(utils.DATA_DIR / "sample" / "synthetic_longcot.jsonl")] and demo.merge
    assert demo.model == tiny_model.STUDENT_DIR and demo.lora_alpha == 2 * demo.lora_rank
    assert demo.eval_tasks == str(utils.DATA_DIR / "sample" / "synthetic_heldout.jsonl")
    given = train_lora.parse_args(["--demo", "--lr", "0.5", "--output-dir", "o"])
    assert given.lr == 0.5 and given.output_dir == "o" and given.max_steps == demo.max_steps  # the command line wins
    assert train_lora.parse_args(["--demo", "--data", "mine.jsonl"]).data == ["mine.jsonl"]  # replaced, not appended
    with pytest.raises(SystemExit, match="must be >= --max-length"):
        train_lora.main(train_lora.parse_args(["--data", "x.jsonl", "--micro-batch-tokens", "100"]))


def test_dry_run_plans_memory_offline_without_data():
    plan = train_lora.main(train_lora.parse_args(["--dry-run"]))
    assert plan["mode"] == "qlora" and plan["fits"]
    assert 530 < plan["lora_params_million"] < 540  # rank 64 on every linear of Qwen2.5-32B's 64 layers
    assert 15 < plan["weights"] < 25  # NF4 decoder linears + fp32 embeddings/head, not 65 GB of bf16
    wider = train_lora.main(
        train_lora.parse_args(["--dry-run", "--micro-batch-tokens", "32768", "--offload-activations"])
    )
    assert wider["activation_checkpoints"] == 0 and wider["cpu_per_gpu"] > 0 and wider["seq_len"] == 32768
    bf16 = train_lora.main(train_lora.parse_args(["--dry-run", "--quant", "none", "--no-gradient-checkpointing"]))
    assert bf16["mode"] == "lora" and not bf16["fits"]


def test_dry_run_plans_a_sequence_parallel_row_and_fit_raises_it(monkeypatch, capsys):
    """Issue 30's command: 32B bf16 LoRA, one 128k-token row over 8 GPUs; --fit picks the SP that makes it fit."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    row = ["--quant", "none", "--fsdp", "--gpus", "8", "--max-length", "131072", "--micro-batch-tokens", "131072"]
    plan = train_lora.main(train_lora.parse_args(["--dry-run", "--sequence-parallel", "8", *row]))
    assert plan["sequence_parallel"] == 8 and plan["fits"] and plan["activation_checkpoints"] == 10.0
    assert "sequence-parallel 8 (16384 tokens per GPU)" in capsys.readouterr().out
    args = train_lora.parse_args(["--dry-run", "--fit", *row])
    assert train_lora.main(args)["fits"] and args.sequence_parallel == 4 and args.micro_batch_tokens == 131072
    assert "fit: chosen: --sequence-parallel 4" in capsys.readouterr().out
    padded = train_lora.parse_args(["--dry-run", "--fit", "--no-packing", *row])  # SP splits packed rows only
    train_lora.main(padded)
    assert padded.sequence_parallel == 1 and "--sequence-parallel" not in capsys.readouterr().out
    with pytest.raises(SystemExit, match="possible 1, 2, 4, 8"):
        train_lora.main(train_lora.parse_args(["--dry-run", "--sequence-parallel", "3", *row]))


# ---------------------------------------------------------------- several processes
# Measured on CPU/fp32 (4 steps, lr 1e-2): two ranks vs one process differ by at most 1e-8 in the step loss and 5e-6 in
# an adapter weight (float summation order, through Adam); the bound is 1e-5.
TOLERANCE = 1e-5
RANKS_RUN = ["--max-steps", "4", "--samples-per-step", "5", "--save-every", "2", "--attn", "sdpa"]


def torchrun(*flags, ranks: int = 2):
    """Two CPU ranks with the gloo backend; --standalone picks a free port."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(ranks)]
    cmd += [str(REPO / "train_lora.py"), *flags]
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=ONE_THREAD_ENV, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return result


def cli(model_dir, data, out, *extra) -> list[str]:
    return ["--data", str(data), "--model", str(model_dir), "--output-dir", str(out), *RUN, *RANKS_RUN, *extra]


def interrupted_copy(run: Path, to: Path, at_step: int) -> Path:
    """The run as a kill right after step at_step's checkpoint (and one more logged step) would leave it."""
    shutil.copytree(run, to)
    for folder in to.iterdir():
        if folder.name == "final" or (folder.name.startswith("step-") and int(folder.name[5:]) > at_step):
            shutil.rmtree(folder)
    lines = (to / "metrics.jsonl").read_text().splitlines()
    (to / "metrics.jsonl").write_text("\n".join(lines[: at_step + 1]) + "\n")
    return to


@pytest.fixture(scope="module")
def straight(tiny_model_dir, train_file, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("straight") / "run"
    train_lora.main(train_lora.parse_args(cli(tiny_model_dir, train_file, out)))
    return out


@pytest.fixture(scope="module", params=["replicated", "fsdp"])
def two_ranks(request, tiny_model_dir, train_file, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp(request.param) / "run"
    result = torchrun(*cli(tiny_model_dir, train_file, out, *(["--fsdp"] if request.param == "fsdp" else [])))
    assert result.stdout.count("done:") == 1  # rank 0 alone reports
    assert f"FSDP2 {request.param == 'fsdp'}" in result.stdout and "x 2" in result.stdout
    return out


def test_two_ranks_compute_the_one_process_run(straight, two_ranks, tiny_model_dir, train_file):
    # the data must exercise the uneven case: some step where one rank runs an empty (zero-weight) micro-batch
    data = sft.load_training_data([str(train_file)], str(tiny_model_dir), 256, False, False)
    shares = [
        distributed.rank_micro_batches(
            sft.step_sample_ids(len(data.samples), 5, 3, s), data.lengths, 2, 256, sft.pack_step
        )
        for s in range(4)
    ]
    assert any([] in rank for step in shares for rank in step)
    one, two = utils.read_jsonl(straight / "metrics.jsonl"), utils.read_jsonl(two_ranks / "metrics.jsonl")
    assert [r["step"] for r in two] == [1, 2, 3, 4]  # one log, written by rank 0 alone
    for a, b in zip(one, two, strict=True):
        assert abs(a["loss"] - b["loss"]) < TOLERANCE, (metrics(straight), metrics(two_ranks))
        assert abs(a["grad_norm"] - b["grad_norm"]) < TOLERANCE * a["grad_norm"]
        assert (a["tokens"], a["target_tokens"], a["lr"]) == (b["tokens"], b["target_tokens"], b["lr"])
    for folder in ("final", "step-000002", "step-000004"):
        assert sorted(p.name for p in (two_ranks / folder).iterdir()) == sorted(
            p.name for p in (straight / folder).iterdir()
        )
    a, b = (
        load_file(straight / "final" / "adapter_model.safetensors"),
        load_file(two_ranks / "final" / "adapter_model.safetensors"),
    )
    assert a.keys() == b.keys() and all(v.dtype == torch.float32 for v in b.values())
    assert max((a[k] - b[k]).abs().max().item() for k in a) < TOLERANCE
    configs = [json.loads((run / "final" / "adapter_config.json").read_text()) for run in (straight, two_ranks)]
    for config in configs:  # PEFT writes a set: its order is Python's string hashing, which varies per process
        config["target_modules"] = sorted(config["target_modules"])
    assert configs[0] == configs[1]
    assert torch.load(two_ranks / "step-000002" / "training_state.pt", weights_only=True)["world_size"] == 2


def test_a_two_rank_checkpoint_resumes_in_one_process(straight, two_ranks, tiny_model_dir, train_file, tmp_path):
    """Checkpoints hold the adapter and the optimizer state whole, by parameter name, whatever wrote them."""
    split = interrupted_copy(two_ranks, tmp_path / "split", at_step=2)
    train_lora.main(train_lora.parse_args(cli(tiny_model_dir, train_file, split, "--resume", "auto")))
    assert metrics(split, "step") == [1, 2, 3, 4]
    assert max(abs(a - b) for a, b in zip(metrics(straight), metrics(split), strict=True)) < TOLERANCE
    fresh = tmp_path / "fresh"  # the comparison can fail: without the checkpoint's optimizer state, another curve
    train_lora.main(train_lora.parse_args(cli(tiny_model_dir, train_file, fresh, "--max-steps", "2")))
    assert metrics(fresh)[1] != pytest.approx(metrics(straight)[3], abs=TOLERANCE)


def test_fsdp_with_cpu_offload_in_one_process(straight, tiny_model_dir, train_file, tmp_path):
    out = tmp_path / "offload"
    summary = train_lora.main(train_lora.parse_args(cli(tiny_model_dir, train_file, out, "--cpu-offload")))
    assert summary["world_size"] == 1
    assert max(abs(a - b) for a, b in zip(metrics(straight), metrics(out), strict=True)) < TOLERANCE


def test_qlora_runs_on_two_ranks_and_rank_0_merges(tiny_model_dir, train_file, tmp_path):
    out = tmp_path / "q2"
    flags = cli(tiny_model_dir, train_file, out, "--quant", "nf4", "--max-steps", "2", "--save-every", "1", "--merge")
    result = torchrun(*flags)
    assert result.stdout.count("done:") == 1 and '"merged"' in result.stdout
    assert metrics(out, "step") == [1, 2] and all(0 < loss < 20 for loss in metrics(out))
    assert (out / "step-000001" / "training_state.pt").exists() and (
        out / "final" / "adapter_model.safetensors"
    ).exists()
    merged = AutoModelForCausalLM.from_pretrained(out / "merged")
    assert not any("lora" in n for n, _ in merged.named_parameters())


def test_fsdp_flags_and_the_per_gpu_plan(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SystemExit):
        train_lora.parse_args(["--data", "x.jsonl", "--fsdp"])  # QLoRA's 4-bit base is not sharded: --quant none
    assert train_lora.parse_args(["--data", "x.jsonl", "--quant", "none", "--cpu-offload"]).fsdp
    assert train_lora.parse_args(["--data", "x.jsonl"]).dist_timeout == 120

    def dry_run(*flags):
        return train_lora.main(train_lora.parse_args(["--dry-run", *flags]))

    for gpus in (2, 4, 8):
        qlora = dry_run("--gpus", str(gpus))
        assert qlora["n_gpus"] == gpus and not qlora["sharded"] and qlora == dry_run() | {"n_gpus": gpus}
        sharded = dry_run("--gpus", str(gpus), "--quant", "none", "--fsdp")
        assert sharded["sharded"] and sharded["fits"] and sharded["weights"] < 65 / gpus
        assert sharded == memory_plan.estimate("Qwen/Qwen2.5-32B-Instruct", n_gpus=gpus, mode="lora", fsdp=True)
    monkeypatch.setenv("WORLD_SIZE", "4")  # under torchrun the plan assumes its world size
    assert dry_run("--quant", "none", "--cpu-offload")["n_gpus"] == 4


# ---------------------------------------------------------------- --gpu-memory and --fit (issue 14)
QLORA_7B_ON_A_T4 = ["--model", "Qwen/Qwen2.5-7B-Instruct", "--gpu-memory", "14.76", "--attn", "sdpa"]


def test_fit_chooses_and_applies_what_fits_the_gpu(monkeypatch, capsys):
    """--fit on a T4-sized GPU (SDPA: no FlashAttention-2 before Ampere): QLoRA of 7B gets the longest budget that fits
    with its activations in CPU memory, written into the run's settings and said line by line before the plan."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    args = train_lora.parse_args(["--dry-run", "--fit", *QLORA_7B_ON_A_T4])
    plan = train_lora.main(args)
    out = capsys.readouterr().out
    assert args.micro_batch_tokens == args.max_length == 13312 and args.offload_activations
    assert plan["fits"] and plan["seq_len"] == 13312 and plan["attention"] == "sdpa" and plan["gpu_gib"] == 14.76
    assert "fit: for a 14.8 GiB GPU (--gpu-memory), sdpa" in out and "attention_mask" in out
    assert out.index("fit: chosen: --offload-activations --micro-batch-tokens 13312") < out.index("memory plan:")
    assert train_lora.main(train_lora.parse_args(["--dry-run", *QLORA_7B_ON_A_T4]))["seq_len"] == 16384  # no --fit


def test_fit_without_dry_run_applies_or_leaves_the_run_alone(monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    # beside vLLM 0.33 (transformers < 5.23) activations cannot go to the CPU: not tried, the run gets what fits without
    monkeypatch.setattr(memory_plan, "can_offload_activations", lambda: False)
    run = train_lora.parse_args(["--data", "x.jsonl", "--fit", *QLORA_7B_ON_A_T4])
    memory_plan.fit_run(run, train_lora.plan_settings(run))
    assert run.micro_batch_tokens == run.max_length == 9216 and not run.offload_activations
    assert "fit: --offload-activations not tried" in capsys.readouterr().out
    untouched = train_lora.parse_args(["--data", "x.jsonl", "--fit"])  # no GPU here, and none named
    before = dict(vars(untouched))
    memory_plan.fit_run(untouched, train_lora.plan_settings(untouched))
    assert capsys.readouterr().out.strip() == memory_plan.NO_GPU and vars(untouched) == before
    too_big = train_lora.parse_args(["--data", "x.jsonl", "--fit", "--gpu-memory", "14.76"])  # 32B: 20 GiB of NF4
    with pytest.raises(SystemExit, match="does not fit a 14.8 GiB GPU"):
        train_lora.main(too_big)


def test_cli_dry_run_fit_offline():
    cmd = [sys.executable, str(REPO / "train_lora.py"), "--dry-run", "--fit", "--gpu-memory", "16"]
    cmd += ["--model", "Qwen/Qwen2.5-7B-Instruct"]
    env = {**ONE_THREAD_ENV, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "fit: for a 16.0 GiB GPU (--gpu-memory)" in result.stdout and "fit: chosen:" in result.stdout
    assert "-> fits a 16.0 GiB GPU" in result.stdout
