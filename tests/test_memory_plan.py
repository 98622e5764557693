"""memory_plan.py: parameter counts match real models, the paper's configurations get the right per-GPU figures
offline, the report names the single flag that would make a plan fit, and the CLI prints the same plan."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM

import memory_activations
import memory_plan
import memory_tables

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
    assert (
        offload["total"] == pytest.approx(22.51, abs=0.01) and offload["peak_phase"] == "the decoder layers' backward"
    )
    assert offload["cpu_per_gpu"] == pytest.approx(
        16 * 32.76e9 / 8 / memory_plan.GiB, rel=1e-2
    )  # weights+grads+moments


def test_qlora_of_32b_at_16k_counts_what_flows_in_bf16():
    """utils.prepare_qlora keeps everything but the 4-bit linears in bf16, so the residual stream is bf16 too (checked
    in a bf16 step by tests/test_train_lora.py): NF4 linears 15.0 GiB + bf16 embeddings, LM head and norms 2.9 GiB
    + fp32 adapters 2.0 GiB, and 64 layers x 16384 tokens x 5120 x 2 bytes of checkpoints."""
    plan = memory_plan.estimate("Qwen/Qwen2.5-32B-Instruct", mode="qlora")
    assert plan["residual_bytes"] == 2 and plan["activation_checkpoints"] == 64 * 16384 * 5120 * 2 / memory_plan.GiB
    assert plan["weights"] == pytest.approx(19.90, abs=0.01) and plan["total"] == pytest.approx(43.33, abs=0.01)


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
    assert "total                       22.51 GiB per GPU" in result.stdout and "-> fits" in result.stdout
    assert memory_plan.main(memory_plan.parse_args(cmd[2:]))["total"] == pytest.approx(22.51, abs=0.01)


def test_bf16_lora_of_32b_sharded_over_2_4_8_gpus_at_16k():
    """The paper's LoRA run (bf16 base, ZeRO-3 over several GPUs): FSDP2 shards the 65 GB base and the adapter states;
    each GPU gathers the root unit around the loss and two decoder layers at a time, and keeps its own activations."""
    replicated = memory_plan.estimate("Qwen/Qwen2.5-32B-Instruct", n_gpus=8, mode="lora")
    assert not replicated["sharded"] and not replicated["fits"] and replicated["weights"] > 60  # 65 GB on every GPU
    totals = {}
    for gpus in (2, 4, 8):
        plan = memory_plan.estimate("Qwen/Qwen2.5-32B-Instruct", n_gpus=gpus, mode="lora", fsdp=True)
        assert plan["sharded"] and plan["fits"] and plan["seq_len"] == 16384
        assert plan["weights"] == pytest.approx(replicated["weights"] / gpus, rel=1e-9)
        assert plan["optimizer"] == pytest.approx(replicated["optimizer"] / gpus, rel=1e-9)
        assert plan["activation_checkpoints"] == replicated["activation_checkpoints"]  # activations are not sharded
        # at the peak (the decoder layers' backward) FSDP2 holds two layers gathered in bf16 (1.8 GiB) and one
        # layer's adapters, gradients and reduce buffers; the root unit (2.9 GiB) is gathered only around the loss
        assert plan["peak_phase"] == "the decoder layers' backward" and 1.8 < plan["working_copies"] < 2
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


# ---------------------------------------------------------------- issue 14: small Qwen2.5 shapes, SDPA's mask, --fit


def test_small_qwen_shapes_are_the_published_ones():
    """Qwen2.5-0.5B/1.5B/3B (config.json: tied embeddings, vocab 151936): their published parameter counts."""
    published = {"0.5B": 494_032_768, "1.5B": 1_543_714_304, "3B": 3_085_938_688}
    for size, n_params in published.items():
        assert memory_plan.estimate(f"Qwen/Qwen2.5-{size}-Instruct")["params_billion"] * 1e9 == n_params
    assert memory_plan.model_shapes("Qwen/Qwen2.5-1.5B")["tied"]


def test_transformers_builds_the_packed_mask_sdpa_is_counted_for(tiny_model_dir, monkeypatch):
    """What estimate(attention="sdpa") counts, as the installed transformers does it: a packed row (sft.collate_packed)
    reaches torch's SDPA with a (1, 1, T, T) bool block-diagonal mask and the kv heads repeated to all heads; one
    sample alone goes without a mask (is_causal)."""
    import torch

    import sft

    seen = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def spy(query, key, value, attn_mask=None, **kwargs):
        seen.append((query.shape, key.shape, attn_mask))
        return sdpa(query, key, value, attn_mask=attn_mask, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="sdpa")
    lengths = (7, 5)
    batch = sft.collate_packed([sft.make_sample(list(range(5, 5 + n)), list(range(5, 5 + n))) for n in lengths])
    with torch.no_grad():
        model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False)
    assert len(seen) == model.config.num_hidden_layers
    query_shape, key_shape, mask = seen[0]
    T = sum(lengths)
    assert mask.dtype == torch.bool and mask.shape == (1, 1, T, T)
    block = torch.zeros(T, T, dtype=torch.bool)
    block[:7, :7], block[7:, 7:] = torch.ones(7, 7).tril().bool(), torch.ones(5, 5).tril().bool()
    assert torch.equal(mask[0, 0], block)  # samples never attend to each other
    assert model.config.num_key_value_heads < model.config.num_attention_heads == key_shape[1] == query_shape[1]
    seen.clear()
    one = sft.collate_packed([sft.make_sample(list(range(5, 17)), list(range(5, 17)))])
    with torch.no_grad():
        model(input_ids=one["input_ids"], position_ids=one["position_ids"], use_cache=False)
    assert seen[0][2] is None


def test_sdpa_plans_the_mask_flash_attention_does_not_need():
    fa2 = memory_plan.estimate("Qwen/Qwen2.5-1.5B-Instruct", mode="qlora", seq_len=16384)
    sdpa = memory_plan.estimate("Qwen/Qwen2.5-1.5B-Instruct", mode="qlora", seq_len=16384, attention="sdpa")
    T, q = 16384, 1536
    assert fa2["attention_mask"] == 0 and sdpa["attention_mask"] == T * T / memory_plan.GiB  # the bool mask
    # one layer's recomputation: kv heads repeated to all 12 (4q bytes a token, x 1.5 with their gradients), and the
    # additive 16-bit mask and its aligned copy (4 T^2)
    # (x 1.5 with SDPA, x 1.25 with FlashAttention-2, for the gradients beside the saved tensors)
    layer = (22 * 1536 + 8 * 256 + 8 * 8960) * T
    sdpa_peak = 1.5 * (layer + 4 * q * T) + 4 * T * T
    assert sdpa["activation_peak"] - fa2["activation_peak"] == pytest.approx((sdpa_peak - 1.25 * layer) / 2**30)
    longer = memory_plan.estimate("Qwen/Qwen2.5-1.5B-Instruct", mode="qlora", seq_len=2 * T, attention="sdpa")
    assert longer["attention_mask"] == 4 * sdpa["attention_mask"]  # quadratic: decides a T4's longest sample
    eager = memory_plan.estimate("Qwen/Qwen2.5-1.5B-Instruct", mode="qlora", seq_len=4096, attention="eager")
    assert eager["activation_peak"] > 8 * 12 * 4096 * 4096 / memory_plan.GiB  # scores of all 12 heads
    _, text = memory_plan.report("Qwen/Qwen2.5-1.5B-Instruct", mode="qlora", attention="sdpa")
    assert "attention_mask" in text and "T x T mask" in text
    assert "attention_mask" not in memory_plan.report("Qwen/Qwen2.5-1.5B-Instruct", mode="qlora")[1]
    with pytest.raises(ValueError, match="attention must be one of"):
        memory_plan.estimate("Qwen/Qwen2.5-7B", attention="auto")


FIT_CASES = [  # (model, settings): QLoRA on a T4, bf16 LoRA, full SFT
    ("Qwen/Qwen2.5-7B-Instruct", {"mode": "qlora", "attention": "sdpa"}),
    ("Qwen/Qwen2.5-1.5B-Instruct", {"mode": "lora"}),
    ("Qwen/Qwen2.5-1.5B-Instruct", {"mode": "full", "optimizer": "adamw8bit"}),
]


@pytest.mark.parametrize("model, settings", FIT_CASES)
def test_fit_picks_exactly_the_largest_budget_and_grows_with_the_gpu(model, settings):
    step, previous = memory_plan.FIT_STEP, 0
    for gib in (8, 12, 14.76, 16, 22.0, 24, 39.49, 48, 79.6):
        result = memory_plan.fit(model, 32768, offload_available=False, gpu_gib=gib, **settings)
        tokens = result["tokens"]
        assert tokens >= previous  # a bigger GPU never fits a shorter sample
        previous = tokens
        chosen = {**settings, **result["change"], "gpu_gib": gib}
        if tokens:
            assert tokens % step == 0 and memory_plan.estimate(model, seq_len=tokens, **chosen)["fits"]
            assert result["plan"] == memory_plan.estimate(model, seq_len=tokens, **chosen)
        if tokens < 32768:  # one step more does not fit
            assert not memory_plan.estimate(model, seq_len=tokens + step, **chosen)["fits"]
    assert previous == 32768


def test_fit_falls_back_in_the_stated_order():
    # full SFT of 7B on 16 GiB: nothing fits until the sharded state goes to CPU memory; offload then is not needed
    result = memory_plan.fit("Qwen/Qwen2.5-7B-Instruct", 16384, mode="full", gpu_gib=16)
    tried = [line.split(":")[1].strip() for line in result["lines"][:4]]
    assert tried == [
        "as configured",
        "+ --offload-activations (needs transformers >= 5.23",
        "+ --optim paged_adamw8bit",
        "+ --cpu-offload",
    ]
    assert result["flags"] == ["--cpu-offload"] and result["change"] == {"cpu_offload": True, "optimizer": "adamw"}
    assert "--offload-activations dropped" in result["lines"][4] and result["tokens"] == 16384
    # ... paged 8-bit AdamW is enough on 40 GiB: the ladder stops there
    paged = memory_plan.fit("Qwen/Qwen2.5-3B-Instruct", 16384, mode="full", gpu_gib=32)
    assert paged["flags"] == ["--offload-activations", "--optim paged_adamw8bit"] and paged["tokens"] == 16384
    assert not any("--cpu-offload" in line for line in paged["lines"]) and "pageable" in paged["lines"][-1]
    roomier = memory_plan.fit("Qwen/Qwen2.5-3B-Instruct", 16384, mode="full", gpu_gib=39.49)
    assert roomier["flags"] == ["--optim paged_adamw8bit"]  # the activations' offload was not needed after all
    # QLoRA of 7B on a T4 (SDPA): the configured run fits 9216 tokens, its activations on the CPU 13312
    t4 = memory_plan.fit("Qwen/Qwen2.5-7B-Instruct", 16384, mode="qlora", gpu_gib=14.76, attention="sdpa")
    assert t4["tokens"] == 13312 and t4["flags"] == ["--offload-activations"] and "9216 tokens fit" in t4["lines"][0]
    assert "chosen: --offload-activations --micro-batch-tokens 13312" in t4["lines"][-1]
    without = memory_plan.fit(
        "Qwen/Qwen2.5-7B-Instruct", 16384, offload_available=False, mode="qlora", gpu_gib=14.76, attention="sdpa"
    )
    assert without["tokens"] == 9216 and without["flags"] == [] and "not tried" in without["lines"][0]
    # checkpointing switched off comes back first; what already fits stays as configured
    off = memory_plan.fit("Qwen/Qwen2.5-7B-Instruct", 16384, mode="qlora", gradient_checkpointing=False, gpu_gib=79.6)
    assert off["flags"] == ["--gradient-checkpointing"] and off["tokens"] == 16384
    fits = memory_plan.fit("Qwen/Qwen2.5-32B-Instruct", 16384, mode="qlora")
    assert fits["flags"] == [] and fits["change"] == {} and len(fits["lines"]) == 2
    nothing = memory_plan.fit("Qwen/Qwen2.5-32B-Instruct", 16384, mode="qlora", gpu_gib=14.76, attention="sdpa")
    assert nothing["tokens"] == 0 and "does not fit a 14.8 GiB GPU" in nothing["lines"][-1]


def test_fit_table_cells():
    rows, table = memory_tables.fit_table()
    cells = {(row["model"].split("/")[1], row["gpu"]): row for row in rows}
    assert len(rows) == 16 and table.count("\n") == 17
    assert cells["Qwen2.5-32B-Instruct", "T4 16 GB"]["tokens"] == 0  # 19.9 GiB of NF4 weights alone
    assert (
        cells["Qwen2.5-32B-Instruct", "A100 80 GB"]["tokens"] == 32768
        and not cells["Qwen2.5-32B-Instruct", "A100 80 GB"]["flags"]
    )
    t4 = cells["Qwen2.5-7B-Instruct", "T4 16 GB"]
    assert (t4["tokens"], t4["flags"], t4["without_offload"], t4["attention"]) == (
        13312, ["--offload-activations"], 9216, "sdpa"
    )  # fmt: skip
    assert "| Qwen2.5-7B | T4 16 GB (14.8, SDPA) | 13312 | `--offload-activations` |" in table
    for model in memory_tables.TABLE_MODELS:  # per model, more memory never means a shorter sample
        tokens = [cells[model.split("/")[1], gpu[0]]["tokens"] for gpu in memory_tables.TABLE_GPUS]
        assert tokens == sorted(tokens)
    fast = cells["Qwen2.5-1.5B-Instruct", "A100 40 GB"]
    s = memory_plan.model_shapes("Qwen/Qwen2.5-1.5B")
    flops = 6 * (28 * memory_plan.linear_params(s) + 151936 * 1536) + 6 * 28 * 1536 * 5634
    assert fast["tokens_per_s"] == pytest.approx(312e12 * 0.35 / flops)


def test_cli_fit_table_and_fit():
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, str(REPO / "memory_tables.py"), "--fit-table"]
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith("| model | GPU") and "| Qwen2.5-32B | T4 16 GB (14.8, SDPA) | does not fit" in (
        result.stdout
    )
    flags = ["--model", "Qwen/Qwen2.5-7B-Instruct", "--gpu-memory", "14.76", "--attention", "sdpa"]
    assert memory_plan.main(memory_plan.parse_args(flags + ["--fit"]))["tokens"] == 13312
    assert memory_plan.main(memory_plan.parse_args(flags))["gpu_gib"] == 14.76  # was --gpu-gib


# ---------------------------------------------------------------- issue 30: sequence parallelism


def test_sequence_parallel_splits_the_row_and_adds_the_all_to_all():
    """SP N: everything that grows with the tokens is the rank's T/N; the head-sharded q, k, v and output copies are
    added; states are as without SP; no T x T mask under SP (FlashAttention-2 varlen, or SDPA sample by sample),
    while SDPA at SP 1 holds the row's."""
    kw = {"mode": "lora", "fsdp": True, "n_gpus": 8, "seq_len": 131072}
    one = memory_plan.estimate("Qwen/Qwen2.5-32B-Instruct", **kw)
    eight = memory_plan.estimate("Qwen/Qwen2.5-32B-Instruct", sequence_parallel=8, **kw)
    for key in ("weights", "gradients", "optimizer", "working_copies"):
        assert eight[key] == one[key]
    assert eight["activation_checkpoints"] == one["activation_checkpoints"] / 8 == 64 * 16384 * 5120 * 2 / 2**30
    h, i, q, kv = 5120, 27648, 5120, 1024  # 8 kv heads of 128: whole heads for 8 ranks, no repeat
    layer = (22 * h + 8 * kv + 8 * i) * 16384
    all_to_all = 16384 * 2 * q  # the head-sharded output beside the sequence-layout one; q, k, v only change layout
    assert eight["all_to_all"] == all_to_all / 2**30
    assert eight["activation_peak"] == pytest.approx(1.25 * (layer + all_to_all) / 2**30)
    assert not one["fits"] and eight["fits"] and eight["attention_mask"] == 0
    s = memory_plan.model_shapes("Qwen/Qwen2.5-7B")  # 4 kv heads over SP 4: one each; SP 14 would repeat them
    assert memory_activations.head_sharded_kv_heads(4, 4) == 4 and memory_activations.head_sharded_kv_heads(4, 14) == 28
    odd = memory_activations.activations(s, 1001, sequence_parallel=4)
    assert odd["tokens_per_rank"] == 251  # the row padded to a multiple of N
    sdpa_one = memory_plan.estimate("Qwen/Qwen2.5-32B-Instruct", attention="sdpa", **kw)
    sdpa = memory_plan.estimate("Qwen/Qwen2.5-32B-Instruct", sequence_parallel=8, attention="sdpa", **kw)
    assert sdpa_one["attention_mask"] == 131072**2 / 2**30 and sdpa["attention_mask"] == 0
    with pytest.raises(ValueError, match="possible 1, 2, 4, 8"):
        memory_plan.estimate("Qwen/Qwen2.5-32B-Instruct", sequence_parallel=3, **kw)
    with pytest.raises(ValueError, match="28 query heads: possible 1, 2, 4"):
        memory_plan.estimate("Qwen/Qwen2.5-7B-Instruct", sequence_parallel=8, **kw)
    _, text = memory_plan.report("Qwen/Qwen2.5-32B-Instruct", sequence_parallel=8, **kw)
    assert "sequence-parallel 8 (16384 tokens per GPU)" in text and "for Ulysses' all-to-all layout" in text
    assert "a guess no tracker sees" in text
    _, text = memory_plan.report("Qwen/Qwen2.5-32B-Instruct", **kw)
    assert "would fit with --sequence-parallel 4:" in text and "--sequence-parallel 8" not in text  # the smallest


