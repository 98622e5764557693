"""Every benchmark in bench/ runs end to end in --quick mode (seconds, tiny sizes) and writes sane JSON, so none rots.

The numbers of a quick run are not measurements; only the invariants that hold at any size are asserted. Benchmarks
that spawn their own measured subprocesses run as CLIs; the others run in this process through main(parse_args(...)),
because importing transformers again costs ~10 s per process on 2 cores.
"""

import argparse
import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))


def run_in_process(module: str, tmp_path: Path, *extra: str) -> dict:
    threads = torch.get_num_threads()
    try:
        bench = importlib.import_module(module)
        return bench.main(bench.parse_args(["--quick", "--results-dir", str(tmp_path), "--results-md", "", *extra]))
    finally:
        torch.set_num_threads(threads)  # train_throughput pins one thread; later tests should not inherit that


def run_bench(script: str, tmp_path: Path, *extra: str) -> dict:
    quick = ["--quick", "--results-dir", str(tmp_path), "--results-md", ""]
    cmd = [sys.executable, str(REPO / "bench" / script), *quick, *extra]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{script} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    assert "| " in done.stdout, "no table printed"
    return json.loads((tmp_path / script.replace(".py", ".json")).read_text())


def test_saved_results_record_no_machine_path(tmp_path):
    """What save_results writes names the repository's files relative to it and others by their name (no run needed):
    a benchmark's defaults are absolute paths of the machine that runs it."""
    common = importlib.import_module("common")
    parser = argparse.ArgumentParser()
    common.add_common_args(parser)
    args = parser.parse_args(["--results-dir", str(tmp_path / "results"), "--results-md", str(tmp_path / "R.md")])
    sample = REPO / "data" / "sample" / "sky_t1_minerva_math.jsonl"
    config = {
        **vars(args),
        "real": str(sample),  # a default: absolute, inside the repository
        "model": REPO / "out" / "bench" / "tiny",  # a Path
        "responses": [str(sample), "../elsewhere/b.jsonl", "tests/data/a.jsonl"],  # as given on a command line
        "baseline": ["HEAD"],
        "seed": 0,
    }
    payload = {"machine": {"cpu": "x"}, "config": config, "rows": [{"answer": "/2"}]}
    common.save_results(args, "demo", "Demo", payload, f"real = {sample}\n")
    saved = json.loads((tmp_path / "results" / "demo.json").read_text())
    assert saved["config"] == {
        "quick": False,
        "results_dir": "results",
        "results_md": "R.md",
        "real": "data/sample/sky_t1_minerva_math.jsonl",
        "model": "out/bench/tiny",
        "responses": ["data/sample/sky_t1_minerva_math.jsonl", "b.jsonl", "tests/data/a.jsonl"],
        "baseline": ["HEAD"],
        "seed": 0,
    }
    assert saved["rows"] == payload["rows"] and config["real"] == str(sample)  # results as measured; args untouched
    markdown = (tmp_path / "R.md").read_text()
    assert "real = data/sample/sky_t1_minerva_math.jsonl\n" in markdown and str(REPO) not in markdown


def test_packing_beats_padding(tmp_path, tiny_model_dir):
    result = run_in_process("packing", tmp_path, "--model", str(tiny_model_dir))
    by = {(r["lengths"], r["strategy"]): r for r in result["rows"]}
    for lengths in {r["lengths"] for r in result["rows"]}:
        packed, padded, sequential = by[lengths, "packed"], by[lengths, "padded"], by[lengths, "sequential"]
        assert packed["real_over_computed"] == 1.0 and padded["real_over_computed"] <= 1.0
        fewest_other = min(padded["micro_batches_per_epoch"], sequential["micro_batches_per_epoch"])
        assert packed["micro_batches_per_epoch"] <= fewest_other
        assert 0 < padded["fill"] <= packed["fill"] <= 1.0
    assert all(r["fill_packed_over_padded"] >= 1.0 for r in result["ratios"])


