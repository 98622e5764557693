"""Training checkpoints: what a step-NNNNNN/ folder holds, and how a run resumes from one without going wrong.

    python train_lora.py --data cot17k.jsonl --resume auto                   # the newest step-NNNNNN/ of out/lora
    python train_lora.py --data cot17k.jsonl --resume out/lora/step-000100   # this one
    torchrun --nproc-per-node 8 train_full.py --data cot17k.jsonl --cpu-offload --resume auto   # any rank count

Both trainers write step-NNNNNN/ into --output-dir every --save-every steps and after the last step, through a
temporary folder renamed into place (a killed run leaves the previous checkpoint whole), and delete all but the newest
--keep-checkpoints (prune_checkpoints):
    train_lora.py  rank 0 writes the adapter in PEFT's format (adapter_model.safetensors, adapter_config.json), the
                   tokenizer, run_config.json and training_state.pt, which also holds the adapters' AdamW state.
                   Adapter and optimizer state are gathered whole, so the run resumes on any number of ranks, with or
                   without --fsdp.
    train_full.py  every rank writes its shards of the model and optimizer state with torch.distributed.checkpoint
                   (.metadata, *.distcp); rank 0 adds run_config.json and training_state.pt and renames the folder.
                   load_distributed_checkpoint reshards them to the ranks of the resumed run.
training_state.pt holds the step, the LR scheduler, the RNG states (Python, torch, CUDA: rng_state), under fp16 the
loss scale and the steps skipped so far, the rank count that saved it, and the data's fingerprint. The data order is
a pure function of seed and step, so that is all a resumed run needs to go on bit-exactly. final/ is no checkpoint:
it is the result (an adapter or a whole model), never resumed from.

A resumed run refuses two things (load_training_state), each with one line naming the checkpoint:
- other data. The fingerprint (sft.load_training_data) hashes every sample's token and loss-token counts in order:
  step N of the resumed run must take the samples step N of the saved run would have taken, so a checkpoint of other
  data, or of the same file cut or filtered differently (--max-length, --truncate), would silently train a run that
  never existed. A new --output-dir starts afresh.
- code. A checkpoint may come from elsewhere (a shared drive, a colleague), and unpickling can run any code. The
  trainers save tensors and plain values only, so training_state.pt is read with torch.load(weights_only=True);
  torch.distributed.checkpoint unpickles its .metadata and non-tensor entries with plain pickle, so both are checked
  first. A file that holds anything else stops the run, never runs code.
--resume auto (or --resume alone) takes the newest step-NNNNNN/ of --output-dir (a leftover .tmp folder never counts)
and starts afresh when there is none, so one command both starts a run and continues it: a preempted job just runs it
again. The lines of metrics.jsonl past the checkpoint's step are dropped (truncate_metrics): those steps are redone.
"""

from __future__ import annotations

import pickle
import random
import re
import shutil
import warnings
from pathlib import Path

import torch

import utils


def checkpoint_dirs(output_dir: Path) -> list[Path]:
    return sorted(p for p in output_dir.glob("step-[0-9]*") if p.is_dir() and re.fullmatch(r"step-\d+", p.name))


def prune_checkpoints(output_dir: Path, keep: int) -> None:
    for old in checkpoint_dirs(output_dir)[:-keep] if keep > 0 else []:
        shutil.rmtree(old)


def resolve_resume(resume: str | None, output_dir: Path) -> Path | None:
    """--resume auto: the newest step-NNNNNN/ in the output folder (None if there is none); else a folder."""
    if not resume:
        return None
    if resume == "auto":
        found = checkpoint_dirs(output_dir)
        return found[-1] if found else None
    path = Path(resume)
    if not (path / "training_state.pt").exists():
        raise SystemExit(f"--resume {resume}: not a checkpoint folder (no training_state.pt)")
    return path


def _refuse_unsafe(path: Path, error: Exception, remedy: str) -> SystemExit:
    """The one line a checkpoint file that holds more than tensors and plain values stops a resumed run with."""
    why = re.search(r"WeightsUnpickler error: ([^.\n]*)", str(error))
    reason = why.group(1) if why else " ".join(str(error).split())[:200]
    return SystemExit(
        f"--resume: {path} holds more than tensors and plain values, and unpickling it could run code ({reason}); "
        f"not loaded. {remedy}"
    )


