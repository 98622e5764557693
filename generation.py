"""Generation: the three backends (vllm, hf, openai), the prompt they render and the sampling they ask for.

Each backend is set up once by evaluate.py and returns (chunk size, generate_chunk): generate_chunk(jobs) yields a
chunk's samples, and evaluate.py's loop saves each as it arrives, so a kill loses at most the chunk in flight.
A job is {"task", "id", "sample", "seed", "messages"[, "max_thinking_tokens"]}; a sample is what generation() builds.
With a thinking budget every backend generates through thinking_budget.force, over its own complete() primitive.
"""

from __future__ import annotations

import json
import math
import sys
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Iterator

import torch

import openai_client
import sft
import thinking_budget
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


def max_new_tokens(cfg, tokenizer) -> int:
    """Tokens a sample may add to its prompt: --max-tokens, or with a thinking budget the largest thought (of all
    --thinking-budgets: their runs share the engine), its forced end and the answer."""
    budget = job_budget(cfg)
    if budget is None:
        return cfg.max_tokens
    largest = max([budget, *(cfg.thinking_budgets or [])])
    return thinking_budget.max_new_tokens(largest, cfg.max_answer_tokens, token_counter(tokenizer))


def job_budget(cfg) -> int | None:
    """The thinking budget a job carries: --max-thinking-tokens (each run of --thinking-budgets sets it); --max-tokens
    where only --min-thinking-tokens is given (the thought may be extended, and is cut where a plain sample would be);
    None without budget forcing."""
    if cfg.max_thinking_tokens is not None:
        return cfg.max_thinking_tokens
    if not cfg.min_thinking_tokens and not cfg.thinking_budgets:
        return None
    return max(cfg.thinking_budgets or [cfg.max_tokens])


def token_counter(tokenizer):
    return lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])


def chunk_samples(cfg, chunk: list[dict], prompts: list, complete, tokenizer, room=None) -> list[dict]:
    """A chunk's samples through a backend's complete(): one completion each, or budget-forced (thinking_budget.py)
    where the jobs carry a thinking budget. complete: [{"prompt", "max_tokens", "seed", "stop"}] -> [(text, tokens,
    finish_reason)], a text that stopped at a stop string ending with it. room(text): the tokens the engine's context
    has left after text, where the backend has a limit (vllm's max_model_len)."""
    if chunk[0].get("max_thinking_tokens") is None:
        requests = [
            {"prompt": p, "max_tokens": cfg.max_tokens, "seed": job["seed"], "stop": []}
            for job, p in zip(chunk, prompts)
        ]
        return [generation(job, p, *out) for job, p, out in zip(chunk, prompts, complete(requests))]
    forced = thinking_budget.force(chunk, prompts, complete, token_counter(tokenizer), cfg, room)
    samples = []
    for job, prompt, f in zip(chunk, prompts, forced):
        sample = generation(job, prompt, f["response"], f["tokens"], f["finish_reason"])
        samples.append(sample | {key: f[key] for key in ("thinking_tokens", "answer_tokens", "waits", "thought_cut")})
    return samples


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
    fixed = {"do_sample": False, "eos_token_id": stops, "pad_token_id": tokenizer.pad_token_id}
    fixed |= {"repetition_penalty": sampling_params(cfg)["repetition_penalty"]}

    def cut(row: list[int], max_tokens: int, stop_strings: list[str]) -> tuple[str, int, str]:
        row = row[:max_tokens]  # a row's first tokens do not depend on how long the batch goes on
        stop = next((i for i, t in enumerate(row) if t in stops), None)
        length, reason = (len(row), "length") if stop is None else (stop + 1, "stop")
        text = tokenizer.decode(row[:length], skip_special_tokens=True)
        found = [(text.find(s), s) for s in stop_strings if s in text]
        if found:  # stopped at a stop string: the fewest tokens that hold it, as vLLM counts them
            at, marker = min(found)
            low, high = 1, length
            while low < high:
                mid = (low + high) // 2
                low, high = (
                    (low, mid) if marker in tokenizer.decode(row[:mid], skip_special_tokens=True) else (mid + 1, high)
                )
            text, length, reason = text[: at + len(marker)], low, "stop"
        return text, length, reason

    def complete(requests: list[dict]) -> list[tuple[str, int, str]]:
        prompts = [r["prompt"] for r in requests]
        encoded = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
        seeds = [r["seed"] for r in requests]
        sampler = [per_sample_sampler(seeds, cfg.temperature, cfg.top_p, device)] if cfg.temperature > 0 else []
        stop_strings = requests[0]["stop"]  # one step of the thought per call: the same stop strings for all
        strings = {"stop_strings": stop_strings, "tokenizer": tokenizer} if stop_strings else {}
        longest = max(r["max_tokens"] for r in requests)
        with torch.no_grad():
            out = model.generate(**encoded, **fixed, max_new_tokens=longest, logits_processor=sampler, **strings)
        rows = out[:, encoded["input_ids"].shape[1] :].tolist()
        return [cut(row, r["max_tokens"], stop_strings) for r, row in zip(requests, rows)]

    def generate_batch(batch: list[dict]) -> Iterator[dict]:
        prompts = [prompt_text(tokenizer, job["messages"]) for job in batch]
        yield from chunk_samples(cfg, batch, prompts, complete, tokenizer)

    return cfg.batch_size, generate_batch


