"""What every benchmark script shares: the machine description, result files, tables, memory-measured subprocesses and
synthetic long-CoT records. Not a benchmark itself; the scripts next to it import it.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO_DIR = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_DIR))

import markup  # noqa: E402
import sft  # noqa: E402
import utils  # noqa: E402

BENCH_DIR = REPO_DIR / "bench"
RESULTS_DIR = BENCH_DIR / "results"
RESULTS_MD = BENCH_DIR / "RESULTS.md"
SCRATCH_DIR = REPO_DIR / "out" / "bench"  # git-ignored: tiny models, generated data, training runs
MEMORY_RESERVE_GIB = 3.0  # left free for the other processes on a shared machine when a run's budget is picked
SAMPLE_FILE = utils.DATA_DIR / "sample" / "openmathinstruct2_sft.jsonl"


def add_common_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--quick", action="store_true", help="tiny sizes that finish in seconds: the CI smoke test, not a measurement"
    )
    parser.add_argument("--results-dir", default=str(RESULTS_DIR), help="where NAME.json is written")
    parser.add_argument(
        "--results-md",
        default=str(RESULTS_MD),
        help="markdown file whose section for this benchmark is replaced ('' = none); --quick never writes it",
    )


# ----------------------------------------------------------------------------- machine


def machine_info() -> dict:
    """Enough to judge a number later: CPU model, cores, memory, load (the machine may be shared), versions, date."""
    cpu = platform.processor() or "unknown"
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        found = re.search(r"^Model name:\s*(.+)$", lscpu, re.M)
        cpu = found.group(1).strip() if found else cpu
    except (OSError, subprocess.SubprocessError):
        pass
    import torch

    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "mem_total_gib": round(meminfo_bytes("MemTotal") / 2**30, 1),
        "mem_available_gib": round(meminfo_bytes("MemAvailable") / 2**30, 1),
        "load_avg_1_5_15": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "torch": torch.__version__,
        "commit": utils.code_commit(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def meminfo_bytes(field: str) -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def memory_budget_bytes() -> int:
    """What one measured run may take without pushing the machine's other processes into the OOM killer."""
    return int(meminfo_bytes("MemAvailable") - MEMORY_RESERVE_GIB * 2**30)


# ----------------------------------------------------------------------------- results


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    """A markdown table (it reads fine on a terminal too); floats get 3 significant digits."""

    def cell(value) -> str:
        if isinstance(value, float):
            return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
        if isinstance(value, int) and not isinstance(value, bool):
            return f"{value:,}"
        return "" if value is None else str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def repo_path(path: str | Path) -> str:
    """How a result names a file: relative to the repository inside it, by its name alone outside it. A folder of the
    machine that ran the benchmark means nothing in another clone."""
    resolved = Path(path).expanduser().resolve()
    return resolved.relative_to(REPO_DIR).as_posix() if resolved.is_relative_to(REPO_DIR) else resolved.name


def recorded_config(config: dict) -> dict:
    """A run's arguments as a result records them: each path given absolute or from the working folder (/, ~, ./, ../)
    through repo_path, lists included; the rest as given."""

    def recorded(value):
        if isinstance(value, list):
            return [recorded(item) for item in value]
        if isinstance(value, (str, Path)) and str(value).startswith(("/", "~", "./", "../")):
            return repo_path(value)
        return value

    return {key: recorded(value) for key, value in config.items()}


def save_results(args: argparse.Namespace, name: str, title: str, payload: dict, markdown: str) -> Path:
    """Write NAME.json (always) and replace this benchmark's section of RESULTS.md (full runs only). The payload's
    "config" (the run's arguments) records its paths as repo_path writes them, and the markdown names the repository's
    files relative to it: results that go into the repository name no folder of this machine."""
    path = Path(args.results_dir) / f"{name}.json"
    if "config" in payload:
        payload = {**payload, "config": recorded_config(payload["config"])}
    utils.atomic_write_text(path, json.dumps(payload, indent=1) + "\n")
    print(f"\nwrote {path}")
    if args.results_md and not args.quick:
        markdown = markdown.replace(f"{REPO_DIR}{os.sep}", "")
        update_results_md(Path(args.results_md), name, f"## {title}\n\n{markdown.strip()}\n")
        print(f"updated {args.results_md} (section {name})")
    return path


def update_results_md(path: Path, name: str, section: str) -> None:
    """Each benchmark owns the text between its two markers; re-running one leaves the others' sections alone."""
    begin, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    block = f"{begin}\n{section}{end}"
    if path.exists():
        text = path.read_text(encoding="utf-8")
    else:
        text = (
            "# Benchmark results\n\n"
            "Written by the scripts in bench/ (see bench/README.md); one section per benchmark.\n"
        )
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip("\n") + "\n\n" + block + "\n"
    utils.atomic_write_text(path, text)


def machine_line(machine: dict) -> str:
    return (
        f"Machine: {machine['cpu']}, {machine['cores']} cores, {machine['mem_total_gib']} GiB "
        f"({machine['mem_available_gib']} GiB available at start); load average at start {machine['load_avg_1_5_15']}, "
        f"at end {[round(x, 2) for x in os.getloadavg()]}; torch {machine['torch']}; commit {machine['commit']}; "
        f"{machine['date']}."
    )


# ----------------------------------------------------------------------------- measured subprocesses