def load_training_state(checkpoint: Path, fingerprint: str) -> dict:
    """A checkpoint's step, scheduler, RNG and (LoRA) optimizer state; refuses one made on other data.

    The trainers save tensors and plain values only (the state dicts of optimizer, scheduler and grad scaler, the RNG
    states: tensors and tuples of ints), so it is read with weights_only=True: a file from elsewhere that holds
    anything else stops the run with one line, never runs code (torch.load's own default since torch 2.6).
    """
    path = checkpoint / "training_state.pt"
    try:
        state = torch.load(path, weights_only=True)
    except pickle.UnpicklingError as e:
        convert = f"python -c \"import torch; p = '{path}'; torch.save(torch.load(p, weights_only=False), p)\""
        raise _refuse_unsafe(
            path, e, f"Only if you trust where it came from, convert it once with: {convert}"
        ) from None
    except (RuntimeError, EOFError, OSError) as e:  # cut short, or not a torch.save file
        raise SystemExit(
            f"--resume: {path}: not a readable training state ({' '.join(str(e).split())[:200]})"
        ) from None
    if not isinstance(state, dict) or "data_fingerprint" not in state:
        raise SystemExit(f"--resume: {path}: not a training state of these trainers")
    if state["data_fingerprint"] != fingerprint:
        raise SystemExit(
            f"--resume: {checkpoint} was trained on different data (fingerprint mismatch); use a new --output-dir"
        )
    return state


class _MetadataUnpickler(pickle.Unpickler):
    """Unpickles torch.distributed.checkpoint's .metadata file (plain dataclasses naming each tensor's shards), and
    refuses any other global, which is what a pickle runs code with (the restriction Python's pickle docs advise)."""

    ALLOWED = {("torch", "Size"), ("torch.serialization", "_get_layout"), ("pathlib", "PosixPath")}
    ALLOWED |= {("pathlib", "WindowsPath"), ("pathlib._local", "PosixPath"), ("pathlib._local", "WindowsPath")}
    ALLOWED |= {("torch.distributed.checkpoint.filesystem", "_StorageInfo")}
    ALLOWED |= {
        ("torch.distributed.checkpoint.metadata", name)
        for name in ("Metadata", "MetadataIndex", "StorageMeta", "TensorProperties", "TensorStorageMetadata")
        + ("BytesStorageMetadata", "ChunkStorageMetadata", "_MEM_FORMAT_ENCODING")
    }

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED or (
            module == "torch" and isinstance(getattr(torch, name, None), torch.dtype)
        ):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"WeightsUnpickler error: Unsupported global: GLOBAL {module}.{name}")


def load_distributed_checkpoint(state: dict, folder: Path) -> None:
    """torch.distributed.checkpoint.load of a sharded checkpoint (train_full.py), resharded to this run's ranks, with
    nothing unpickled but its metadata's own classes, tensors and plain values: DCP itself unpickles its .metadata
    file and the non-tensor entries (optimizer settings) with plain pickle, so both are checked first."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint._traverse import set_element

    refused = []

    class CheckedPlanner(dcp.DefaultLoadPlanner):
        def load_bytes(self, read_item, value):
            try:
                checked = torch.load(value, weights_only=True)
            except pickle.UnpicklingError as e:
                refused.append(_refuse_unsafe(folder, e, "Resume from a checkpoint you made, or start afresh."))
                raise
            # Placed as DefaultLoadPlanner.load_bytes places it, which would unpickle it again with weights_only=False.
            if self.flatten_state_dict:
                set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], checked)
            else:
                self.state_dict[read_item.dest_index.fqn] = checked

    metadata = folder / ".metadata"
    try:
        with open(metadata, "rb") as f:
            _MetadataUnpickler(f).load()
    except pickle.UnpicklingError as e:
        raise _refuse_unsafe(metadata, e, "Resume from a checkpoint you made, or start afresh.") from None
    except (OSError, EOFError) as e:
        raise SystemExit(f"--resume: {metadata}: not a readable checkpoint ({e})") from None
    try:
        no_dist = not torch.distributed.is_initialized()  # one process: no collectives to run
        with warnings.catch_warnings():  # which DCP (torch 2.13) still warns that it assumes, as at every save
            warnings.filterwarnings("ignore", "torch.distributed is disabled", UserWarning)
            dcp.load(state, checkpoint_id=str(folder), planner=CheckedPlanner(), no_dist=no_dist)
    except dcp.CheckpointException:  # DCP gathers every rank's failure; ours is the one line this rank met
        if refused:
            raise refused[0] from None
        raise


def truncate_metrics(output_dir: Path, step: int) -> None:
    """On resume, drop the logged steps after the checkpoint: they are about to be redone."""
    path = output_dir / "metrics.jsonl"
    if path.exists():
        utils.write_jsonl(path, [r for r in utils.read_jsonl(path) if r["step"] <= step])


def rng_state() -> dict:
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
