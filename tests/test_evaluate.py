"""evaluate.py: scoring of real benchmark records, pass@k, the hf and openai backends, resume, bad inputs, the CLI."""

import json
import re
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

import evaluate
from markup import FUNCTIONAL_INSTRUCTION, SKY_T1_SYSTEM_PROMPT, STDIN_INSTRUCTION, eval_messages

REPO = Path(__file__).resolve().parents[1]

LCB_STDIN_RIGHT = "Here it is.\n```python\na, b = map(int, input().split())\nprint(a**b + b**a)\n```"
LCB_STDIN_WRONG = "```python\na, b = map(int, input().split())\nprint(a**b)\n```"
LCB_FUNCTIONAL_RIGHT = (
    "```python\nclass Solution:\n    def removeTrailingZeros(self, num: str) -> str:\n"
    "        return num.rstrip('0')\n```"
)


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records), encoding="utf-8")
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def run(args: list[str]) -> dict:
    return evaluate.main(evaluate.parse_args(args))


def run_cli(args: list[str]) -> subprocess.CompletedProcess:
    command = [sys.executable, "evaluate.py", *args]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)


def boxed(answer: str) -> str:
    return f"Some reasoning first.\n\\boxed{{{answer}}}"


def hand_written_responses() -> list[dict]:
    return (
        # aime24: problem 60 (gold 204) right in 2 of 4 samples, problem 61 (gold 113) never
        [
            {"task": "aime24", "id": 60, "sample": s, "response": boxed(a)}
            for s, a in enumerate(["204", "205", "204", "7"])
        ]
        # ... with the backend's finish_reason: two stopped, two cut off at the token limit (no answer, whatever the box)
        + [
            {"task": "aime24", "id": 61, "sample": s, "response": boxed("112"), "finish_reason": reason}
            for s, reason in enumerate(["stop", "length", "stop", "length"])
        ]
        # amc23 gold is the float 27.0; samples without 'sample' are numbered in file order; a right answer cut off
        # at the token limit is wrong
        + [{"task": "amc23", "id": 0, "response": boxed("27")}, {"task": "amc23", "id": 0, "response": boxed("27.5")}]
        + [{"task": "amc23", "id": 0, "response": boxed("27"), "finish_reason": "length"}]
        + [
            {"task": "math500", "id": "test/precalculus/807.json", "response": boxed("(3, \\frac{\\pi}{2})")},
            {"task": "math500", "id": "test/intermediate_algebra/1994.json", "response": boxed("q - p")},
        ]
        # olympiadbench 1664 needs both answers, in any order
        + [
            {"task": "olympiadbench", "id": 1664, "response": boxed("84, 69")},
            {"task": "olympiadbench", "id": 1664, "response": boxed("69")},
        ]
        + [
            {"task": "livecodebench", "id": "abc320_a", "response": LCB_STDIN_RIGHT},  # easy, stdin
            {"task": "livecodebench", "id": "abc320_a", "response": LCB_STDIN_WRONG},
            {"task": "livecodebench", "id": "2819", "response": LCB_FUNCTIONAL_RIGHT},  # easy, functional
            {"task": "livecodebench", "id": "2819", "response": LCB_FUNCTIONAL_RIGHT},
            {"task": "livecodebench", "id": "1883_B", "response": "I could not solve it."},  # medium, no code
            {"task": "livecodebench", "id": "1883_B", "response": LCB_STDIN_WRONG},
        ]
    )


def test_pass_at_k_matches_hand_computation():
    assert evaluate.pass_at_k(4, 2, 1) == pytest.approx(0.5)
    assert evaluate.pass_at_k(4, 2, 2) == pytest.approx(1 - 1 / 6)  # 1 - C(2,2)/C(4,2)
    assert evaluate.pass_at_k(10, 3, 5) == pytest.approx(1 - 21 / 252)  # 1 - C(7,5)/C(10,5)
    assert evaluate.pass_at_k(4, 0, 4) == 0.0 and evaluate.pass_at_k(4, 1, 4) == 1.0