def test_fit_raises_sequence_parallel_then_lowers_it():
    kw = {"mode": "lora", "fsdp": True, "n_gpus": 8}
    result = memory_plan.fit("Qwen/Qwen2.5-32B-Instruct", 131072, **kw)
    assert result["lines"][:4] == [
        "fit: as configured: 61952 tokens fit",
        "fit: + --sequence-parallel 2: 122880 tokens fit",
        "fit: + --sequence-parallel 4: 131072 tokens fit",
        "fit: chosen: --sequence-parallel 4: all 131072 tokens fit a 79.6 GiB GPU (est. 44.0 GiB)",
    ]
    assert result["change"] == {"sequence_parallel": 4} and result["tokens"] == 131072
    # 1M tokens: SP 8 alone reaches 491520, the rest needs the activations in CPU memory
    far = memory_plan.fit("Qwen/Qwen2.5-32B-Instruct", 2**20, **kw)
    assert "fit: + --sequence-parallel 8: 491520 tokens fit" in far["lines"] and far["tokens"] == 2**20
    assert far["flags"] == ["--offload-activations", "--sequence-parallel 8"]
    # 512k: SP 8 gets there only with the offload, and with the offload SP 4 is enough (more data-parallel replicas)
    mid = memory_plan.fit("Qwen/Qwen2.5-32B-Instruct", 2**19, **kw)
    assert mid["lines"][-2] == "fit: --sequence-parallel 8 lowered to 4: enough with the rest", mid["lines"]
    assert mid["flags"] == ["--offload-activations", "--sequence-parallel 4"] and mid["tokens"] == 2**19
    padded = memory_plan.fit("Qwen/Qwen2.5-32B-Instruct", 131072, packing=False, **kw)  # SP splits packed rows only
    assert not any("sequence-parallel" in line for line in padded["lines"]), padded["lines"]
    _, text = memory_plan.report("Qwen/Qwen2.5-32B-Instruct", seq_len=131072, packing=False, **kw)
    assert "would fit with" in text and "--sequence-parallel" not in text
    with pytest.raises(ValueError, match="needs packing"):
        memory_plan.estimate("Qwen/Qwen2.5-32B-Instruct", sequence_parallel=2, packing=False, **kw)
    one_gpu = memory_plan.fit("Qwen/Qwen2.5-32B-Instruct", 131072, mode="lora", fsdp=True)
    assert not any("sequence-parallel" in line for line in one_gpu["lines"])  # nothing to split over