def test_loss_memory_chunked_uses_less(tmp_path, tiny_model_dir):
    result = run_bench("loss_memory.py", tmp_path, "--model", str(tiny_model_dir))
    loss_rows = {(r["loss"], r["tokens"]): r for r in result["rows"] if r["part"] == "loss"}
    naive, chunked = loss_rows["naive", 2048], loss_rows["chunked", 2048]
    assert naive["fits"] and chunked["fits"]
    assert naive["loss_value"] == pytest.approx(chunked["loss_value"], rel=1e-4)  # same loss, computed two ways
    assert naive["extra_gib"] > chunked["extra_gib"] > 0
    train_rows = [r for r in result["rows"] if r["part"] == "train"]
    assert {r["loss"] for r in train_rows} == {"naive", "chunked"}
    assert all(r["fits"] and r["peak_rss_gib"] > 0.1 for r in train_rows)
    assert any(r["part"] == "loss" and r["naive_over_chunked"] > 1 for r in result["ratios"])


def test_train_throughput_counts_the_same_real_tokens(tmp_path, tiny_model_dir):
    result = run_in_process("train_throughput", tmp_path, "--model", str(tiny_model_dir))
    packed, padded = (next(r for r in result["rows"] if r["batching"] == b) for b in ("packed", "padded"))
    assert packed["real_tokens"] == padded["real_tokens"] > 0
    assert packed["micro_batches"] <= padded["micro_batches"]
    assert result["summary"]["median_packed_over_padded"] > 0


def test_scoring_grades_and_sandbox_pass(tmp_path):
    result = run_in_process("scoring", tmp_path)
    rows = {(r["task"], r["workers"]): r for r in result["rows"]}
    assert rows["math", 1]["items"] == rows["math", result["config"]["workers"]]["items"] > 0
    assert rows["math", 1]["agreement"] >= 0.9  # right answers accepted, wrong ones rejected
    assert rows["code tests", 1]["agreement"] == 1.0  # the lookup program passes every real test
    assert all(r["per_s"] > 0 for r in result["rows"])


def test_prepare_throughput(tmp_path, tiny_model_dir):
    result = run_bench("prepare_throughput.py", tmp_path, "--model", str(tiny_model_dir))
    (row,) = result["rows"]
    assert row["records_in"] == 40 and 0 < row["records_out"] <= 40
    assert row["tokens_tokenized"] > 40 * 100 and row["records_per_s"] > 0


def test_gpu_bench_skips_without_cuda_and_dry_runs_on_cpu(tmp_path):
    if not torch.cuda.is_available():
        assert run_in_process("gpu", tmp_path) == {"skipped": "no CUDA device"}
        assert not (tmp_path / "gpu.json").exists()
    result = run_in_process("gpu", tmp_path, "--device", "cpu", "--tiny", "--lengths", "96", "--repeats", "1")
    rows = {r["method"]: r for r in result["rows"]}
    assert rows["ours"]["status"] == rows["baseline"]["status"] == "ok"
    assert rows["ours"]["samples"] > 1  # a packed row of several samples vs the padded batch of the same samples
    assert rows["ours"]["tokens_per_s"] > 0 and result["config"]["quant"] == "nf4"


def test_grader_agreement_with_public_suites(tmp_path):
    """Every bundled Math-Verify and lm-evaluation-harness case (~30 s): where this grader differs from a suite's
    verdict on a consistent case, the difference is one of the rules chosen on purpose (bench/RESULTS.md, section 7)."""
    bench = importlib.import_module("grader_agreement")
    args = ["--baseline", "none", "--results-dir", str(tmp_path), "--results-md", ""]
    result = bench.main(bench.parse_args(args))
    overall = next(r for r in result["rows"] if r["source"] == "all" and r["cases"] == "consistent")
    assert overall["n"] > 300 and overall["this"] >= 0.95, overall
    undeclared = [d["id"] for d in result["disagreements"] if d["consistent"] and not d["deliberate"]]
    assert not undeclared, undeclared


def test_sequence_parallel_bench_runs_both_layouts_with_the_same_loss(tmp_path):
    result = run_bench("sequence_parallel_memory.py", tmp_path)
    assert {r["sp"] for r in result["rows"]} == {1, 2} and all(r["peak_rss_gib"] > 0.1 for r in result["rows"])
    assert all(r["same_loss"] for r in result["ratios"])  # SP 2 computes the SP 1 step