def test_scoring_real_benchmark_records(tmp_path):
    responses = write_jsonl(tmp_path / "responses.jsonl", hand_written_responses())
    out = tmp_path / "out"
    tasks = "aime24,amc23,math500,olympiadbench,livecodebench"
    results = run(["--responses", str(responses), "--tasks", tasks, "--output-dir", str(out), "--workers", "2"])
    assert results == json.loads((out / "results.json").read_text())
    assert all(r["settings"] == {"responses": str(responses)} for r in results.values())
    aime = results["aime24"]
    assert (aime["problems"], aime["n"]) == (2, 4)
    assert aime["accuracy"] == pytest.approx(0.25)
    # problem 60: n=4, c=2 -> pass@2 = 1 - C(2,2)/C(4,2) = 5/6, pass@3 = 1 (only 2 wrong samples); problem 61: all 0
    assert aime["pass@k"] == pytest.approx({"1": 0.25, "2": (5 / 6 + 0) / 2, "3": 0.5, "4": 0.5})
    # shares over samples: 2 of 8 have no answer; 2 of the 4 whose finish_reason is known were cut off
    assert (aime["no_answer"], aime["cut_off"]) == (0.25, 0.5)
    amc = results["amc23"]
    assert (amc["n"], amc["accuracy"], amc["no_answer"], amc["cut_off"]) == pytest.approx((3, 1 / 3, 1 / 3, 1.0))
    assert amc["pass@k"] == pytest.approx({"1": 1 / 3, "2": 2 / 3, "3": 1.0})
    math500 = {key: value for key, value in results["math500"].items() if key != "settings"}
    assert math500 == {"problems": 2, "n": 1, "accuracy": 0.5, "pass@k": {"1": 0.5}, "no_answer": 0.0, "cut_off": None}
    assert results["olympiadbench"]["accuracy"] == 0.5
    lcb = results["livecodebench"]
    assert (lcb["problems"], lcb["n"]) == (3, 2)
    assert lcb["accuracy"] == pytest.approx((0.5 + 1 + 0) / 3)
    assert lcb["pass@k"]["2"] == pytest.approx(2 / 3)
    assert lcb["difficulty"] == {"easy": {"problems": 2, "accuracy": 0.75}, "medium": {"problems": 1, "accuracy": 0.0}}
    assert lcb["difficulty_weighted_accuracy"] == pytest.approx(0.5)

    samples = {(r["task"], r["id"], r["sample"]): r for r in read_jsonl(out / "samples.jsonl")}
    assert len(samples) == len(hand_written_responses())
    assert samples[("aime24", "60", 1)]["extracted"] == "205" and samples[("aime24", "60", 1)]["correct"] is False
    assert [samples[("aime24", "61", s)]["finish_reason"] for s in range(4)] == ["stop", "length", "stop", "length"]
    assert samples[("aime24", "61", 1)]["extracted"] is None and samples[("aime24", "60", 0)]["finish_reason"] is None
    assert samples[("amc23", "0", 2)]["extracted"] is None and samples[("amc23", "0", 2)]["correct"] is False
    assert samples[("amc23", "0", 0)]["correct"] is True and samples[("amc23", "0", 1)]["sample"] == 1
    assert samples[("livecodebench", "abc320_a", 0)]["verdicts"] == ["ok", "ok", "ok"]
    assert samples[("livecodebench", "abc320_a", 1)]["verdicts"][0] == "wrong_answer"
    assert samples[("livecodebench", "1883_B", 0)]["extracted"] is None
    fields = {"task", "id", "sample", "prompt", "response", "extracted", "correct", "tokens", "finish_reason"}
    assert set(samples[("math500", "test/precalculus/807.json", 0)]) >= fields