def _tree_rss_bytes(root_pid: int) -> int:
    """Resident memory of a process and all its descendants, read from /proc (no psutil needed)."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            children.setdefault(int(fields[1]), []).append(int(entry.name))
            rss[int(entry.name)] = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            continue
    total, todo = 0, [root_pid]
    while todo:
        pid = todo.pop()
        total += rss.get(pid, 0)
        todo += children.get(pid, [])
    return total


def run_measured(
    cmd: list[str],
    budget_bytes: int | None = None,
    cwd: Path = REPO_DIR,
    env: dict | None = None,
    timeout_s: float = 3600,
) -> dict:
    """Run cmd under /usr/bin/time -v; returns its exit code, peak RSS (time's "Maximum resident set size"), wall time
    and output. A watchdog kills the run once its resident memory passes budget_bytes, so a configuration that does not
    fit fails cleanly ("over_budget") instead of waking the OOM killer on a machine other people are using.
    """
    with tempfile.NamedTemporaryFile("r", suffix=".time", delete=False) as f:
        time_file = f.name
    env = {**os.environ, **(env or {})}
    t0 = time.time()
    proc = subprocess.Popen(
        ["/usr/bin/time", "-v", "-o", time_file, *cmd],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    over_budget, timed_out, seen_peak = False, False, 0
    output: list[str] = []
    reader = threading.Thread(target=lambda: output.extend(proc.stdout), daemon=True)
    reader.start()
    while proc.poll() is None:
        rss = _tree_rss_bytes(proc.pid)
        seen_peak = max(seen_peak, rss)
        if budget_bytes and rss > budget_bytes:
            over_budget = True
        if time.time() - t0 > timeout_s:
            timed_out = True
        if over_budget or timed_out:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            break
        time.sleep(0.25)  # a multi-GiB allocation takes longer to fault in; the reserve absorbs the overshoot
    reader.join(timeout=10)
    wall = time.time() - t0
    report = Path(time_file).read_text() if Path(time_file).exists() else ""
    Path(time_file).unlink(missing_ok=True)
    found = re.search(r"Maximum resident set size \(kbytes\): (\d+)", report)
    max_rss = int(found.group(1)) * 1024 if found else seen_peak
    return {
        "returncode": proc.returncode,
        "ok": proc.returncode == 0 and not over_budget and not timed_out,
        "over_budget": over_budget,
        "timed_out": timed_out,
        "max_rss_bytes": max(max_rss, seen_peak) if over_budget else max_rss,
        "wall_s": wall,
        "output": "".join(output),
    }


def last_json_line(output: str) -> dict:
    """Children report one JSON object on their last JSON-looking line of output."""
    for line in reversed(output.strip().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise RuntimeError("child printed no JSON result; its output ends with:\n" + output[-2000:])


# ----------------------------------------------------------------------------- tiny models and synthetic long-CoT data


def tiny_model(vocab_size: int = 4096, hidden_size: int = 64) -> Path:
    """A tiny random Qwen2 (tiny_model.py), built once and cached under out/bench/."""
    path = SCRATCH_DIR / f"tiny-v{vocab_size}-h{hidden_size}"
    if not (path / "config.json").exists():
        print(f"building tiny model {path} ...", flush=True)
        subprocess.run(
            [
                sys.executable,
                str(REPO_DIR / "tiny_model.py"),
                str(path),
                "--vocab-size",
                str(vocab_size),
                "--hidden-size",
                str(hidden_size),
            ],
            check=True,
            cwd=REPO_DIR,
        )
    return path


def sample_records() -> list[dict]:
    return utils.read_jsonl(SAMPLE_FILE)


def sky_t1_response(rng: random.Random, pieces: list[str], n_chars: int, answer: str) -> str:
    """A Sky-T1-formatted trace of about n_chars characters: worked solutions strung together with second thoughts."""
    connectors = [
        "\n\nWait, let me double-check that.\n\n",
        "\n\nAlternatively, another approach:\n\n",
        "\n\nHmm, let me verify each step.\n\n",
        "\n\nLet me reconsider the problem from the start.\n\n",
    ]
    thought = []
    length = 0
    while length < n_chars:
        piece = rng.choice(pieces)
        thought += [piece, rng.choice(connectors)]
        length += len(piece) + 40
    text = "".join(thought)[: max(n_chars, 1)]
    return markup.format_response(text, f"Therefore the answer is $\\boxed{{{answer}}}$.", "sky-t1")


def chars_per_token(tokenizer) -> float:
    """The tokenizer's compression on the bundled sample, to size synthetic traces in tokens."""
    text = "\n\n".join(r["response"] for r in sample_records())
    return len(text) / len(tokenizer(text, add_special_tokens=False)["input_ids"])


def record_tokens(tokenizer, record: dict) -> int:
    """Tokens of the chat-templated record, as train_lora.py counts them."""
    return sum(len(ids) for ids, _ in next(sft.tokenize_conversations(tokenizer, [sft.to_messages(record)])).sequences)


def record_of_tokens(tokenizer, target_tokens: int, seed: int = 0) -> dict:
    """One assistant-heavy chat record of at most target_tokens tokens and within 2% (or 64 tokens) of it."""
    pieces = [r["response"] for r in sample_records()]
    base = sample_records()[0]
    n_chars = int(target_tokens * chars_per_token(tokenizer))
    for _ in range(12):
        record = {
            "system": markup.SKY_T1_SYSTEM_PROMPT,
            "prompt": base["prompt"],
            "response": sky_t1_response(random.Random(seed), pieces, n_chars, base["answer"]),
        }
        n = record_tokens(tokenizer, record)
        if target_tokens - max(64, target_tokens // 50) <= n <= target_tokens:
            return record
        n_chars = int(n_chars * (target_tokens - max(32, target_tokens // 100)) / n)
    raise RuntimeError(f"could not build a record of ~{target_tokens} tokens (last try: {n})")
