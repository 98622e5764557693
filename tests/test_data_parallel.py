"""data_parallel.py: --data-parallel-size replicas in their own processes, against a stand-in vllm package on disk
(the spawned replicas import it): every job generated once, each chunk in job order, each replica on its own cores,
and a failed chunk stops the run with the finished chunks kept. Real vLLM replicas: tests/test_vllm.py."""

import json
import os
import sys

import pytest

import data_parallel
import evaluate

FAKE_VLLM = '''"""vllm.LLM and SamplingParams as evaluate.py uses them: \\\\boxed{seed % 5}, naming its process."""
import os
import time
from types import SimpleNamespace as SamplingParams


class LLM:
    def __init__(self, **engine):
        self.bind = os.environ.get("VLLM_CPU_OMP_THREADS_BIND", "")

    def generate(self, prompts, params, lora_request=None):
        if any(p.seed == int(os.environ.get("FAKE_VLLM_FAIL_SEED", "-1")) for p in params):
            raise RuntimeError("out of memory")
        time.sleep(0.2)  # long enough that both replicas get chunks
        text = [f"\\\\boxed{{{p.seed % 5}}} pid {os.getpid()} bind {self.bind}" for p in params]
        out = [SamplingParams(text=t, token_ids=[1, 2], finish_reason="stop") for t in text]
        return [SamplingParams(outputs=[o]) for o in out]
'''


@pytest.fixture
def fake_vllm(tmp_path, monkeypatch):
    (tmp_path / "fake" / "vllm").mkdir(parents=True)
    (tmp_path / "fake" / "vllm" / "__init__.py").write_text(FAKE_VLLM)
    monkeypatch.syspath_prepend(str(tmp_path / "fake"))  # spawned replicas start with this process's sys.path
    monkeypatch.delitem(sys.modules, "vllm", raising=False)
    monkeypatch.delenv("VLLM_CPU_OMP_THREADS_BIND", raising=False)
    return tmp_path / "fake"


def test_replicas_share_the_chunks_and_keep_finished_ones_on_failure(fake_vllm, tiny_model_dir, tmp_path, monkeypatch):
    task = tmp_path / "seven.jsonl"
    task.write_text("".join(json.dumps({"id": i, "problem": f"{i}?", "answer": "0"}) + "\n" for i in range(7)))
    out = tmp_path / "out"
    args = f"--model {tiny_model_dir} --tasks {task} --data-parallel-size 2 --chunk-size 2 --max-tokens 8".split()
    args += f"--output-dir {out} --workers 1".split()
    failing = evaluate.sample_seed(0, "seven", "5", 0)  # the chunk of problems 4 and 5 fails
    monkeypatch.setenv("FAKE_VLLM_FAIL_SEED", str(failing))
    with pytest.raises(SystemExit, match="a vLLM replica failed: RuntimeError: out of memory"):
        evaluate.main(evaluate.parse_args(args))
    kept = [json.loads(line)["id"] for line in (out / "generations.jsonl").read_text().splitlines()]
    assert "4" not in kept and "5" not in kept and len(kept) % 2 == 0  # whole chunks, the failed one lost

    monkeypatch.delenv("FAKE_VLLM_FAIL_SEED")
    evaluate.main(evaluate.parse_args(args))
    generations = [json.loads(line) for line in (out / "generations.jsonl").read_text().splitlines()]
    ids = [g["id"] for g in generations]
    assert sorted(ids) == [str(i) for i in range(7)]  # every job once, the kept ones not again
    assert ids[: len(kept)] == kept
    rerun = ids[len(kept) :]  # the rerun's chunks, in the order they finished, each in job order
    remaining = sorted(rerun, key=int)
    chunks = {chunk[0]: chunk for chunk in (remaining[i : i + 2] for i in range(0, len(remaining), 2))}
    at = 0
    while at < len(rerun):
        chunk = chunks.pop(rerun[at])
        assert rerun[at : at + len(chunk)] == chunk
        at += len(chunk)
    processes = {g["response"].split(" pid ")[1].split()[0] for g in generations}
    assert len(processes) >= 2 and str(os.getpid()) not in processes  # replicas in processes of their own
    binds = {g["response"].split(" bind ")[1] for g in generations}
    if len(os.sched_getaffinity(0)) >= 2:  # each replica on its own cores
        assert len(binds) == 2 and not set.intersection(*(set(b.split(",")) for b in binds))
    for g in generations:
        seed = evaluate.sample_seed(0, "seven", g["id"], 0)
        assert g["response"].startswith(f"\\boxed{{{seed % 5}}}")


def test_each_replica_gets_its_own_gpus_or_cores():
    eight = [str(i) for i in range(8)]
    gpus = data_parallel.replica_env(4, 2, eight, [])  # 32B on 8 GPUs: 4 replicas of TP 2
    assert gpus == [{"CUDA_VISIBLE_DEVICES": f"{2 * r},{2 * r + 1}"} for r in range(4)]
    cores = data_parallel.replica_env(2, 2, [], eight)
    assert cores == [{"VLLM_CPU_OMP_THREADS_BIND": "0,1|2,3"}, {"VLLM_CPU_OMP_THREADS_BIND": "4,5|6,7"}]
