"""Generation: the three backends (vllm, hf, openai), the prompt they render and the sampling they ask for.

Each backend is set up once by evaluate.py and returns (chunk size, generate_chunk): generate_chunk(jobs) yields a
chunk's samples, and evaluate.py's loop saves each as it arrives, so a kill loses at most the chunk in flight.
A job is {"task", "id", "sample", "seed", "messages"}; a sample is what generation() builds.
"""

from __future__ import annotations

import json
import math
import sys
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Iterator

import torch

import sft
import utils

VLLM_LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)  # max_lora_rank values vLLM accepts


def generation(job: dict, prompt, response: str, tokens: int | None, finish_reason: str | None) -> dict:
    """One generated sample as generations.jsonl keeps it; --responses records are read into the same shape.
    finish_reason: "stop" (a stop token), "length" (cut off at --max-tokens), or None where the backend gives none."""
    gen = {key: job[key] for key in ("task", "id", "sample")}
    return gen | {"prompt": prompt, "response": response, "tokens": tokens, "finish_reason": finish_reason}


def sampling_params(cfg) -> dict:
    """What every backend asks for, spelled out: a value left unset lets vllm serve or transformers apply the
    checkpoint's generation_config (Qwen2.5: top_k 20, repetition_penalty 1.05), and the backends would disagree.
    top_k -1 = every token (vLLM's and SGLang's convention); the paper's harness ran with these vLLM defaults."""
    return {"temperature": cfg.temperature, "top_p": cfg.top_p, "top_k": -1, "repetition_penalty": 1.0}


def tokenizer_source(cfg) -> str:
    """Prefer the adapter's tokenizer: training may have changed its chat template."""
    return cfg.adapter if cfg.adapter and (Path(cfg.adapter) / "tokenizer_config.json").exists() else cfg.model


def prompt_text(tokenizer, messages: list[dict]) -> str:
    """The chat prompt as the model reads it: the chat template applied, ending where the assistant begins."""
    return sft.generation_prompt(tokenizer, messages)  # exactly what every trained reply follows


def stop_token_ids(tokenizer, extra=()) -> list[int]:
    """EOS plus <|im_end|>: a merged checkpoint's generation config may only know <|endoftext|>."""
    ids = {tokenizer.eos_token_id, tokenizer.get_vocab().get("<|im_end|>"), *extra}
    return sorted(i for i in ids if i is not None)


def per_sample_sampler(seeds: list[int], temperature: float, top_p: float, device):
    """Temperature and top-p sampling with one torch.Generator per batch row, seeded with that sample's seed, as vLLM
    seeds each request: a sample does not depend on its batch, so a resumed run redraws what a kill lost. A logits
    processor for greedy decoding: every token but the drawn one gets -inf, so argmax picks it."""
    generators = [torch.Generator(device).manual_seed(seed) for seed in seeds]

    def draw(input_ids, scores):
        probs = torch.softmax(scores.float() / temperature, dim=-1)
        if top_p < 1.0:  # the smallest set of most likely tokens whose mass reaches top_p (transformers' rule)
            sorted_probs, order = probs.sort(dim=-1, descending=True)
            sorted_probs[sorted_probs.cumsum(-1) - sorted_probs >= top_p] = 0.0
            probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
        drawn = torch.stack([torch.multinomial(row, 1, generator=g) for row, g in zip(probs, generators)])
        return torch.full_like(scores, -math.inf).scatter(-1, drawn, 0.0)

    return draw


def hf_backend(cfg, jobs: list[dict]):
    from transformers import GenerationConfig

    tokenizer = utils.load_tokenizer(tokenizer_source(cfg), cfg.chat_template, cfg.chat_template_kwargs)
    tokenizer.padding_side = "left"  # generation appends on the right, so prompts must end flush
    device = utils.pick_device()
    model = utils.load_model(cfg.model, device, utils.pick_dtype(device), utils.pick_attention("auto", device))
    model_eos = model.generation_config.eos_token_id
    stops = stop_token_ids(tokenizer, model_eos if isinstance(model_eos, list) else [model_eos])
    model.generation_config = GenerationConfig()  # the checkpoint's defaults (penalties, n-gram bans) must not apply
    if cfg.adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, cfg.adapter)
    model.eval()
    # Greedy decoding, over per_sample_sampler's draws when sampling.
    fixed = {"do_sample": False, "max_new_tokens": cfg.max_tokens, "eos_token_id": stops}
    fixed |= {"pad_token_id": tokenizer.pad_token_id, "repetition_penalty": sampling_params(cfg)["repetition_penalty"]}

    def generate_batch(batch: list[dict]) -> Iterator[dict]:
        prompts = [prompt_text(tokenizer, job["messages"]) for job in batch]
        encoded = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
        seeds = [job["seed"] for job in batch]
        sampler = [per_sample_sampler(seeds, cfg.temperature, cfg.top_p, device)] if cfg.temperature > 0 else []
        with torch.no_grad():
            out = model.generate(**encoded, **fixed, logits_processor=sampler)
        for job, prompt, row in zip(batch, prompts, out[:, encoded["input_ids"].shape[1] :].tolist()):
            stop = next((i for i, t in enumerate(row) if t in stops), None)
            length, reason = (len(row), "length") if stop is None else (stop + 1, "stop")
            yield generation(job, prompt, tokenizer.decode(row[:length], skip_special_tokens=True), length, reason)

    return cfg.batch_size, generate_batch


