"""Shared plumbing for the training, data and evaluation scripts.

Only what two or more scripts need lives here: JSON/JSONL I/O, chat records and loss masks, packing,
the chunked LM loss, model/tokenizer loading, step logging and atomic checkpoints. It is also a CLI
that writes the tiny random model used by the tests and the demo:

    python utils.py tiny-model out/tiny                       # 2 layers, hidden 64, vocab 4096
    python utils.py tiny-model out/tiny152k --vocab-size 152064 --hidden-size 256
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import random
import re
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import torch
import torch.nn.functional as F

REPO_DIR = Path(__file__).resolve().parent
DATA_DIR = REPO_DIR / "data"
IGNORE_INDEX = -100  # label value PyTorch's cross-entropy skips


# ----------------------------------------------------------------------------- JSON / JSONL I/O


class DataError(ValueError):
    """Bad input data; the message already names file, line and problem."""


def iter_json_records(path: str | os.PathLike) -> Iterator[tuple[int, dict]]:
    """Yield (line_or_item_number, record) from a .jsonl file or a .json array, numbering from 1."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if path.suffix == ".json":
        try:
            items = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None
        if isinstance(items, dict):
            items = [items]
        for n, item in enumerate(items, 1):
            if not isinstance(item, dict):
                raise DataError(f"{path}: item {n}: expected a JSON object, got {type(item).__name__}")
            yield n, item
        return
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{n}: invalid JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(item, dict):
                raise DataError(f"{path}:{n}: expected a JSON object, got {type(item).__name__}")
            yield n, item


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    return [record for _, record in iter_json_records(path)]


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write via a temporary file and rename, so a kill never leaves a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend (servers and CI have no display); imported when a report draws."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | os.PathLike, **savefig_kwargs) -> None:
    """Write a figure as PNG via a temporary file and rename, then free it."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    fig.savefig(tmp, format="png", **savefig_kwargs)
    pyplot().close(fig)
    os.replace(tmp, path)


def write_jsonl(path: str | os.PathLike, records: Iterable[dict]) -> int:
    """Atomically write records as JSONL; returns how many were written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    n = 0
    with open(tmp, "w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
            n += 1
    os.replace(tmp, path)
    return n


def append_jsonl(f, record: dict) -> None:
    """Append one record and flush, so a killed run keeps every finished line."""
    f.write(json.dumps(record, ensure_ascii=False) + "\n")
    f.flush()


# ----------------------------------------------------------------------------- chat records

SKY_T1_SYSTEM_PROMPT = (DATA_DIR / "sky_t1_system_prompt.txt").read_text(encoding="utf-8")
_SHAREGPT_ROLES = {"user": "user", "human": "user", "assistant": "assistant", "gpt": "assistant", "system": "system"}


def to_messages(record: dict) -> list[dict]:
    """Normalise one record of any supported shape to [{"role", "content"}, ...].

    Shapes: Sky-T1 ShareGPT {"system", "conversations": [{"from", "value"}]}, chat {"messages": [...]},
    and {"prompt", "response"[, "system"]}. Raises ValueError naming the offending field.
    """
    if "messages" in record:
        raw = record["messages"]
        if not isinstance(raw, list):
            raise ValueError("field 'messages' must be a list")
        messages = []
        for i, m in enumerate(raw):
            if not isinstance(m, dict) or "role" not in m or "content" not in m:
                raise ValueError(f"field 'messages[{i}]' needs 'role' and 'content'")
            messages.append({"role": m["role"], "content": m["content"]})
    elif "conversations" in record:
        raw = record["conversations"]
        if not isinstance(raw, list):
            raise ValueError("field 'conversations' must be a list")
        messages = [{"role": "system", "content": record["system"]}] if record.get("system") else []
        for i, turn in enumerate(raw):
            if not isinstance(turn, dict) or turn.get("from") not in _SHAREGPT_ROLES or "value" not in turn:
                raise ValueError(f"field 'conversations[{i}]' needs 'from' (user|assistant) and 'value'")
            messages.append({"role": _SHAREGPT_ROLES[turn["from"]], "content": turn["value"]})
    elif "prompt" in record and "response" in record:
        messages = [{"role": "system", "content": record["system"]}] if record.get("system") else []
        messages += [{"role": "user", "content": record["prompt"]}, {"role": "assistant", "content": record["response"]}]
    else:
        raise ValueError("unknown record shape: expected 'messages', 'conversations' or 'prompt'+'response'")
    for i, m in enumerate(messages):
        if m["role"] not in ("system", "user", "assistant", "tool"):
            raise ValueError(f"message {i}: unknown role {m['role']!r}")
        if not isinstance(m["content"], str):
            raise ValueError(f"message {i} ({m['role']}): 'content' must be a string")
    if not any(m["role"] == "assistant" and m["content"].strip() for m in messages):
        raise ValueError("no non-empty assistant turn")
    return messages


def load_conversations(paths: Iterable[str], skip_bad: bool = False) -> tuple[list[list[dict]], int]:
    """Read and validate every record of every file before anything expensive starts.

    Returns (conversations, n_skipped). Without skip_bad the first bad record raises DataError naming it.
    """
    conversations, skipped = [], 0
    for path in paths:
        n_in_file = 0
        try:
            for line, record in iter_json_records(path):
                n_in_file += 1
                try:
                    conversations.append(to_messages(record))
                except ValueError as e:
                    if not skip_bad:
                        raise DataError(f"{path}:{line}: {e}") from None
                    skipped += 1
        except DataError:
            if not skip_bad:
                raise
            skipped += 1
        if n_in_file == 0:
            raise DataError(f"{path}: no records (empty file)")
    return conversations, skipped


def assistant_char_spans(tokenizer, messages: list[dict]) -> tuple[str, list[tuple[int, int]]]:
    """Render the conversation with the model's own chat template; return the text and, per assistant turn,
    the character span that belongs in the loss: the reply and its end-of-turn token, but not what the
    template appends after it (Qwen's trailing newline is never generated: decoding stops at <|im_end|>).

    Spans come from rendering prefixes, so any template works whose rendering of a prefix is a prefix of
    the whole rendering (true of ChatML/Qwen, Llama 3 and most others; checked here).
    """
    render = lambda msgs, gen: tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)
    text = render(messages, False)
    eos = tokenizer.eos_token
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before, through = render(messages[:i], True), render(messages[: i + 1], False)
        if not (text.startswith(before) and text.startswith(through) and through.startswith(before)):
            raise ValueError("chat template is not prefix-stable; cannot locate assistant tokens")
        end = len(through)
        stop = through.rfind(eos, len(before)) if eos else -1
        if stop != -1:
            end = stop + len(eos)
        spans.append((len(before), end))
    return text, spans


