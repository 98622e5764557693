"""Plumbing shared by the scripts: JSON/JSONL I/O and atomic writes, device, dtype and attention choice, model and
tokenizer loading, the step logger and the commit a result records, the LR schedule, plotting and tables. The decisions
that shape training results live in sft.py; markup and prompts in markup.py; what a checkpoint holds and how a run
resumes in checkpoints.py.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import subprocess
import textwrap
import time
import warnings
from pathlib import Path
from typing import Callable, Iterable, Iterator

import torch

REPO_DIR = Path(__file__).resolve().parent
DATA_DIR = REPO_DIR / "data"
DEMO_PRESET = DATA_DIR / "demo_sft.json"  # the miniature's SFT arguments: the trainers' --demo and demo.py's grid

# Two messages from dependencies, each silenced alone, before any script imports them, so that no user learns to
# ignore them. bitsandbytes (>= 0.49), when imported (peft imports it), tries on a CPU with AVX512-BF16 to fetch a
# 4-bit kernel from the Hugging Face Hub (kernels-community) and warns when it cannot (offline, or its publisher check
# fails), then uses its own kernel; that logger says nothing else. PEFT (0.21) reads transformers' deprecated
# `is_gradient_checkpointing` each time it wraps a model, which transformers 5 answers with a FutureWarning.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)


# ----------------------------------------------------------------------------- JSON / JSONL I/O


class DataError(ValueError):
    """Bad input data; the message already names file, line and problem."""


def _decode(path: Path, data: bytes, first_line: int = 1) -> str:
    """UTF-8 text, or a DataError naming the line of the first bad byte (a stray binary, a Latin-1 export)."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = first_line + data.count(b"\n", 0, e.start)
        raise DataError(f"{path}:{line}: not UTF-8 text (byte 0x{data[e.start]:02x})") from None


def iter_json_lines(path: str | os.PathLike) -> Iterator[tuple[int, dict | DataError]]:
    """(line or item number from 1, record) for every record of a .jsonl file or a .json array; a bad line or item
    comes as its DataError instead, naming file, line and problem, for the caller to raise or count. Problems of the
    whole file (missing, a .json that does not parse) raise."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    if path.suffix == ".json":
        try:
            items = json.loads(_decode(path, path.read_bytes()))
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None
        if isinstance(items, dict):
            items = [items]
        if not isinstance(items, list):
            raise DataError(f"{path}: expected a JSON array of objects, got {type(items).__name__}")
        for n, item in enumerate(items, 1):
            if isinstance(item, dict):
                yield n, item
            else:
                yield n, DataError(f"{path}: item {n}: expected a JSON object, got {type(item).__name__}")
        return
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            try:
                line = _decode(path, raw, n)
                if line.strip():
                    item = json.loads(line)
                    if isinstance(item, dict):
                        yield n, item
                    else:
                        yield n, DataError(f"{path}:{n}: expected a JSON object, got {type(item).__name__}")
            except DataError as e:
                yield n, e
            except json.JSONDecodeError as e:
                yield n, DataError(f"{path}:{n}: invalid JSON ({e.msg} at column {e.colno})")


def iter_json_records(
    path: str | os.PathLike, on_error: Callable[[DataError], None] | None = None
) -> Iterator[tuple[int, dict]]:
    """(line or item number, record) of a .jsonl file or a .json array. A bad line or item raises its DataError, or
    with on_error is handed to it and skipped (reading goes on)."""
    for n, item in iter_json_lines(path):
        if not isinstance(item, DataError):
            yield n, item
        elif on_error is None:
            raise item
        else:
            on_error(item)


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    return [record for _, record in iter_json_records(path)]


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write via a temporary file and rename, so a kill never leaves a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def save_dir_atomically(final_dir: Path, write: Callable[[Path], None]) -> None:
    """Let write() fill a temporary folder, then rename it into place: a kill never leaves half a folder (a
    checkpoint, final/, merged/, the tiny student)."""
    tmp = final_dir.with_name(final_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    write(tmp)
    if final_dir.exists():
        shutil.rmtree(final_dir)
    os.replace(tmp, final_dir)


def _json_line(record: dict) -> str:
    """One JSONL line, non-ASCII text kept readable. A lone surrogate (JSON allows "\\ud800", and some model outputs
    hold one) has no UTF-8 form and would stop the write: it goes back to that escape, which reads back the same."""
    return json.dumps(record, ensure_ascii=False).encode("utf-8", "backslashreplace").decode("utf-8") + "\n"


def write_jsonl(path: str | os.PathLike, records: Iterable[dict]) -> int:
    """Atomically write records as JSONL; returns how many were written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    n = 0
    with open(tmp, "w", encoding="utf-8") as f:
        for record in records:
            f.write(_json_line(record))
            n += 1
    os.replace(tmp, path)
    return n