def test_results_table_shows_powers_of_two_n_and_difficulty_levels():
    easy_medium = {"easy": {"problems": 2, "accuracy": 0.75}, "medium": {"problems": 1, "accuracy": 0.0}}
    results = {
        "aime24": {"problems": 2, "n": 4, "accuracy": 0.25, "pass@k": {"1": 0.25, "2": 5 / 12, "3": 0.5, "4": 0.5}}
        | {"no_answer": 0.125, "cut_off": 0.0625},
        "livecodebench": {"problems": 3, "n": 2, "accuracy": 0.5, "pass@k": {"1": 0.5, "2": 2 / 3}}
        | {"difficulty": easy_medium, "difficulty_weighted_accuracy": 0.5, "no_answer": 1 / 3, "cut_off": None},
    }
    assert evaluate.results_table(results).splitlines() == [
        "task                problems  n  accuracy  no_answer  cut_off  pass@2  pass@4",
        "aime24                     2  4      25.0       12.5      6.2    41.7    50.0",
        "livecodebench              3  2      50.0       33.3             66.7",
        "  easy                     2         75.0",
        "  medium                   1          0.0",
        "  easy+medium+hard         3         50.0",
    ]


def test_builtin_tasks_ids_and_prompts():
    """Built-in records load with stable ids, and into the shape markup.eval_messages prompts from."""
    sizes = {"aime24": 30, "amc23": 40, "math500": 500, "olympiadbench": 675, "livecodebench": 879}
    tasks = {name: evaluate.load_task(name)[1] for name in sizes}
    assert {name: len(ps) for name, ps in tasks.items()} == sizes  # load_task also rejects duplicate ids
    lcb = tasks["livecodebench"]
    hashed = [p["id"] for p in lcb if p["id"].startswith("sha1-")]  # the 200 problems without a question_id
    assert len(hashed) == 200 and hashed == [
        p["id"] for p in evaluate.load_task("livecodebench")[1] if p["id"].startswith("sha1-")
    ]
    assert sum(p["difficulty"] is not None for p in lcb) == 400

    math_messages = eval_messages(tasks["aime24"][0], "sky-t1")
    assert math_messages == [
        {"role": "system", "content": SKY_T1_SYSTEM_PROMPT},
        {"role": "user", "content": "Return your final response within \\boxed{}. " + tasks["aime24"][0]["problem"]},
    ]
    assert eval_messages(tasks["math500"][0], "none") == [{"role": "user", "content": tasks["math500"][0]["problem"]}]
    assert "reason step by step" in eval_messages(tasks["math500"][0], "step-by-step")[0]["content"]
    functional = next(p for p in lcb if p["id"] == "2819")
    user = eval_messages(functional, "sky-t1")[1]["content"]
    assert user.startswith(FUNCTIONAL_INSTRUCTION) and functional["starter_code"] in user and "```python" in user
    stdin_user = eval_messages(next(p for p in lcb if p["id"] == "abc320_a"), "sky-t1")[1]["content"]
    assert stdin_user.startswith(STDIN_INSTRUCTION)


