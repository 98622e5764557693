"""sequence_parallel.py: the row split, Ulysses attention over two gloo ranks against the plain model on the whole
row (and two broken variants that must fail that check), then both trainers under torchrun with --sequence-parallel 2
against one process, SP 2 x DP 2 over two localhost "nodes", and a checkpoint of SP 2 resumed in one process."""

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import exit_rank

import distributed
import sequence_parallel
import sft
import train_full
import train_lora
import utils

REPO = Path(__file__).resolve().parents[1]
TOLERANCE = 1e-5  # the bound, relative; measured: see the tests
pytestmark = pytest.mark.usefixtures("one_torch_thread")
ONE_THREAD_ENV = {**os.environ, "OMP_NUM_THREADS": "1"}

# Packed rows of sample lengths: a boundary exactly on the shard boundary (4 | 4), one inside a shard and an odd
# length (3 + 6 = 9, padded to 10), several samples per shard with a 1-token sample last (2 + 3 + 5 + 1 = 11).
ROWS = [[4, 4], [3, 6], [2, 3, 5, 1]]


def row_batch(lengths: list[int], seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    samples = []
    for n in lengths:
        ids = torch.randint(1, 100, (n,), generator=g).tolist()
        samples.append(sft.make_sample(ids, [sft.IGNORE_INDEX] + ids[1:]))  # the first token is the "prompt"
    return sft.collate_packed(samples)


def tiny_qwen2(heads: int = 4, kv_heads: int = 1):
    """4 query heads over 1 key/value head: fewer KV heads than N = 2, so the repetition runs. 6 over 3: each rank's
    query heads must meet their own KV heads, which only repeat_interleave's order gives (.repeat would pair query
    head 1 with KV head 1, not 0; with one KV head both orders agree). Weights 10x the usual init: sharp attention,
    so that positions, boundaries and the head pairing move the loss well past the tolerance."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(vocab_size=100, hidden_size=16 * heads, intermediate_size=96, num_hidden_layers=2)
    config.update(
        dict(
            num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=256, initializer_range=0.2
        )
    )
    torch.manual_seed(0)
    return Qwen2ForCausalLM(config).float().train()


def one_process_reference(heads: int = 4, kv_heads: int = 1) -> tuple[list[float], dict[str, torch.Tensor]]:
    lm = tiny_qwen2(heads, kv_heads)
    lm.set_attn_implementation("sdpa")
    losses = []
    for i, lengths in enumerate(ROWS):
        loss = sft.summed_loss(lm, row_batch(lengths, i), 4)
        loss.backward()
        losses.append(loss.item())
    return losses, {n: p.grad.clone() for n, p in lm.named_parameters()}


def _sp_rank(rank: int, world: int, init_file: str, results):
    """One gloo rank of SP 2: each row sharded, the loss of its shard; then the two broken variants."""
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    layout = sequence_parallel.setup(world, rank, world, torch.device("cpu"))
    proper_attention, proper_shard = sequence_parallel.row_attention, sequence_parallel.shard_row

    def one_causal_row(query, key, value, cu_seqlens, bounds, *args):  # broken: boundaries lost after the all-to-all
        return proper_attention(query, key, value, cu_seqlens[[0, -1]], bounds[:: len(bounds) - 1], *args)

    def positions_per_shard(batch, layout):  # broken: each rank numbers its shard from 0
        shard = proper_shard(batch, layout)
        return dict(shard, position_ids=torch.arange(shard["position_ids"].shape[1]).unsqueeze(0))

    for variant in ("ulysses", "boundaries lost", "positions per shard", "6 heads over 3 KV heads"):
        sequence_parallel.row_attention = one_causal_row if variant == "boundaries lost" else proper_attention
        shard_row = positions_per_shard if variant == "positions per shard" else proper_shard
        lm = tiny_qwen2(6, 3) if variant.startswith("6 heads") else tiny_qwen2()
        sequence_parallel.use_ulysses(lm, layout, "sdpa")
        losses, shards = [], []
        for i, lengths in enumerate(ROWS):
            shard = shard_row(row_batch(lengths, i), layout)
            loss = sft.summed_loss(lm, shard, 4)
            loss.backward()
            losses.append(distributed.sum_over_ranks(loss.item(), 0, torch.device("cpu"))[0])
            shards.append({k: v.tolist() if torch.is_tensor(v) else list(v) for k, v in shard.items()})
        distributed.all_reduce_gradients(list(lm.parameters()))  # the shards' partial gradients, summed
        if rank == 0:  # numpy copies: pickled by value, later, by the queue's thread
            results.put((variant, losses, {n: p.grad.numpy().copy() for n, p in lm.named_parameters()}))
        if variant == "ulysses":
            results.put((rank, shards))
    dist.destroy_process_group()
    exit_rank(results)


@pytest.fixture(scope="module")
def two_rank_attention(tmp_path_factory):
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    init = tmp_path_factory.mktemp("sp") / "init"
    procs = [ctx.Process(target=_sp_rank, args=(r, 2, str(init), results)) for r in range(2)]
    for proc in procs:
        proc.start()
    got = [results.get(timeout=300) for _ in range(6)]
    for proc in procs:
        proc.join(timeout=60)
        assert proc.exitcode == 0
    return got


def test_shards_rebuild_the_padded_row_with_true_positions_and_boundaries(two_rank_attention):
    shards = dict(item for item in two_rank_attention if isinstance(item[0], int))
    for i, lengths in enumerate(ROWS):
        row, (a, b) = row_batch(lengths, i), (shards[0][i], shards[1][i])
        padded = -sum(lengths) % 2
        assert len(a["input_ids"][0]) == len(b["input_ids"][0]) == (sum(lengths) + padded) // 2
        assert (a["input_ids"][0] + b["input_ids"][0])[: sum(lengths)] == row["input_ids"][0].tolist()
        assert (a["position_ids"][0] + b["position_ids"][0]) == row["position_ids"][0].tolist() + list(range(padded))
        assert (a["targets"][0] + b["targets"][0]) == row["targets"][0].tolist() + [sft.IGNORE_INDEX] * padded
        starts = [sum(lengths[:k]) for k in range(len(lengths))] + ([sum(lengths)] if padded else [])
        assert a["sp_cu_seqlens"] == b["sp_cu_seqlens"] == a["sp_bounds"] == starts + [sum(lengths) + padded]


def assert_one_process_result(run, *model_heads) -> list[float]:
    """The two ranks' (losses, gradients) equal one process's on the same rows; returns the one-process losses."""
    losses, grads = one_process_reference(*model_heads)
    sp_losses, sp_grads = run
    assert sp_losses == pytest.approx(losses, rel=TOLERANCE)
    for name, grad in grads.items():
        torch.testing.assert_close(
            torch.from_numpy(sp_grads[name]), grad, rtol=TOLERANCE, atol=TOLERANCE * grad.abs().max().item()
        )
    return losses


def test_ulysses_gives_the_one_process_losses_and_gradients_and_broken_variants_do_not(two_rank_attention):
    """Measured: equal to ~1e-7 relative (float summation order). Losing the boundaries after the all-to-all changes
    the rows' losses by 2-7%, restarting positions per shard by up to 3.6% (not row 0, whose shard boundary is a
    sample boundary): the check can fail."""
    runs = {item[0]: item[1:] for item in two_rank_attention if isinstance(item[0], str)}
    losses = assert_one_process_result(runs["ulysses"])
    for broken in ("boundaries lost", "positions per shard"):
        broken_losses = runs[broken][0]
        assert max(abs(b - a) / a for a, b in zip(losses, broken_losses)) > 100 * TOLERANCE, broken


def test_kv_heads_repeated_in_order_give_the_one_process_losses_and_gradients(two_rank_attention):
    """6 query heads over 3 KV heads at N = 2: each KV head is repeated to 6, in order, so rank 0's query heads 0-2
    meet KV heads 0, 0, 1 as in the model. Tried by hand: .repeat in place of repeat_interleave changes the losses by
    up to 46% (the 4-over-1 model cannot tell the two apart)."""
    runs = {item[0]: item[1:] for item in two_rank_attention if isinstance(item[0], str)}
    assert_one_process_result(runs["6 heads over 3 KV heads"], 6, 3)


def test_n_must_divide_heads_and_ranks_and_the_error_lists_the_possible_n():
    from transformers import Qwen2Config

    config = Qwen2Config(num_attention_heads=40, num_key_value_heads=8, hidden_size=40 * 8)
    sequence_parallel.check_model(config, 8, 16)
    with pytest.raises(SystemExit, match="40 attention heads; possible: 1, 2, 4, 8$"):
        sequence_parallel.check_model(config, 16, 16)  # 16 divides the ranks, not the heads; 5, 20, 40 not the ranks
    key = torch.arange(8.0).reshape(1, 8, 1, 1)
    repeated, _ = sequence_parallel.repeat_kv_heads(key, key, 40, 16)  # 8 KV heads, N 16: each twice
    assert repeated.flatten().tolist() == [h // 2 for h in range(16)]
    with pytest.raises(SystemExit, match=r"must divide the 4 rank\(s\) .*; possible: 1, 2, 4$"):
        sequence_parallel.setup(3, 0, 4, torch.device("cpu"))


def test_sliding_window_and_softcapping_models_are_refused():
    """The row kernels take no window and no softcap: such models would train silently wrong under SP."""
    from transformers import Gemma2Config, MistralConfig, Qwen2Config

    small = dict(num_attention_heads=4, num_key_value_heads=1, hidden_size=64, num_hidden_layers=2)
    sequence_parallel.check_model(Qwen2Config(**small, sliding_window=4096, use_sliding_window=False), 2, 2)
    for config, refused in [
        (MistralConfig(**small), "sliding_window 4096"),  # no use_sliding_window: the window is on
        (Qwen2Config(**small, use_sliding_window=True, sliding_window=64, max_window_layers=1), "sliding_attention"),
        (Gemma2Config(**small, head_dim=16), "sliding_attention"),
        (Gemma2Config(**small, head_dim=16, layer_types=["full_attention"] * 2), "attn_logit_softcapping"),
    ]:
        with pytest.raises(SystemExit, match=refused):
            sequence_parallel.check_model(config, 2, 2)
    query = torch.zeros(1, 2, 2, 4)
    with pytest.raises(ValueError, match="no sliding window"):
        sequence_parallel.ulysses_attention(
            None,
            query,
            query,
            query,
            None,
            group=None,
            kernel="sdpa",
            sp_cu_seqlens=torch.tensor([0, 4]),
            sp_bounds=(0, 4),
            softcap=50.0,
        )


def test_attention_other_than_flash_or_sdpa_is_said_once(capsys):
    sequence_parallel.use_ulysses(tiny_qwen2(), sequence_parallel.Layout(2, 0, 1, 0, None), "eager")
    assert "runs SDPA, not --attn eager" in capsys.readouterr().out


# ---------------------------------------------------------------- both trainers under torchrun
# Sample lengths 110-114 and one of 199 (tiny tokenizer): rows of two samples whose boundary falls inside a shard or,
# for two equal samples, exactly on the shard boundary, and a 199-token row alone (odd: padded to 200).
# The conftest's tiny model has 2 query heads over 1 key/value head: fewer KV heads than N = 2.
RUN = ["--max-steps", "3", "--samples-per-step", "5", "--micro-batch-tokens", "256", "--max-length", "256"]
RUN += ["--save-every", "2", "--seed", "0", "--attn", "sdpa"]
LORA = ["--quant", "none", "--lora-rank", "8", "--lora-alpha", "16", "--lr", "1e-2"]
FULL = ["--lr", "1e-3"]


@pytest.fixture(scope="module")
def long_rows(tiny_model_dir, tmp_path_factory) -> Path:
    from conftest import sky_t1_response

    rows = []
    for i in range(8):
        a, b = 3 + 5 * i, 7 + i
        response = sky_t1_response(f"{a} plus {b} is {a + b}.", f"\\boxed{{{a + b}}}")
        rows.append({"prompt": f"What is {a} + {b}?", "response": response})
    rows += rows[:4]  # the same lengths twice: two equal samples in a row meet exactly at the shard boundary
    rows.append({"prompt": "Add 1 and 2.", "response": sky_t1_response("One plus two. " * 20, "\\boxed{3}")})
    path = tmp_path_factory.mktemp("sp-data") / "train.jsonl"
    utils.write_jsonl(path, rows)
    return path


def test_the_runs_rows_cover_every_boundary_case(tiny_model_dir, long_rows):
    data = sft.load_training_data([str(long_rows)], str(tiny_model_dir), 256, False, False)
    cases = set()
    for step in range(3):
        for micro in sft.pack_step(sft.step_sample_ids(len(data.samples), 5, 0, step), data.lengths, 256):
            lengths = [data.lengths[i] for i in micro]
            half, cuts = (sum(lengths) + 1) // 2, [sum(lengths[:k]) for k in range(1, len(lengths))]
            cases |= {"odd"} if sum(lengths) % 2 else set()
            cases |= {"on the shard boundary" if cut == half else "inside a shard" for cut in cuts}
    assert cases == {"odd", "on the shard boundary", "inside a shard"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(script: str, flags: list[str], nodes: int = 1, per_node: int = 2) -> str:
    """`nodes` torchrun launches on localhost meeting through c10d rendezvous, as on `nodes` machines; gloo, CPU."""
    endpoint = f"127.0.0.1:{free_port()}"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", str(nodes), "--nproc-per-node", str(per_node)]
    cmd += ["--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint, "--rdzv-id", "sp-test", str(REPO / script)]
    launches = [
        subprocess.Popen(
            cmd + flags, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, env=ONE_THREAD_ENV
        )
        for _ in range(nodes)
    ]
    outputs = [launch.communicate(timeout=600) for launch in launches]
    for launch, (stdout, stderr) in zip(launches, outputs):
        assert launch.returncode == 0, stdout[-2000:] + stderr[-4000:]
    return "".join(stdout for stdout, _ in outputs)


def run_flags(model_dir, data, out, *extra) -> list[str]:
    return ["--data", str(data), "--model", str(model_dir), "--output-dir", str(out), *RUN, *extra]


def records(out: Path) -> list[dict]:
    return utils.read_jsonl(out / "metrics.jsonl")


def assert_same_run(one: Path, other: Path):
    """The step losses and gradient norms within 1e-5 relative; the same tokens, target tokens and schedule."""
    for a, b in zip(records(one), records(other), strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=TOLERANCE), ([r["loss"] for r in records(one)], b)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=TOLERANCE)
        assert (a["tokens"], a["target_tokens"], a["lr"]) == (b["tokens"], b["target_tokens"], b["lr"])


@pytest.fixture(scope="module")
def lora_one(tiny_model_dir, long_rows, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("lora-one") / "run"
    train_lora.main(train_lora.parse_args(run_flags(tiny_model_dir, long_rows, out, *LORA)))
    return out


@pytest.fixture(scope="module")
def lora_sp2(tiny_model_dir, long_rows, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("lora-sp2") / "run"
    flags = run_flags(tiny_model_dir, long_rows, out, *LORA, "--sequence-parallel", "2", "--merge")
    stdout = torchrun("train_lora.py", flags)
    assert "sequence parallel 2 x data parallel 1" in stdout and stdout.count('"merged"') == 1  # rank 0 merges
    return out


def adapter(out: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(out / "final" / "adapter_model.safetensors")


def test_lora_sp2_is_the_one_process_run(lora_one, lora_sp2):
    assert_same_run(lora_one, lora_sp2)
    a, b = adapter(lora_one), adapter(lora_sp2)
    assert a.keys() == b.keys()
    # the adapters after 3 Adam steps, within test_train_lora's bound (Adam's normalised step magnifies float noise
    # in gradients near zero: measured 4e-7 at most)
    assert max((a[key] - b[key]).abs().max().item() for key in a) < TOLERANCE


def test_lora_sp2_with_fsdp_is_the_one_process_run(lora_one, tiny_model_dir, long_rows, tmp_path):
    out = tmp_path / "run"
    torchrun("train_lora.py", run_flags(tiny_model_dir, long_rows, out, *LORA, "--sequence-parallel", "2", "--fsdp"))
    assert_same_run(lora_one, out)


def test_full_sft_sp2_over_two_localhost_nodes_is_the_one_process_run(tiny_model_dir, long_rows, tmp_path):
    """Two torchrun launches of one rank each, as two machines sharing --output-dir; SP 2 spans them (on real
    machines SP stays inside a node: the lora test below), which is also the only way both ranks' shards of the
    sharded checkpoint meet in one folder here."""
    one, sp2 = tmp_path / "one", tmp_path / "sp2"
    train_full.main(train_full.parse_args(run_flags(tiny_model_dir, long_rows, one, *FULL)))
    flags = run_flags(tiny_model_dir, long_rows, sp2, *FULL, "--sequence-parallel", "2")
    stdout = torchrun("train_full.py", flags, nodes=2, per_node=1)
    assert "device cpu x 2" in stdout and "sequence parallel 2 x data parallel 1" in stdout
    assert_same_run(one, sp2)
    assert len(list((sp2 / "step-000003").glob("__*.distcp"))) == 2  # each rank wrote its shard to the shared folder


def test_a_sp2_checkpoint_resumes_in_one_process(lora_one, lora_sp2, tiny_model_dir, long_rows, tmp_path):
    split = tmp_path / "split"
    shutil.copytree(lora_sp2, split)
    shutil.rmtree(split / "final")
    shutil.rmtree(split / "step-000003")
    (split / "metrics.jsonl").write_text("\n".join((lora_sp2 / "metrics.jsonl").read_text().splitlines()[:2]) + "\n")
    train_lora.main(train_lora.parse_args(run_flags(tiny_model_dir, long_rows, split, *LORA, "--resume", "auto")))
    assert_same_run(lora_one, split)


def test_sp2_inside_nodes_dp2_across_two_localhost_nodes(lora_one, tiny_model_dir, long_rows, tmp_path):
    """Two torchrun launches of two ranks each, as two machines: SP 2 within a node, data parallel across."""
    out = tmp_path / "run"
    stdout = torchrun(
        "train_lora.py", run_flags(tiny_model_dir, long_rows, out, *LORA, "--sequence-parallel", "2"), nodes=2
    )
    assert "device cpu x 4" in stdout and "sequence parallel 2 x data parallel 2" in stdout
    assert_same_run(lora_one, out)


def test_flags_and_their_checks(tiny_model_dir, long_rows, tmp_path):
    for trainer in (train_lora, train_full):
        assert trainer.parse_args(["--data", "x.jsonl"]).sequence_parallel == 1
        for bad in (["--sequence-parallel", "0"], ["--sequence-parallel", "2", "--no-packing"]):
            with pytest.raises(SystemExit):
                trainer.parse_args(["--data", "x.jsonl", *bad])
    # one process cannot hold two shards: the error says what N must divide
    with pytest.raises(SystemExit, match=r"must divide the 1 rank\(s\) .*; possible: 1$"):
        train_lora.main(
            train_lora.parse_args(run_flags(tiny_model_dir, long_rows, tmp_path, "--sequence-parallel", "2"))
        )
