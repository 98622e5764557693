"""distributed.py: the rank split, the global normalisation, the gradient sums and clipping, in one process and in
two gloo processes; the trainers' torchrun tests (test_train_full.py, test_train_lora.py) run them end to end."""

from datetime import timedelta

import pytest
import torch

import distributed
import sft


def test_ranks_get_equal_micro_batch_counts_and_every_sample_once():
    lengths = [100, 90, 80, 70, 60, 50, 40, 30, 20, 10, 5]
    ids = list(range(len(lengths)))
    for world in (1, 2, 3, 8):
        per_rank = distributed.rank_micro_batches(ids, lengths, world, 100, sft.pack_step)
        assert len(per_rank) == world and len({len(m) for m in per_rank}) == 1  # FSDP: same number of passes everywhere
        assert sorted(i for m in per_rank for micro in m for i in micro) == ids  # nobody drops or repeats a sample
        assert all(sum(lengths[i] for i in micro) <= 100 for m in per_rank for micro in m)
        loads = [sum(lengths[i] for micro in m for i in micro) for m in per_rank]
        assert max(loads) - min(loads) <= max(lengths)
        assert per_rank == distributed.rank_micro_batches(list(reversed(ids)), lengths, world, 100, sft.pack_step)
    assert distributed.rank_micro_batches(ids, lengths, 1, 100, sft.pack_step) == [sft.pack_step(ids, lengths, 100)]
    assert distributed.rank_micro_batches([0, 1, 2], lengths, 8, 100, sft.pack_step)[7] == [
        []
    ]  # more ranks than samples


def test_dist_timeout_reaches_the_process_group(monkeypatch):
    """Rank 0 alone reads a 32B checkpoint and writes final/ while the others wait in a collective: --dist-timeout
    (minutes, default 2 h) must be the process group's timeout, under torchrun and in one process."""
    import torch.distributed as dist

    seen = []

    def init_process_group(backend, **kwargs):
        seen.append(kwargs["timeout"])
        raise RuntimeError("stop here")

    monkeypatch.setattr(dist, "init_process_group", init_process_group)
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    for under_torchrun in (True, False):
        if under_torchrun:
            monkeypatch.setenv("RANK", "0")
        else:
            monkeypatch.delenv("RANK", raising=False)
        with pytest.raises(RuntimeError, match="stop here"):
            distributed.init(timedelta(minutes=7))
    assert seen == [timedelta(minutes=7)] * 2


def test_dist_timeout_default_is_two_hours_in_both_trainers():
    import train_full
    import train_lora

    assert train_full.parse_args(["--data", "x.jsonl"]).dist_timeout == 120
    assert train_lora.parse_args(["--data", "x.jsonl"]).dist_timeout == 120


def test_one_process_clipping_is_torchs():
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(5, 3)) for _ in range(3)]
    for p in params:
        p.grad = torch.randn_like(p) * 3
    reference = [p.grad.clone() for p in params]
    expected = torch.linalg.vector_norm(torch.cat([g.flatten() for g in reference]))
    norm = distributed.clip_grad_norm(params, 1.0, torch.device("cpu"))
    assert norm == pytest.approx(expected.item(), rel=1e-6)
    assert torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in params])).item() == pytest.approx(
        1.0, rel=1e-5
    )
    assert distributed.clip_grad_norm(params, 10.0, torch.device("cpu")) == pytest.approx(1.0, rel=1e-5)  # not scaled


def _two_ranks(rank: int, world: int, init_file: str, results):
    """One gloo rank: replicated gradients are summed, sharded-style (DTensor) norms add up, totals are summed."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    p = torch.nn.Parameter(torch.zeros(4))
    p.grad = torch.full((4,), float(rank + 1))  # rank 0: ones, rank 1: twos
    q = torch.nn.Parameter(torch.zeros(2))  # no gradient on this rank: it must still join the all-reduce
    if rank == 1:
        q.grad = torch.ones(2)
    distributed.all_reduce_gradients([p, q])
    norm = distributed.clip_grad_norm([p, q], 100.0, torch.device("cpu"))  # replicated: no second sum
    totals = distributed.sum_over_ranks(1.5 * (rank + 1), 10 * (rank + 1), torch.device("cpu"))
    peak = distributed.max_over_ranks(float(rank), torch.device("cpu"))
    results.put((rank, p.grad.tolist(), q.grad.tolist(), norm, totals, peak))
    dist.destroy_process_group()


def test_collectives_in_two_gloo_processes(tmp_path):
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    procs = [ctx.Process(target=_two_ranks, args=(r, 2, str(tmp_path / "init"), results)) for r in range(2)]
    for proc in procs:
        proc.start()
    got = sorted(results.get(timeout=120) for _ in procs)
    for proc in procs:
        proc.join(timeout=60)
        assert proc.exitcode == 0
    for _, p_grad, q_grad, norm, totals, peak in got:
        assert p_grad == [3.0] * 4 and q_grad == [1.0, 1.0]  # summed, not averaged
        assert norm == pytest.approx((4 * 9 + 2) ** 0.5)
        assert totals == (4.5, 30) and peak == 1.0