def append_jsonl(f, record: dict) -> None:
    """Append one record and flush, so a killed run keeps every finished line."""
    f.write(_json_line(record))
    f.flush()


# ----------------------------------------------------------------------------- reports


def format_table(header: list[str], rows: list[list]) -> str:
    """A plain-text table: the first column left-aligned, the others right-aligned, two spaces apart."""
    cells = [[str(c) for c in row] for row in [header, *rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = []
    for row in cells:
        first = row[0].ljust(widths[0])
        lines.append("  ".join([first] + [c.rjust(w) for c, w in zip(row[1:], widths[1:])]).rstrip())
    return "\n".join(lines)


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


# ----------------------------------------------------------------------------- device, model and tokenizer


def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


PRECISIONS = ("auto", "bf16", "fp16", "fp32")  # the trainers' --precision choices
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def choose_dtype(device_type: str, native_bf16: bool, precision: str = "auto") -> torch.dtype:
    """The repo's one dtype rule. auto: bf16 on a GPU that computes it natively (compute capability >= 8: A100, L4,
    H100; the paper's setting), fp16 on an older GPU (T4, V100: their bf16 is emulated and slow; fp16 needs a gradient
    scaler, distributed.make_grad_scaler), fp32 on CPU, where half-precision matmuls are slower and inexact. Any other
    precision is the user's choice and is taken as it is."""
    if precision != "auto":
        return DTYPES[precision]
    if device_type != "cuda":
        return torch.float32
    return torch.bfloat16 if native_bf16 else torch.float16


def pick_dtype(device: torch.device, precision: str = "auto") -> torch.dtype:
    """choose_dtype for this machine. torch.cuda.is_bf16_supported() counts emulation (True on a T4) unless told not
    to."""
    native_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported(including_emulation=False)
    return choose_dtype(device.type, native_bf16, precision)


def vllm_dtype() -> str:
    """pick_dtype's choice as vLLM's dtype argument on a GPU (float16 is vLLM's "half", what a T4 needs); on CPU,
    "auto" leaves the choice to vLLM's CPU backend."""
    device = pick_device()
    return str(pick_dtype(device)).removeprefix("torch.") if device.type == "cuda" else "auto"


ATTENTION = ("auto", "flash_attention_2", "sdpa", "eager", "flex_attention")  # the trainers' --attn choices


def pick_attention(requested: str, device: torch.device) -> str:
    """FlashAttention-2 on an Ampere or newer GPU when installed (its varlen kernel reads packed position_ids), SDPA
    otherwise (`python doctor.py` says which and why)."""
    import importlib.util

    has_flash = importlib.util.find_spec("flash_attn") is not None
    if requested == "flash_attention_2" and not has_flash:
        raise SystemExit("--attn flash_attention_2: flash-attn is not installed (see requirements-gpu.txt); use sdpa")
    if requested != "auto":
        return requested
    ampere = device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 8  # FlashAttention-2's minimum
    return "flash_attention_2" if ampere and has_flash else "sdpa"


CHAT_TEMPLATES = ("model", "chatml")  # --chat-template: these names, or the path of a Jinja file
# apply_chat_template's own arguments, which the scripts set: --chat-template-kwargs cannot pass them to the template
_RENDER_ARGUMENTS = ("conversation", "messages", "tools", "documents", "chat_template", "add_generation_prompt")
_RENDER_ARGUMENTS += (
    "continue_final_message",
    "tokenize",
    "return_dict",
    "return_tensors",
    "return_assistant_tokens_mask",
)


def chat_template_kwargs(text: str) -> dict:
    """--chat-template-kwargs: a JSON object of variables for the chat template (argparse type: a bad value is one
    error line)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not JSON ({e.msg} at column {e.colno}): {text[:80]!r}") from None
    except (ValueError, RecursionError) as e:  # an integer of over 4300 digits, arrays nested thousands deep
        raise argparse.ArgumentTypeError(f"not usable JSON ({type(e).__name__}): {text[:80]!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(
            f"expected a JSON object such as '{{\"enable_thinking\": false}}': {text[:80]!r}"
        )
    reserved = sorted(set(value) & set(_RENDER_ARGUMENTS))
    if reserved:
        raise argparse.ArgumentTypeError(f"{', '.join(reserved)}: set by the scripts themselves, not a template switch")
    return value


def load_tokenizer(name_or_dir: str, chat_template: str = "model", template_kwargs: dict | None = None):
    """The model's tokenizer with the chat template to train and evaluate with: the model's own ("model"), plain
    ChatML ("chatml", for a base model whose tokenizer has <|im_start|> and <|im_end|>), or a Jinja file's; and the
    variables every rendering passes that template (--chat-template-kwargs, e.g. Qwen3's enable_thinking), kept
    with it as `chat_template_kwargs` (sft.py renders with them)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(name_or_dir)
    if chat_template != "model":
        path = DATA_DIR / "chatml_template.jinja" if chat_template == "chatml" else Path(chat_template)
        if not path.is_file():
            raise SystemExit(f"--chat-template {chat_template}: no such file (or use 'model' or 'chatml')")
        tokenizer.chat_template = path.read_text(encoding="utf-8")
    if tokenizer.chat_template is None:
        raise SystemExit(f"{name_or_dir}: the tokenizer has no chat template; use a chat model or --chat-template")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.chat_template_kwargs = dict(template_kwargs or {})
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


def enable_checkpointing(model, offload: bool = False) -> None:
    """Non-reentrant activation checkpointing of every decoder layer; with offload the layer inputs it keeps wait in
    pinned CPU memory. transformers >= 5.23 has both (activation_checkpointing_enable); 5.20 to 5.22, which vLLM 0.33
    requires (requirements-gpu.txt), has the first only, under its older name."""
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable({"use_reentrant": False}, offload=offload)
    elif offload:
        raise SystemExit("--offload-activations needs transformers >= 5.23 (pip install -U transformers)")
    else:
        model.gradient_checkpointing_enable({"use_reentrant": False})


def prepare_qlora(model):
    """PEFT's prepare_model_for_kbit_training, then every weight it upcast to fp32 back to the dtype it was loaded in.

    PEFT upcasts embeddings, norms, biases and the LM head to fp32 (a fix for fp16 training). That turns the residual
    stream fp32 (bitsandbytes' Linear4bit returns its input's dtype), which doubles every checkpointed activation
    (Qwen2.5-32B at 16k tokens: 20 GiB instead of 10); under bf16 it buys nothing: RMSNorm computes its variance in
    fp32 anyway, and the loss upcasts its logits. fp16 (a T4) keeps the same layout in fp16, as vLLM serves it there;
    an overflow shows as skipped steps in the log (distributed.scaled_optimizer_step). What the model keeps in fp32 by
    design (_keep_in_fp32_modules) stays so; the LoRA weights, which must be fp32 (the optimizer's master copy), are
    made fp32 by get_peft_model afterwards.
    memory_plan.py counts this layout; tests/test_train_lora.py checks it in a bf16 and an fp16 step.
    """
    from peft import prepare_model_for_kbit_training

    loaded = {name: param.dtype for name, param in model.named_parameters()}
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)  # freezes, upcasts
    for name, param in model.named_parameters():
        if param.dtype != loaded[name]:
            param.data = param.data.to(loaded[name])
    return model


def demo_arguments(script: str) -> dict:
    """A trainer's --demo defaults (argparse dests): DEMO_PRESET's shared arguments and the script's own, with its
    paths, which name files of this repository, made absolute."""
    preset = json.loads(DEMO_PRESET.read_text(encoding="utf-8"))
    arguments = preset["both"] | preset[script]
    arguments["model"], arguments["eval_tasks"] = (str(REPO_DIR / arguments[key]) for key in ("model", "eval_tasks"))
    arguments["data"] = [str(REPO_DIR / path) for path in arguments["data"]]
    return arguments


def parse_with_demo(parser: argparse.ArgumentParser, argv: list[str] | None, script: str) -> argparse.Namespace:
    """parser.parse_args(argv), where --demo makes demo_arguments(script) the defaults, so that flags given with it
    override them; the preset's --data only when none is given (--data appends: a default list would be added to)."""
    preset = demo_arguments(script) if parser.parse_known_args(argv)[0].demo else {}
    parser.set_defaults(**{key: value for key, value in preset.items() if key != "data"})
    args = parser.parse_args(argv)
    args.data = args.data or preset.get("data", [])
    return args


def require_demo_student(path: str) -> None:
    """--demo trains the miniature's pretrained student; if its folder is gone, say how to make it again."""
    if not (Path(path) / "config.json").exists():
        raise SystemExit(
            f"{path}: no tiny student there; make it with `python tiny_model.py --pretrain {path}` (~10 min)"
        )


def write_run_config(folder: Path, args: argparse.Namespace) -> None:
    """Every setting of a run, as parsed: run_config.json in its output folder, each checkpoint and final/."""
    atomic_write_text(folder / "run_config.json", json.dumps(vars(args), indent=1))


def changed_settings(args: argparse.Namespace, parser: argparse.ArgumentParser, output_dir: Path) -> str:
    """The settings of args that differ from the parser's defaults, wrapped to a few lines: what a run's log starts
    with; output_dir's run_config.json (write_run_config) holds them all."""
    defaults = vars(parser.parse_args([]))
    changed = [f"{key} {value}" for key, value in vars(args).items() if defaults.get(key, value) != value]
    text = f"settings: {', '.join(changed) or 'the defaults'} (all: {output_dir / 'run_config.json'})"
    return textwrap.fill(text, 120, subsequent_indent="  ", break_on_hyphens=False)


def cpu_threads_per_rank() -> int | None:
    """Under torchrun, each local rank's share of the cores this process may use; None elsewhere, or when
    OMP_NUM_THREADS was chosen by hand. torchrun sets OMP_NUM_THREADS=1 when it is unset, which leaves CPU work
    (FSDP's CPU-offloaded AdamW step) one core per rank."""
    local_ranks = int(os.environ.get("LOCAL_WORLD_SIZE", "0"))
    if not local_ranks or os.environ.get("OMP_NUM_THREADS", "1") != "1":
        return None
    return max(1, len(os.sched_getaffinity(0)) // local_ranks)


def peak_memory_gb(device: torch.device) -> float:
    """Peak allocated GPU memory, or on CPU the process's peak resident set (what /usr/bin/time -v reports)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


# ----------------------------------------------------------------------------- logging


def code_commit(paths: tuple[str, ...] = ("*.py",)) -> str:
    """The commit whose code made a result (benchmarks, the miniature's tables), so the result can be matched to the
    code it speaks for; a tracked file under paths changed since that commit is said, since the result then belongs to
    no commit. Results files do not count: the scripts rewrite them while other runs still go on."""
    try:
        git = ["git", "-C", str(REPO_DIR)]
        head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return "unknown (not a git checkout)"
        changed = subprocess.run([*git, "diff", "--quiet", "HEAD", "--", *paths], timeout=10).returncode != 0
    except (OSError, subprocess.SubprocessError):
        return "unknown (no git)"
    return head.stdout.strip() + (f" with uncommitted changes to {', '.join(paths)}" if changed else "")


def format_duration(seconds: float) -> str:
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    return f"{h}h{rem // 60:02d}m" if h else f"{rem // 60}m{rem % 60:02d}s"


class StepLogger:
    """One dense line per optimizer step on the console, the same record appended to metrics.jsonl."""

    def __init__(self, output_dir: Path, total_steps: int, start_step: int, wandb_project: str | None, config: dict):
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
        # fp16 only: the loss scale this step used, and the steps skipped so far for inf/nan gradients
        scale = (
            f"scale {record['loss_scale']:g} ({record['skipped_steps']} skipped) | " if "loss_scale" in record else ""
        )
        return (
            f"step {record['step']}/{self.total_steps} | loss {record['loss']:.4f} | lr {record['lr']:.2e} | "
            f"grad {record['grad_norm']:.3f} | {scale}tok/s {record['tokens_per_s']:.0f} | "
            f"mem {record['peak_mem_gb']:.2f} GB | eta {format_duration(eta)}"
        )

    def close(self):
        self.metrics.close()
        if self.wandb:
            self.wandb.finish()


# ----------------------------------------------------------------------------- LR schedule


def cosine_schedule(warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    """Linear warmup to the peak, then cosine decay to zero (the paper's LLaMA-Factory schedule)."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    return factor