def tokenize_conversations(tokenizer, conversations: list[list[dict]], batch_size: int = 256):
    """Yield (input_ids, labels) per conversation; labels are IGNORE_INDEX outside assistant spans.

    A token is a target when its first character lies inside an assistant span. Texts are tokenized in
    batches because the fast tokenizer parallelises a batch across cores.
    """
    for start in range(0, len(conversations), batch_size):
        rendered = [assistant_char_spans(tokenizer, c) for c in conversations[start : start + batch_size]]
        enc = tokenizer([t for t, _ in rendered], add_special_tokens=False, return_offsets_mapping=True)
        for (_, spans), ids, offsets in zip(rendered, enc["input_ids"], enc["offset_mapping"]):
            labels = [IGNORE_INDEX] * len(ids)
            for j, (a, _) in enumerate(offsets):
                if any(s <= a < e for s, e in spans):
                    labels[j] = ids[j]
            yield ids, labels


@dataclass
class Sample:
    """One tokenized training sequence; targets[t] is the token the model must predict after input_ids[t]."""

    input_ids: list[int]
    targets: list[int]

    @property
    def n_targets(self) -> int:
        return sum(t != IGNORE_INDEX for t in self.targets)


def make_sample(input_ids: list[int], labels: list[int]) -> Sample:
    # Shift inside each sample, before packing, so the last token of one sample never learns to predict
    # the first token of the next one.
    return Sample(list(input_ids), list(labels[1:]) + [IGNORE_INDEX])


