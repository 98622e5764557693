"""evaluate.py: scoring of real benchmark records, pass@k, the hf and openai backends, resume, bad inputs, the CLI."""

import importlib.machinery
import json
import re
import shutil
import subprocess
import sys
import threading
import types
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import evaluate
import generation
import openai_client
import task_results
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


AIME60 = {"task": "aime24", "id": 60}  # a real problem of a built-in task


def boxed(answer: str) -> str:
    return f"Some reasoning first.\n\\boxed{{{answer}}}"


def hand_written_responses() -> list[dict]:
    return (
        # aime24: problem 60 (gold 204) right in 2 of 4 samples, problem 61 (gold 113) never
        [AIME60 | {"sample": s, "response": boxed(a)} for s, a in enumerate(["204", "205", "204", "7"])]
        # ... with the backend's finish_reason: two stopped, two cut off at the token limit (no answer, whatever boxed)
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
    assert task_results.pass_at_k(4, 2, 1) == pytest.approx(0.5)
    assert task_results.pass_at_k(4, 2, 2) == pytest.approx(1 - 1 / 6)  # 1 - C(2,2)/C(4,2)
    assert task_results.pass_at_k(10, 3, 5) == pytest.approx(1 - 21 / 252)  # 1 - C(7,5)/C(10,5)
    assert task_results.pass_at_k(4, 0, 4) == 0.0 and task_results.pass_at_k(4, 1, 4) == 1.0


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
    assert math500 == {
        "problems": 2,
        "n": 1,
        "accuracy": 0.5,
        "pass@k": {"1": 0.5},
        "no_answer": 0.0,
        "cut_off": None,
    } | {"grader_errors": 0}
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


def test_a_sample_the_grader_fails_on_is_recorded_and_kept_until_regraded(tmp_path, monkeypatch, capsys):
    """An exception from the grader is that sample's grader_error (one line; the sample is wrong; counted in
    results.json and under the table) and scoring goes on; a rerun keeps it, --regrade-errors scores it again. With
    the response that used to stop scoring (decimal.InvalidOperation, issue 26) and a lone surrogate, which JSON allows
    and which used to stop the writing of samples.jsonl."""
    monkeypatch.chdir(tmp_path)
    write_jsonl(
        tmp_path / "decimals.jsonl", [{"id": i, "problem": "?", "answer": a} for i, a in enumerate(["1.25", "7", "2"])]
    )
    lines = [
        {"task": "decimals", "id": 0, "response": boxed("123456789012345678901234567890123")},
        {"task": "decimals", "id": 1, "response": boxed("7") + " \ud800"},
        {"task": "decimals", "id": 2, "response": boxed("2") + " FAILS"},
    ]
    responses = write_jsonl(tmp_path / "responses.jsonl", lines)
    args = ["--responses", str(responses), "--tasks", "decimals.jsonl", "--output-dir", "out", "--workers", "1"]
    real_grade, graded = evaluate.grading.grade_math, []

    def failing_grade(response, *rest, **options):
        graded.append(response)
        if "FAILS" in response:
            raise ValueError("a bug\nin the grader")
        return real_grade(response, *rest, **options)

    monkeypatch.setattr(
        evaluate, "ProcessPoolExecutor", lambda workers, **_: ThreadPoolExecutor(workers)
    )  # sees patches
    monkeypatch.setattr(evaluate.grading, "grade_math", failing_grade)
    results = run(args)
    assert results == json.loads((tmp_path / "out" / "results.json").read_text())
    assert (results["decimals"]["accuracy"], results["decimals"]["grader_errors"]) == (pytest.approx(1 / 3), 1)
    assert results["decimals"]["no_answer"] == 0.0  # a failed sample's extraction is unknown
    samples = {r["id"]: r for r in read_jsonl(tmp_path / "out" / "samples.jsonl")}
    assert (
        samples["2"] | {"grader_error": "ValueError: a bug in the grader", "correct": False, "extracted": None}
        == samples["2"]
    )
    assert "grader_error" not in samples["0"] and samples["0"]["correct"] is False  # the former crash: just wrong
    assert samples["1"]["correct"] is True and samples["1"]["response"] == lines[1]["response"]
    out, err = capsys.readouterr()
    assert out.splitlines()[2].startswith("grader errors (counted as wrong; field grader_error of samples.jsonl;")
    assert out.splitlines()[2].endswith("--regrade-errors retries them): decimals 1")
    assert "grader error, counted as wrong: decimals id 2 sample 0: ValueError: a bug in the grader" in err

    graded.clear()  # a rerun keeps the failed sample as it is
    assert run(args)["decimals"]["grader_errors"] == 1 and graded == []
    monkeypatch.setattr(evaluate.grading, "grade_math", real_grade)
    results = run([*args, "--regrade-errors"])
    assert (results["decimals"]["accuracy"], results["decimals"]["grader_errors"]) == (pytest.approx(2 / 3), 0)
    rescored = read_jsonl(tmp_path / "out" / "samples.jsonl")  # one line per sample: the failed one replaced
    assert sorted(r["id"] for r in rescored) == ["0", "1", "2"] and all("grader_error" not in r for r in rescored)


def test_results_table_shows_powers_of_two_n_and_difficulty_levels():
    easy_medium = {"easy": {"problems": 2, "accuracy": 0.75}, "medium": {"problems": 1, "accuracy": 0.0}}
    results = {
        "aime24": {"problems": 2, "n": 4, "accuracy": 0.25, "pass@k": {"1": 0.25, "2": 5 / 12, "3": 0.5, "4": 0.5}}
        | {"no_answer": 0.125, "cut_off": 0.0625},
        "livecodebench": {"problems": 3, "n": 2, "accuracy": 0.5, "pass@k": {"1": 0.5, "2": 2 / 3}}
        | {"difficulty": easy_medium, "difficulty_weighted_accuracy": 0.5, "no_answer": 1 / 3, "cut_off": None},
    }
    assert task_results.results_table(results).splitlines() == [
        "task                problems  n  accuracy  no_answer  cut_off  pass@2  pass@4",
        "aime24                     2  4      25.0       12.5      6.2    41.7    50.0",
        "livecodebench              3  2      50.0       33.3             66.7",
        "  easy                     2         75.0",
        "  medium                   1          0.0",
        "  easy+medium+hard         3         50.0",
    ]


def test_avg_at_n_gives_the_spread_over_samples():
    """Sample index i of every problem is one run of the benchmark: avg@n is the mean of the n runs' accuracies and
    its standard error that of a mean of n runs; problems keep their pass@k."""
    problems = [{"id": str(i)} for i in range(4)]
    correct = {"0": [1, 1, 1, 0], "1": [0, 1, 0, 0], "2": [1, 1, 1, 1], "3": [0, 0, 0, 0]}
    samples = {
        pid: [{"sample": i, "correct": bool(c), "extracted": "x"} for i, c in enumerate(cs)]
        for pid, cs in correct.items()
    }
    summary = task_results.summarise(problems, samples)
    assert summary["accuracy_by_sample"] == [0.5, 0.75, 0.5, 0.25]
    assert summary["avg@n"] == summary["accuracy"] == 0.5
    # runs 0.5, 0.75, 0.5, 0.25: sample standard deviation sqrt(1/24), over sqrt(4)
    assert summary["avg@n_stderr"] == pytest.approx((1 / 24) ** 0.5 / 2)
    table = task_results.results_table({"t": summary}).splitlines()
    assert table[0].split()[:7] == ["task", "problems", "n", "accuracy", "avg@n", "±", "se"]
    assert "50.0 ± 10.2" in table[1]
    one = task_results.summarise(problems, {pid: s[:1] for pid, s in samples.items()})
    assert "avg@n" not in one and "avg@n" not in task_results.results_table({"t": one})
    # Index i is the `sample` field, not the position (--responses in any order); with uneven counts avg@n takes
    # each problem's n lowest indices, accuracy every sample.
    uneven = {pid: list(reversed(s)) for pid, s in samples.items()} | {"3": samples["3"][:2]}
    summary = task_results.summarise(problems, uneven)
    assert summary["n"] == 2 and summary["accuracy_by_sample"] == [0.5, 0.75]
    assert summary["accuracy"] == pytest.approx((0.75 + 0.25 + 1 + 0) / 4)


def test_responses_in_any_line_order_give_the_same_results(tmp_path):
    """Scoring keys every sample by (task, id, sample): replicas' completion order changes no number."""
    task = write_jsonl(tmp_path / "add.jsonl", [{"id": i, "problem": f"{i} + 0?", "answer": str(i)} for i in range(3)])
    records = [
        {"task": "add", "id": i, "sample": s, "response": f"\\boxed{{{i if s <= i else -1}}}"}
        for i in range(3)
        for s in range(3)
    ]
    results = []
    for name, order in (("sorted", records), ("reversed", records[::-1])):
        path = write_jsonl(tmp_path / f"{name}.jsonl", order)
        out = tmp_path / name
        results.append(
            run(["--responses", str(path), "--tasks", str(task), "--output-dir", str(out), "--workers", "1"])
        )
    for r in results:
        r["add"].pop("settings")
    assert results[0] == results[1] and results[0]["add"]["accuracy_by_sample"] == [1, 2 / 3, 1 / 3]


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
    problems = [{"id": f"q{i}", "problem": f"What is {i} + {i}?", "answer": str(2 * i)} for i in range(3)]
    task, out = write_jsonl(tmp_path / "arith.jsonl", problems), tmp_path / "out"
    args = f"--model {tiny_model_dir} --backend hf --tasks {task} --limit 2 --n 2 --temperature 0.7".split()
    args += f"--max-tokens 6 --batch-size 3 --output-dir {out} --workers 1".split()
    results = run(args)
    samples = read_jsonl(out / "samples.jsonl")
    assert sorted((s["id"], s["sample"]) for s in samples) == [("q0", 0), ("q0", 1), ("q1", 0), ("q1", 1)]
    for s in samples:
        assert s["task"] == "arith" and s["prompt"].startswith("<|im_start|>system\n" + SKY_T1_SYSTEM_PROMPT[:40])
        assert s["prompt"].endswith("<|im_start|>assistant\n") and isinstance(s["response"], str)
        assert s["correct"] is False  # a random model does not add
        assert s["finish_reason"] == "stop" or (s["finish_reason"] == "length" and s["tokens"] == 6)
    cut = [s["finish_reason"] == "length" for s in samples]
    assert any(cut)  # a random model rarely draws <|im_end|> in 6 tokens
    assert results["arith"]["cut_off"] == sum(cut) / 4 and results["arith"]["no_answer"] >= sum(cut) / 4
    summary = [results["arith"][key] for key in ("problems", "n", "accuracy", "pass@k")]
    assert summary == [2, 2, 0.0, {"1": 0.0, "2": 0.0}]
    settings = results["arith"]["settings"]
    assert settings["backend"] == "hf" and settings["prompt_style"] == "sky-t1" and settings["temperature"] == 0.7
    assert (settings["top_k"], settings["repetition_penalty"], settings["chat_template"]) == (-1, 1.0, "model")
    assert json.loads((out / "config.json").read_text())["temperature"] == 0.7

    real_backend = generation.hf_backend
    generated = []

    def counting_backend(cfg, jobs):
        chunk_size, generate_chunk = real_backend(cfg, jobs)

        def generate(chunk):
            generated.extend((j["id"], j["sample"]) for j in chunk)
            return generate_chunk(chunk)

        return chunk_size, generate

    monkeypatch.setattr(generation, "hf_backend", counting_backend)
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
    task = write_jsonl(tmp_path / "arith.jsonl", [{"id": f"q{i}", "problem": f"{i}?", "answer": "0"} for i in range(3)])
    args = f"--model {tiny_model_dir} --backend hf --tasks {task} --n 2 --max-tokens 5 --temperature 1.0".split()
    args += ["--top-p", "0.9", "--workers", "1"]
    run([*args, "--batch-size", "6", "--output-dir", str(tmp_path / "straight")])
    straight = {(s["id"], s["sample"]): s["response"] for s in read_jsonl(tmp_path / "straight" / "samples.jsonl")}
    assert len(set(straight.values())) > 3  # sampled, one seed per sample

    real_backend, chunks, killed = generation.hf_backend, [], []

    def killed_in_second_chunk(cfg, jobs):
        chunk_size, generate_chunk = real_backend(cfg, jobs)

        def generate(chunk):
            chunks.append([(job["id"], job["sample"]) for job in chunk])
            if len(chunks) == 2 and not killed:
                killed.append(chunk)
                raise RuntimeError("killed")
            return generate_chunk(chunk)

        return chunk_size, generate

    monkeypatch.setattr(generation, "hf_backend", killed_in_second_chunk)
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


def test_per_sample_sampler_draws_by_seed_within_top_p():
    scores = torch.log(torch.tensor([[0.5, 0.3, 0.2]] * 2))
    draw = generation.per_sample_sampler([7, 7], temperature=1.0, top_p=0.6, device="cpu")  # two rows, one seed
    picks = []
    for _ in range(400):
        out = draw(None, scores)
        assert (out == 0).sum(-1).tolist() == [1, 1] and torch.isinf(out).sum().item() == 4  # one token per row
        picks.append(out.argmax(-1).tolist())
    assert all(a == b for a, b in picks)  # the same seed draws the same, whatever the row
    firsts = [a for a, _ in picks]
    assert set(firsts) == {0, 1} and 0.55 < firsts.count(0) / 400 < 0.70  # 0.2 is outside top_p; 0.5 / 0.8 = 0.625
    other = generation.per_sample_sampler([8], temperature=1.0, top_p=0.6, device="cpu")
    assert [other(None, scores[:1]).argmax().item() for _ in range(50)] != firsts[:50]


class FakeLLM:
    """vllm.LLM as evaluate.py uses it: records each generate call; answers \\boxed{seed % 5}, cut off at the token
    limit for odd seeds."""

    calls: list = []
    kill_at = None

    def __init__(self, **engine):
        FakeLLM.engine = engine

    def generate(self, prompts, params, lora_request=None):
        FakeLLM.calls.append((prompts, params))
        if len(FakeLLM.calls) == FakeLLM.kill_at:
            raise RuntimeError("killed")
        samples = [{"text": f"\\boxed{{{p.seed % 5}}}", "token_ids": [1] * 3} for p in params]
        reasons = ["length" if p.seed % 2 else "stop" for p in params]
        return [SimpleNamespace(outputs=[SimpleNamespace(**s, finish_reason=r)]) for s, r in zip(samples, reasons)]


def test_vllm_backend_generates_in_chunks_with_explicit_sampling(tiny_model_dir, tmp_path, monkeypatch):
    module = types.ModuleType("vllm")
    module.__spec__ = importlib.machinery.ModuleSpec("vllm", None)  # find_spec finds it
    module.LLM, module.SamplingParams = FakeLLM, SimpleNamespace
    monkeypatch.setitem(sys.modules, "vllm", module)
    FakeLLM.calls, FakeLLM.kill_at = [], 2
    task = write_jsonl(tmp_path / "five.jsonl", [{"id": i, "problem": f"{i}?", "answer": str(i)} for i in range(5)])
    out = tmp_path / "out"
    args = f"--model {tiny_model_dir} --tasks {task} --chunk-size 2 --max-tokens 64 --temperature 0.6".split()
    args += f"--top-p 0.95 --output-dir {out} --workers 1".split()
    with pytest.raises(RuntimeError, match="killed"):
        run(args)  # the default backend, vllm
    assert [len(prompts) for prompts, _ in FakeLLM.calls] == [2, 2]
    assert len(read_jsonl(out / "generations.jsonl")) == 2  # the first chunk survives the kill
    FakeLLM.calls, FakeLLM.kill_at = [], None
    results = run(args)
    assert [len(prompts) for prompts, _ in FakeLLM.calls] == [2, 1]  # only what the kill lost
    assert FakeLLM.engine["max_model_len"] > 64 and FakeLLM.engine["seed"] == 0
    prompts, (p, *_) = FakeLLM.calls[0]
    assert set(prompts[0]) == {"prompt_token_ids"}
    assert (p.temperature, p.top_p, p.top_k, p.repetition_penalty, p.max_tokens) == (0.6, 0.95, -1, 1.0, 64)
    assert p.seed == evaluate.sample_seed(0, "five", "2", 0) and p.stop_token_ids
    samples = read_jsonl(out / "samples.jsonl")
    assert sorted(s["id"] for s in samples) == ["0", "1", "2", "3", "4"]
    for s in samples:
        seed = evaluate.sample_seed(0, "five", s["id"], 0)
        assert s["finish_reason"] == ("length" if seed % 2 else "stop") and s["tokens"] == 3
        assert s["correct"] == (s["finish_reason"] == "stop" and int(s["id"]) == seed % 5)
        assert s["extracted"] is None or s["finish_reason"] == "stop"
    assert results["five"]["cut_off"] == sum(s["finish_reason"] == "length" for s in samples) / 5
    assert results["five"]["settings"]["backend"] == "vllm" and results["five"]["settings"]["top_k"] == -1


def test_hf_backend_applies_lora_adapter_and_ignores_the_checkpoints_generation_config(tiny_model_dir, tmp_path):
    """An adapter changes greedy output; a checkpoint's generation_config (Qwen2.5: repetition_penalty 1.05, top_k 20)
    does not: hf decodes with our settings only, as vllm and openai, which send top_k and repetition_penalty."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    task = write_jsonl(tmp_path / "one.jsonl", [{"id": 1, "problem": "What is 1 + 1?", "answer": "2"}])

    def greedy(model: Path, *extra: str) -> str:
        out = tmp_path / f"out-{model.name}-{len(extra)}"
        run([*f"--model {model} --backend hf --tasks {task} --max-tokens 8 --output-dir {out}".split(), *extra])
        return read_jsonl(out / "samples.jsonl")[0]["response"]

    response = greedy(tiny_model_dir)
    # Random (not zero) LoRA weights, scaled up, so the adapter visibly changes greedy output.
    lora = LoraConfig(r=8, lora_alpha=256, target_modules=["q_proj", "v_proj", "o_proj"], init_lora_weights=False)
    get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir), lora).save_pretrained(tmp_path / "adapter")
    assert greedy(tiny_model_dir, "--adapter", str(tmp_path / "adapter")) != response

    shutil.copytree(tiny_model_dir, tmp_path / "banned")
    path = tmp_path / "banned" / "generation_config.json"
    banned = AutoTokenizer.from_pretrained(tiny_model_dir)(response, add_special_tokens=False)["input_ids"]
    config = {"suppress_tokens": banned, "repetition_penalty": 3.0, "_from_model_config": False}
    path.write_text(json.dumps(json.loads(path.read_text()) | config))  # would change every token if it applied
    assert greedy(tmp_path / "banned") == response


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
        choice = {"message": {"role": "assistant", "content": content}}
        reply = json.dumps({"choices": [choice], "usage": {"completion_tokens": 9}})
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(reply.encode())

    def log_message(self, *args):
        pass


def test_openai_backend_with_retry(tmp_path, monkeypatch):
    problems = [{"id": 1, "problem": "2 + 3?", "answer": 5}, {"id": 2, "problem": "2 + 4?", "answer": "6"}]
    math_task = write_jsonl(tmp_path / "add.jsonl", problems)
    tests = [{"input": "4\n", "output": "8\n", "testtype": "stdin"}]
    code_task = write_jsonl(tmp_path / "double.jsonl", [{"id": "d", "problem": "Read n, print 2n.", "tests": tests}])
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeChatServer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    FakeChatServer.requests = []
    out = tmp_path / "out"
    args = ["--model", "served-model", "--backend", "openai", "--base-url", f"http://127.0.0.1:{server.server_port}/v1"]
    args += ["--tasks", f"{math_task},{code_task}", "--n", "2", "--temperature", "0.6", "--concurrency", "3"]
    args += ["--chat-template-kwargs", '{"enable_thinking": false}']
    try:
        results = run([*args, "--output-dir", str(out), "--workers", "2"])
    finally:
        server.shutdown()
    assert len(FakeChatServer.requests) == 3 * 2 + 1  # six samples plus the retried 500
    first = FakeChatServer.requests[0]
    assert first["path"] == "/v1/chat/completions" and first["auth"] == "Bearer sk-test"
    body = first["body"]
    assert (body["model"], body["temperature"], body["top_p"], body["max_tokens"]) == ("served-model", 0.6, 1.0, 32768)
    # sent explicitly, so vllm serve does not apply the checkpoint's generation_config (Qwen: top_k 20, penalty 1.05)
    assert (body["top_k"], body["repetition_penalty"]) == (-1, 1.0)
    assert body["chat_template_kwargs"] == {"enable_thinking": False}  # vllm serve renders its template with them
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


def test_openai_backend_records_the_finish_reason(tmp_path, monkeypatch):
    """choices[0].finish_reason, the third value of openai_client.chat_completion: "length" means no answer."""
    task = write_jsonl(tmp_path / "add.jsonl", [{"id": i, "problem": f"{i} + 0?", "answer": str(i)} for i in range(4)])

    def reply(base_url, model, messages, **request):
        number = int(messages[-1]["content"].split("}. ")[1].split(" ")[0])
        return f"\\boxed{{{number}}}", 5, "length" if number % 2 else "stop"

    monkeypatch.setattr(openai_client, "chat_completion", reply)
    args = ["--model", "m", "--backend", "openai", "--tasks", str(task), "--output-dir", str(tmp_path / "out")]
    results = run([*args, "--workers", "1"])
    samples = {s["id"]: s for s in read_jsonl(tmp_path / "out" / "samples.jsonl")}
    assert [samples[str(i)]["finish_reason"] for i in range(4)] == ["stop", "length", "stop", "length"]
    assert [samples[str(i)]["correct"] for i in range(4)] == [True, False, True, False]
    assert (results["add"]["accuracy"], results["add"]["cut_off"], results["add"]["no_answer"]) == (0.5, 0.5, 0.5)


def test_chat_template_and_prompt_style_are_used_and_recorded(tiny_model_dir, tmp_path, capsys):
    with pytest.raises(SystemExit):
        evaluate.parse_args(["-h"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "sky-t1-bare: the paper's Table 2 harness (Qwen2.5-Math evaluation, prompt type 'Sky-T1'" in help_text
    template = tmp_path / "plain.jinja"
    template.write_text("{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}[assistant] ")
    task = write_jsonl(tmp_path / "one.jsonl", [{"id": 1, "problem": "What is 1 + 1?", "answer": "2"}])
    out = tmp_path / "out"
    args = f"--model {tiny_model_dir} --backend hf --tasks {task} --max-tokens 2 --prompt-style sky-t1-bare".split()
    args += f"--chat-template {template} --workers 1 --output-dir {out}".split()
    results = run(args)
    prompt = read_jsonl(out / "samples.jsonl")[0]["prompt"]
    assert prompt == f"[system] {SKY_T1_SYSTEM_PROMPT}\n[user] What is 1 + 1?\n[assistant] "  # the bare question
    settings = results["one"]["settings"]
    assert (settings["prompt_style"], settings["chat_template"]) == ("sky-t1-bare", str(template))
    with pytest.raises(SystemExit, match=r"chat_template '.*plain.jinja' -> 'chatml'"):
        run([*args, "--chat-template", "chatml"])
    with pytest.raises(SystemExit):
        evaluate.parse_args(["--model", "m", "--backend", "openai", "--tasks", "aime24", "--chat-template", "chatml"])
    assert "--chat-template with --backend openai: the server applies its own" in capsys.readouterr().err
    # A folder written before backend and chat_template were checked resumes: what it did not record is not compared.
    config = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({k: v for k, v in config.items() if k != "chat_template"}))
    run([*args, "--chat-template", "chatml"])


def test_chat_template_kwargs_reach_the_prompt_and_guard_the_folder(tiny_model_dir, tmp_path, capsys):
    template = tmp_path / "switch.jinja"
    template.write_text(
        "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
        "[assistant{{ ' no-think' if enable_thinking is defined and enable_thinking is false else '' }}] "
    )
    task = write_jsonl(tmp_path / "one.jsonl", [{"id": 1, "problem": "What is 1 + 1?", "answer": "2"}])
    out = tmp_path / "out"
    args = f"--model {tiny_model_dir} --backend hf --tasks {task} --max-tokens 2 --chat-template {template}".split()
    args += [*f"--workers 1 --output-dir {out}".split(), "--chat-template-kwargs", '{"enable_thinking": false}']
    results = run(args)
    assert read_jsonl(out / "samples.jsonl")[0]["prompt"].endswith("\n[assistant no-think] ")
    assert results["one"]["settings"]["chat_template_kwargs"] == {"enable_thinking": False}
    with pytest.raises(SystemExit, match=r"chat_template_kwargs \{'enable_thinking': False\} -> \{\}"):
        run(args[:-2])  # samples made with other template switches are not mixed in
    for bad, problem in [("{bad", "not JSON"), ("[1]", "expected a JSON object"), ('{"tokenize": 1}', "tokenize: set")]:
        with pytest.raises(SystemExit):
            evaluate.parse_args(["--model", "m", "--tasks", "aime24", "--chat-template-kwargs", bad])
        error = capsys.readouterr().err.splitlines()[-1]
        assert "error: argument --chat-template-kwargs: " + problem in error


def test_custom_task_responses_match_its_stem_or_its_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sets").mkdir()
    write_jsonl(tmp_path / "sets" / "add.jsonl", [{"id": i, "problem": "?", "answer": str(i + 1)} for i in range(3)])
    lines = [
        {"task": "add", "id": 0, "response": boxed("1")},  # the file stem
        {"task": "sets/add.jsonl", "id": 1, "response": boxed("2")},  # the path as given to --tasks
        {"task": str(tmp_path / "sets" / "add.jsonl"), "id": 2, "response": boxed("3")},  # the same file's path
    ]
    responses = write_jsonl(tmp_path / "responses.jsonl", lines)
    results = run(["--responses", str(responses), "--tasks", "sets/add.jsonl", "--output-dir", "out", "--workers", "1"])
    assert list(results) == ["add"] and results["add"]["accuracy"] == 1.0 and results["add"]["problems"] == 3
    assert {s["task"] for s in read_jsonl(tmp_path / "out" / "samples.jsonl")} == {"add"}
    write_jsonl(responses, [{"task": "other/add.jsonl", "id": 0, "response": "x"}])
    with pytest.raises(SystemExit, match=r"jsonl:1: unknown task 'other/add.jsonl' \(not among --tasks: add\)"):
        run(["--responses", str(responses), "--tasks", "sets/add.jsonl", "--output-dir", "out2"])


def test_openai_backend_refusal_is_one_line(tmp_path):
    task = write_jsonl(tmp_path / "add.jsonl", [{"id": 1, "problem": "What is 2 + 3?", "answer": 5}])
    server = ThreadingHTTPServer(("127.0.0.1", 0), RefusingChatServer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    RefusingChatServer.requests = 0
    url = f"http://127.0.0.1:{server.server_port}/v1"
    try:
        with pytest.raises(SystemExit, match=re.escape(f"{url}/chat/completions: HTTP 401")) as exit_info:
            run(f"--model m --backend openai --base-url {url} --tasks {task} --output-dir {tmp_path / 'out'}".split())
    finally:
        server.shutdown()
    assert RefusingChatServer.requests == 1 and "\n" not in str(exit_info.value.code)


@pytest.mark.parametrize(
    "lines, tasks, message",
    [
        ([AIME60 | {"response": "x"}, {"task": "aime24", "response": "x"}], "aime24", "jsonl:2: field 'id' missing"),
        ([{"task": "gsm8k", "id": 1, "response": "x"}], "math500", "responses.jsonl:1: unknown task 'gsm8k'"),
        ([{"task": "aime24", "id": 1, "response": "x"}], "aime24", "responses.jsonl:1: id '1' not in task 'aime24'"),
        ([AIME60 | {"response": 204}], "aime24", "responses.jsonl:1: field 'response' must be a string"),
        ([AIME60 | {"response": "a", "sample": 0}] * 2, "aime24", "responses.jsonl:2: duplicate sample 0"),
        (['{"task": "aime24", "id": 60,'], "aime24", "responses.jsonl:1: invalid JSON"),
        ([AIME60 | {"response": "x"}], "aime24,amc23", "no responses for task 'amc23'"),
        ([AIME60 | {"response": "x", "finish_reason": 1}], "aime24", "jsonl:1: field 'finish_reason' must be a string"),
        ([AIME60 | {"response": "x"}], "gsm8k", "--tasks: unknown task 'gsm8k'"),
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
    record = {"task": "math500", "id": "test/precalculus/807.json", "response": response}
    responses = write_jsonl(tmp_path / "gen.jsonl", [record])
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
