"""perturb.py: exact properties on synthetic records, smoke checks on the real long-CoT sample when present.
Where a response's thought lies (markup.split_thought) is tested in test_markup.py."""

import json
import re
import subprocess
import sys
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import perturb  # noqa: E402
from markup import split_thought  # noqa: E402

# Real Sky-T1 outputs (CC BY-NC-SA problem texts): read at test time only, never copied into the repo.
REAL_SAMPLE = Path("/work/shared/data/cot/sky_t1_style_minerva_math.jsonl")
SOLUTION = "To finish, 12 + 30 = 42, so the answer is \\boxed{42}."


def sky_t1(steps, solution=SOLUTION):
    return (
        "<|begin_of_thought|>\n\n"
        + "\n\n".join(steps)
        + "\n\n<|end_of_thought|>\n\n<|begin_of_solution|>\n\n"
        + solution
        + "\n\n<|end_of_solution|>"
    )


def step_text(r, j):
    check = " But let me verify it once more." if j % 2 else ""
    return f"Record {r} step {j}: we add {r * 7 + j} and {j * 3 + 11} and keep going with the plan.{check}"


def synthetic(n_records=6, n_steps=10):
    return [
        {
            "prompt": f"Problem {r}: what is 6 times 7?",
            "response": sky_t1([step_text(r, j) for j in range(n_steps)]),
            "answer": "42",
            "id": f"rec{r}",
        }
        for r in range(n_records)
    ]


def mixed_shapes():
    """Every shape and markup perturb.py must handle, with the thought in the last assistant turn."""
    thought = [step_text(9, j) for j in range(6)]
    return [
        {
            "messages": [
                {"role": "system", "content": "sys"},
                {"role": "user", "content": "q1"},
                {"role": "assistant", "content": "First answer 123."},
                {"role": "user", "content": "q2"},
                {"role": "assistant", "content": sky_t1(thought)},
            ],
            "id": 7,
            "source": "s",
            "n_tokens": 99,
        },
        {
            "system": "sys",
            "conversations": [{"from": "user", "value": "q"}, {"from": "assistant", "value": sky_t1(thought[::-1])}],
        },
        {
            "prompt": "q r1",
            "response": "<think>\n" + "\n\n".join(thought) + "\n</think>\n\nSo the answer is \\boxed{5}.",
        },
        {"prompt": "q plain", "response": "\n\n".join(thought) + "\n\nThus 2 + 3 = \\boxed{5}."},
        {"prompt": "q none", "response": "\n\n".join(thought)},
    ]