def build_samples(tokenizer, conversations, max_length: int, truncate: bool) -> tuple[list[Sample], dict]:
    """Tokenize, then drop (default) or truncate samples over max_length. Never silent: returns counts."""
    from tqdm import tqdm

    samples, stats = [], {"total": len(conversations), "too_long_dropped": 0, "truncated": 0, "no_target_after_truncation": 0}
    for ids, labels in tqdm(tokenize_conversations(tokenizer, conversations), total=len(conversations), desc="tokenize", leave=False):
        if len(ids) > max_length:
            if not truncate:
                stats["too_long_dropped"] += 1
                continue
            ids, labels = ids[:max_length], labels[:max_length]
            stats["truncated"] += 1
        sample = make_sample(ids, labels)
        if sample.n_targets == 0:
            stats["no_target_after_truncation"] += 1
            continue
        samples.append(sample)
    stats["kept"] = len(samples)
    return samples, stats


def load_training_data(paths: list[str], model: str, max_length: int, truncate: bool, skip_bad: bool):
    """Everything both trainers do before the model loads: validate every record, tokenize, drop or cut over-long samples.

    Returns (tokenizer, samples, report line, fingerprint). Bad data exits with its one-line `file:line: problem`. The
    fingerprint (lengths and target counts of every sample) lets a resumed run refuse a checkpoint made on other data.
    """
    try:
        conversations, n_bad = load_conversations(paths, skip_bad)
    except DataError as e:
        raise SystemExit(f"data error: {e}") from None
    tokenizer = load_tokenizer(model)
    samples, stats = build_samples(tokenizer, conversations, max_length, truncate)
    if not samples:
        raise SystemExit(f"no trainable samples left (read {stats['total']}, dropped {stats['too_long_dropped']} over {max_length} tokens)")
    lengths = [len(s.input_ids) for s in samples]
    targets = [s.n_targets for s in samples]
    report = (f"data: {stats['total']} records, {n_bad} bad skipped, {stats['too_long_dropped']} over {max_length} tokens dropped, "
              f"{stats['truncated']} truncated, {stats['no_target_after_truncation']} without targets dropped -> {len(samples)} samples, "
              f"{sum(lengths):,} tokens ({sum(targets):,} in the loss), longest {max(lengths)}")
    fingerprint = hashlib.sha256(json.dumps([lengths, targets]).encode()).hexdigest()[:16]
    return tokenizer, samples, report, fingerprint


# ----------------------------------------------------------------------------- batching and packing


def plan_step(sample_ids: list[int], lengths: list[int], micro_batch_tokens: int) -> list[list[int]]:
    """Split one optimizer step's samples into micro-batches of at most micro_batch_tokens tokens.

    First-fit decreasing: longest first, each into the first micro-batch with room. Deterministic.
    """
    bins: list[list[int]] = []
    room: list[int] = []
    for i in sorted(sample_ids, key=lambda i: (-lengths[i], i)):
        for b, free in enumerate(room):
            if lengths[i] <= free:
                bins[b].append(i)
                room[b] -= lengths[i]
                break
        else:
            bins.append([i])
            room.append(micro_batch_tokens - lengths[i])
    return bins


def plan_padded_step(sample_ids: list[int], lengths: list[int], micro_batch_tokens: int) -> list[list[int]]:
    """The padded baseline: rows of similar length, as many as fit when every row is padded to the longest."""
    bins, current = [], []
    for i in sorted(sample_ids, key=lambda i: (-lengths[i], i)):
        if current and (len(current) + 1) * lengths[current[0]] > micro_batch_tokens:
            bins.append(current)
            current = []
        current.append(i)
    return bins + ([current] if current else [])


def epoch_order(n_samples: int, seed: int, epoch: int) -> list[int]:
    """The sample order of one epoch; a pure function of (seed, epoch), so a resumed run replays it exactly."""
    order = list(range(n_samples))
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    return order