def test_hf_backend_end_to_end_and_resume(tiny_model_dir, tmp_path, monkeypatch):
    task = write_jsonl(
        tmp_path / "arith.jsonl",
        [{"id": f"q{i}", "problem": f"What is {i} + {i}?", "answer": str(2 * i)} for i in range(3)],
    )
    out = tmp_path / "out"
    args = ["--model", str(tiny_model_dir), "--backend", "hf", "--tasks", str(task), "--limit", "2", "--n", "2"]
    args += [
        "--temperature",
        "0.7",
        "--max-tokens",
        "6",
        "--batch-size",
        "3",
        "--output-dir",
        str(out),
        "--workers",
        "1",
    ]
    results = run(args)
    samples = read_jsonl(out / "samples.jsonl")
    assert sorted((s["id"], s["sample"]) for s in samples) == [("q0", 0), ("q0", 1), ("q1", 0), ("q1", 1)]
    for s in samples:
        assert s["task"] == "arith" and s["prompt"].startswith("<|im_start|>system\n" + SKY_T1_SYSTEM_PROMPT[:40])
        assert (
            s["prompt"].endswith("<|im_start|>assistant\n") and isinstance(s["response"], str) and 1 <= s["tokens"] <= 6
        )
        assert s["correct"] is False  # a random model does not add
        assert s["finish_reason"] == "stop" or (s["finish_reason"] == "length" and s["tokens"] == 6)
    cut = [s["finish_reason"] == "length" for s in samples]
    assert results["arith"]["cut_off"] == sum(cut) / 4 and results["arith"]["no_answer"] >= sum(cut) / 4
    assert {key: results["arith"][key] for key in ("problems", "n", "accuracy", "pass@k")} == {
        "problems": 2,
        "n": 2,
        "accuracy": 0.0,
        "pass@k": {"1": 0.0, "2": 0.0},
    }
    settings = results["arith"]["settings"]
    assert settings["backend"] == "hf" and settings["prompt_style"] == "sky-t1" and settings["temperature"] == 0.7
    assert (settings["top_k"], settings["repetition_penalty"], settings["chat_template"]) == (-1, 1.0, "model")
    assert json.loads((out / "config.json").read_text())["temperature"] == 0.7

    real_backend = evaluate.hf_backend
    generated = []

    def counting_backend(cfg, jobs):
        generated.extend((j["id"], j["sample"]) for j in jobs)
        return real_backend(cfg, jobs)

    monkeypatch.setattr(evaluate, "hf_backend", counting_backend)
    run(args)  # everything is done: nothing is generated or appended
    assert generated == [] and len(read_jsonl(out / "samples.jsonl")) == 4

    # A kill while scoring: the generation survives, so the rerun only scores it again.
    lines = (out / "samples.jsonl").read_text().splitlines(keepends=True)
    (out / "samples.jsonl").write_text("".join(lines[:3]))
    run(args)
    assert generated == [] and len(read_jsonl(out / "samples.jsonl")) == 4

    # A kill mid-write while generating: the cut line is dropped and only the lost sample is generated again.
    lost = read_jsonl(out / "generations.jsonl")[-1]
    keep = [s for s in read_jsonl(out / "samples.jsonl") if (s["id"], s["sample"]) != (lost["id"], lost["sample"])]
    write_jsonl(out / "samples.jsonl", keep)
    text = (out / "generations.jsonl").read_text()
    (out / "generations.jsonl").write_text(text[: text.rstrip("\n").rfind("\n") + 1] + '{"task": "arith", "id": "q')
    run(args)
    assert generated == [(lost["id"], lost["sample"])]
    assert len(read_jsonl(out / "samples.jsonl")) == 4 and len(read_jsonl(out / "generations.jsonl")) == 4

    with pytest.raises(SystemExit, match=r"config.json: .*temperature 0.7 -> 0.5.*another --output-dir"):
        run([*args[:-4], "--temperature", "0.5", "--output-dir", str(out)])
    with pytest.raises(SystemExit, match=r"config.json: .*backend 'hf' -> 'openai'"):
        run([*args, "--backend", "openai"])  # the last --backend wins


def test_hf_chunks_resume_after_a_kill_with_the_same_samples(tiny_model_dir, tmp_path, monkeypatch, one_torch_thread):
    """The chunk loop every backend runs in, through the hf backend: a kill in the second chunk keeps the first, the
    rerun generates only the rest, and per-sample seeds make it draw what a straight run draws, in any batching."""
    task = write_jsonl(
        tmp_path / "arith.jsonl", [{"id": f"q{i}", "problem": f"{i} + {i}?", "answer": "0"} for i in range(3)]
    )
    args = ["--model", str(tiny_model_dir), "--backend", "hf", "--tasks", str(task), "--n", "2", "--max-tokens", "5"]
    args += ["--temperature", "1.0", "--top-p", "0.9", "--workers", "1"]
    run([*args, "--batch-size", "6", "--output-dir", str(tmp_path / "straight")])
    straight = {(s["id"], s["sample"]): s["response"] for s in read_jsonl(tmp_path / "straight" / "samples.jsonl")}
    assert len(set(straight.values())) > 3  # sampled, one seed per sample

    real_backend, chunks, killed = evaluate.hf_backend, [], []

    def killed_in_second_chunk(cfg, jobs):
        chunk_size, generate_chunk = real_backend(cfg, jobs)

        def generate(chunk):
            chunks.append([(job["id"], job["sample"]) for job in chunk])
            if len(chunks) == 2 and not killed:
                killed.append(chunk)
                raise RuntimeError("killed")
            return generate_chunk(chunk)

        return chunk_size, generate

    monkeypatch.setattr(evaluate, "hf_backend", killed_in_second_chunk)
    out = tmp_path / "killed"
    with pytest.raises(RuntimeError, match="killed"):
        run([*args, "--batch-size", "2", "--output-dir", str(out)])
    order = [(f"q{i}", s) for i in range(3) for s in range(2)]  # jobs: problems in file order, then samples
    assert chunks == [order[:2], order[2:4]]
    assert [(g["id"], g["sample"]) for g in read_jsonl(out / "generations.jsonl")] == order[:2]  # nothing of chunk 2
    chunks.clear()
    run([*args, "--batch-size", "3", "--output-dir", str(out)])  # resumed in other batches
    assert chunks == [order[2:5], order[5:]]
    resumed = {(s["id"], s["sample"]): s["response"] for s in read_jsonl(out / "samples.jsonl")}
    assert resumed == straight