def test_long_context_table_is_the_docs():
    rows, table = memory_tables.long_context_table()
    assert table in (REPO / "docs" / "long-context.md").read_text()  # memory_tables.py --long-context writes it
    cells = {(row["model"].split("/")[1], row["run"], row["gpus"]): row for row in rows}
    assert len(rows) == 18
    for (model, _, gpus), row in cells.items():
        assert row["spn"] >= row["sp1"] > 0  # splitting the row never shortens it
        assert row["sequence_parallel"] == (4 if model.startswith("Qwen2.5-7B") and gpus == 8 else gpus)
    thirty_two = cells["Qwen2.5-32B-Instruct", "bf16 LoRA", 8]
    assert thirty_two["spn"] > 131072 > thirty_two["sp1"]  # the 32B at 128k on 8 GPUs


def test_planner_agrees_with_pytorchs_memory_tracker(tmp_path):
    """bench/planner_vs_tracker.py --quick: PyTorch's MemTracker counts a real FSDP2 step (fake process group of 2,
    fake tensors, a 2-layer Qwen2.5-7B shape, one 32k-token row) for bf16 LoRA and full SFT, at SP 1 and SP 2; every
    category of the plan (parameters, gradients, optimizer state, activations) within 10% of it (~20 s)."""
    import torch

    sys.path.insert(0, str(REPO / "bench"))
    import planner_vs_tracker

    try:
        quick = ["--quick", "--results-dir", str(tmp_path), "--results-md", ""]
        result = planner_vs_tracker.main(planner_vs_tracker.parse_args(quick))
    finally:
        if torch.distributed.is_initialized():  # the fake process group: later tests run in one process
            torch.distributed.destroy_process_group()
    assert {(row["mode"], row["sp"]) for row in result["rows"]} == {("lora", 1), ("lora", 2), ("full", 1), ("full", 2)}
    for row in result["rows"]:
        assert row["planner_peak"] == "the decoder layers' backward"  # the activation model is what is compared
        for category in planner_vs_tracker.CATEGORIES:
            assert abs(row[f"{category}_diff"]) < planner_vs_tracker.TOLERANCE, (row, category)
    by = {(row["mode"], row["sp"]): row for row in result["rows"]}
    assert by["lora", 2]["activations_tracker"] < 0.7 * by["lora", 1]["activations_tracker"]  # SP 2 halves a lot