def vllm_backend(cfg, jobs: list[dict]):
    from transformers import AutoConfig
    from vllm import LLM, SamplingParams

    tokenizer = utils.load_tokenizer(tokenizer_source(cfg), cfg.chat_template, cfg.chat_template_kwargs)

    def encode(chunk: list[dict]) -> tuple[list[str], list[list[int]]]:
        prompts = [prompt_text(tokenizer, job["messages"]) for job in chunk]
        # Token ids, not text: vLLM would add a second BOS to templates that already start with one (Llama 3).
        return prompts, tokenizer(prompts, add_special_tokens=False)["input_ids"]

    max_len = cfg.max_tokens + max(map(len, encode(jobs)[1]))
    model_limit = getattr(AutoConfig.from_pretrained(cfg.model), "max_position_embeddings", None)
    if model_limit and max_len > model_limit:
        print(f"note: max_model_len {max_len} > the model's {model_limit}: samples stop there", file=sys.stderr)
        max_len = model_limit
    lora_request, lora_args = None, {}
    if cfg.adapter:
        from vllm.lora.request import LoRARequest

        rank = json.loads((Path(cfg.adapter) / "adapter_config.json").read_text(encoding="utf-8"))["r"]
        lora_args = {"enable_lora": True, "max_lora_rank": next(r for r in VLLM_LORA_RANKS if r >= rank)}
        lora_request = LoRARequest("adapter", 1, str(Path(cfg.adapter).resolve()))
    engine = {"tensor_parallel_size": cfg.tensor_parallel_size, "max_model_len": max_len, "seed": cfg.seed}
    engine["dtype"] = utils.vllm_dtype()  # the trainers' rule: bf16 where the GPU has it, fp16 ("half") on a T4
    llm = LLM(model=cfg.model, tokenizer=tokenizer_source(cfg), **engine, **lora_args)
    shared = sampling_params(cfg) | {"stop_token_ids": stop_token_ids(tokenizer)}

    def generate_chunk(chunk: list[dict]) -> Iterator[dict]:
        prompts, prompt_ids = encode(chunk)
        # max_tokens depends on the sample alone, not on the chunk it falls in
        budgets = [min(cfg.max_tokens, max_len - len(ids)) for ids in prompt_ids]
        params = [SamplingParams(**shared, max_tokens=b, seed=job["seed"]) for job, b in zip(chunk, budgets)]
        outputs = llm.generate([{"prompt_token_ids": ids} for ids in prompt_ids], params, lora_request=lora_request)
        for job, prompt, out in zip(chunk, prompts, outputs):
            sample = out.outputs[0]
            yield generation(job, prompt, sample.text, len(sample.token_ids), sample.finish_reason)

    return cfg.chunk_size, generate_chunk


def openai_backend(cfg, jobs: list[dict]):
    connection = {"api_key": cfg.api_key, "timeout": cfg.request_timeout, "retries": cfg.max_retries}
    sampling = sampling_params(cfg) | {"max_tokens": cfg.max_tokens}
    if cfg.chat_template_kwargs:  # an extra body field vLLM's and SGLang's servers pass to their chat template
        sampling["chat_template_kwargs"] = cfg.chat_template_kwargs

    def one(job):
        messages = job["messages"]
        try:
            text, tokens, finish_reason = utils.chat_completion(
                cfg.base_url, cfg.model, messages, **connection, **sampling, seed=job["seed"]
            )
        except utils.ChatCompletionError as e:  # one line naming the URL and the error (an HTML error page's too)
            raise SystemExit(str(e)) from None
        return generation(job, messages, text, tokens, finish_reason)

    def generate_all(chunk: list[dict]) -> Iterator[dict]:
        pool = ThreadPoolExecutor(cfg.concurrency)
        try:
            yield from (future.result() for future in as_completed([pool.submit(one, job) for job in chunk]))
        finally:  # on a kill or error, drop the queued requests instead of waiting for them
            pool.shutdown(wait=False, cancel_futures=True)

    # One chunk: replies are saved as they arrive, so a kill loses only the --concurrency requests in flight.
    return len(jobs), generate_all