def test_hf_backend_applies_lora_adapter_without_merging(tiny_model_dir, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    # Random (not zero) LoRA weights, scaled up, so the adapter visibly changes greedy output.
    lora = LoraConfig(r=8, lora_alpha=256, target_modules=["q_proj", "v_proj", "o_proj"], init_lora_weights=False)
    get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir), lora).save_pretrained(tmp_path / "adapter")
    task = write_jsonl(tmp_path / "one.jsonl", [{"id": 1, "problem": "What is 1 + 1?", "answer": "2"}])
    responses = {}
    for name, extra in [("base", []), ("adapter", ["--adapter", str(tmp_path / "adapter")])]:
        args = ["--model", str(tiny_model_dir), "--backend", "hf", "--tasks", str(task), "--max-tokens", "8"]
        run([*args, "--output-dir", str(tmp_path / name), "--workers", "1", *extra])
        responses[name] = read_jsonl(tmp_path / name / "samples.jsonl")[0]["response"]
    assert responses["base"] != responses["adapter"]


class FakeChatServer(BaseHTTPRequestHandler):
    """Answers chat completions like a model that adds and codes well; the very first request fails with a 500."""

    requests: list = []

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        FakeChatServer.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
        if len(FakeChatServer.requests) == 1:
            self.send_error(500, "transient")
            return
        user = body["messages"][-1]["content"]
        content = "```python\nprint(int(input()) * 2)\n```" if "stdin" in user else "2 + 3 = 5, so \\boxed{5}"
        reply = json.dumps(
            {"choices": [{"message": {"role": "assistant", "content": content}}], "usage": {"completion_tokens": 9}}
        )
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(reply.encode())

    def log_message(self, *args):
        pass


def test_openai_backend_with_retry(tmp_path, monkeypatch):
    math_task = write_jsonl(
        tmp_path / "add.jsonl",
        [{"id": 1, "problem": "What is 2 + 3?", "answer": 5}, {"id": 2, "problem": "What is 2 + 4?", "answer": "6"}],
    )
    tests = [{"input": "4\n", "output": "8\n", "testtype": "stdin"}]
    code_task = write_jsonl(tmp_path / "double.jsonl", [{"id": "d", "problem": "Read n, print 2n.", "tests": tests}])
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeChatServer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    FakeChatServer.requests = []
    out = tmp_path / "out"
    args = ["--model", "served-model", "--backend", "openai", "--base-url", f"http://127.0.0.1:{server.server_port}/v1"]
    args += ["--tasks", f"{math_task},{code_task}", "--n", "2", "--temperature", "0.6", "--concurrency", "3"]
    try:
        results = run([*args, "--output-dir", str(out), "--workers", "2"])
    finally:
        server.shutdown()
    assert len(FakeChatServer.requests) == 3 * 2 + 1  # six samples plus the retried 500
    first = FakeChatServer.requests[0]
    assert first["path"] == "/v1/chat/completions" and first["auth"] == "Bearer sk-test"
    assert (
        first["body"]["model"] == "served-model"
        and first["body"]["temperature"] == 0.6
        and first["body"]["max_tokens"] == 32768
    )
    assert len({r["body"]["seed"] for r in FakeChatServer.requests[1:]}) == 6  # one seed per sample
    users = [r["body"]["messages"][-1]["content"] for r in FakeChatServer.requests]
    assert sum(u.startswith(STDIN_INSTRUCTION) for u in users[1:]) == 2  # the code task, prompted by markup
    assert results["add"]["accuracy"] == 0.5 and results["add"]["pass@k"]["2"] == 0.5
    assert results["double"]["accuracy"] == 1.0
    samples = read_jsonl(out / "samples.jsonl")
    assert all(s["tokens"] == 9 for s in samples) and samples[0]["prompt"][0]["role"] == "system"
    assert "sk-test" not in (out / "config.json").read_text()


