"""The plumbing in utils.py: JSON/JSONL I/O and its errors, atomic writes, tables, the LR schedule, the step logger,
the chat template's arguments, the dtype rule. Checkpoints and resuming: tests/test_checkpoints.py."""

import argparse
import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import utils

# ----------------------------------------------------------------------------- JSON / JSONL I/O


def test_jsonl_round_trip_keeps_unicode_and_skips_blank_lines(tmp_path):
    records = [{"a": 1, "text": "café ∑ 数学"}, {"b": [1, 2], "c": None}]
    path = tmp_path / "sub" / "x.jsonl"
    assert utils.write_jsonl(path, records) == 2
    assert utils.read_jsonl(path) == records
    assert "café" in path.read_text(encoding="utf-8")  # written as UTF-8, not \\u escapes
    assert not list(tmp_path.glob("sub/*.tmp"))
    path.write_text(path.read_text(encoding="utf-8") + "\n  \n", encoding="utf-8")
    assert list(utils.iter_json_records(path)) == [(1, records[0]), (2, records[1])]


def test_json_array_and_single_object(tmp_path):
    array, single = tmp_path / "a.json", tmp_path / "s.json"
    array.write_text(json.dumps([{"x": 1}, {"x": 2}]))
    single.write_text(json.dumps({"x": 3}))
    assert list(utils.iter_json_records(array)) == [(1, {"x": 1}), (2, {"x": 2})]
    assert utils.read_jsonl(single) == [{"x": 3}]


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("x.jsonl", '{"a": 1}\n{"a": \n', r"x.jsonl:2: invalid JSON"),
        ("x.jsonl", '{"a": 1}\n\n[1]\n', r"x.jsonl:3: expected a JSON object, got list"),
        ("x.json", '[{"a": 1},\n 2]', r"x.json: item 2: expected a JSON object, got int"),
        ("x.json", '[{"a": 1},\n{"a": ]', r"x.json:2: invalid JSON"),
        ("x.json", '"text"', r"x.json: expected a JSON array of objects, got str"),
    ],
)
def test_bad_json_names_file_and_line(tmp_path, name, content, message):
    (tmp_path / name).write_text(content)
    with pytest.raises(utils.DataError, match=message):
        utils.read_jsonl(tmp_path / name)
    with pytest.raises(utils.DataError, match="missing.jsonl: file not found"):
        utils.read_jsonl(tmp_path / "missing.jsonl")


