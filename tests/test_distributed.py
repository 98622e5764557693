"""distributed.py: the rank split, the global normalisation, the gradient sums and clipping, fp16's loss scaling, in
one process and in two gloo processes; the trainers' torchrun tests (test_train_full.py, test_train_lora.py) run them
end to end."""

from datetime import timedelta

import pytest
import torch
from conftest import exit_rank

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


def sgd_setup(scaler, grads: list[torch.Tensor]):
    """One fp32 parameter per gradient under plain SGD (its update IS the clipped gradient, so the clip shows), the
    loss scaled once as accumulate_step does, and the gradients a backward of the scaled loss would leave."""
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(g.shape)) for g in grads]
    scaler.scale(torch.ones(()))  # what accumulate_step's backward does first: the scale is made on first use
    for p, g in zip(params, grads):
        p.grad = g * scaler.get_scale()
    return params, torch.optim.SGD(params, lr=0.1)


def test_fp16_step_unscales_then_clips_then_steps_as_fp32_would():
    cpu = torch.device("cpu")
    torch.manual_seed(1)
    true_grads = [torch.randn(5, 3) * 3, torch.randn(4) * 3]  # norm ~14: the clip to 1.0 acts
    scaler = distributed.make_grad_scaler(torch.float16, cpu)
    params, optimizer = sgd_setup(scaler, true_grads)
    before = [p.detach().clone() for p in params]
    norm, loss_scale, stepped = distributed.scaled_optimizer_step(optimizer, scaler, params, 1.0, cpu)
    # the fp32 reference: the same gradients, never scaled, clipped and stepped
    reference = [torch.nn.Parameter(b.clone()) for b in before]
    for r, g in zip(reference, true_grads):
        r.grad = g.clone()
    expected_norm = distributed.clip_grad_norm(reference, 1.0, cpu)
    torch.optim.SGD(reference, lr=0.1).step()
    assert stepped and loss_scale == 2.0**16 and scaler.get_scale() == 2.0**16  # 2000 clean steps before it grows
    assert norm == pytest.approx(expected_norm, rel=1e-6)  # the true norm: the clip saw unscaled gradients
    for p, r in zip(params, reference):
        torch.testing.assert_close(p.detach(), r.detach(), rtol=1e-6, atol=1e-7)


def test_fp16_step_with_an_inf_or_nan_gradient_is_skipped_and_halves_the_scale():
    cpu = torch.device("cpu")
    for bad in (float("inf"), float("nan")):
        scaler = distributed.make_grad_scaler(torch.float16, cpu)
        grads = [torch.ones(3), torch.ones(2)]
        grads[1][0] = bad
        params, optimizer = sgd_setup(scaler, grads)
        before = [p.detach().clone() for p in params]
        _, loss_scale, stepped = distributed.scaled_optimizer_step(optimizer, scaler, params, 1.0, cpu)
        assert not stepped and loss_scale == 2.0**16 and scaler.get_scale() == 2.0**15
        assert all(torch.equal(p.detach(), b) for p, b in zip(params, before))  # not a single parameter moved


def test_bf16_and_fp32_steps_go_through_a_disabled_scaler_unchanged():
    cpu = torch.device("cpu")
    for dtype in (torch.bfloat16, torch.float32):
        scaler = distributed.make_grad_scaler(dtype, cpu)
        loss = torch.tensor(2.5)
        assert not scaler.is_enabled() and scaler.scale(loss) is loss
        params, optimizer = sgd_setup(scaler, [torch.full((3,), 0.1)])
        norm, loss_scale, stepped = distributed.scaled_optimizer_step(optimizer, scaler, params, 1.0, cpu)
        assert stepped and loss_scale == 1.0 and norm == pytest.approx(0.1 * 3**0.5)
        assert scaler.state_dict() == {}


def test_the_loss_scale_and_skipped_steps_survive_a_checkpoint():
    cpu = torch.device("cpu")
    scaler = distributed.make_grad_scaler(torch.float16, cpu)
    params, optimizer = sgd_setup(scaler, [torch.full((2,), float("inf"))])
    distributed.scaled_optimizer_step(optimizer, scaler, params, 1.0, cpu)  # skipped: 2^15
    state = {"grad_scaler": scaler.state_dict(), "skipped_steps": 3}
    resumed = distributed.make_grad_scaler(torch.float16, cpu)
    assert distributed.restore_grad_scaler(resumed, state) == 3 and resumed.get_scale() == 2.0**15
    # a checkpoint of a bf16 run, or of a version without the scaler: fp16 starts from torch's default scale
    fresh = distributed.make_grad_scaler(torch.float16, cpu)
    bf16_state = {"grad_scaler": distributed.make_grad_scaler(torch.bfloat16, cpu).state_dict()}
    assert distributed.restore_grad_scaler(fresh, bf16_state) == 0 and fresh.get_scale() == 2.0**16
    assert distributed.restore_grad_scaler(fresh, {}) == 0
    disabled = distributed.make_grad_scaler(torch.bfloat16, cpu)  # an fp16 checkpoint resumed in bf16: no scale
    assert distributed.restore_grad_scaler(disabled, state) == 3 and disabled.get_scale() == 1.0


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
    stepped = fp16_steps_of_fsdp_shards(rank, world)
    results.put((rank, p.grad.tolist(), q.grad.tolist(), norm, totals, peak, stepped))
    dist.destroy_process_group()
    exit_rank(results)


def fp16_steps_of_fsdp_shards(rank: int, world: int) -> list[bool]:
    """Two fp16 steps on a parameter sharded as FSDP2 shards it (a DTensor, one half per rank): the first with an inf
    in rank 1's half only. Every rank must skip it (a rank that stepped alone would leave the shards out of step and
    the scales apart), then take the second."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor, Shard

    cpu, mesh = torch.device("cpu"), init_device_mesh("cpu", (world,))
    shard = torch.nn.Parameter(DTensor.from_local(torch.zeros(2), mesh, [Shard(0)]))
    scaler = distributed.make_grad_scaler(torch.float16, cpu)
    optimizer = torch.optim.SGD([shard], lr=0.1)
    stepped = []
    for bad in (float("inf"), 1.0):
        scaler.scale(torch.ones(()))
        local = torch.full((2,), bad if rank == 1 else 1.0) * scaler.get_scale()
        shard.grad = DTensor.from_local(local, mesh, [Shard(0)])
        stepped.append(distributed.scaled_optimizer_step(optimizer, scaler, [shard], 10.0, cpu)[2])
    return stepped + [scaler.get_scale() == 2.0**15, torch.allclose(shard.to_local(), torch.full((2,), -0.1))]


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
    for _, p_grad, q_grad, norm, totals, peak, fp16_steps in got:
        assert p_grad == [3.0] * 4 and q_grad == [1.0, 1.0]  # summed, not averaged
        assert norm == pytest.approx((4 * 9 + 2) ** 0.5)
        assert totals == (4.5, 30) and peak == 1.0
        assert fp16_steps == [False, True, True, True]  # both skip the step with rank 1's inf, both take the next