class RefusingChatServer(BaseHTTPRequestHandler):
    """Refuses every request with a 401, which is not worth retrying."""

    requests = 0

    def do_POST(self):
        RefusingChatServer.requests += 1
        self.send_error(401, "bad key")

    def log_message(self, *args):
        pass


def test_openai_backend_refusal_is_one_line(tmp_path):
    task = write_jsonl(tmp_path / "add.jsonl", [{"id": 1, "problem": "What is 2 + 3?", "answer": 5}])
    server = ThreadingHTTPServer(("127.0.0.1", 0), RefusingChatServer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    RefusingChatServer.requests = 0
    url = f"http://127.0.0.1:{server.server_port}/v1"
    try:
        with pytest.raises(SystemExit, match=re.escape(f"{url}/chat/completions: HTTP 401")) as exit_info:
            run(
                ["--model", "m", "--backend", "openai", "--base-url", url, "--tasks", str(task)]
                + ["--output-dir", str(tmp_path / "out"), "--workers", "1"]
            )
    finally:
        server.shutdown()
    assert RefusingChatServer.requests == 1 and "\n" not in str(exit_info.value.code)


@pytest.mark.parametrize(
    "lines, tasks, message",
    [
        (
            [
                {"task": "math500", "id": "test/precalculus/807.json", "response": "x"},
                {"task": "math500", "response": "x"},
            ],
            "math500",
            "responses.jsonl:2: field 'id' missing",
        ),
        ([{"task": "gsm8k", "id": 1, "response": "x"}], "math500", "responses.jsonl:1: unknown task 'gsm8k'"),
        ([{"task": "aime24", "id": 1, "response": "x"}], "aime24", "responses.jsonl:1: id '1' not in task 'aime24'"),
        (
            [{"task": "aime24", "id": 60, "response": 204}],
            "aime24",
            "responses.jsonl:1: field 'response' must be a string",
        ),
        (
            [
                {"task": "aime24", "id": 60, "response": "a", "sample": 0},
                {"task": "aime24", "id": 60, "response": "b", "sample": 0},
            ],
            "aime24",
            "responses.jsonl:2: duplicate sample 0",
        ),
        (['{"task": "aime24", "id": 60,'], "aime24", "responses.jsonl:1: invalid JSON"),
        ([{"task": "aime24", "id": 60, "response": "x"}], "aime24,amc23", "no responses for task 'amc23'"),
        ([{"task": "aime24", "id": 60, "response": "x"}], "gsm8k", "--tasks: unknown task 'gsm8k'"),
    ],
)
def test_bad_responses_are_named_by_file_line_and_field(tmp_path, lines, tasks, message):
    responses = write_jsonl(tmp_path / "responses.jsonl", lines)
    with pytest.raises(SystemExit, match=re.escape(message)):
        run(["--responses", str(responses), "--tasks", tasks, "--output-dir", str(tmp_path / "out")])


@pytest.mark.parametrize(
    "record, message",
    [
        ({"problem": "p", "answer": "1"}, "task.jsonl:2: field 'id' missing"),
        ({"id": 2, "answer": "1"}, "task.jsonl:2: field 'problem' missing"),
        ({"id": 2, "problem": "p"}, "task.jsonl:2: field 'answer' \\(maths\\) or 'tests' \\(code\\) missing"),
        (
            {"id": 2, "problem": "p", "tests": [{"input": "1", "output": "1", "testtype": "cli"}]},
            "task.jsonl:2: field 'tests\\[0\\].testtype'",
        ),
        ({"id": 1, "problem": "p", "answer": "1"}, "task.jsonl:2: duplicate id '1'"),
    ],
)
def test_bad_task_files_are_named_by_file_line_and_field(tmp_path, record, message):
    task = write_jsonl(tmp_path / "task.jsonl", [{"id": 1, "problem": "p", "answer": "1"}, record])
    with pytest.raises(SystemExit, match=message):
        run(["--model", "m", "--backend", "hf", "--tasks", str(task), "--output-dir", str(tmp_path / "out")])


def test_missing_vllm_is_one_clear_line():
    if evaluate.importlib.util.find_spec("vllm") is not None:
        pytest.skip("vllm is installed here")
    with pytest.raises(SystemExit, match=r"pip install -r requirements-gpu.txt"):
        evaluate.parse_args(["--model", "m", "--tasks", "aime24"])


def test_resumable_reader_drops_a_cut_last_line(tmp_path):
    path = tmp_path / "samples.jsonl"
    path.write_text('{"a": 1}\n{"a": 2}\n{"a": ')
    assert evaluate.read_resumable(path) == [{"a": 1}, {"a": 2}]
    assert path.read_text() == '{"a": 1}\n{"a": 2}\n'
    path.write_text('{"a": 1}\n{"a": 2}')  # whole record, only the newline lost
    assert evaluate.read_resumable(path) == [{"a": 1}, {"a": 2}] and path.read_text().endswith("}\n")
    path.write_text('{"a": 1}\nnot json\n{"a": 3}\n')
    with pytest.raises(SystemExit, match="samples.jsonl:2: invalid JSON"):
        evaluate.read_resumable(path)


def test_cli_scores_responses_file(tmp_path):
    response = "\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}"
    responses = write_jsonl(
        tmp_path / "gen.jsonl", [{"task": "math500", "id": "test/precalculus/807.json", "response": response}]
    )
    args = ["--responses", str(responses), "--tasks", "math500", "--limit", "5"]
    proc = run_cli([*args, "--output-dir", str(tmp_path / "out"), "--workers", "1"])
    assert proc.returncode == 0, proc.stderr
    row = next(line for line in proc.stdout.splitlines() if line.startswith("math500"))
    assert row.split() == ["math500", "1", "1", "100.0", "0.0"]  # no answer missing; nothing known to be cut off
    assert json.loads((tmp_path / "out" / "results.json").read_text())["math500"]["accuracy"] == 1.0


@pytest.mark.parametrize("flag", ["--responses", "--tasks"])
def test_cli_names_the_line_of_non_utf8_input(tmp_path, flag):
    """A Latin-1 export: the run ends with one line naming file and line, not a traceback."""
    if flag == "--responses":
        first = {"task": "math500", "id": "test/precalculus/807.json", "response": "\\boxed{1}"}
        second = {"task": "math500", "id": "test/intermediate_algebra/1994.json", "response": "caf\u00e9"}
        args = ["--responses", str(tmp_path / "bad.jsonl"), "--tasks", "math500"]
    else:
        first, second = {"id": 1, "problem": "p", "answer": "1"}, {"id": 2, "problem": "caf\u00e9", "answer": "2"}
        args = ["--model", "m", "--backend", "hf", "--tasks", str(tmp_path / "bad.jsonl")]
    text = json.dumps(first) + "\n" + json.dumps(second, ensure_ascii=False) + "\n"
    (tmp_path / "bad.jsonl").write_bytes(text.encode("latin-1"))
    proc = run_cli([*args, "--output-dir", str(tmp_path / "out"), "--workers", "1"])
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(f"{tmp_path / 'bad.jsonl'}:2: not UTF-8 text")
