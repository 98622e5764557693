"""vLLM data parallelism for evaluate.py (--backend vllm --data-parallel-size N): N engine replicas, one process each,
each on its own --tensor-parallel-size GPUs, pulling chunks of jobs from one queue.

Why one process per replica, each a plain vllm.LLM, and not vLLM's offline data parallelism
(examples/offline_inference/data_parallel.py: every rank a process with VLLM_DP_RANK/VLLM_DP_SIZE set, its static
share of the prompts): replicas of a dense model need nothing from each other, and a shared queue keeps every replica
busy to the end whatever the response lengths (a static split waits for the rank that drew the longest thoughts;
long-CoT lengths vary 10x). It is SkyThought's layout (Ray Data over independent vLLM replicas, its PR #63) without
Ray, and it runs on vLLM's CPU build as on GPUs.

Each replica holds one chunk at a time, and the main process writes a chunk's samples the moment it comes back, so a
kill loses at most one chunk per replica. A chunk's samples keep the jobs' order; chunks are written as they finish
(completion order: a finished chunk held back behind an unfinished earlier one would be lost on a kill), and nothing
reads the files by position: resume and scoring key each sample by (task, id, sample).
"""

from __future__ import annotations

import argparse
import atexit
import multiprocessing
import os
import queue
import signal
import sys
from typing import Iterator

RESULT_POLL_S = 5.0  # how often the main process checks that every replica is still alive while it waits


def devices(size: int, tensor_parallel: int) -> list[dict[str, str]]:
    """The environment of each replica: its GPUs (CUDA_VISIBLE_DEVICES, a slice of those this process sees), or on
    vLLM's CPU build its share of the cores (VLLM_CPU_OMP_THREADS_BIND), so that replicas do not compete for the same
    ones. A binding the user set is kept."""
    import torch

    if torch.cuda.is_available():
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        gpus = visible.split(",") if visible else [str(i) for i in range(torch.cuda.device_count())]
        if len(gpus) < size * tensor_parallel:
            raise SystemExit(
                f"--data-parallel-size {size} x --tensor-parallel-size {tensor_parallel} needs "
                f"{size * tensor_parallel} GPUs; {len(gpus)} visible"
            )
        return replica_env(size, tensor_parallel, gpus, [])
    cores = [str(c) for c in sorted(os.sched_getaffinity(0))]
    if os.environ.get("VLLM_CPU_OMP_THREADS_BIND", "auto") != "auto" or len(cores) < size * tensor_parallel:
        return [{} for _ in range(size)]  # the user's binding, or too few cores to split: vLLM's own rule
    return replica_env(size, tensor_parallel, [], cores)


def replica_env(size: int, tensor_parallel: int, gpus: list[str], cores: list[str]) -> list[dict[str, str]]:
    """Replica r gets GPUs r*TP..(r+1)*TP-1; on CPU, each of its TP ranks an equal share of the cores, as vLLM's
    VLLM_CPU_OMP_THREADS_BIND writes them ("0,1|2,3": rank 0 on cores 0 and 1, rank 1 on 2 and 3)."""
    if gpus:
        return [
            {"CUDA_VISIBLE_DEVICES": ",".join(gpus[r * tensor_parallel : (r + 1) * tensor_parallel])}
            for r in range(size)
        ]
    share = len(cores) // (size * tensor_parallel)
    ranks = [",".join(cores[i * share : (i + 1) * share]) for i in range(size * tensor_parallel)]
    return [
        {"VLLM_CPU_OMP_THREADS_BIND": "|".join(ranks[r * tensor_parallel : (r + 1) * tensor_parallel])}
        for r in range(size)
    ]


def replica(cfg, jobs: list[dict], env: dict, chunks, results, parent: int) -> None:
    """One engine replica: build it as --data-parallel-size 1 would, then generate chunks until told to stop."""
    os.environ.update(env)  # before vLLM starts: the devices this replica may use
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # stopped by the main process: still shut the engine down
    try:
        import generation

        one = argparse.Namespace(**vars(cfg) | {"data_parallel_size": 1})
        try:
            _, generate_chunk = generation.vllm_backend(one, jobs)
        except Exception as e:  # reported to the main process, which stops the run with it
            results.put(("error", f"{type(e).__name__}: {e}"))
            return
        while True:
            try:
                item = chunks.get(timeout=RESULT_POLL_S)
            except queue.Empty:
                if os.getppid() != parent:  # the run was killed: do not generate for no one
                    return
                continue
            if item is None:
                return
            index, chunk = item
            try:
                results.put((index, list(generate_chunk(chunk))))
            except Exception as e:
                results.put(("error", f"{type(e).__name__}: {e}"))
                return
    finally:
        # A multiprocessing child ends with os._exit, which skips the interpreter's exit functions; vLLM shuts its
        # engine process down in them, which would otherwise outlive this replica.
        atexit._run_exitfuncs()


def replicas(cfg, jobs: list[dict]):
    """The vllm backend's (chunk size, generate_chunk) over --data-parallel-size replicas. One call takes every job it
    is given: it starts the replicas, yields each chunk's samples as its replica finishes it, and stops them (each
    run of --thinking-budgets starts them again: minutes against the hours of generation)."""
    envs = devices(cfg.data_parallel_size, cfg.tensor_parallel_size)
    # spawn: a replica must start without this process's CUDA state or threads
    context = multiprocessing.get_context("spawn")

    def generate_all(all_jobs: list[dict]) -> Iterator[dict]:
        chunks, results = context.Queue(), context.Queue()
        pieces = [all_jobs[i : i + cfg.chunk_size] for i in range(0, len(all_jobs), cfg.chunk_size)]
        for item in enumerate(pieces):
            chunks.put(item)
        workers = []
        for env in envs[: len(pieces)]:
            chunks.put(None)  # one stop sign per replica, behind the chunks
            args = (cfg, jobs, env, chunks, results, os.getpid())
            workers.append(context.Process(target=replica, args=args))  # not daemonic: vLLM starts processes
            workers[-1].start()
        print(f"{len(workers)} vLLM replicas: {'; '.join(map(str, envs[: len(workers)]))}", file=sys.stderr)
        finished = False
        try:
            for _ in pieces:
                while True:
                    try:
                        index, samples = results.get(timeout=RESULT_POLL_S)
                        break
                    except queue.Empty:
                        if not any(w.is_alive() for w in workers):
                            raise SystemExit("the vLLM replicas exited before the jobs were done (see above)") from None
                if index == "error":
                    raise SystemExit(f"a vLLM replica failed: {samples}")
                yield from samples
            finished = True
        finally:
            for worker in workers:
                if not finished:  # chunks still queued or in flight: stop the replicas rather than wait for them
                    worker.terminate()  # SIGTERM: the replica shuts its engine down, then exits
            for worker in workers:  # done: each took its stop sign and shuts its engine down
                worker.join(60)
                if worker.is_alive():
                    worker.kill()
                    worker.join(30)

    return sys.maxsize, generate_all  # one call takes every job: the replicas chunk them