def test_bad_lines_can_be_handed_to_on_error_and_reading_goes_on(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_bytes(b'{"a": 1}\n{"a": \n' + '{"a": "\xe9"}\n'.encode("latin-1") + b'[2]\n{"a": 5}\n')
    errors = []
    assert list(utils.iter_json_records(path, on_error=errors.append)) == [(1, {"a": 1}), (5, {"a": 5})]
    assert [str(e).split(": ")[0] for e in errors] == [f"{path}:2", f"{path}:3", f"{path}:4"]


def test_bad_bytes_in_jsonl_name_their_line(tmp_path):
    path = tmp_path / "latin1.jsonl"
    lines = [b'{"prompt": "1 + 1?", "response": "2"}', b'{"prompt": "2 + 2?", "response": "4"}']
    path.write_bytes(b"\n".join(lines + ['{"prompt": "caf\xe9?", "response": "5"}'.encode("latin-1")]) + b"\n")
    records = utils.iter_json_records(path)
    assert [n for n, _ in (next(records), next(records))] == [1, 2]  # the good lines before it still read
    with pytest.raises(utils.DataError) as err:
        next(records)
    assert str(err.value) == f"{path}:3: not UTF-8 text (byte 0xe9)"


def test_bad_bytes_in_json_name_their_line(tmp_path):
    path = tmp_path / "latin1.json"
    path.write_bytes(
        '[\n{"prompt": "1 + 1?", "response": "2"},\n{"prompt": "caf\xe9?", "response": "5"}\n]'.encode("latin-1")
    )
    with pytest.raises(utils.DataError) as err:
        utils.read_jsonl(path)
    assert str(err.value) == f"{path}:3: not UTF-8 text (byte 0xe9)"


def test_atomic_writes_replace_whole_files_and_leave_no_temporaries(tmp_path):
    path = tmp_path / "deep" / "er" / "config.json"
    utils.atomic_write_text(path, "first")
    utils.atomic_write_text(path, "second ✓")
    assert path.read_text(encoding="utf-8") == "second ✓"
    utils.write_jsonl(tmp_path / "r.jsonl", iter([{"i": i} for i in range(3)]))  # any iterable, counted once
    assert [p.name for p in sorted(tmp_path.rglob("*")) if p.is_file()] == ["config.json", "r.jsonl"]


def test_append_jsonl_flushes_every_line(tmp_path):
    with open(tmp_path / "m.jsonl", "a", encoding="utf-8") as f:
        utils.append_jsonl(f, {"step": 1})
        assert utils.read_jsonl(tmp_path / "m.jsonl") == [{"step": 1}]  # readable before the file is closed


# ----------------------------------------------------------------------------- reports and schedule


def test_format_table_aligns_first_column_left_and_the_rest_right():
    table = utils.format_table(["model", "acc", "n"], [["tiny", "0.5", 10], ["bigger-name", 1.0, 7]])
    assert table.splitlines() == [
        "model        acc   n",
        "tiny         0.5  10",
        "bigger-name  1.0   7",
    ]


def test_cosine_schedule_warms_up_linearly_then_decays_to_zero():
    f = utils.cosine_schedule(warmup_steps=4, total_steps=24)
    assert [f(s) for s in range(4)] == pytest.approx([0.2, 0.4, 0.6, 0.8])
    assert f(4) == 1.0  # the peak right after warmup
    assert f(14) == pytest.approx(0.5)  # half-way through the decay
    assert f(24) == pytest.approx(0.0, abs=1e-12) and f(100) == pytest.approx(0.0, abs=1e-12)  # never negative
    assert all(f(s) >= f(s + 1) for s in range(4, 30))
    assert utils.cosine_schedule(0, 1)(0) == 1.0


def test_step_logger_appends_one_record_per_step(tmp_path):
    logger = utils.StepLogger(tmp_path, total_steps=10, start_step=2, wandb_project=None, config={})
    record = {"step": 3, "loss": 1.23456, "lr": 1e-4, "grad_norm": 0.5, "tokens_per_s": 1234.4, "peak_mem_gb": 1.5}
    line = logger.log(record)
    logger.close()
    assert line.startswith("step 3/10 | loss 1.2346 | lr 1.00e-04 | grad 0.500 | tok/s 1234 | mem 1.50 GB | eta ")
    assert utils.read_jsonl(tmp_path / "metrics.jsonl") == [record]


def test_step_logger_shows_fp16s_loss_scale_and_skipped_steps(tmp_path):
    logger = utils.StepLogger(tmp_path, total_steps=10, start_step=0, wandb_project=None, config={})
    record = {"step": 3, "loss": 1.5, "lr": 1e-4, "grad_norm": 0.5, "tokens_per_s": 1234.4, "peak_mem_gb": 1.5}
    line = logger.log(record | {"loss_scale": 32768.0, "skipped_steps": 2})
    logger.close()
    assert "| grad 0.500 | scale 32768 (2 skipped) | tok/s 1234 |" in line
    assert utils.read_jsonl(tmp_path / "metrics.jsonl")[0]["skipped_steps"] == 2


# ----------------------------------------------------------------------------- device, model and tokenizer


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children) | st.dictionaries(st.text(), children),
)


@settings(max_examples=100, deadline=None)
@given(st.one_of(st.text(), JSON_VALUES.map(json.dumps)))
def test_chat_template_kwargs_is_an_object_or_one_argparse_error(text):
    try:
        assert isinstance(utils.chat_template_kwargs(text), dict)
    except argparse.ArgumentTypeError as e:
        assert "\n" not in str(e)


def test_chat_template_kwargs_refuses_deep_or_huge_json():
    for text in ("[" * 100_000, "9" * 5000, '{"a": ' + "[" * 100_000):
        with pytest.raises(argparse.ArgumentTypeError, match="not (usable )?JSON"):
            utils.chat_template_kwargs(text)
    assert utils.chat_template_kwargs('{"enable_thinking": false}') == {"enable_thinking": False}


def fake_gpu(monkeypatch, major: int, minor: int) -> None:
    """torch.cuda as a machine with one GPU of this compute capability would answer; bf16 emulation works there, as
    on a real T4 (torch.cuda.is_bf16_supported() then says True unless emulation is excluded)."""
    from types import SimpleNamespace

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(
        torch.cuda, "get_device_properties", lambda device=None: SimpleNamespace(major=major, minor=minor)
    )
    monkeypatch.setattr(torch.cuda, "_check_bf16_tensor_supported", lambda device: True)
    monkeypatch.setattr(torch.version, "hip", None)


