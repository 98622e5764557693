"""Benchmark 5: data preparation throughput, records/s and tokens/s of prepare_data.py on a 17k-record long-CoT file.

    python bench/prepare_throughput.py          # 17k synthetic Sky-T1-style records, tiny tokenizer (~12 min, 2 cores)
    python bench/prepare_throughput.py --quick  # smoke test

The input is built from the bundled sample (data/sample/openmathinstruct2_sft.jsonl, 100 problems): each record takes a
sample problem with its numbers replaced and a short random clause appended (so deduplication keeps most of them), and a
Sky-T1-markup response made of sample solutions strung together up to a long-CoT length drawn from lognormal(median 5000
tokens, sigma 0.5) clipped to [300, 16000] tokens of the tiny tokenizer, ending in \\boxed{answer}.
prepare_data.py runs as a subprocess (/usr/bin/time -v) with the tiny model's tokenizer, with its defaults
(parse, near-duplicate removal, tokenize, write); `--variants default,decontaminate` adds a run with --decontaminate.
Reported: input records/s and tokenized tokens/s over the process's wall time (imports included), the tokenize
stage's own tokens/s from prepare_data's report, and the peak RSS. --verify is left out: its cost is the grader's, see
bench/scoring.py.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import re
import sys
from pathlib import Path

from common import (
    SCRATCH_DIR,
    add_common_args,
    chars_per_token,
    machine_info,
    machine_line,
    markdown_table,
    run_measured,
    sample_records,
    save_results,
    sky_t1_response,
    tiny_model,
)

import utils

GIB = 2**30


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--records", type=int, default=17000, help="input size (Sky-T1: 17k)")
    p.add_argument("--median", type=float, default=5000, help="median response length in tokens")
    p.add_argument(
        "--variants",
        default="default",
        help="comma list of prepare_data.py runs: default, decontaminate (adds --decontaminate)",
    )
    p.add_argument("--model", help="tokenizer folder (default: a cached tiny model)")
    p.add_argument("--seed", type=int, default=0, help="synthetic data")
    add_common_args(p)
    args = p.parse_args(argv)
    if args.quick:
        args.records, args.median, args.variants = 40, 300, "default"
    return args


def synthetic_file(args: argparse.Namespace, tokenizer) -> Path:
    path = SCRATCH_DIR / "data" / f"prepare-{args.records}-{args.median:g}-{args.seed}.jsonl"
    if path.exists():
        return path
    rng = random.Random(args.seed)
    ratio = chars_per_token(tokenizer)
    base = sample_records()
    pieces = [r["response"] for r in base]
    words = sorted({w for r in base for w in re.findall(r"[a-z]{4,}", r["prompt"].lower())})

    def records():
        for i in range(args.records):
            source = base[i % len(base)]
            problem = re.sub(
                r"\d+",
                lambda _: str(rng.randrange(2, 999)),
                source["prompt"].replace("Return your final response within \\boxed{}. ", ""),
            )
            problem += " (Context: " + " ".join(rng.choices(words, k=12)) + ".)"
            tokens = min(16000, max(300, round(rng.lognormvariate(math.log(args.median), 0.5))))
            yield {
                "id": f"synthetic-{i}",
                "problem": problem,
                "answer": source["answer"],
                "response": sky_t1_response(rng, pieces, int(tokens * ratio), source["answer"]),
            }

    print(f"writing {args.records} synthetic records to {path} ...", flush=True)
    utils.write_jsonl(path, records())
    return path


def main(args: argparse.Namespace) -> dict:
    machine = machine_info()
    model_dir = Path(args.model) if args.model else tiny_model()
    data = synthetic_file(args, utils.load_tokenizer(str(model_dir)))
    size_mb = data.stat().st_size / 2**20
    rows = []
    for variant in args.variants.split(","):
        output = SCRATCH_DIR / "runs" / f"prepare-{variant}" / "train.jsonl"
        cmd = [
            sys.executable,
            "prepare_data.py",
            "--input",
            str(data),
            "--output",
            str(output),
            "--tokenizer",
            str(model_dir),
        ]
        cmd += ["--decontaminate"] if variant == "decontaminate" else []
        print(f"prepare_data.py ({variant}) on {args.records} records ...", flush=True)
        run = run_measured(cmd)
        if not run["ok"]:
            raise SystemExit(f"prepare_data.py failed (exit {run['returncode']}):\n{run['output'][-3000:]}")
        report = json.loads(output.with_name(output.stem + "_report.json").read_text())
        # prepare_data tokenizes every parsed record (before the length filter); its report has the rate and stage time
        tokenized = round(report["tokens_per_s"] * report["timings_s"]["tokenize"])
        rows.append(
            {
                "variant": variant,
                "records_in": args.records,
                "records_out": sum(1 for _ in open(output, encoding="utf-8")),
                "wall_s": run["wall_s"],
                "records_per_s": args.records / run["wall_s"],
                "tokens_tokenized": tokenized,
                "tokens_per_s_wall": tokenized / run["wall_s"],
                "tokenize_tokens_per_s": report["tokens_per_s"],
                "peak_rss_gib": run["max_rss_bytes"] / GIB,
                "stages_s": report["timings_s"],
                "kept_tokens": report["n_tokens"],
            }
        )
        print("  ", rows[-1], flush=True)
    table = markdown_table(
        rows,
        [
            "variant",
            "records_in",
            "records_out",
            "wall_s",
            "records_per_s",
            "tokens_tokenized",
            "tokens_per_s_wall",
            "tokenize_tokens_per_s",
            "peak_rss_gib",
        ],
    )
    stages = "\n".join(f"- {r['variant']}: stage seconds {r['stages_s']}" for r in rows)
    print("\n" + table + "\n" + stages)
    notes = (
        f"input {args.records} synthetic records ({size_mb:.0f} MB, median response ~{args.median:g} tokens), "
        f"tokenizer {model_dir.name} (tiny, vocab 4096); wall = whole process incl. imports; "
        "tokens_tokenized = every parsed record (before the length filter); "
        "tokenize_tokens_per_s = prepare_data's own tokenize stage."
    )
    markdown = f"{machine_line(machine)}\n\n`python bench/prepare_throughput.py`: {notes}\n\n{table}\n\n{stages}\n"
    payload = {
        "benchmark": "prepare_throughput",
        "machine": machine,
        "config": vars(args),
        "input_mb": size_mb,
        "rows": rows,
    }
    save_results(args, "prepare_throughput", "5. Data preparation throughput", payload, markdown)
    return payload


if __name__ == "__main__":
    main(parse_args(sys.argv[1:]))