def vllm_backend(cfg, jobs: list[dict]):
    """jobs: one per prompt the engine must hold (evaluate.py: every problem's), for its max_model_len."""
    if cfg.data_parallel_size > 1:
        import data_parallel

        return data_parallel.replicas(cfg, jobs)
    from transformers import AutoConfig
    from vllm import LLM, SamplingParams

    tokenizer = utils.load_tokenizer(tokenizer_source(cfg), cfg.chat_template, cfg.chat_template_kwargs)

    def encode(prompts: list[str]) -> list[list[int]]:
        # Token ids, not text: vLLM would add a second BOS to templates that already start with one (Llama 3).
        return tokenizer(prompts, add_special_tokens=False)["input_ids"]

    prompt_len = max(map(len, encode([prompt_text(tokenizer, job["messages"]) for job in jobs])))
    max_len = max_new_tokens(cfg, tokenizer) + prompt_len
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

    def complete(requests: list[dict]) -> list[tuple[str, int, str]]:
        prompt_ids = encode([r["prompt"] for r in requests])
        # max_tokens depends on the sample alone, not on the chunk it falls in
        limits = [min(r["max_tokens"], max_len - len(ids)) for r, ids in zip(requests, prompt_ids)]
        params, fitting = [], [ids for ids, limit in zip(prompt_ids, limits) if limit >= 1]
        for r, limit in zip(requests, limits):
            stop = {"stop": r["stop"], "include_stop_str_in_output": True} if r["stop"] else {}
            if limit >= 1:  # SamplingParams refuses max_tokens < 1
                params.append(SamplingParams(**shared, max_tokens=limit, seed=r["seed"], **stop))
        prompts = [{"prompt_token_ids": ids} for ids in fitting]
        outputs = iter(llm.generate(prompts, params, lora_request=lora_request) if fitting else [])
        out = []
        for limit in limits:  # a text that already fills the context is cut off there, as at max_model_len
            o = next(outputs).outputs[0] if limit >= 1 else None
            out.append((o.text, len(o.token_ids), o.finish_reason) if o else ("", 0, "length"))
        return out

    def room(text: str) -> int:
        return max_len - len(encode([text])[0])

    def generate_chunk(chunk: list[dict]) -> Iterator[dict]:
        prompts = [prompt_text(tokenizer, job["messages"]) for job in chunk]
        yield from chunk_samples(cfg, chunk, prompts, complete, tokenizer, room)

    return cfg.chunk_size, generate_chunk


def openai_backend(cfg, jobs: list[dict]):
    servers = openai_client.ServerPool(cfg.base_url.split(","), cfg.max_retries)
    connection = {"api_key": cfg.api_key, "timeout": cfg.request_timeout, "retries": 0}  # the pool retries
    sampling = sampling_params(cfg)
    forced = jobs[0].get("max_thinking_tokens") is not None
    # Budget forcing continues the thought as text: the prompt is rendered here, as hf and vllm render it.
    tokenizer = utils.load_tokenizer(cfg.model, cfg.chat_template, cfg.chat_template_kwargs) if forced else None

    def send(**request) -> tuple[str, int | None, str | None]:
        return servers.call(
            lambda url: openai_client.chat_completion(url, cfg.model, **connection, **sampling, **request)
        )

    def complete(requests: list[dict]) -> list[tuple[str, int, str]]:  # the completions endpoint, one at a time
        out = []
        for r in requests:
            # include_stop_str_in_output, add_special_tokens: vllm serve's extensions, as its offline engine is used
            stop = {"stop": r["stop"], "include_stop_str_in_output": True} if r["stop"] else {}
            request = {"max_tokens": r["max_tokens"], "seed": r["seed"], "add_special_tokens": False, **stop}
            text, tokens, reason = send(messages=None, prompt=r["prompt"], **request)
            out.append((text, token_counter(tokenizer)(text) if tokens is None else tokens, reason))
        return out

    def one(job):
        messages = job["messages"]
        try:
            if forced:
                return chunk_samples(cfg, [job], [prompt_text(tokenizer, messages)], complete, tokenizer)[0]
            # an extra body field vLLM's and SGLang's servers pass to their chat template
            kwargs = {"chat_template_kwargs": cfg.chat_template_kwargs} if cfg.chat_template_kwargs else {}
            text, tokens, finish_reason = send(messages=messages, max_tokens=cfg.max_tokens, seed=job["seed"], **kwargs)
        except (
            openai_client.ChatCompletionError
        ) as e:  # one line naming the URL and the error (an HTML error page's too)
            raise SystemExit(str(e)) from None
        return generation(job, messages, text, tokens, finish_reason)

    def generate_all(chunk: list[dict]) -> Iterator[dict]:
        pool = ThreadPoolExecutor(cfg.concurrency * len(servers.urls))
        try:
            yield from (future.result() for future in as_completed([pool.submit(one, job) for job in chunk]))
        finally:  # on a kill or error, drop the queued requests instead of waiting for them
            pool.shutdown(wait=False, cancel_futures=True)

    # One chunk of every job (as data_parallel.replicas): replies are saved as they arrive, so a kill loses only the
    # requests in flight; --concurrency per server bounds what is in flight.
    return sys.maxsize, generate_all
