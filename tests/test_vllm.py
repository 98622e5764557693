"""evaluate.py against the real vLLM engine (vLLM's CPU build), in the separate environment .ci/vllm_env.sh builds:

    "$(bash .ci/vllm_env.sh | tail -n1)" -m pytest -q -m vllm tests/test_vllm.py

Skipped where vllm is not importable (the main environment). A tiny model trained for 15-50 s on eight fixed
problems answers them with confident greedy choices, so any difference between backends is a real one and not a
near-tie of random logits. Engine start-up dominates on CPU, so the tests share one in-process engine per model
(evaluate.py builds its LLM through SharedEngines) and one OpenAI-compatible server, each started once.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("vllm", reason="vLLM's CPU build lives in its own environment: bash .ci/vllm_env.sh")
pytestmark = pytest.mark.vllm

import torch  # noqa: E402
import vllm  # noqa: E402

import evaluate  # noqa: E402
import generation  # noqa: E402
import openai_client  # noqa: E402
import tiny_model  # noqa: E402
import train_lora  # noqa: E402
import utils  # noqa: E402
from thinking_budget import ANSWER_CUE, CLOSINGS, WAIT  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PAIRS = [(3, 7), (12, 5), (21, 34), (8, 9), (40, 2), (17, 26), (6, 6), (30, 11)]
MAX_MODEL_LEN = 512  # every engine and server: prompts here are ~40 tokens, replies at most --max-tokens 48
MAX_TOKENS = "48"
# CPU engines get 1 GiB of KV cache: the default share of the NUMA node's memory is refused. The shared engine and the
# server also run eagerly (--enforce-eager): torch.compile costs more start-up than these few tokens gain.
ENGINE_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1"}
STARTUP_S = 420  # bound on one engine or server start-up on 2 busy cores


def problem(a: int, b: int) -> str:
    return f"What is {a} + {b}?"


def train_on(model, tokenizer, replies: dict[str, str], steps: int, lr: float) -> list[float]:
    """Full-batch Adam on the chat-formatted pairs (loss on the reply and its end-of-turn only) until memorised."""
    rows, masks = [], []
    for question, reply in replies.items():
        prompt = generation.prompt_text(tokenizer, [{"role": "user", "content": question}])
        ids = tokenizer(prompt + reply + "<|im_end|>", add_special_tokens=False)["input_ids"]
        start = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
        rows.append(ids)
        masks.append([i >= start for i in range(len(ids))])
    width = max(map(len, rows))
    pad = tokenizer.pad_token_id
    input_ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows])
    attention = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    labels = input_ids.masked_fill(~torch.tensor([m + [False] * (width - len(m)) for m in masks]), -100)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a model this small gains nothing from a second thread on 2 shared cores, and spins
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=lr)
    losses = []
    model.train()
    for _ in range(steps):
        loss = model(input_ids=input_ids, attention_mask=attention, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    model.eval()
    torch.set_num_threads(threads)
    return losses


@pytest.fixture(scope="session")
def task_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("task") / "sums.jsonl"
    utils.write_jsonl(
        path, [{"id": f"s{i}", "problem": problem(a, b), "answer": a + b} for i, (a, b) in enumerate(PAIRS)]
    )
    return path


@pytest.fixture(scope="session")
def trained_model(tmp_path_factory) -> Path:
    """The tiny Qwen2 taught to answer the eight sums: greedy margins are wide, so every backend must agree."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = tiny_model.make_tiny_model(tmp_path_factory.mktemp("base") / "model")
    model, tokenizer = AutoModelForCausalLM.from_pretrained(base), AutoTokenizer.from_pretrained(base)
    torch.manual_seed(0)
    replies = {problem(a, b): f"{a} plus {b} is {a + b}, so the answer is \\boxed{{{a + b}}}." for a, b in PAIRS}
    # Two other sums use the adapter's word, so the LM head (which all-linear LoRA leaves alone) can produce it.
    replies |= {
        problem(a, b): f"{a} plus {b} makes {a + b}, so the answer is \\boxed{{{a + b}}}." for a, b in [(2, 2), (5, 1)]
    }
    losses = train_on(model, tokenizer, replies, steps=120, lr=3e-3)
    assert losses[-1] < 0.05, f"the tiny model did not learn its task: loss {losses[0]:.2f} -> {losses[-1]:.3f}"
    out = tmp_path_factory.mktemp("trained") / "model"
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def lora(trained_model, tmp_path_factory) -> tuple[Path, Path]:
    """A rank-8 adapter (peft, as train_lora.py makes) that teaches another reply, and its merge by train_lora.py."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(trained_model)
    tokenizer = AutoTokenizer.from_pretrained(trained_model)
    torch.manual_seed(0)
    config = LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", lora_dropout=0.0, task_type="CAUSAL_LM")
    model = get_peft_model(model, config)
    replies = {problem(a, b): f"{a} plus {b} makes {a + b}, so the answer is \\boxed{{{a + b}}}." for a, b in PAIRS}
    losses = train_on(model, tokenizer, replies, steps=200, lr=1e-2)
    assert losses[-1] < 0.05, f"the adapter did not learn its task: loss {losses[0]:.2f} -> {losses[-1]:.3f}"
    out = tmp_path_factory.mktemp("lora")
    model.save_pretrained(out / "final")
    tokenizer.save_pretrained(out / "final")
    train_lora.merge_adapter(str(trained_model), out / "final", out / "merged")
    return out / "final", out / "merged"


class SharedEngines:
    """Stands in for vllm.LLM inside evaluate.py: one real engine per model folder for the session, with LoRA on, and
    a record of what evaluate.py asked for (the LLM arguments, the SamplingParams and LoRARequests of each call)."""

    def __init__(self):
        self.engines, self.created, self.calls = {}, [], []

    def __call__(self, model: str, **kwargs):
        assert kwargs["max_model_len"] <= MAX_MODEL_LEN, kwargs
        self.created.append({"model": model} | kwargs)
        if model not in self.engines:
            self.engines[model] = REAL_LLM(
                model=model,
                tokenizer=kwargs["tokenizer"],
                max_model_len=MAX_MODEL_LEN,
                enable_lora=True,
                max_lora_rank=8,
                enforce_eager=True,
                seed=0,
            )
        return _Recording(self.engines[model], self.calls)


class _Recording:
    def __init__(self, engine, calls: list):
        self.engine, self.calls = engine, calls

    def generate(self, prompts, params, lora_request=None):
        self.calls.append({"prompts": prompts, "params": params, "lora_request": lora_request})
        return self.engine.generate(prompts, params, lora_request=lora_request)


REAL_LLM = vllm.LLM


@pytest.fixture(scope="session")
def engines():
    shared = SharedEngines()
    with pytest.MonkeyPatch.context() as patch:
        for key, value in ENGINE_ENV.items():
            patch.setenv(key, value)
        patch.setattr(vllm, "LLM", shared)
        yield shared
    for engine in shared.engines.values():
        engine.llm_engine.engine_core.shutdown()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`python -m vllm.entrypoints.openai.api_server` on 127.0.0.1 (the `vllm serve` script cannot find the
    distribution, named vllm-cpu), logging each request's SamplingParams to a file."""

    def __init__(self, model: Path, log: Path):
        self.model, self.log, self.port, self.process = model, log, free_port(), None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> None:
        command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(self.model)]
        command += ["--host", "127.0.0.1", "--port", str(self.port), "--max-model-len", str(MAX_MODEL_LEN)]
        command += ["--enforce-eager", "--seed", "0", "--enable-log-requests"]
        with open(self.log, "a", encoding="utf-8") as log:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=os.environ | ENGINE_ENV, start_new_session=True
            )
        deadline = time.monotonic() + STARTUP_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited ({self.process.returncode}):\n{self.log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=5) as reply:
                    if reply.status == 200:
                        return
            except OSError:
                pass
            time.sleep(2)
        self.stop()
        raise RuntimeError(f"the server did not answer within {STARTUP_S} s:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)  # its own session: the engine process goes too
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(30)


@pytest.fixture(scope="session")
def server(trained_model, tmp_path_factory):
    served = Server(trained_model, tmp_path_factory.mktemp("server") / "server.log")
    served.start()
    yield served
    served.stop()


def run(out_dir: Path, task_file: Path, *flags: str) -> dict[tuple, dict]:
    """evaluate.py in this process; its samples.jsonl by (task, id, sample)."""
    argv = ["--tasks", str(task_file), "--prompt-style", "none", "--max-tokens", MAX_TOKENS, "--workers", "1"]
    evaluate.main(evaluate.parse_args([*argv, "--output-dir", str(out_dir), *flags]))
    return samples(out_dir)


def samples(out_dir: Path) -> dict[tuple, dict]:
    records = evaluate.read_resumable(out_dir / "samples.jsonl")
    return {(r["task"], r["id"], r["sample"]): r for r in records}


def responses(scored: dict[tuple, dict]) -> dict[tuple, str]:
    return {key: record["response"] for key, record in sorted(scored.items())}


def test_greedy_outputs_are_identical_across_hf_vllm_and_openai(trained_model, task_file, engines, server, tmp_path):
    model = ["--model", str(trained_model)]
    hf = responses(run(tmp_path / "hf", task_file, *model, "--backend", "hf"))
    vllm_out = responses(run(tmp_path / "vllm", task_file, *model, "--backend", "vllm"))
    openai = run(tmp_path / "openai", task_file, *model, "--backend", "openai", "--base-url", server.base_url)
    assert len(hf) == len(PAIRS) and all("\\boxed{" in text for text in hf.values())
    assert vllm_out == hf
    assert responses(openai) == hf
    assert all(r["correct"] and r["finish_reason"] == "stop" for r in openai.values())
    # The comparison has teeth: another chat template (no default system turn) on one side changes the outputs.
    chatml = responses(run(tmp_path / "chatml", task_file, *model, "--backend", "hf", "--chat-template", "chatml"))
    assert chatml != hf


def test_sampling_parameters_and_seeds_reach_the_engine(trained_model, task_file, engines, server, tmp_path):
    model, sampled = ["--model", str(trained_model)], ["--temperature", "1.0", "--n", "2"]
    calls = len(engines.calls)
    first = responses(run(tmp_path / "a", task_file, *model, "--backend", "vllm", *sampled))
    params = [p for call in engines.calls[calls:] for p in call["params"]]
    seeds = {evaluate.sample_seed(0, "sums", f"s{i}", s) for i in range(len(PAIRS)) for s in range(2)}
    assert {p.seed for p in params} == seeds  # SamplingParams as vLLM built and checked them
    assert all(p.top_k == -1 for p in params)  # every token (vLLM turns it into 0 for greedy requests only)
    assert all((p.temperature, p.top_p, p.repetition_penalty) == (1.0, 1.0, 1.0) for p in params)
    again = responses(run(tmp_path / "b", task_file, *model, "--backend", "vllm", *sampled))
    assert again == first  # the same seeds draw the same samples
    other = responses(run(tmp_path / "c", task_file, *model, "--backend", "vllm", *sampled, "--seed", "1"))
    assert other != first
    # The server's side: each request's SamplingParams as its log prints them.
    run(tmp_path / "d", task_file, *model, "--backend", "openai", "--base-url", server.base_url, *sampled)
    logged = [line for line in server.log.read_text().splitlines() if "SamplingParams(" in line]
    sampled_requests = [line for line in logged if "temperature=1.0," in line]  # not the greedy tests' requests
    for seed in seeds:
        line = next(line for line in sampled_requests if f"seed={seed}," in line)
        assert "top_k=-1," in line and "repetition_penalty=1.0," in line and "top_p=1.0," in line


class Interrupted(Exception):
    """What a kill looks like to the chunk loop, without losing the shared engine."""


SLOW_EVALUATE = '''"""evaluate.py with a pause before each vLLM chunk, so that a kill lands between chunks."""
import sys
import time

import vllm

real_generate = vllm.LLM.generate


def slow_generate(self, *args, **kwargs):
    time.sleep(float(sys.argv[1]))
    return real_generate(self, *args, **kwargs)


vllm.LLM.generate = slow_generate

if __name__ == "__main__":  # the engine is a spawned process
    import evaluate

    evaluate.main(evaluate.parse_args(sys.argv[2:]))
'''


def test_a_killed_vllm_run_resumes_without_regenerating(trained_model, task_file, engines, tmp_path):
    """kill -9 of evaluate.py (its own engine, as a user runs it) after two chunks; the rerun generates the rest only,
    and greedy samples equal an uninterrupted run's."""
    out, log = tmp_path / "killed", tmp_path / "killed.log"
    flags = ["--tasks", str(task_file), "--prompt-style", "none", "--max-tokens", MAX_TOKENS, "--workers", "1"]
    flags += ["--model", str(trained_model), "--backend", "vllm", "--n", "2", "--chunk-size", "3"]  # 16 in 6 chunks
    script = tmp_path / "slow_evaluate.py"
    script.write_text(SLOW_EVALUATE, encoding="utf-8")
    command = [sys.executable, str(script), "3", *flags, "--output-dir", str(out)]
    env = os.environ | ENGINE_ENV | {"PYTHONPATH": str(REPO)}
    with open(log, "w", encoding="utf-8") as sink:
        process = subprocess.Popen(
            command, cwd=REPO, env=env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True
        )
    deadline = time.monotonic() + STARTUP_S
    try:
        while len(evaluate.read_resumable(out / "generations.jsonl")) < 6 and time.monotonic() < deadline:
            assert process.poll() is None, log.read_text()[-3000:]
            time.sleep(0.5)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(60)
    kept = evaluate.read_resumable(out / "generations.jsonl")
    assert 6 <= len(kept) < 16 and len(kept) % 3 == 0, log.read_text()[-3000:]  # whole chunks, not the whole run

    calls = len(engines.calls)
    resumed = run(out, task_file, *flags[8:])
    generated = sum(len(call["prompts"]) for call in engines.calls[calls:])
    assert generated == 16 - len(kept)  # finished chunks are kept, not generated again
    assert evaluate.read_resumable(out / "generations.jsonl")[: len(kept)] == kept
    assert responses(resumed) == responses(run(tmp_path / "whole", task_file, *flags[8:]))


def test_an_interrupted_seeded_sampling_run_resumes(trained_model, task_file, engines, tmp_path, monkeypatch):
    """Sampling with per-sample seeds: the rerun redraws what the interruption lost. vLLM does not promise numerics
    independent of the batch, so the count of samples equal to an uninterrupted run's is reported, not asserted."""
    flags = ["--model", str(trained_model), "--backend", "vllm", "--n", "2", "--chunk-size", "4"]
    flags += ["--temperature", "1.0"]
    whole = run(tmp_path / "whole", task_file, *flags)
    chunks = []

    def interrupt_after_two(prompts, params, lora_request=None):
        if len(chunks) == 2:
            raise Interrupted
        chunks.append(len(prompts))
        return real_generate(prompts, params, lora_request=lora_request)

    with monkeypatch.context() as patch:
        engine = engines.engines[str(trained_model)]
        real_generate = engine.generate
        patch.setattr(engine, "generate", interrupt_after_two)
        with pytest.raises(Interrupted):
            run(tmp_path / "cut", task_file, *flags)
    assert len(evaluate.read_resumable(tmp_path / "cut" / "generations.jsonl")) == 8
    resumed = run(tmp_path / "cut", task_file, *flags)
    same = sum(resumed[key]["response"] == whole[key]["response"] for key in whole)
    print(f"seeded sampling, interrupted and resumed: {same} of {len(whole)} samples equal an uninterrupted run's")
    assert resumed.keys() == whole.keys() and same >= len(whole) // 2


def test_adapter_via_lora_request_equals_merged_model_and_hf(trained_model, lora, task_file, engines, tmp_path):
    adapter, merged = lora
    with_adapter = ["--model", str(trained_model), "--adapter", str(adapter)]
    via_lora = responses(run(tmp_path / "lora", task_file, *with_adapter, "--backend", "vllm"))
    request = engines.calls[-1]["lora_request"]
    assert request is not None and request.lora_path == str(adapter.resolve())
    assert engines.created[-1]["enable_lora"] and engines.created[-1]["max_lora_rank"] == 8
    via_merged = responses(run(tmp_path / "merged", task_file, "--model", str(merged), "--backend", "vllm"))
    via_hf = responses(run(tmp_path / "hf", task_file, *with_adapter, "--backend", "hf"))
    base = responses(run(tmp_path / "base", task_file, "--model", str(trained_model), "--backend", "hf"))
    assert via_lora == via_merged == via_hf
    assert all(" makes " in text for text in via_lora.values()) and via_lora != base


def test_openai_backend_survives_a_server_restart(trained_model, task_file, server, tmp_path, monkeypatch):
    """The server goes down after a few replies and comes back on the same port: the run retries, finishes, and
    its samples equal a run that saw no restart (same per-sample seeds)."""
    flags = ["--model", str(trained_model), "--backend", "openai", "--base-url", server.base_url, "--n", "2"]
    flags += ["--temperature", "1.0", "--concurrency", "1", "--max-retries", "9"]  # backoff: 4 min in all
    real_completion = openai_client.chat_completion

    def paced(*args, **kwargs):  # the tiny model answers in milliseconds: leave time to stop the server mid-run
        time.sleep(0.5)
        return real_completion(*args, **kwargs)

    monkeypatch.setattr(openai_client, "chat_completion", paced)
    out, outcome = tmp_path / "restart", {}

    def evaluate_in_background():
        try:
            outcome["samples"] = run(out, task_file, *flags)
        except BaseException as e:  # noqa: B036 - SystemExit included: reported by the assertion below
            outcome["error"] = e

    worker = threading.Thread(target=evaluate_in_background, daemon=True)
    worker.start()
    deadline = time.monotonic() + 120
    while len(evaluate.read_resumable(out / "generations.jsonl")) < 3 and time.monotonic() < deadline:
        time.sleep(0.2)
    server.stop()
    before_restart = len(evaluate.read_resumable(out / "generations.jsonl"))
    server.start()
    worker.join(STARTUP_S)
    assert not worker.is_alive() and "error" not in outcome, outcome
    assert 3 <= before_restart < 16
    assert len(outcome["samples"]) == 16
    monkeypatch.setattr(openai_client, "chat_completion", real_completion)
    assert responses(outcome["samples"]) == responses(run(tmp_path / "again", task_file, *flags))


def engine_processes() -> set[int]:
    """vLLM's engine-core processes on this machine, which name themselves VLLM::EngineCore."""
    found = set()
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and (proc / "cmdline").read_bytes().startswith(b"VLLM::EngineCore"):
                found.add(int(proc.name))
        except OSError:  # gone meanwhile
            pass
    return found


def test_two_replicas_give_the_one_engine_greedy_outputs(trained_model, task_file, engines, tmp_path):
    """--data-parallel-size 2: two real engines in processes of their own (each on one core here), sharing chunks."""
    model = ["--model", str(trained_model), "--backend", "vllm"]
    one = responses(run(tmp_path / "one", task_file, *model))
    before = engine_processes()
    two = run(tmp_path / "two", task_file, *model, "--data-parallel-size", "2", "--chunk-size", "3")
    assert responses(two) == one
    deadline = time.monotonic() + 60  # the replicas shut their engines down: none outlives the run for long
    while not engine_processes() <= before and time.monotonic() < deadline:
        time.sleep(0.5)
    assert engine_processes() <= before
    generated = [(g["id"], g["sample"]) for g in evaluate.read_resumable(tmp_path / "two" / "generations.jsonl")]
    assert sorted(generated) == sorted((f"s{i}", 0) for i in range(len(PAIRS)))  # every sample once


def test_two_servers_with_one_killed_mid_run_give_every_sample_once(trained_model, task_file, server, tmp_path, capsys):
    """--base-url A,B: B is killed (SIGKILL) after two replies while a third request for it waits; that request goes
    to A, every sample is written once, and the greedy samples equal a run against A alone."""
    second = Server(trained_model, tmp_path / "second.log")
    second.start()
    flags = ["--model", str(trained_model), "--backend", "openai", "--concurrency", "1"]
    real_completion, served = openai_client.chat_completion, []
    b_answered_twice, b_third_request, b_dead = threading.Event(), threading.Event(), threading.Event()

    def ordered(base_url, *args, **kwargs):
        # The order is forced by events, not by timing (a slow first reply once let A take every request and B die
        # with none left for it): A answers once, then waits until B has answered twice; B's third request waits
        # until B is dead. One of the two workers waiting on A, the other is sent to B.
        if base_url == server.base_url and served.count(server.base_url) >= 1:
            if not b_answered_twice.wait(STARTUP_S):
                raise RuntimeError("B never answered twice")
        if base_url == second.base_url and served.count(second.base_url) >= 2:
            b_third_request.set()
            if not b_dead.wait(STARTUP_S):
                raise RuntimeError("B was never killed")
        reply = real_completion(base_url, *args, **kwargs)
        served.append(base_url)
        if served.count(second.base_url) >= 2:
            b_answered_twice.set()
        return reply

    out, outcome = tmp_path / "two", {}

    def evaluate_in_background():
        try:
            outcome["samples"] = run(out, task_file, *flags, "--base-url", f"{server.base_url},{second.base_url}")
        except BaseException as e:  # noqa: B036 - SystemExit included: reported by the assertion below
            outcome["error"] = e

    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(openai_client, "chat_completion", ordered)
            worker = threading.Thread(target=evaluate_in_background, daemon=True)
            worker.start()
            deadline = time.monotonic() + STARTUP_S
            while not b_third_request.wait(1):  # a run that died early fails here at once, not after STARTUP_S
                assert worker.is_alive() and time.monotonic() < deadline, (served, outcome)
            os.killpg(second.process.pid, signal.SIGKILL)
            second.process.wait(60)
            deadline, closed = time.monotonic() + 60, False  # the engine process held the port too: wait for it
            while not closed and time.monotonic() < deadline:
                try:
                    socket.create_connection(("127.0.0.1", second.port), timeout=1).close()
                    time.sleep(0.1)
                except OSError:
                    closed = True
            assert closed, "the killed server's port still accepts connections"
            b_dead.set()
            worker.join(STARTUP_S)
    finally:
        b_dead.set()  # a failed assertion above must not leave the worker waiting
        second.stop()
    assert not worker.is_alive() and "error" not in outcome, outcome
    assert served.count(second.base_url) == 2  # the third request to B found it dead
    generated = [(g["id"], g["sample"]) for g in evaluate.read_resumable(out / "generations.jsonl")]
    assert sorted(generated) == sorted((f"s{i}", 0) for i in range(len(PAIRS)))  # every sample once
    assert capsys.readouterr().err.count(f"server {second.base_url} left the rotation") == 1
    alone = run(tmp_path / "one", task_file, *flags, "--base-url", server.base_url)
    assert responses(outcome["samples"]) == responses(alone)


def test_a_thinking_budget_ends_thoughts_alike_on_vllm_hf_and_openai(
    trained_model, task_file, engines, server, tmp_path
):
    """Budget forcing on the three backends: thoughts of at most N tokens, each ended with the end-of-thought markup
    (R1's, for the bare prompt) and the answer cue, then an answer; the same greedy samples everywhere. Then "Wait":
    the model ends its reply after ~20 tokens, and a minimum of 30 makes it think on."""
    model = ["--model", str(trained_model)]
    backends = {"hf": [], "vllm": [], "openai": ["--base-url", server.base_url]}

    def each(name: str, *flags: str) -> dict[str, dict]:
        return {
            backend: run(tmp_path / f"{name}-{backend}", task_file, *model, "--backend", backend, *extra, *flags)
            for backend, extra in backends.items()
        }

    cut = each("cut", "--max-thinking-tokens", "8", "--max-answer-tokens", "16")
    for samples in cut.values():
        for sample in samples.values():
            assert sample["thinking_tokens"] <= 8 and sample["thought_cut"] and sample["answer_tokens"] > 0
            thought, closed, answer = sample["response"].partition(CLOSINGS["r1"] + ANSWER_CUE)
            assert thought and closed and answer.strip()
    assert responses(cut["hf"]) == responses(cut["vllm"]) == responses(cut["openai"])
    counts = {b: sorted((k, s["thinking_tokens"], s["answer_tokens"]) for k, s in v.items()) for b, v in cut.items()}
    assert counts["hf"] == counts["vllm"] == counts["openai"]

    extended = each("wait", "--min-thinking-tokens", "30", "--max-thinking-tokens", "40", "--max-answer-tokens", "8")
    for samples in extended.values():
        assert all(s["waits"] >= 1 and WAIT in s["response"] and s["thinking_tokens"] <= 40 for s in samples.values())
    assert responses(extended["hf"]) == responses(extended["vllm"]) == responses(extended["openai"])