def step_sample_ids(n_samples: int, samples_per_step: int, seed: int, step: int) -> list[int]:
    steps_per_epoch = math.ceil(n_samples / samples_per_step)
    epoch, i = divmod(step, steps_per_epoch)
    return epoch_order(n_samples, seed, epoch)[i * samples_per_step : (i + 1) * samples_per_step]


def collate_packed(samples: list[Sample], pad_id: int) -> dict[str, torch.Tensor]:
    """One row holding all samples back to back; position_ids restart at 0 so attention stays inside each sample."""
    ids = [t for s in samples for t in s.input_ids]
    targets = [t for s in samples for t in s.targets]
    positions = [p for s in samples for p in range(len(s.input_ids))]
    return {
        "input_ids": torch.tensor([ids]),
        "position_ids": torch.tensor([positions]),
        "targets": torch.tensor([targets]),
    }


def collate_padded(samples: list[Sample], pad_id: int) -> dict[str, torch.Tensor]:
    """One row per sample, right-padded; the attention mask hides the padding."""
    width = max(len(s.input_ids) for s in samples)
    pad = lambda seq, value: seq + [value] * (width - len(seq))
    return {
        "input_ids": torch.tensor([pad(s.input_ids, pad_id) for s in samples]),
        "attention_mask": torch.tensor([pad([1] * len(s.input_ids), 0) for s in samples]),
        "targets": torch.tensor([pad(s.targets, IGNORE_INDEX) for s in samples]),
    }


# ----------------------------------------------------------------------------- loss


def _chunk_ce_sum(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(F.linear(hidden, weight).float(), targets, reduction="sum")


def chunked_lm_loss(hidden: torch.Tensor, lm_head_weight: torch.Tensor, targets: torch.Tensor, chunk_tokens: int = 1024) -> torch.Tensor:
    """Sum of next-token cross-entropies without materialising full-vocabulary logits for the sequence.

    Only target positions get logits at all (prompt tokens are masked anyway), and those in chunks whose
    logits are recomputed in backward instead of stored: the peak is about three chunk x vocab fp32 buffers
    (logits, log-softmax, their gradient), measured 7.1 GiB at chunk 4096 and 1.8 GiB at chunk 1024 for vocab
    152064, where the full-logits loss of a 16k sequence needs ~28 GiB (bench/RESULTS.md).
    """
    hidden = hidden.reshape(-1, hidden.shape[-1])
    targets = targets.reshape(-1).to(hidden.device)
    keep = targets != IGNORE_INDEX
    hidden, targets = hidden[keep], targets[keep]
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, targets.numel(), chunk_tokens):
        chunk = slice(start, start + chunk_tokens)
        total = total + torch.utils.checkpoint.checkpoint(_chunk_ce_sum, hidden[chunk], lm_head_weight, targets[chunk], use_reentrant=False)
    return total


