"""checkpoints.py: step-NNNNNN/ folders found, pruned and resolved for --resume, a kill mid-save leaving the old one
whole, the training state refusing other data, nothing but tensors and plain values unpickled (training_state.pt and
torch.distributed.checkpoint's files), metrics truncated on resume, and the RNG state round trip."""

import pathlib
import pickle
import random
import re

import pytest
import torch

import checkpoints
import utils


def test_atomic_dir_save_leaves_old_checkpoint_when_writer_dies(tmp_path):
    target = tmp_path / "step-000002"
    utils.save_dir_atomically(target, lambda d: (d / "a.txt").write_text("old"))

    def crash(d):
        (d / "a.txt").write_text("half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        utils.save_dir_atomically(target, crash)
    assert (target / "a.txt").read_text() == "old"
    assert checkpoints.resolve_resume("auto", tmp_path) == target  # the .tmp leftover is never taken for a checkpoint
    utils.save_dir_atomically(target, lambda d: (d / "b.txt").write_text("new"))  # replaces the leftover and the old
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"] and not (tmp_path / "step-000002.tmp").exists()


def test_checkpoint_folders_are_found_pruned_and_resolved(tmp_path):
    for step in (10, 2, 30):
        (tmp_path / f"step-{step:06d}").mkdir()
    (tmp_path / "step-000040.tmp").mkdir()
    (tmp_path / "final").mkdir()
    assert [p.name for p in checkpoints.checkpoint_dirs(tmp_path)] == ["step-000002", "step-000010", "step-000030"]
    assert checkpoints.resolve_resume(None, tmp_path) is None
    assert checkpoints.resolve_resume("auto", tmp_path / "final") is None  # nothing to resume: a fresh start
    with pytest.raises(SystemExit, match="not a checkpoint folder"):
        checkpoints.resolve_resume(str(tmp_path / "step-000030"), tmp_path)
    checkpoints.prune_checkpoints(tmp_path, keep=2)
    assert [p.name for p in checkpoints.checkpoint_dirs(tmp_path)] == ["step-000010", "step-000030"]
    checkpoints.prune_checkpoints(tmp_path, keep=0)  # 0 keeps everything
    assert len(checkpoints.checkpoint_dirs(tmp_path)) == 2


def test_training_state_refuses_other_data_and_metrics_truncate(tmp_path):
    torch.save({"step": 2, "data_fingerprint": "abc"}, tmp_path / "training_state.pt")
    assert checkpoints.load_training_state(tmp_path, "abc")["step"] == 2
    assert checkpoints.resolve_resume(str(tmp_path), tmp_path) == tmp_path
    with pytest.raises(SystemExit, match="different data"):
        checkpoints.load_training_state(tmp_path, "xyz")
    utils.write_jsonl(tmp_path / "metrics.jsonl", [{"step": s, "loss": 1.0 / s} for s in range(1, 6)])
    checkpoints.truncate_metrics(tmp_path, 2)
    assert [r["step"] for r in utils.read_jsonl(tmp_path / "metrics.jsonl")] == [1, 2]


class TouchesAFile:
    """Unpickling this runs code: it creates the file (what a checkpoint from a stranger could do instead)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (self.marker,)


def test_training_state_holds_plain_values_and_nothing_else_is_unpickled(tmp_path):
    scheduler = torch.optim.lr_scheduler.LambdaLR(torch.optim.AdamW([torch.zeros(2, requires_grad=True)]), lambda s: 1)
    state = {"step": 3, "scheduler": scheduler.state_dict(), "rng": checkpoints.rng_state(), "data_fingerprint": "abc"}
    torch.save(state, tmp_path / "training_state.pt")
    assert (
        checkpoints.load_training_state(tmp_path, "abc")["rng"]["python"] == state["rng"]["python"]
    )  # weights_only reads it
    marker = tmp_path / "pwned"
    torch.save({**state, "extra": TouchesAFile(marker)}, tmp_path / "training_state.pt")
    with pytest.raises(SystemExit) as stop:
        checkpoints.load_training_state(tmp_path, "abc")
    message = str(stop.value)
    assert not marker.exists() and "\n" not in message
    assert message.startswith(f"--resume: {tmp_path / 'training_state.pt'} holds more than tensors and plain values")
    assert "Unsupported global" in message and "weights_only=False" in message  # how to convert a trusted one
    (tmp_path / "training_state.pt").write_bytes(b"PK\x03\x04 cut short")
    with pytest.raises(SystemExit, match=r"training_state.pt: not a readable training state \(") as stop:
        checkpoints.load_training_state(tmp_path, "abc")
    assert "\n" not in str(stop.value)


def test_distributed_checkpoints_unpickle_only_their_metadata_tensors_and_plain_values(tmp_path, monkeypatch):
    import torch.distributed.checkpoint as dcp

    def saved(name, settings):
        dcp.save({"w": torch.ones(3), "optim": settings}, checkpoint_id=str(tmp_path / name))
        return tmp_path / name

    loads, torch_load = [], torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **kw: loads.append(kw.get("weights_only")) or torch_load(*a, **kw))
    state = {"w": torch.zeros(3), "optim": {"lr": 0.0, "betas": (0.0, 0.0), "groups": [{"lr": 0.0}]}}
    settings = {"lr": 0.1, "betas": (0.9, 0.95), "groups": [{"lr": 0.2}]}
    checkpoints.load_distributed_checkpoint(state, saved("plain", settings))
    assert torch.equal(state["w"], torch.ones(3)) and state["optim"] == settings
    assert loads and set(loads) == {True}  # each entry read once, safely: never again with weights_only=False
    marker, state = tmp_path / "pwned", {"w": torch.zeros(3), "optim": {"lr": 0.0}}
    with pytest.raises(SystemExit, match=r"^--resume: .*settings holds more than tensors .*Unsupported global"):
        checkpoints.load_distributed_checkpoint(state, saved("settings", {"lr": TouchesAFile(marker)}))
    metadata = saved("metadata", {"lr": 0.1}) / ".metadata"
    metadata.write_bytes(pickle.dumps(TouchesAFile(marker)))
    with pytest.raises(SystemExit, match=rf"^--resume: {re.escape(str(metadata))} holds more .*pathlib"):
        checkpoints.load_distributed_checkpoint(state, metadata.parent)
    assert not marker.exists()


def test_rng_state_round_trip_replays_random_numbers():
    state = checkpoints.rng_state()
    first = (random.random(), torch.rand(3))
    checkpoints.set_rng_state(state)
    again = (random.random(), torch.rand(3))
    assert first[0] == again[0] and torch.equal(first[1], again[1])
