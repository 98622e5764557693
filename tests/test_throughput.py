"""throughput.py: the FLOPs count agrees with a real model's weights, GPU names find their own peak (not a shorter
name's), and the estimate falls with sample length as attention's quadratic term says."""

import pytest
import torch
from transformers import AutoModelForCausalLM

import memory_plan
import throughput


def test_matmul_params_are_a_real_models_linear_weights(tiny_model_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    linears = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))  # the LM head included
    assert throughput.matmul_params(memory_plan.model_shapes(model.config)) == linears
    # Qwen2.5-7B: 7,615,616,512 published weights less the embedding, biases and norms
    shapes = memory_plan.model_shapes("Qwen/Qwen2.5-7B-Instruct")
    h, layers = shapes["hidden"], shapes["layers"]
    rest = shapes["vocab"] * h + layers * (h + 2 * shapes["kv_heads"] * shapes["head_dim"] + 2 * h) + h
    assert throughput.matmul_params(shapes) == 7_615_616_512 - rest


@pytest.mark.parametrize(
    "name, tflops",
    [
        ("NVIDIA H100 PCIe", 756),
        ("NVIDIA H100 80GB HBM3", 989),
        ("NVIDIA L40S", 362),
        ("NVIDIA L40", 181),
        ("NVIDIA L4", 121),
        ("Tesla T4", 65),
        ("NVIDIA A100-SXM4-40GB", 312),
        ("NVIDIA GeForce GTX 1080", None),
    ],
)
def test_peak_tflops_matches_the_most_specific_name(name, tflops):
    assert throughput.peak_tflops(name) == tflops


def test_training_flops_add_attentions_quadratic_term():
    shapes = memory_plan.model_shapes("Qwen/Qwen2.5-32B-Instruct")
    linear = 6 * throughput.matmul_params(shapes)
    per_token_attention = 6 * shapes["layers"] * shapes["hidden"]
    assert throughput.training_flops(shapes, [1000, 3000]) == linear * 4000 + per_token_attention * (1000**2 + 3000**2)
    # one sample of 4000 tokens costs more than two of 2000: the same linear work, twice the attention
    assert throughput.training_flops(shapes, [4000]) > throughput.training_flops(shapes, [2000, 2000])


def test_tokens_per_second_is_peak_times_mfu_over_flops_per_token():
    model, peak = "Qwen/Qwen2.5-7B-Instruct", 989
    shapes = memory_plan.model_shapes(model)
    short = throughput.tokens_per_second(model, peak, mean_sample=1)
    assert short == pytest.approx(peak * 1e12 * throughput.MFU / (6 * throughput.matmul_params(shapes)), rel=1e-4)
    # at 32k tokens a 7B's attention costs 46% of its weights' FLOPs per token: a third fewer tokens per second
    ratio = throughput.tokens_per_second(model, peak, mean_sample=32768) / short
    attention_share = shapes["layers"] * shapes["hidden"] * 32768 / throughput.matmul_params(shapes)
    assert ratio == pytest.approx(1 / (1 + attention_share), rel=1e-4)
    assert 0.6 < ratio < 0.75
