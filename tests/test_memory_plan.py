"""memory_plan.py: parameter counts match real models, the paper's configurations get the right per-GPU figures
offline, the report names the single flag that would make a plan fit, and the CLI prints the same plan."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM

import memory_plan

REPO = Path(__file__).resolve().parents[1]


def test_counts_match_real_models(tiny_model_dir):
    from peft import LoraConfig, get_peft_model

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    n_params = sum(p.numel() for p in model.parameters())
    plan = memory_plan.estimate(str(tiny_model_dir), seq_len=128, mode="lora", lora_rank=8)  # its config.json
    assert round(plan["params_billion"] * 1e9) == n_params
    peft_model = get_peft_model(model, LoraConfig(r=8, target_modules="all-linear", task_type="CAUSAL_LM"))
    n_lora = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    assert round(plan["lora_params_million"] * 1e6) == n_lora
    assert memory_plan.model_shapes(str(tiny_model_dir)) == memory_plan.model_shapes(model.config)
    assert memory_plan.estimate("Qwen/Qwen2.5-7B-Instruct")["params_billion"] * 1e9 == 7_615_616_512  # published
    assert memory_plan.estimate("Qwen/Qwen2.5-32B")["params_billion"] == pytest.approx(32.76, abs=0.01)
    qlora = memory_plan.estimate("Qwen/Qwen2.5-32B-Instruct", mode="qlora")
    assert round(qlora["lora_params_million"] * 1e6) == 536_870_912  # rank 64 on every linear of 64 layers


def test_full_sft_of_7b_on_one_gpu():
    plan = memory_plan.estimate("Qwen/Qwen2.5-7B-Instruct", optimizer="adamw8bit")
    assert plan["n_gpus"] == 1 and not plan["sharded"] and not plan["cpu_offload"]
    assert plan["weights"] == pytest.approx(7.6156e9 * 4 / memory_plan.GiB, rel=1e-3)  # fp32 master weights: 28.4 GiB
    assert plan["gradients"] == plan["weights"]
    assert plan["optimizer"] == pytest.approx(plan["weights"] / 2, rel=1e-3)  # two 8-bit moments
    assert 75 < plan["total"] < 95 and not plan["fits"]
    paged = memory_plan.estimate("Qwen/Qwen2.5-7B-Instruct", optimizer="paged_adamw8bit")
    assert paged["total"] == plan["total"] and paged["pageable"] == plan["optimizer"] and paged["fits"]


def test_full_sft_of_32b_on_eight_gpus_with_and_without_offload():
    plan = memory_plan.estimate("Qwen/Qwen2.5-32B-Instruct", n_gpus=8)
    assert plan["sharded"] and plan["weights"] == pytest.approx(2 * 7.63, rel=1e-2)  # an eighth, held in fp32
    assert plan["optimizer"] == pytest.approx(2 * plan["weights"]) and plan["gradients"] == plan["weights"]
    assert 5 < plan["activation_checkpoints"] < plan["total"] - plan["weights"] - plan["gradients"] - plan["optimizer"]
    offload = memory_plan.estimate("Qwen/Qwen2.5-32B-Instruct", n_gpus=8, cpu_offload=True)
    assert offload["weights"] == offload["gradients"] == offload["optimizer"] == 0 and offload["fits"]
    assert offload["total"] == pytest.approx(25.27, abs=0.01)
    assert offload["cpu_per_gpu"] == pytest.approx(
        16 * 32.76e9 / 8 / memory_plan.GiB, rel=1e-2
    )  # weights+grads+moments


def test_qlora_of_32b_at_16k_counts_what_flows_in_bf16():
    """utils.prepare_qlora keeps everything but the 4-bit linears in bf16, so the residual stream is bf16 too (checked
    in a bf16 step by tests/test_train_lora.py): NF4 linears 15.0 GiB + bf16 embeddings, LM head and norms 2.9 GiB
    + fp32 adapters 2.0 GiB, and 64 layers x 16384 tokens x 5120 x 2 bytes of checkpoints."""
    plan = memory_plan.estimate("Qwen/Qwen2.5-32B-Instruct", mode="qlora")
    assert plan["residual_bytes"] == 2 and plan["activation_checkpoints"] == 64 * 16384 * 5120 * 2 / memory_plan.GiB
    assert plan["weights"] == pytest.approx(19.90, abs=0.01) and plan["total"] == pytest.approx(44.63, abs=0.01)


def test_defaults_are_the_trainers():
    import inspect

    import sft

    assert inspect.signature(memory_plan.estimate).parameters["loss_chunk_tokens"].default == sft.LOSS_CHUNK_TOKENS
    assert memory_plan.parse_args([]).loss_chunk_tokens == sft.LOSS_CHUNK_TOKENS


def test_memory_knobs_move_the_figures_they_should():
    base = memory_plan.estimate("Qwen/Qwen2.5-32B-Instruct", mode="qlora")
    assert base["fits"] and 15 < base["weights"] < 25  # NF4 decoder linears + bf16 embeddings/head, not 61 GiB of bf16
    offloaded = memory_plan.estimate("Qwen/Qwen2.5-32B-Instruct", mode="qlora", offload_activations=True)
    assert offloaded["activation_checkpoints"] == 0 and offloaded["cpu_per_gpu"] == base["activation_checkpoints"]
    longer = memory_plan.estimate("Qwen/Qwen2.5-32B-Instruct", mode="qlora", seq_len=32768)
    assert longer["activation_checkpoints"] == pytest.approx(2 * base["activation_checkpoints"])
    full_logits = memory_plan.estimate("Qwen/Qwen2.5-32B-Instruct", mode="qlora", loss_chunk_tokens=0)
    assert full_logits["activation_peak"] > 2 * base["activation_peak"]  # 16k x 152k fp32 logits
    no_ckpt = memory_plan.estimate("Qwen/Qwen2.5-32B-Instruct", mode="qlora", gradient_checkpointing=False)
    assert no_ckpt["activation_checkpoints"] > 10 * base["activation_checkpoints"] and not no_ckpt["fits"]
    bigger_card = memory_plan.estimate("Qwen/Qwen2.5-32B-Instruct", mode="lora", gpu_gib=139.8)
    assert bigger_card["fits"] and not memory_plan.estimate("Qwen/Qwen2.5-32B-Instruct", mode="lora")["fits"]


def test_report_names_each_single_flag_that_would_make_it_fit():
    plan, text = memory_plan.report("Qwen/Qwen2.5-7B-Instruct", optimizer="adamw8bit")
    assert not plan["fits"] and "-> does NOT fit a 79.6 GiB GPU" in text
    assert "would fit with --optim paged_adamw8bit" in text and "would fit with --cpu-offload" in text
    assert "rank 0 CPU memory" in text  # full SFT: what reading and gathering the checkpoint costs on the host
    plan, text = memory_plan.report("Qwen/Qwen2.5-32B-Instruct", mode="lora")
    assert "would fit with --quant nf4" in text and "would fit with --offload-activations" not in text
    plan, text = memory_plan.report("Qwen/Qwen2.5-32B-Instruct", mode="qlora")
    assert plan["fits"] and "-> fits a 79.6 GiB GPU" in text and "would fit" not in text
    assert "536.9M trainable params" in text
    _, text = memory_plan.report("Qwen/Qwen2.5-7B-Instruct", optimizer="paged_adamw8bit")
    assert "fits only by paging optimizer state" in text and "(paged: spills to CPU under pressure)" in text


def test_refuses_what_it_cannot_plan():
    from transformers import Qwen2MoeConfig

    with pytest.raises(ValueError, match="not one of"):
        memory_plan.estimate("/no/such/model")
    with pytest.raises(ValueError, match="mixture-of-experts"):
        memory_plan.estimate(Qwen2MoeConfig())
    with pytest.raises(ValueError, match="mode must be"):
        memory_plan.estimate("Qwen/Qwen2.5-7B", mode="qlora4")
    with pytest.raises(ValueError, match="optimizer must be"):
        memory_plan.estimate("Qwen/Qwen2.5-7B", optimizer="sgd")


def test_cli_prints_the_plan_offline():
    cmd = [sys.executable, str(REPO / "memory_plan.py"), "--model", "Qwen/Qwen2.5-32B-Instruct", "--mode", "full"]
    cmd += ["--gpus", "8", "--cpu-offload"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "32.76B params" in result.stdout and "FSDP-sharded over 8 GPU(s), CPU offload" in result.stdout
    assert "total                       25.27 GiB per GPU" in result.stdout and "-> fits" in result.stdout
    assert memory_plan.main(memory_plan.parse_args(cmd[2:]))["total"] == pytest.approx(25.27, abs=0.01)


def test_bf16_lora_of_32b_sharded_over_2_4_8_gpus_at_16k():
    """The paper's LoRA run (bf16 base, ZeRO-3 over several GPUs): FSDP2 shards the 65 GB base and the adapter states;
    each GPU keeps the root unit and two decoder layers gathered, and its own activations."""
    replicated = memory_plan.estimate("Qwen/Qwen2.5-32B-Instruct", n_gpus=8, mode="lora")
    assert not replicated["sharded"] and not replicated["fits"] and replicated["weights"] > 60  # 65 GB on every GPU
    totals = {}
    for gpus in (2, 4, 8):
        plan = memory_plan.estimate("Qwen/Qwen2.5-32B-Instruct", n_gpus=gpus, mode="lora", fsdp=True)
        assert plan["sharded"] and plan["fits"] and plan["seq_len"] == 16384
        assert plan["weights"] == pytest.approx(replicated["weights"] / gpus, rel=1e-9)
        assert plan["optimizer"] == pytest.approx(replicated["optimizer"] / gpus, rel=1e-9)
        assert plan["activation_checkpoints"] == replicated["activation_checkpoints"]  # activations are not sharded
        assert 4.5 < plan["working_copies"] < 5  # bf16: embeddings + LM head 2.9 GiB, two layers 1.8, adapters
        offload = memory_plan.estimate("Qwen/Qwen2.5-32B-Instruct", n_gpus=gpus, mode="lora", cpu_offload=True)
        assert offload["sharded"] and offload["cpu_offload"] and offload["weights"] == 0
        assert offload["cpu_per_gpu"] == pytest.approx(plan["weights"] + plan["gradients"] + plan["optimizer"])
        totals[gpus] = plan["total"]
    assert totals[2] > totals[4] > totals[8] > offload["total"]
    with pytest.raises(ValueError, match="qlora is not sharded"):
        memory_plan.estimate("Qwen/Qwen2.5-32B-Instruct", n_gpus=4, mode="qlora", fsdp=True)
    _, text = memory_plan.report("Qwen/Qwen2.5-32B-Instruct", n_gpus=4, mode="lora")
    assert "would fit with --fsdp:" in text and "would fit with --fsdp --cpu-offload" in text
    _, text = memory_plan.report("Qwen/Qwen2.5-32B-Instruct", n_gpus=4, mode="lora", fsdp=True)
    assert "FSDP-sharded over 4 GPU(s)" in text and "rank 0 CPU memory: ~61 GiB" in text