def full_logits_lm_loss(hidden: torch.Tensor, lm_head_weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The naive loss (full fp32 logits for every position), kept as the baseline the benchmarks compare against."""
    logits = F.linear(hidden, lm_head_weight).float()
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1).to(logits.device), reduction="sum", ignore_index=IGNORE_INDEX)


# ----------------------------------------------------------------------------- model and tokenizer


def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def pick_dtype(device: torch.device) -> torch.dtype:
    """bf16 where the hardware has it (the paper's setting); fp32 on CPU, where bf16 matmuls are slow and inexact."""
    return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float32


def pick_attention(requested: str, device: torch.device) -> str:
    """FlashAttention-2 on GPU when installed (its varlen kernel reads packed position_ids), SDPA otherwise."""
    import importlib.util

    has_flash = importlib.util.find_spec("flash_attn") is not None
    if requested == "flash_attention_2" and not has_flash:
        raise SystemExit("--attn flash_attention_2: flash-attn is not installed (pip install -r requirements-gpu.txt), or use --attn sdpa")
    if requested != "auto":
        return requested
    return "flash_attention_2" if device.type == "cuda" and has_flash else "sdpa"


def load_tokenizer(name_or_dir: str):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(name_or_dir)
    if tokenizer.chat_template is None:
        raise SystemExit(f"{name_or_dir}: the tokenizer has no chat template; use an instruct/chat model")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(name_or_dir: str, device: torch.device, dtype: torch.dtype, attn: str, quant: str = "none"):
    """Load a causal LM; quant="nf4" is QLoRA's 4-bit NormalFloat with double quantisation."""
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    kwargs = {"dtype": dtype, "attn_implementation": attn}
    if quant == "nf4":
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=dtype
        )
        kwargs["device_map"] = {"": device.index or 0} if device.type == "cuda" else {"": "cpu"}
    model = AutoModelForCausalLM.from_pretrained(name_or_dir, **kwargs)
    return model if quant == "nf4" else model.to(device)


def peak_memory_gb(device: torch.device) -> float:
    """Peak allocated GPU memory, or on CPU the process's peak resident set (what /usr/bin/time -v reports)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


# ----------------------------------------------------------------------------- logging


def format_duration(seconds: float) -> str:
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    return f"{h}h{rem // 60:02d}m" if h else f"{rem // 60}m{rem % 60:02d}s"


class StepLogger:
    """One dense line per optimizer step on the console, the same record appended to metrics.jsonl."""

    def __init__(self, output_dir: Path, total_steps: int, start_step: int, wandb_project: str | None = None, config: dict | None = None):
        self.metrics = open(output_dir / "metrics.jsonl", "a", encoding="utf-8")
        self.total_steps, self.start_step, self.t0 = total_steps, start_step, time.time()
        self.wandb = None
        if wandb_project:
            import wandb

            self.wandb = wandb.init(project=wandb_project, config=config, dir=str(output_dir))

    def log(self, record: dict) -> str:
        done = record["step"] - self.start_step
        eta = (time.time() - self.t0) / max(done, 1) * (self.total_steps - record["step"])
        append_jsonl(self.metrics, record)
        if self.wandb:
            self.wandb.log(record, step=record["step"])
        return (
            f"step {record['step']}/{self.total_steps} | loss {record['loss']:.4f} | lr {record['lr']:.2e} | "
            f"grad {record['grad_norm']:.3f} | tok/s {record['tokens_per_s']:.0f} | mem {record['peak_mem_gb']:.2f} GB | eta {format_duration(eta)}"
        )

    def close(self):
        self.metrics.close()
        if self.wandb:
            self.wandb.finish()


# ----------------------------------------------------------------------------- checkpoints


def save_dir_atomically(final_dir: Path, write: Callable[[Path], None]) -> None:
    """Let write() fill a temporary folder, then rename it into place: a kill never leaves half a checkpoint."""
    tmp = final_dir.with_name(final_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    write(tmp)
    if final_dir.exists():
        shutil.rmtree(final_dir)
    os.replace(tmp, final_dir)


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


def cosine_schedule(warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    """Linear warmup to the peak, then cosine decay to zero (the paper's LLaMA-Factory schedule)."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    return factor


# ----------------------------------------------------------------------------- memory planning

# Shapes of the models the paper trains, so a memory plan needs no download; "-Instruct" shares its base's shape.
# (hidden, layers, attention heads, kv heads, intermediate, vocab, tied embeddings)
KNOWN_SHAPES = {
    "Qwen/Qwen2.5-7B": (3584, 28, 28, 4, 18944, 152064, False),
    "Qwen/Qwen2.5-14B": (5120, 48, 40, 8, 13824, 152064, False),
    "Qwen/Qwen2.5-32B": (5120, 64, 40, 8, 27648, 152064, False),
    "Qwen/Qwen2.5-72B": (8192, 80, 64, 8, 29568, 152064, False),
}
GiB = 2**30


def model_shapes(model) -> dict:
    """The shapes a memory plan needs, from a dict of them, a transformers config, a local folder, the table above, or the hub."""
    if isinstance(model, dict):
        return model
    if isinstance(model, str):
        known = KNOWN_SHAPES.get(model.removesuffix("-Instruct"))
        if known and not (Path(model) / "config.json").exists():
            h, layers, heads, kv, inter, vocab, tied = known
            return {"hidden": h, "layers": layers, "heads": heads, "kv_heads": kv, "head_dim": h // heads, "intermediate": inter,
                    "vocab": vocab, "tied": tied, "qkv_bias": True}
        from transformers import AutoConfig

        try:
            model = AutoConfig.from_pretrained(model)
        except (OSError, ValueError) as e:
            raise ValueError(f"{model}: no config.json locally or on the hub ({e.__class__.__name__}), and not one of {sorted(KNOWN_SHAPES)}") from None
    config = model
    if any(getattr(config, k, 0) for k in ("num_experts", "num_local_experts", "n_routed_experts")):
        raise ValueError(f"{config.model_type}: mixture-of-experts models are not covered by the memory plan (dense decoders only)")
    return {"hidden": config.hidden_size, "layers": config.num_hidden_layers, "heads": config.num_attention_heads,
            "kv_heads": getattr(config, "num_key_value_heads", None) or config.num_attention_heads,
            "head_dim": getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads,
            "intermediate": config.intermediate_size, "vocab": config.vocab_size, "tied": bool(getattr(config, "tie_word_embeddings", False)),
            "qkv_bias": config.model_type == "qwen2" or bool(getattr(config, "attention_bias", False))}


def memory_plan(model, n_gpus: int = 1, seq_len: int = 16384, mode: str = "full", optimizer: str = "adamw", lora_rank: int = 64,
                cpu_offload: bool = False, gradient_checkpointing: bool = True, offload_activations: bool = False,
                loss_chunk_tokens: int = 1024, gpu_gib: float = 79.6) -> dict:
    """Estimated peak memory per GPU in GiB, by component, for one micro-batch of seq_len packed tokens.

    model: hub name, local folder, transformers config or a model_shapes() dict. P = parameters, L = layers,
    h = hidden, i = intermediate, kv = kv heads x head dim, V = vocab, T = seq_len, A = LoRA parameters
    (r x (in + out) for every linear of every decoder layer, PEFT's "all-linear").

    mode="full" (train_full.py): fp32 master weights 4P, fp32 gradients 4P, optimizer 8P (AdamW: two fp32 moments) or
      2P (bitsandbytes 8-bit; paged = may spill to CPU). Sharded over n_gpus with FSDP when n_gpus > 1 or
      cpu_offload; cpu_offload moves all three to CPU memory. FSDP working copies: the root unit (embeddings, final
      norm, LM head) stays gathered in bf16 through forward and backward (2 x root), plus one decoder layer gathered
      and one prefetched in bf16, its bf16 gradient and fp32 reduce-scatter buffer (10 x layer). One GPU without
      FSDP: bf16 copies made by autocast for one layer and the LM head at a time (its cache is off).
    mode="lora" / "qlora" (train_lora.py, not sharded: n_gpus > 1 means data-parallel replicas): frozen base in bf16
      (2P); qlora: decoder linears in NF4 with double quantisation (4.127 bits) and the rest in fp32, as PEFT's
      prepare_model_for_kbit_training leaves it, plus one layer dequantised to bf16 at a time. Adapters 16A (AdamW)
      or 10A (8-bit).
    Activations: with checkpointing, each layer's input is kept (L x T x h, bf16; fp32 on the single-GPU full path,
      whose residual stream is fp32 under autocast), on CPU with offload_activations. Recomputing one layer in
      backward holds its saved tensors, 22h + 8kv + 8i bytes per token (norms in fp32, q/k/v before and after
      rotary, attention output, the four SwiGLU tensors; FlashAttention/SDPA keep no T x T scores), x 1.5 for the
      gradients alive beside them. The chunked loss peaks at 10 bytes x chunk x V (bf16 logits, fp32 logits and
      log-softmax, its gradient); it runs before the layers' backward, so the larger of the two counts.
    Not counted: CUDA context, NCCL buffers, allocator fragmentation: "fits" leaves 8% of gpu_gib (79.6 = an 80 GB card)
    for them. Expect the estimate within ~15% of torch.cuda.max_memory_allocated.
    """
    if mode not in ("full", "lora", "qlora"):
        raise ValueError(f"mode must be full, lora or qlora, not {mode!r}")
    if optimizer not in ("adamw", "adamw8bit", "paged_adamw8bit"):
        raise ValueError(f"optimizer must be adamw, adamw8bit or paged_adamw8bit, not {optimizer!r}")
    s = model_shapes(model)
    h, n_layers, i, V, T = s["hidden"], s["layers"], s["intermediate"], s["vocab"], seq_len
    q, kv = s["heads"] * s["head_dim"], s["kv_heads"] * s["head_dim"]
    layer_linear = h * q + 2 * h * kv + q * h + 3 * h * i
    layer = layer_linear + 2 * h + (q + 2 * kv if s["qkv_bias"] else 0)
    root = V * h * (1 if s["tied"] else 2) + h
    params = n_layers * layer + root
    optimizer_bytes = {"adamw": 8, "adamw8bit": 2, "paged_adamw8bit": 2}[optimizer]
    sharded = mode == "full" and (n_gpus > 1 or cpu_offload)

    plan = {"model": model if isinstance(model, str) else "custom", "params_billion": params / 1e9, "n_gpus": n_gpus, "mode": mode,
            "optim": optimizer, "seq_len": T, "sharded": sharded, "cpu_offload": cpu_offload and mode == "full"}
    if mode == "full":
        local = params / n_gpus if sharded else params
        states = {"weights": 4 * local, "gradients": 4 * local, "optimizer": optimizer_bytes * local}
        working = 2 * root + 10 * layer if sharded else 2 * layer + 2 * V * h
    else:
        adapters = lora_rank * n_layers * ((h + q) + 2 * (h + kv) + (q + h) + 2 * (h + i) + (i + h))
        quantized = n_layers * layer_linear if mode == "qlora" else 0
        base = 2 * params if mode == "lora" else quantized * 4.127 / 8 + 4 * (params - quantized)
        states = {"weights": base + 4 * adapters, "gradients": 4 * adapters, "optimizer": optimizer_bytes * adapters}
        working = 2 * layer_linear if mode == "qlora" else 0
        plan["lora_params_million"] = adapters / 1e6
    on_cpu = plan["cpu_offload"]
    act_bytes = 4 if mode == "full" and not sharded else 2
    per_layer = (22 * h + 8 * kv + 8 * i) * T
    checkpoints = n_layers * T * h * act_bytes if gradient_checkpointing else n_layers * per_layer
    layer_peak = 1.5 * per_layer if gradient_checkpointing else 0.5 * per_layer
    loss_peak = 10 * min(loss_chunk_tokens or T, T) * V
    gpu = {
        "weights": 0.0 if on_cpu else states["weights"],
        "gradients": 0.0 if on_cpu else states["gradients"],
        "optimizer": 0.0 if on_cpu else states["optimizer"],
        "working_copies": working,
        "activation_checkpoints": 0.0 if offload_activations and gradient_checkpointing else checkpoints,
        "activation_peak": max(layer_peak, loss_peak),
    }
    plan.update({k: v / GiB for k, v in gpu.items()})
    plan["total"] = sum(gpu.values()) / GiB
    plan["cpu_per_gpu"] = ((sum(states.values()) if on_cpu else 0) + (checkpoints if offload_activations else 0)) / GiB
    plan["pageable"] = plan["optimizer"] if optimizer == "paged_adamw8bit" and not on_cpu else 0.0
    plan["gpu_gib"] = gpu_gib
    plan["fits"] = plan["total"] - plan["pageable"] <= 0.92 * gpu_gib
    return plan


def format_memory_plan(plan: dict) -> str:
    """The plan as a small table, one line per component, for --dry-run."""
    how = ("FSDP-sharded over " if plan["sharded"] else "replicated on ") + f"{plan['n_gpus']} GPU(s)"
    lines = [f"memory plan: {plan['model']} ({plan['params_billion']:.2f}B params), {plan['mode']}, {plan['optim']}, "
             f"{plan['seq_len']} tokens/micro-batch, {how}" + (", CPU offload" if plan["cpu_offload"] else "")]
    if "lora_params_million" in plan:
        lines.append(f"  adapters                  {plan['lora_params_million']:.1f}M trainable params")
    for key in ("weights", "gradients", "optimizer", "working_copies", "activation_checkpoints", "activation_peak"):
        note = " (paged: spills to CPU under pressure)" if key == "optimizer" and plan["pageable"] else ""
        lines.append(f"  {key:<25} {plan[key]:7.2f} GiB per GPU{note}")
    lines.append(f"  {'total':<25} {plan['total']:7.2f} GiB per GPU   (+ {plan['cpu_per_gpu']:.1f} GiB CPU memory per GPU)")
    verdict = "does NOT fit" if not plan["fits"] else "fits" if plan["total"] <= 0.92 * plan["gpu_gib"] else "fits only by paging optimizer state to CPU in"
    lines.append(f"  -> {verdict} a {plan['gpu_gib']:.1f} GiB GPU (keeping 8% for CUDA context, NCCL and fragmentation)")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- tiny model for tests and the demo

TOKENIZER_CORPUS = [DATA_DIR / "sample" / "openmathinstruct2_sft.jsonl", DATA_DIR / "sky_t1_system_prompt.txt"]
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# Qwen2's pre-tokenizer split: single digits (so arithmetic is learnable), words, punctuation runs, newlines.
QWEN2_SPLIT = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""


def train_tiny_tokenizer(vocab_size: int, extra_texts: Iterable[str] = ()):
    """A byte-level BPE tokenizer with Qwen's pre-tokenizer, special tokens and chat template, trained on bundled text."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    texts = list(extra_texts)
    for path in TOKENIZER_CORPUS:
        texts += [json.dumps(r, ensure_ascii=False) for r in read_jsonl(path)] if path.suffix == ".jsonl" else [path.read_text(encoding="utf-8")]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated"), pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        chat_template=(DATA_DIR / "qwen2.5_chat_template.jinja").read_text(encoding="utf-8"),
        model_max_length=131072,
    )


def make_tiny_model(output_dir: str | os.PathLike, vocab_size: int = 4096, hidden_size: int = 64, layers: int = 2, seed: int = 0,
                    tokenizer_vocab: int | None = None, extra_texts: Iterable[str] = ()) -> Path:
    """Write a random Qwen2-architecture model plus a trained tokenizer that from_pretrained loads offline.

    The embedding may be larger than the tokenizer's vocabulary, as in real Qwen2.5 (152064 vs 151665), so
    memory tests can use the real vocabulary size without training a 152k-token tokenizer.
    """
    from transformers import Qwen2Config, Qwen2ForCausalLM

    output_dir = Path(output_dir)
    tokenizer = train_tiny_tokenizer(min(vocab_size, tokenizer_vocab or 4096), extra_texts)
    heads = max(2, hidden_size // 32)
    config = Qwen2Config(
        vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=hidden_size * 3, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=max(1, heads // 2), max_position_embeddings=32768,
        rope_theta=1_000_000.0, tie_word_embeddings=False, bos_token_id=None,
        eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"), pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    model.generation_config.eos_token_id = [config.eos_token_id, tokenizer.convert_tokens_to_ids("<|endoftext|>")]
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    return output_dir


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    tiny = sub.add_parser("tiny-model", help="write a tiny random Qwen2 model + tokenizer for tests and the demo")
    tiny.add_argument("dir")
    tiny.add_argument("--vocab-size", type=int, default=4096, help="embedding rows; 152064 reproduces Qwen2.5's LM head cost")
    tiny.add_argument("--hidden-size", type=int, default=64, help="model width; small keeps CPU tests fast")
    tiny.add_argument("--layers", type=int, default=2, help="decoder layers")
    tiny.add_argument("--seed", type=int, default=0, help="weight init seed")
    args = parser.parse_args(argv)
    out = make_tiny_model(args.dir, args.vocab_size, args.hidden_size, args.layers, args.seed)
    print(f"wrote tiny Qwen2 model to {out}")


if __name__ == "__main__":
    main(sys.argv[1:])
