"""Fixtures shared by the test files: one tiny model per test session, built in code (no network); the reply of the
local fake OpenAI-compatible servers."""

import json
import os
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import tiny_model  # noqa: E402
import utils  # noqa: E402


@pytest.fixture(scope="module")
def one_torch_thread():
    """The tiny model gains nothing from a second thread, and on a shared 2-core machine the spin-waits cost 5x."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A random 2-layer Qwen2 with a locally trained tokenizer and the real Qwen2.5 chat template."""
    return tiny_model.make_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


def sky_t1_response(thought: str, solution: str) -> str:
    return (
        f"<|begin_of_thought|>\n\n{thought}\n\n<|end_of_thought|>\n\n"
        f"<|begin_of_solution|>\n\n{solution}\n\n<|end_of_solution|>"
    )


@pytest.fixture(scope="session")
def train_file(tmp_path_factory) -> Path:
    """Twelve small addition problems in the three record shapes mixed in one file, as users' files are."""
    path = tmp_path_factory.mktemp("data") / "train.jsonl"
    rows = []
    for i in range(12):
        a, b = 3 + i, 7 + 2 * i
        answer = sky_t1_response(f"{a} plus {b} is {a + b}.", f"\\boxed{{{a + b}}}")
        question = f"What is {a} + {b}?"
        if i % 3 == 0:
            turns = [{"from": "user", "value": question}, {"from": "assistant", "value": answer}]
            rows.append({"system": "S", "conversations": turns})
        elif i % 3 == 1:
            rows.append({"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]})
        else:
            rows.append({"prompt": question, "response": answer})
    utils.write_jsonl(path, rows)
    return path


def send_json(handler, reply, status: int = 200) -> None:
    """A fake server's HTTP reply (http.server handler): reply as JSON, or a str sent as it is (an error page)."""
    data = reply.encode() if isinstance(reply, str) else json.dumps(reply).encode()
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)


def exit_rank(results) -> None:
    """The end of a spawned gloo rank, after destroy_process_group: flush what it put on the results queue, then exit
    without interpreter finalization. There gloo's worker threads can still release tensors after every result was
    sent, and abort the process (SIGABRT, "terminate called without an active exception"; pytorch/pytorch#179291):
    seen once in CI. A rank that fails earlier still exits non-zero."""
    results.close()
    results.join_thread()
    os._exit(0)
