"""prepare_data.py: every filter drops exactly its records and counts them; the style flag; bad input as one line;
every published schema read end to end (tests/data/schemas/, three records each in the set's own field names);
--as-published; dedup; decontamination; deterministic sampling; the bundled long-CoT sample end to end; the CLI as a
subprocess. The markup itself is tested in test_markup.py, the schema readers in test_schemas.py, the similarity
indexes in test_similarity.py."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

import markup
import prepare_data
import schemas
import sft
import utils
from prepare_data import Example
from utils import DataError

REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO / "tests" / "data" / "raw_mixed.jsonl"
SCHEMA_DIR = REPO / "tests" / "data" / "schemas"
SKY_SAMPLE = REPO / "data" / "sample" / "sky_t1_minerva_math.jsonl"  # real long-CoT responses (data/sample/README.md)

ZERO = {name: 0 for name in prepare_data.COUNTS if name not in ("read", "kept")}
PARSED_IDS = [
    "sharegpt-math",
    "messages-think-wrong",
    "prompt-response-r1",
    "raw-code-ok",
    "raw-code-bad",
    "raw-domain-math",
    "raw-no-gold",
]


def run(tmp_path, tokenizer_dir, *args, inputs=(FIXTURE,), name="out.jsonl"):
    out = tmp_path / name
    argv = [a for i in inputs for a in ("--input", str(i))] + [
        "--output",
        str(out),
        "--tokenizer",
        str(tokenizer_dir),
        "--workers",
        "1",
        *args,
    ]
    report = prepare_data.main(prepare_data.parse_args(argv))
    return report, utils.read_jsonl(out)


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def sky(thought, solution):
    return markup.format_response(thought, solution, "sky-t1")


def cli(*args, cwd):
    return subprocess.run(
        [sys.executable, str(REPO / "prepare_data.py"), *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=120,
    )


# ----------------------------------------------------------------------------- parse-stage filters, output schema


def test_each_parse_filter_drops_exactly_its_records(tmp_path, tiny_model_dir):
    report, records = run(tmp_path, tiny_model_dir, "--skip-bad")
    expected = ZERO | {
        "unparsable": 1,
        "empty": 1,
        "no_thought": 1,
        "truncated": 2,
        "no_answer": 1,
        "exact_duplicate": 1,
        "near_duplicate": 1,
    }
    assert report["counts"] == {"read": 15, **expected, "kept": 7}
    assert report["per_source"][str(FIXTURE)]["kept"] == 7
    assert [r["id"] for r in records] == PARSED_IDS
    by_id = {r["id"]: r for r in records}
    assert {i: r["domain"] for i, r in by_id.items() if r["domain"] == "code"} == {
        "raw-code-ok": "code",
        "raw-code-bad": "code",
    }
    # sky-t1 style: Sky-T1's system prompt and markup everywhere, whatever the input markup was
    for r in records:
        system, user, assistant = r["messages"]
        assert system == {"role": "system", "content": markup.SKY_T1_SYSTEM_PROMPT}
        assert assistant["content"].startswith("<|begin_of_thought|>\n\n") and assistant["content"].endswith(
            "\n\n<|end_of_solution|>"
        )
    # Sky-T1's prompt templates for raw problems; chat-shaped prompts kept verbatim
    assert (
        by_id["raw-domain-math"]["messages"][1]["content"]
        == "Return your final response within \\boxed{}. Compute 9 - 4."
    )
    assert by_id["raw-code-ok"]["messages"][1]["content"] == markup.CODE_STDIN_PROMPT.format(
        problem="Read two integers and print their sum."
    )
    assert (
        by_id["sharegpt-math"]["messages"][1]["content"]
        == "Return your final response within \\boxed{}. What is 2 + 2?"
    )
    assert by_id["prompt-response-r1"]["messages"][2]["content"] == sky(
        "Five twos make ten.", "So the product is \\boxed{10}."
    )
    # metadata: gold answers and tests normalised to [{input, output, testtype}]
    assert by_id["raw-domain-math"]["answer"] == "5" and "answer" not in by_id["raw-no-gold"]
    assert by_id["raw-code-bad"]["tests"] == [{"input": "1 2\n", "output": "3\n", "testtype": "stdin"}]
    assert by_id["sharegpt-math"]["source"] == str(FIXTURE)
    # n_tokens is exactly what training tokenizes: the whole chat-templated record
    tokenizer = utils.load_tokenizer(str(tiny_model_dir))
    conversations, skipped = sft.load_conversations([str(tmp_path / "out.jsonl")])
    samples, stats = sft.build_samples(tokenizer, conversations, max_length=100_000, truncate=False)
    assert skipped == 0 and stats["kept"] == 7
    assert [len(s.input_ids) for s in samples] == [r["n_tokens"] for r in records]
    lengths_png = tmp_path / "out_lengths.png"
    assert lengths_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((tmp_path / "out_report.json").read_text())["counts"]["kept"] == 7
    assert report["n_tokens"]["max"] == max(r["n_tokens"] for r in records)


def test_bad_input_is_one_error_naming_file_line_and_field(tmp_path, tiny_model_dir):
    with pytest.raises(DataError, match=r"raw_mixed\.jsonl:15: unknown record shape"):
        run(tmp_path, tiny_model_dir)
    good = json.loads(FIXTURE.read_text().splitlines()[0])
    broken = tmp_path / "broken.jsonl"
    broken.write_text(
        json.dumps(good)
        + "\n{not json\n"
        + json.dumps({"problem": "p", "response": sky("t", "s"), "tests": {"inputs": ["1"]}})
        + "\n"
    )
    with pytest.raises(DataError, match=r"broken\.jsonl:2: invalid JSON"):
        run(tmp_path, tiny_model_dir, inputs=[broken])
    report, _ = run(tmp_path, tiny_model_dir, "--skip-bad", inputs=[broken])
    assert report["counts"]["unparsable"] == 2 and report["counts"]["kept"] == 1
    broken.write_text(json.dumps({"problem": "p", "response": sky("t", "s"), "tests": {"inputs": ["1"]}}) + "\n")
    with pytest.raises(DataError, match=r"broken\.jsonl:1: field 'tests'"):
        run(tmp_path, tiny_model_dir, inputs=[broken])
    broken.write_text(json.dumps({"problem": 3, "response": "x"}) + "\n")
    with pytest.raises(DataError, match=r"broken\.jsonl:1: field 'problem'"):
        run(tmp_path, tiny_model_dir, inputs=[broken])
    with pytest.raises(DataError, match="missing.jsonl: file not found"):
        run(tmp_path, tiny_model_dir, inputs=[tmp_path / "missing.jsonl"])


def latin1_file(tmp_path):
    """Three good records around a line 3 exported as Latin-1 (the 'é' is the single byte 0xe9)."""
    lines = FIXTURE.read_bytes().splitlines(keepends=True)
    bad = json.dumps({"id": "latin1", "problem": "Café?", "response": sky("t", "\\boxed{1}")}, ensure_ascii=False)
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(lines[0] + lines[1] + bad.encode("latin-1") + b"\n" + lines[5])
    return path


def test_bytes_that_are_not_utf8_are_one_error_naming_file_and_line(tmp_path, tiny_model_dir):
    path = latin1_file(tmp_path)
    with pytest.raises(DataError, match=r"latin1\.jsonl:3: not UTF-8 text \(byte 0xe9\)"):
        run(tmp_path, tiny_model_dir, inputs=[path])
    report, records = run(tmp_path, tiny_model_dir, "--skip-bad", inputs=[path])
    assert report["counts"]["read"] == 4 and report["counts"]["unparsable"] == 1
    assert [r["id"] for r in records] == ["sharegpt-math", "messages-think-wrong", "raw-domain-math"]
    rows = tmp_path / "rows.json"
    rows.write_bytes(b'[{"problem": "p", "response": "r"},\n {"problem": "Caf\xe9", "response": "r"}]')
    with pytest.raises(DataError, match=r"rows\.json:2: not UTF-8 text"):
        run(tmp_path, tiny_model_dir, "--skip-bad", inputs=[rows])


def test_a_parquet_name_on_other_bytes_is_one_error(tmp_path, tiny_model_dir):
    fake = tmp_path / "traces.parquet"
    fake.write_text('{"problem": "p", "response": "r"}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"^\S*traces\.parquet: not a Parquet file \(.+\)$"):
        run(tmp_path, tiny_model_dir, inputs=[fake])


def test_keeping_nothing_writes_the_report_then_fails_naming_the_filters(tmp_path, tiny_model_dir):
    with pytest.raises(DataError) as failure:
        run(tmp_path, tiny_model_dir, "--skip-bad", "--max-length", "1")
    report_path = tmp_path / "out_report.json"
    assert str(failure.value) == (
        "no records kept out of 15 read (unparsable 1, empty 1, no_thought 1, truncated 2, no_answer 1, too_long 9); "
        f"see {report_path}"
    )
    report = json.loads(report_path.read_text())
    assert report["counts"]["kept"] == 0 and report["counts"]["too_long"] == 9
    assert report["config"]["max_length"] == 1 and (tmp_path / "out_lengths.png").exists()


def test_json_parquet_and_hub_inputs_read_like_jsonl(tmp_path, tiny_model_dir, monkeypatch):
    rows = [
        {"problem": f"What is {i} + {i}?", "response": sky("Add.", f"\\boxed{{{2 * i}}}"), "answer": str(2 * i)}
        for i in range(1, 4)
    ]
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "rows.json").write_text(json.dumps(rows))
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "rows.parquet")
    write_jsonl(tmp_path / "rows.jsonl", rows)
    loaded = {
        suffix: list(prepare_data.load_raw([str(tmp_path / f"rows{suffix}")]))
        for suffix in (".jsonl", ".json", ".parquet")
    }
    for suffix, items in loaded.items():
        assert [(line, row) for _, line, row in items] == [(i, r) for i, r in enumerate(rows, 1)], suffix

    import datasets

    calls = []

    def load_dataset(name, subset, split, streaming, **kwargs):
        calls.append((name, subset, split, streaming))
        return rows

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    report, records = run(tmp_path, tiny_model_dir, "--split", "train", inputs=["someone/cot-traces"])
    assert calls == [("someone/cot-traces", None, "train", False)]
    assert [r["id"] for r in records] == ["cot-traces:1", "cot-traces:2", "cot-traces:3"] and report["counts"][
        "kept"
    ] == 3
    # --limit streams a hub set and reads only its first records; a local file is cut the same way
    report, _ = run(tmp_path, tiny_model_dir, "--limit", "2", inputs=["someone/cot-traces", tmp_path / "rows.jsonl"])
    assert calls[-1] == ("someone/cot-traces", None, "train", True)
    assert [c["read"] for c in report["per_source"].values()] == [2, 2]


# ----------------------------------------------------------------------------- verification, length


def test_verify_keeps_correct_and_keep_incorrect_the_rest(tmp_path, tiny_model_dir):
    # starter code the sandbox cannot call: the grader's complaint makes the record unverifiable, not the run crash
    odd = write_jsonl(
        tmp_path / "odd.jsonl",
        [
            {
                "id": "bad-starter",
                "problem": "Echo.",
                "starter_code": "class Solution:\n    pass",
                "tests": [{"input": "1", "output": "1", "testtype": "functional"}],
                "response": sky("t", "```python\nclass Solution:\n    pass\n```"),
            }
        ],
    )
    report, records = run(tmp_path, tiny_model_dir, "--skip-bad", "--verify", "--workers", "2", inputs=[FIXTURE, odd])
    # raw-no-gold has no answer: unverifiable. Dedup runs after verification, so near-dup (a correct response to
    # the same problem) now survives, while exact-dup still repeats sharegpt-math.
    assert report["counts"] == {
        "read": 16,
        **ZERO,
        "unparsable": 1,
        "empty": 1,
        "no_thought": 1,
        "truncated": 2,
        "no_answer": 1,
        "unverifiable": 2,
        "rejected": 2,
        "exact_duplicate": 1,
        "kept": 5,
    }
    assert report["per_source"][str(odd)]["unverifiable"] == 1
    assert [r["id"] for r in records] == [
        "sharegpt-math",
        "prompt-response-r1",
        "raw-code-ok",
        "raw-domain-math",
        "near-dup",
    ]
    report, records = run(tmp_path, tiny_model_dir, "--skip-bad", "--keep", "incorrect", name="wrong.jsonl")
    assert report["counts"]["rejected"] == 6 and report["counts"]["unverifiable"] == 1
    assert [r["id"] for r in records] == ["messages-think-wrong", "raw-code-bad"]


def test_too_long_drops_exactly_the_records_over_max_length(tmp_path, tiny_model_dir):
    _, records = run(tmp_path, tiny_model_dir, "--skip-bad", "--dedup", "none", name="all.jsonl")
    lengths = sorted(r["n_tokens"] for r in records)
    limit = lengths[3]
    report, kept = run(tmp_path, tiny_model_dir, "--skip-bad", "--dedup", "none", "--max-length", str(limit))
    assert report["counts"]["too_long"] == sum(n > limit for n in lengths) > 0
    assert [r["id"] for r in kept] == [r["id"] for r in records if r["n_tokens"] <= limit]


def test_max_length_judges_each_training_sequence_as_the_trainers_do(tiny_model_dir):
    """Qwen3's template rewrites earlier turns, so a two-turn record trains as one sequence per reply: n_tokens counts
    all the tokens the trainers see, and the limit judges the longest sequence, under which the trainers keep both."""
    tokenizer = utils.load_tokenizer(str(tiny_model_dir), str(utils.REPO_DIR / "tests/data/templates/qwen3.jinja"))
    tokenizer.add_tokens(["<think>", "</think>"])
    two = [
        {"role": "user", "content": "What is 12*3?"},
        {"role": "assistant", "content": "<think>\n12*3 = 36. Wait, check: 36.\n</think>\n\n\\boxed{36}"},
        {"role": "user", "content": "And 12*4?"},
        {"role": "assistant", "content": "<think>\n12*4 = 48.\n</think>\n\n\\boxed{48}"},
    ]
    [(n_tokens, longest)] = prepare_data.count_tokens(tokenizer, [two])
    samples, stats = sft.build_samples(tokenizer, [two], longest, truncate=False)
    assert len(samples) == 2 and stats["too_long_dropped"] == 0  # what a limit of `longest` must keep
    assert longest == max(len(s.input_ids) for s in samples) < n_tokens == sum(len(s.input_ids) for s in samples)


def test_token_counts_render_the_template_with_chat_template_kwargs(tmp_path, tiny_model_dir):
    """--chat-template-kwargs reaches the template as the trainers' does: here a switch that, like Qwen3's
    enable_thinking, writes an empty thought into the generation prompt."""
    tokenizer = utils.load_tokenizer(str(tiny_model_dir), "chatml")
    tokenizer.chat_template = tokenizer.chat_template.replace(
        "'<|im_start|>assistant\\n' }}", "'<|im_start|>assistant\\n' }}{% if quiet %}<think>\n\n</think>\n\n{% endif %}"
    )
    assert "{% if quiet %}" in tokenizer.chat_template
    tokenizer.save_pretrained(tmp_path / "tokenizer")
    _, plain = run(tmp_path, tmp_path / "tokenizer", "--skip-bad", "--dedup", "none", name="plain.jsonl")
    _, quiet = run(
        tmp_path, tmp_path / "tokenizer", "--skip-bad", "--dedup", "none", "--chat-template-kwargs", '{"quiet": true}'
    )
    extra = len(tokenizer("<think>\n\n</think>\n\n", add_special_tokens=False)["input_ids"])
    assert [r["n_tokens"] for r in quiet] == [r["n_tokens"] + extra for r in plain] and extra > 0


# ----------------------------------------------------------------------------- style


def test_style_flag_in_the_pipeline(tmp_path, tiny_model_dir):
    raw = {json.loads(line)["id"]: json.loads(line) for line in FIXTURE.read_text().splitlines()}
    _, records = run(tmp_path, tiny_model_dir, "--skip-bad", "--style", "r1")
    by_id = {r["id"]: r for r in records}
    assert all([m["role"] for m in r["messages"]] == ["user", "assistant"] for r in records)  # R1: no system prompt
    assert all(r["messages"][1]["content"].startswith("<think>\n") for r in records)
    assert (
        by_id["messages-think-wrong"]["messages"][1]["content"] == raw["messages-think-wrong"]["messages"][1]["content"]
    )
    _, records = run(tmp_path, tiny_model_dir, "--skip-bad", "--style", "keep")
    by_id = {r["id"]: r for r in records}
    assert by_id["sharegpt-math"]["messages"][0] == {"role": "system", "content": "You are a careful solver."}
    assert by_id["prompt-response-r1"]["messages"][-1]["content"] == raw["prompt-response-r1"]["response"]


def test_domain_detection():
    def domain(response, **fields):
        (reply,) = schemas.read_raw({"problem": "p", "response": response, **fields}, schemas.Options())
        example, defect = prepare_data.parse_reply("x.jsonl", "x:1", reply, "sky-t1")
        return defect or example.domain

    code = "```python\nprint(1)\n```"
    assert domain(sky("t", code)) == "code"
    assert domain(sky("t", code + " so \\boxed{1}")) == "math"
    assert domain(sky("t", "\\boxed{1}"), tests=[{"input": "", "output": "1"}]) == "no_answer"  # code without a program
    assert domain(sky("t", code + " \\boxed{1}"), domain="code") == "code"
    assert domain(sky("t", code), domain="math") == "no_answer"


def test_a_conversation_of_several_user_turns_is_counted_not_an_error(tmp_path, tiny_model_dir):
    turn = [
        {"from": "user", "value": "What is 1 + 1?"},
        {"from": "assistant", "value": sky("One and one.", "\\boxed{2}")},
    ]
    multi = write_jsonl(tmp_path / "multi.jsonl", [{"conversations": turn * 2}, {"conversations": turn}])
    report, records = run(tmp_path, tiny_model_dir, inputs=[multi])
    assert (report["counts"]["multi_turn"], report["counts"]["kept"], records[0]["id"]) == (1, 1, "multi.jsonl:2")


# ----------------------------------------------------------------------------- --as-published


def test_as_published_keeps_every_record_the_style_can_write_and_counts_what_would_drop(tmp_path, tiny_model_dir):
    report, records = run(tmp_path, tiny_model_dir, "--skip-bad", "--as-published", "--max-length", "300")
    dropped = {name: n for name, n in report["counts"].items() if n and name not in ("read", "kept")}
    assert dropped == {"unparsable": 1, "empty": 1, "no_thought": 1, "truncated": 2}  # no thought/solution to write
    assert report["counts"]["kept"] == len(records) == 10
    too_long = sum(r["n_tokens"] > 300 for r in records)
    assert too_long > 0 and report["would_drop"] == {
        "no_answer": 1,
        "too_long": too_long,
        "exact_duplicate": 1,
        "near_duplicate": 1,
    }
    assert report["why"]["near_duplicate"].startswith("a prompt within --near-dup-threshold")
    assert report["would_drop_per_source"] == {str(FIXTURE): report["would_drop"]}
    # --style keep writes every reply as published: the unfinished ones too
    report, records = run(tmp_path, tiny_model_dir, "--skip-bad", "--as-published", "--style", "keep")
    raw = {json.loads(line)["id"]: json.loads(line) for line in FIXTURE.read_text().splitlines()}
    assert report["counts"]["kept"] == 13 and report["would_drop"]["truncated"] == 2
    by_id = {r["id"]: r for r in records}
    for record_id in ("truncated-thought", "no-thought", "no-answer"):
        assert by_id[record_id]["messages"][-1]["content"] == raw[record_id]["response"]
    # OpenR1: the published record is the trace in `messages`
    openr1 = SCHEMA_DIR / "openr1_math.jsonl"
    report, _ = run(tmp_path, tiny_model_dir, "--as-published", inputs=[openr1])
    assert report["config"]["generations"] == "first" and report["counts"]["kept"] == 3


def test_as_published_refuses_the_flags_that_drop_records(capsys):
    with pytest.raises(SystemExit):
        prepare_data.parse_args(
            ["--input", "x.jsonl", "--output", "o.jsonl", "--as-published", "--verify", "--size", "3"]
        )
    assert "--as-published keeps every record; it cannot be combined with --verify, --size" in capsys.readouterr().err


# ----------------------------------------------------------------------------- dedup, decontamination


def test_dedup_modes_on_fixture(tmp_path, tiny_model_dir):
    report, _ = run(tmp_path, tiny_model_dir, "--skip-bad", "--dedup", "exact")
    assert (report["counts"]["exact_duplicate"], report["counts"]["near_duplicate"], report["counts"]["kept"]) == (
        1,
        0,
        8,
    )
    report, _ = run(tmp_path, tiny_model_dir, "--skip-bad", "--dedup", "none")
    assert (report["counts"]["exact_duplicate"], report["counts"]["near_duplicate"], report["counts"]["kept"]) == (
        0,
        0,
        9,
    )
    report, _ = run(tmp_path, tiny_model_dir, "--skip-bad", "--near-dup-threshold", "0.95")
    assert report["counts"]["near_duplicate"] == 0


def test_decontamination_catches_a_lightly_edited_aime24_problem(tmp_path, tiny_model_dir):
    aime = utils.read_jsonl(REPO / "data" / "eval" / "aime24.jsonl")[0]["problem"]
    edited = "Consider this. " + aime.replace("Aya", "Maya").replace("$9$", "$10$") + " Show your work."
    assert edited != aime
    extra = write_jsonl(
        tmp_path / "aime_like.jsonl",
        [{"id": "aime-edit", "problem": edited, "answer": "204", "response": sky("t", "\\boxed{204}")}],
    )
    report, records = run(tmp_path, tiny_model_dir, "--skip-bad", "--decontaminate", inputs=[FIXTURE, extra])
    assert report["counts"]["contaminated"] == 1 and report["contaminated_by"] == {"aime24": 1}
    assert report["per_source"][str(extra)]["contaminated"] == 1
    assert "aime-edit" not in {r["id"] for r in records} and len(records) == 7


# ----------------------------------------------------------------------------- sampling


def test_size_and_mix_sample_deterministically(tmp_path, tiny_model_dir):
    examples = [Example(str(i), "s", f"p{i}", [], "", "code" if i % 3 == 0 else "math") for i in range(300)]
    keep_a, _ = prepare_data.sample(examples, 50, None, seed=1)
    assert keep_a == prepare_data.sample(examples, 50, None, seed=1)[0] and sum(keep_a) == 50
    assert keep_a != prepare_data.sample(examples, 50, None, seed=2)[0]
    keep, shortfall = prepare_data.sample(examples, None, {"math": 30, "code": 120}, seed=1)
    picked = [e.domain for e, k in zip(examples, keep) if k]
    assert (picked.count("math"), picked.count("code"), shortfall) == (30, 100, {"code": 20})
    # the pick for one domain does not depend on what else the mix asks for
    alone, _ = prepare_data.sample(examples, None, {"math": 30}, seed=1)
    assert [k for e, k in zip(examples, alone) if e.domain == "math"] == [
        k for e, k in zip(examples, keep) if e.domain == "math"
    ]

    report, first = run(tmp_path, tiny_model_dir, "--skip-bad", "--mix", "math=3,code=1", "--seed", "7", name="a.jsonl")
    _, again = run(tmp_path, tiny_model_dir, "--skip-bad", "--mix", "math=3,code=1", "--seed", "7", name="b.jsonl")
    assert first == again and report["counts"]["not_sampled"] == 3 and report["domains"] == {"math": 3, "code": 1}
    with pytest.raises(SystemExit, match="--size 5 differs"):
        run(tmp_path, tiny_model_dir, "--skip-bad", "--size", "5", "--mix", "math=3,code=1")


# ----------------------------------------------------------------------------- end to end, CLI


def test_end_to_end_on_bundled_long_cot_sample(tmp_path, tiny_model_dir):
    report, records = run(tmp_path, tiny_model_dir, "--decontaminate", inputs=[SKY_SAMPLE])
    counts = report["counts"]
    assert counts["read"] == 43 and counts["no_answer"] == 4  # 39/43 responses have a \boxed answer
    assert counts["kept"] + counts["exact_duplicate"] + counts["near_duplicate"] == 39 and counts["contaminated"] == 0
    # 40 problems, 3 answered by both models: their records carry one reference to the problem (data/sample/README.md)
    assert counts["exact_duplicate"] == 3 and counts["kept"] == 36
    assert len({r["messages"][1]["content"] for r in records}) == len(records)
    tokenizer = utils.load_tokenizer(str(tiny_model_dir))
    conversations, _ = sft.load_conversations([str(tmp_path / "out.jsonl")])
    samples, stats = sft.build_samples(tokenizer, conversations, max_length=16384, truncate=False)
    assert stats["kept"] == len(records) and all(s.n_targets > 0 for s in samples)
    assert [len(s.input_ids) for s in samples] == [r["n_tokens"] for r in records]
    assert (
        report["n_tokens"]["p50"] <= report["n_tokens"]["p90"] <= report["n_tokens"]["p99"] <= report["n_tokens"]["max"]
    )


def test_cli_subprocess(tmp_path, tiny_model_dir):
    out = tmp_path / "cli.jsonl"
    args = ["--input", FIXTURE, "--output", out, "--tokenizer", tiny_model_dir]
    done = cli(*args, "--skip-bad", "--size", "4", "--seed", "3", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "near_duplicate" in done.stdout and len(utils.read_jsonl(out)) == 4
    assert (tmp_path / "cli_report.json").exists() and (tmp_path / "cli_lengths.png").exists()
    failed = cli(*args, cwd=tmp_path)
    assert failed.returncode == 1
    last = failed.stderr.strip().splitlines()[-1]
    assert last.startswith(
        f"error: {FIXTURE}:15: unknown record shape (fields: id, question_text, reply); known schemas: s1k-1.1 "
        "(question, solution, deepseek_thinking_trajectory|gemini_thinking_trajectory); s1k ("
    )
    for known in ("nemotron (input, output)", "am (messages, info on a turn)", "limo (question, solution, answer)"):
        assert known in last
    assert last.endswith("; raw (problem|question, response|generated_solution|solution)")


@pytest.mark.parametrize("case", ["latin1", "parquet", "nothing_kept"])
def test_cli_errors_are_one_line_without_traceback(tmp_path, tiny_model_dir, case):
    source, extra = FIXTURE, ["--skip-bad", "--max-length", "1"]
    if case == "latin1":
        source, extra = latin1_file(tmp_path), []
    elif case == "parquet":
        source, extra = tmp_path / "fake.parquet", []
        source.write_bytes(b"PAR1 but not really\n")
    out = tmp_path / "cli.jsonl"
    failed = cli("--input", source, "--output", out, "--tokenizer", tiny_model_dir, *extra, cwd=tmp_path)
    expected = {
        "latin1": f"error: {source}:3: not UTF-8 text (byte 0xe9)",
        "parquet": f"error: {source}: not a Parquet file (",
        "nothing_kept": "error: no records kept out of 15 read (unparsable 1, empty 1, no_thought 1, truncated 2, ",
    }[case]
    assert failed.returncode == 1 and "Traceback" not in failed.stderr, failed.stderr
    lines = failed.stderr.strip().splitlines()
    assert lines[-1].startswith(expected) and not any(line.startswith("error") for line in lines[:-1])
    assert (tmp_path / "cli_report.json").exists() == (case == "nothing_kept")


def test_synthetic_traces_pass_every_filter_including_verification(tmp_path, tiny_model_dir):
    output = tmp_path / "synth.jsonl"
    report = prepare_data.main(
        prepare_data.parse_args(
            [
                "--synthetic",
                "arithmetic",
                "--size",
                "60",
                "--output",
                str(output),
                "--tokenizer",
                str(tiny_model_dir),
                "--verify",
                "--workers",
                "1",
            ]
        )
    )
    records = utils.read_jsonl(output)
    assert report["counts"]["read"] == 60 and report["counts"]["rejected"] == report["counts"]["unverifiable"] == 0
    assert 50 <= len(records) <= 60 and all(
        r["domain"] == "math" and r["source"] == "synthetic:arithmetic" for r in records
    )
    assert sft.load_conversations([str(output)])[0][0][-1]["content"].startswith("<|begin_of_thought|>")