@pytest.mark.parametrize(
    "major, minor, auto, vllm",
    [(7, 5, torch.float16, "float16"), (7, 0, torch.float16, "float16"), (8, 0, torch.bfloat16, "bfloat16")],
    ids=["T4 sm75", "V100 sm70", "A100 sm80"],
)
def test_the_dtype_rule_on_each_gpu(monkeypatch, major, minor, auto, vllm):
    """bf16 only where the GPU computes it natively; a T4 or V100, whose bf16 torch calls supported because it counts
    emulation, gets fp16 (with the trainers' loss scaling); vLLM gets the same choice; --precision overrides."""
    fake_gpu(monkeypatch, major, minor)
    cuda = torch.device("cuda")
    assert torch.cuda.is_bf16_supported()  # emulation counts: the trap the rule avoids
    assert utils.pick_dtype(cuda) == auto and utils.vllm_dtype() == vllm
    for precision, dtype in utils.DTYPES.items():
        assert utils.pick_dtype(cuda, precision) == dtype


def test_the_dtype_rule_on_cpu_and_the_choice_function():
    assert utils.PRECISIONS == ("auto", *utils.DTYPES)
    cpu = torch.device("cpu")
    assert utils.pick_dtype(cpu) == torch.float32 and utils.vllm_dtype() == "auto"  # vLLM's CPU backend chooses
    assert [utils.pick_dtype(cpu, p) for p in ("bf16", "fp16", "fp32")] == [
        torch.bfloat16,
        torch.float16,
        torch.float32,
    ]
    assert utils.choose_dtype("cuda", native_bf16=True) == torch.bfloat16
    assert utils.choose_dtype("cuda", native_bf16=False) == torch.float16
    assert utils.choose_dtype("cpu", native_bf16=False) == torch.float32
    assert utils.choose_dtype("cuda", native_bf16=False, precision="bf16") == torch.bfloat16  # the user's choice


def test_checkpointing_on_the_transformers_vllm_allows():
    """transformers 5.20-5.22 (vLLM 0.33's range) lacks activation_checkpointing_enable: the older name is used, and
    --offload-activations, which only the new one has, stops with what to install."""

    class Older:  # transformers 5.20
        def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs=None):
            self.enabled = gradient_checkpointing_kwargs

    class Newer:  # transformers >= 5.23
        def activation_checkpointing_enable(self, activation_checkpointing_kwargs=None, offload=False):
            self.enabled = (activation_checkpointing_kwargs, offload)

    older, newer = Older(), Newer()
    utils.enable_checkpointing(older)
    utils.enable_checkpointing(newer, offload=True)
    assert older.enabled == {"use_reentrant": False} and newer.enabled == ({"use_reentrant": False}, True)
    with pytest.raises(SystemExit, match="--offload-activations needs transformers >= 5.23"):
        utils.enable_checkpointing(Older(), offload=True)


def test_cpu_threads_per_rank_undo_torchruns_one_thread(monkeypatch):
    monkeypatch.setattr(utils.os, "sched_getaffinity", lambda pid: set(range(16)))
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert utils.cpu_threads_per_rank() is None  # not under torchrun: torch's own default stands
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # what torchrun sets when it is unset
    assert utils.cpu_threads_per_rank() == 4
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "32")
    assert utils.cpu_threads_per_rank() == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "6")  # chosen by hand: kept
    assert utils.cpu_threads_per_rank() is None


def test_code_commit_names_the_commit_and_only_python_changes(tmp_path, monkeypatch):
    import subprocess

    monkeypatch.setattr(utils, "REPO_DIR", tmp_path)
    assert utils.code_commit() == "unknown (not a git checkout)"
    git = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    (tmp_path / "train.py").write_text("x = 1\n")
    (tmp_path / "RESULTS.md").write_text("old\n")
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "c"], check=True)
    head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    (tmp_path / "RESULTS.md").write_text("rewritten by the run being recorded\n")
    assert utils.code_commit() == head  # results files do not count
    (tmp_path / "train.py").write_text("x = 2\n")
    assert utils.code_commit() == f"{head} with uncommitted changes to *.py"
    (tmp_path / "train.py").write_text("x = 1\n")
    (tmp_path / "RESULTS.md").write_text("old\n")
    assert utils.code_commit(("*.md",)) == head  # any paths: here the results file is back as committed
    (tmp_path / "RESULTS.md").write_text("new\n")
    assert utils.code_commit(("*.py", "*.md")) == f"{head} with uncommitted changes to *.py, *.md"