def run(tmp_path, records, kind, ratio, *extra, name="out"):
    src = tmp_path / f"{name}_in.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    cfg = perturb.parse_args(
        [
            "--input",
            str(src),
            "--output",
            str(tmp_path / f"{name}.jsonl"),
            "--kind",
            kind,
            "--ratio",
            str(ratio),
            *map(str, extra),
        ]
    )
    report = perturb.main(cfg)
    return [json.loads(line) for line in (tmp_path / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()], report


def assistant(record):
    slot, key = perturb._assistant_slot(record)
    return slot[key]


def thought_steps(record):
    return perturb.split_steps(split_thought(assistant(record)).thought, 40)[0]


def test_blank_line_splitter_merges_fragments_into_meaningful_steps():
    parts = [
        "First we set up the energy balance for the whole system.",
        "The flux through the surface of the star follows the law below.",
        "\\[ F = \\sigma T^4 \\quad \\text{with T the effective temperature} \\]",  # display math
        "where sigma is the Stefan-Boltzmann constant in cgs units here.",  # lower case: same sentence
        "Ok.",  # under --min-step-chars
        "Now the code we would run to check all of the arithmetic:",
        "```python\nX = 1 + 2 + 3 + 4 + 5 + 6 + 7 + 8 + 9 + 10 + 11",  # introduced by ':'
        "Z = X * 2  # double the sum to compare with the table later\n```",  # inside an open fence
        "Wait, that seems too large, so let me recompute the radius.",
    ]
    thought = "\n\n".join(parts[:4]) + "\n \n\n" + "\n\n".join(parts[4:])
    steps, seps = perturb.split_steps(thought, 40)
    assert perturb.join_steps(steps, seps) == thought
    assert [s.replace("\n \n\n", "\n\n") for s in steps] == [
        "\n\n".join(p) for p in (parts[:1], parts[1:5], parts[5:8], parts[8:])
    ]
    assert seps == ["\n\n"] * 3


@pytest.mark.parametrize("kind", perturb.KINDS)
def test_ratio_zero_is_byte_identical(tmp_path, kind):
    records = synthetic(3) + mixed_shapes()
    out, report = run(tmp_path, records, kind, 0.0)
    assert [assistant(o) for o in out] == [assistant(r) for r in records]
    assert report["changed"] == 0 and report["unchanged_records"] == len(records)
    assert report["markup"] == {"sky-t1": 5, "r1": 1, "final_block": 1, "none": 1}
    assert out[3]["n_tokens"] == 99 and out[3]["source"] == "s" and out[3]["id"] == 7  # other fields kept


def test_only_the_last_assistant_turn_and_the_thought_change(tmp_path):
    records = mixed_shapes()
    out, _ = run(tmp_path, records, "delete", 0.5)
    assert out[0]["messages"][2]["content"] == "First answer 123."
    for before, after in zip(records, out):
        b, a = split_thought(assistant(before)), split_thought(assistant(after))
        assert (a.head, a.tail) == (b.head, b.tail) and a.thought != b.thought
    assert assistant(out[3]).endswith(
        "\n\nThus 2 + 3 = \\boxed{5}."
    )  # the final block of an unmarked response survives


def test_shuffle_keeps_the_multiset_and_moves_steps(tmp_path):
    records = synthetic(8, 10)
    out, _ = run(tmp_path, records, "shuffle", 1.0)
    for before, after in zip(records, out):
        assert Counter(thought_steps(after)) == Counter(thought_steps(before))
        assert thought_steps(after) != thought_steps(before)
        assert split_thought(assistant(after)).tail == split_thought(assistant(before)).tail
    out, _ = run(tmp_path, records, "shuffle", 0.3)
    for before, after in zip(records, out):
        kept = set(range(10)) - set(after["perturbation"]["positions"])
        assert len(after["perturbation"]["positions"]) == 3
        assert all(thought_steps(after)[i] == thought_steps(before)[i] for i in kept)
    # two chosen steps: a plain shuffle would keep their order half the time; the rotation never does
    two = [{"prompt": f"p{i}", "response": sky_t1([step_text(i, 0), step_text(i, 1)])} for i in range(20)]
    out, _ = run(tmp_path, two, "shuffle", 1.0)
    assert all(o["perturbation"]["n_changed"] == 2 for o in out)


@pytest.mark.parametrize("ratio", [0.33, 0.67, 1.0])
def test_delete_removes_round_ratio_steps_in_order(tmp_path, ratio):
    records = synthetic(5, 10)
    out, report = run(tmp_path, records, "delete", ratio)
    for before, after in zip(records, out):
        left = thought_steps(after)
        assert len(left) == 10 - round(ratio * 10)
        expected = [s for i, s in enumerate(thought_steps(before)) if i not in after["perturbation"]["positions"]]
        assert left == expected
        assert assistant(after).endswith(split_thought(assistant(before)).tail)
    assert report["changed"] == 5 * round(ratio * 10)


def test_insert_draws_only_from_other_records(tmp_path):
    records = synthetic(6, 10)
    out, _ = run(tmp_path, records, "insert", 0.5)
    for r, after in enumerate(out):
        steps, summary = thought_steps(after), after["perturbation"]
        assert len(steps) == 10 and summary["n_changed"] == 5
        for pos, (source_id, source_step) in zip(summary["positions"], summary["sources"]):
            assert source_id != f"rec{r}" and steps[pos] == step_text(int(source_id[3:]), source_step)
        for pos in set(range(10)) - set(summary["positions"]):
            assert steps[pos] == step_text(r, pos)
    with pytest.raises(perturb.DataError, match="at least two records"):
        run(tmp_path, synthetic(1, 10), "insert", 0.5)


def test_digits_at_ratio_one_are_uniform_and_nothing_else_moves(tmp_path):
    thought = ["Compute 7777 + 77.77 = x, then 777 * 7 (seven sevens) over and over again. " * 40 for _ in range(5)]
    record = {"prompt": "p", "response": sky_t1(thought)}
    out, report = run(tmp_path, [record], "digits", 1.0)
    before, after = assistant(record), assistant(out[0])
    assert len(after) == len(before)
    assert all(a == b for a, b in zip(after, before) if not b.isdigit())
    digits = [a for a, b in zip(after, before) if b in "0123456789"]
    assert all(d in "0123456789" for d in digits) and len(digits) == report["units"]
    counts = Counter(digits)
    chi2 = sum((counts[d] - len(digits) / 10) ** 2 / (len(digits) / 10) for d in "0123456789")
    assert chi2 < 27.9, counts  # 9 degrees of freedom, p = 0.001
    # the authors' default corrupts the whole response, final answer included
    assert split_thought(after).tail != split_thought(before).tail


def test_digits_partial_ratio_and_spare_solution(tmp_path):
    records = synthetic(40, 10)
    out, report = run(tmp_path, records, "digits", 0.5, "--spare-solution")
    assert 0.4 < report["changed"] / report["units"] < 0.5  # resampled half the time, 1 in 10 lands on itself
    for before, after in zip(records, out):
        assert split_thought(assistant(after)).tail == split_thought(assistant(before)).tail
        assert re.sub(r"[0-9]", "#", assistant(after)) == re.sub(r"[0-9]", "#", assistant(before))


def test_digit_mode_number_replaces_whole_numbers(tmp_path):
    record = {"prompt": "p", "response": sky_t1(["Here pi is 3.14159 and 1234 apples cost 56 coins today, as stated."])}
    out, report = run(tmp_path, [record], "digits", 1.0, "--digit-mode", "number")
    new_thought = split_thought(assistant(out[0])).thought
    numbers = re.findall(r"\d+(?:\.\d+)?", new_thought)
    assert report["units"] == 3 + 4 and len(numbers) == 3  # the solution's four numbers count too
    assert all(0 <= int(n) <= 10 for n in numbers)
    assert re.sub(r"\d+(?:\.\d+)?", "N", new_thought) == "Here pi is N and N apples cost N coins today, as stated."


def test_keywords_removes_the_right_fraction_and_nothing_else(tmp_path):
    plain = [f"Plain sentence number {i} stays here." for i in range(10)]
    keyed = [f"Wait, keyword sentence {i} goes." if i % 2 else f"Let me double-check item {i}." for i in range(10)]
    paragraphs = [f"{plain[i]} {keyed[i]}" if i < 5 else f"{keyed[i]}\n\n{plain[i]}" for i in range(10)]
    record = {"prompt": "p", "response": sky_t1(["\n\n".join(paragraphs)]), "id": "kw"}
    out, report = run(tmp_path, [record], "keywords", 0.5)
    thought = split_thought(assistant(out[0])).thought
    sentences = re.findall(r"[^.\n]+\.", thought)
    assert [s.strip() for s in sentences if s.strip() in plain] == plain
    assert sum(s.strip() in keyed for s in sentences) == 5 and len(sentences) == 15
    assert report["units"] == 10 and report["changed"] == 5
    assert "\n\n\n" not in thought and not re.search(r"[ \t]\n", thought)
    assert assistant(out[0]).endswith(split_thought(record["response"]).tail)
    words = tmp_path / "words.txt"
    words.write_text("# custom list\nstays\n", encoding="utf-8")
    out, report = run(tmp_path, [record], "keywords", 1.0, "--keywords-file", words)
    thought = split_thought(assistant(out[0])).thought
    assert report["units"] == 10 and not any(p in thought for p in plain) and all(k in thought for k in keyed)


def test_deterministic_per_seed_and_record(tmp_path):
    records = synthetic(6, 10)
    for kind in perturb.KINDS:
        first, _ = run(tmp_path, records, kind, 0.5, "--seed", 1, name="a")
        again, _ = run(tmp_path, records, kind, 0.5, "--seed", 1, name="b")
        other, _ = run(tmp_path, records, kind, 0.5, "--seed", 2, name="c")
        assert first == again
        assert [assistant(o) for o in other] != [assistant(f) for f in first]
    # a record's shuffle depends on its id, not on where it sits in the file
    forward, _ = run(tmp_path, records, "shuffle", 0.5, name="f")
    backward, _ = run(tmp_path, records[::-1], "shuffle", 0.5, name="r")
    assert forward == backward[::-1]


def test_records_without_id_get_a_stable_hash_id(tmp_path):
    records = [
        {"prompt": "same", "response": sky_t1([step_text(0, j) for j in range(4)])},
        {"prompt": "same", "response": sky_t1([step_text(1, j) for j in range(4)])},
    ]
    out, _ = run(tmp_path, records, "shuffle", 1.0)
    again, _ = run(tmp_path, records, "shuffle", 1.0)
    assert [o["id"] for o in out] == [o["id"] for o in again]
    assert out[0]["id"] != out[1]["id"] and re.fullmatch(r"[0-9a-f]{16}", out[0]["id"])


class FakeSplitter(BaseHTTPRequestHandler):
    """An OpenAI-compatible endpoint that splits at sentences, corrupts 'BROKEN' thoughts, fails 'FLAKY' once and
    'DOWN' always."""

    calls = Counter()  # per record tag, the first word of its thought

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        assert self.path == "/v1/chat/completions" and body["model"] == "fake-70b"
        assert body["temperature"] == 0.0 and body["max_tokens"] > 1024
        thought = re.search(r"<reasoning>\n(.*)\n</reasoning>", body["messages"][0]["content"], re.S).group(1)
        tag = thought.split()[0]
        FakeSplitter.calls[tag] += 1
        if tag == "DOWN" or (tag == "FLAKY" and FakeSplitter.calls[tag] == 1):
            self.send_response(503 if tag == "DOWN" else 500)
            self.end_headers()
            return
        reply = thought.replace(". ", ".\n[STEP]\n").replace("\n\n", "\n[STEP]\n")
        if "BROKEN" in thought:
            reply = reply.replace("plan", "idea")
        data = json.dumps({"choices": [{"message": {"role": "assistant", "content": reply}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def test_llm_splitter_against_a_local_server(tmp_path):
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeSplitter)
    threading.Thread(target=server.serve_forever, daemon=True).start()

    def lines(tag):
        return [f"{tag} line {j}. It has two sentences about the plan." for j in range(3)]

    tags = ("OK", "BROKEN", "FLAKY", "DOWN")
    try:
        records = [{"prompt": f"p{t}", "response": sky_t1(lines(t)), "id": t} for t in tags]
        url = f"http://127.0.0.1:{server.server_address[1]}/v1"
        out, report = run(
            tmp_path,
            records,
            "shuffle",
            0.0,
            "--splitter",
            "llm",
            "--llm-url",
            url,
            "--llm-model",
            "fake-70b",
            "--llm-retries",
            1,
        )
    finally:
        server.shutdown()
    assert [assistant(o) for o in out] == [assistant(r) for r in records]  # aligned to the original bytes
    assert [o["perturbation"]["splitter"] for o in out] == ["llm", "llm_fallback", "llm", "llm_fallback"]
    assert [o["perturbation"]["n_steps"] for o in out] == [6, 3, 6, 3]  # sentences vs blank-line paragraphs
    # a reply that does not align is not retried; server errors are, --llm-retries times
    assert report["llm_fallback"] == 2 and FakeSplitter.calls == {"OK": 1, "BROKEN": 1, "FLAKY": 2, "DOWN": 2}


def test_cli_runs_as_a_subprocess(tmp_path):
    src, dst = tmp_path / "cot.jsonl", tmp_path / "cot_shuffle67.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in synthetic(4, 9)), encoding="utf-8")
    done = subprocess.run(
        [
            sys.executable,
            "perturb.py",
            "--input",
            src,
            "--output",
            dst,
            "--kind",
            "shuffle",
            "--ratio",
            "0.67",
            "--seed",
            "0",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "4 records" in done.stdout and "mean steps per record 9" in done.stdout
    out = [json.loads(line) for line in dst.read_text(encoding="utf-8").splitlines()]
    assert [o["perturbation"]["n_changed"] > 0 for o in out] == [True] * 4


@pytest.mark.parametrize(
    "content, where",
    [
        (b'{"prompt": "p", "response": "r"}\n{"prompt": oops}\n', ":2: invalid JSON"),
        (b'{"prompt": "p", "response": "  "}\n', ":1: no non-empty assistant turn"),
        (
            b'{"prompt": "p", "response": "r"}\n\n{"prompt": "Caf\xe9", "response": "r"}\n',
            ":3: not UTF-8 text (byte 0xe9)",
        ),
    ],
)
def test_bad_input_is_a_one_line_error_naming_file_and_line(tmp_path, content, where):
    src = tmp_path / "bad.jsonl"
    src.write_bytes(content)
    done = subprocess.run(
        [
            sys.executable,
            "perturb.py",
            "--input",
            src,
            "--output",
            tmp_path / "o.jsonl",
            "--kind",
            "delete",
            "--ratio",
            "0.5",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1 and done.stderr.strip().count("\n") == 0
    assert done.stderr.startswith(f"error: {src}{where}")
    assert "Traceback" not in done.stderr and not (tmp_path / "o.jsonl").exists()


@pytest.fixture(scope="module")
def real_records():
    if not REAL_SAMPLE.exists():
        pytest.skip(f"{REAL_SAMPLE} not available")
    rows = [json.loads(line) for line in REAL_SAMPLE.read_text(encoding="utf-8").splitlines()]
    return [{"prompt": r["problem"], "response": r["response"], "answer": r["answer"]} for r in rows]


def test_real_sample_identity_solution_and_multiset(tmp_path, real_records):
    for kind in perturb.KINDS:
        out, report = run(tmp_path, real_records, kind, 0.0, name=kind)
        assert [assistant(o) for o in out] == [r["response"] for r in real_records]
    assert report["markup"] == {"sky-t1": len(real_records)} and 10 < report["mean_steps"] < 60
    out, report = run(tmp_path, real_records, "shuffle", 0.67, name="shuffle67")
    for before, after in zip(real_records, out):
        b, a = split_thought(before["response"]), split_thought(assistant(after))
        assert a.tail == b.tail and a.head == b.head
        steps, seps = perturb.split_steps(b.thought, 40)
        moved = steps[:]
        for dst, src in zip(after["perturbation"]["positions"], after["perturbation"]["sources"]):
            moved[dst] = steps[src]
        assert a.thought == perturb.join_steps(moved, seps) and Counter(moved) == Counter(steps)
    assert report["changed"] > 0.5 * report["units"]
    out, report = run(tmp_path, real_records, "digits", 0.7, "--spare-solution", name="digits70")
    assert all(split_thought(assistant(o)).tail == split_thought(r["response"]).tail for o, r in zip(out, real_records))
    assert 0.55 < report["changed"] / report["units"] < 0.7
