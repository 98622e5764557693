"""Turn raw long-CoT traces, or a published long-CoT data set, into the chat records the trainers read.

    python prepare_data.py --input NovaSky-AI/Sky-T1_data_17k --output cot17k.jsonl
    python prepare_data.py --input simplescaling/s1K-1.1 --output s1k.jsonl --teacher deepseek --verify
    python prepare_data.py --input bespokelabs/Bespoke-Stratos-17k --output stratos.jsonl --as-published
    python prepare_data.py --input raw_qwq.jsonl --input raw_r1.jsonl --output cot.jsonl \\
        --tokenizer Qwen/Qwen2.5-32B-Instruct --max-length 16384 --verify --decontaminate --size 17000 \\
        --mix math=12000,code=5000
    python prepare_data.py --synthetic arithmetic --size 17000 --output synth.jsonl --tokenizer out/tiny-model \\
        --verify   # the toy task

Inputs: local .jsonl / .json / .parquet files, or a Hugging Face dataset name (`owner/name`, not a local path;
--subset, --split, --limit). Each record is read in its published layout (schemas.py): Sky-T1 ShareGPT, chat messages,
prompt/response, raw problem + solution, and s1K / s1K-1.1, LIMO, OpenR1-Math, AM, Nemotron, detected from its field
names (--schema forces one; the report names what it found per input). Replies use Sky-T1 or R1 markup, or none (all
thought but a clear final block; markup.py).

Output: one JSON object per line, read as is by sft.load_conversations (it uses `messages`, ignores the rest):
    messages   [{"role": "system", ...} (not for --style r1), {"role": "user", ...}, {"role": "assistant", ...}]
    id         the input record's `id` (or `uuid`), else "<file name>:<line>"; "#g<i>" marks an OpenR1 generation
    source     the input file or dataset name
    domain     "math" | "code" (the set's own label; else code if it has tests, or its solution has a
               ```python block and no \\boxed)
    answer     gold final answer, when known (math);  tests: [{"input", "output", "testtype"}] when known (code)
    starter_code  when non-empty (code);  n_tokens: tokens the trainers see of the chat-templated record under
               --tokenizer (summed over its sequences where the template splits one; --max-length judges the longest)
Prompts follow Sky-T1's data scripts (markup.training_prompt): a raw math problem becomes "Return your final response
within \\boxed{}. {problem}", a raw code problem gets APPS's "Generate an executable Python function ..." prefix
(plus its starter code); prompts of chat-shaped records are kept. System prompt (markup.system_prompt): --style
sky-t1 -> Sky-T1's, r1 -> none (DeepSeek-R1's advice), keep -> the record's (Nemotron's "detailed thinking on").
Sky-T1_data_17k itself carries no gold answers or tests (it was verified when it was made): --verify counts it
unverifiable. A reply without markup stays so under --style keep; s1K's thought and attempt are joined in R1 markup.

Filters, in this order, each counted per source in the report (OUTPUT_report.json, OUTPUT_lengths.png; WHY says what
each means): unparsable; multi_turn; reasoning_off; wrong_generation; empty; no_thought; truncated; no_answer;
contaminated (--decontaminate); unverifiable / rejected (--verify); too_long (> --max-length); exact_duplicate /
near_duplicate prompts; not_sampled. Deduplication comes after verification, so of several responses to one problem
the first correct one survives. extra_generations counts the records a published record adds (OpenR1's generations).
--as-published keeps every record and only formats it: no_answer, too_long and the duplicates are counted under
would_drop instead, and with --style keep so are no_thought, truncated and reasoning_off (kept as published).
A malformed record stops the run with one line naming file, line and problem (--skip-bad: counted as unparsable);
a run that keeps no record still writes its report, then exits non-zero naming the filters that removed them.
main(cfg) reads through load_raw(); any iterator of (source, line, record) can stand in for it.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import random
import re
import sys
import time
from collections import Counter, defaultdict
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
from tqdm import tqdm

import markup
import schemas
import sft
import utils
from similarity import BenchmarkIndex, NearDuplicateIndex, words
from utils import DataError

FENCED_PYTHON = re.compile(r"```(?:python3?|py)[ \t]*\n", re.I)
FENCED_BLOCK = re.compile(r"```[^\n]*\n.*?```", re.S)
HF_DATASET_NAME = re.compile(r"[\w.-]+/[\w.-]+")
# Every way a record can leave, in pipeline order, and why; each is counted per source in the report.
WHY = {
    "unparsable": "not JSON, not an object, or a field of the wrong type (--skip-bad)",
    "multi_turn": "more than one user turn: this pipeline trains single-turn long-CoT",
    "reasoning_off": "Nemotron: made with reasoning off, so there is no thought",
    "wrong_generation": "OpenR1: math-verify rejected it or its reasoning is incomplete (--generations correct)",
    "empty": "blank reply",
    "no_thought": "empty thought, or no markup and no final block to split at",
    "truncated": "thought or solution never closed, or an empty solution",
    "no_answer": "math solution without \\boxed, code solution without a fenced block",
    "contaminated": "prompt overlaps an evaluation benchmark (--decontaminate)",
    "unverifiable": "no gold answer or tests, or the grader could not check them (--verify)",
    "rejected": "wrong answer under --verify (a right one under --keep incorrect)",
    "too_long": "a training sequence of more than --max-length tokens once chat-templated",
    "exact_duplicate": "the same prompt as an earlier record",
    "near_duplicate": "a prompt within --near-dup-threshold (word 3-gram Jaccard) of an earlier one",
    "not_sampled": "left out by --size / --mix",
}
FILTERS = tuple(WHY)
COUNTS = ("read", "extra_generations", *FILTERS, "kept")
KEPT_AS_PUBLISHED = ("no_thought", "truncated", "reasoning_off")  # --as-published --style keep keeps these verbatim


def parse_mix(text: str) -> dict[str, int]:
    try:
        mix = {domain.strip(): int(count) for domain, count in (part.split("=") for part in text.split(","))}
    except ValueError:
        raise argparse.ArgumentTypeError(f"--mix {text!r}: expected e.g. math=12000,code=5000") from None
    if not set(mix) <= {"math", "code"} or min(mix.values()) < 0:
        raise argparse.ArgumentTypeError(f"--mix {text!r}: domains are math and code, counts >= 0")
    return mix


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = p.add_argument
    add("--input", action="append", default=[], help="JSONL/JSON/Parquet file or HF dataset; repeat to merge teachers")
    add("--synthetic", choices=["arithmetic"], help="instead of --input: --size toy traces (synthetic.py)")
    add("--output", required=True, help="training JSONL; the report and length histogram go next to it")
    add("--split", help="split of a hub dataset (default train; Nemotron: math)")
    add(
        "--subset", help="subset (configuration) of a hub dataset, e.g. am_0.9M (default: AM both halves; Nemotron SFT)"
    )
    add(
        "--limit",
        type=int,
        help="read only the first N records of each input; a hub set is then streamed, not downloaded whole "
        "(Nemotron's math split holds about 22M)",
    )
    add("--schema", choices=list(schemas.BY_NAME), help="read every record in this published layout (schemas.py)")
    add(
        "--teacher",
        choices=schemas.TEACHERS,
        help="s1K-1.1: whose thinking trajectory and attempt to train on (default deepseek: s1.1 was trained on "
        "DeepSeek-R1's; s1K holds only Gemini's)",
    )
    add(
        "--generations",
        choices=schemas.GENERATIONS,
        help="OpenR1-Math: first = the trace in `messages` (what open-r1 trains on); correct = every generation "
        "math-verify accepted with complete reasoning, each a record; all = every one. Default correct: only "
        "verified traces, and dedup then keeps one per problem (--dedup none: all of them); with --as-published, first",
    )
    add(
        "--as-published",
        action="store_true",
        help="keep every record and only format it: no answer, length or duplicate filter, no sampling (the authors "
        "trained on the released sets as they are, LLaMA-Factory truncating at 16384 tokens: train with --truncate); "
        "the report counts what each default filter would have dropped, and why",
    )
    add("--style", choices=markup.STYLES, default="sky-t1", help="reasoning markup the student learns (paper: sky-t1)")
    add("--tokenizer", default="Qwen/Qwen2.5-32B-Instruct", help="the student's: lengths count its chat template too")
    add(
        "--chat-template-kwargs",
        type=utils.chat_template_kwargs,
        default={},
        metavar="JSON",
        help="variables for --tokenizer's chat template when counting, as the trainers get them, e.g. "
        "'{\"enable_thinking\": false}' (Qwen3)",
    )
    add("--max-length", type=int, default=16384, help="drop records longer than the training context (tokens)")
    add("--verify", action="store_true", help="rejection sampling: keep a trace only if its answer is correct")
    add(
        "--keep",
        choices=["correct", "incorrect"],
        default="correct",
        help="incorrect: wrong answers (implies --verify)",
    )
    add("--workers", type=int, default=os.cpu_count() or 1, help="processes that verify in parallel")
    add("--dedup", choices=["none", "exact", "near"], default="near", help="drop repeated prompts: same text, or near")
    add("--near-dup-threshold", type=float, default=0.8, help="word-3-gram Jaccard at which two prompts are one")
    add("--decontaminate", action="store_true", help="drop prompts overlapping the evaluation benchmarks in --eval-dir")
    add("--eval-dir", default=str(utils.DATA_DIR / "eval"), help="folder with the benchmark JSONL files")
    add("--decontam-ngram", type=int, default=13, help="word n-gram length for benchmark overlap (GPT-3: 13)")
    add("--decontam-threshold", type=float, default=0.5, help="share of the shorter text's n-grams found in one item")
    add("--size", type=int, help="sample this many records, deterministically (--seed)")
    add("--mix", type=parse_mix, help="records per domain, e.g. math=12000,code=5000")
    add("--seed", type=int, default=0, help="sampling seed")
    add("--skip-bad", action="store_true", help="count and skip malformed records instead of stopping at the first")
    cfg = p.parse_args(argv)
    if not cfg.input and not cfg.synthetic:
        p.error("give --input (repeatable) or --synthetic arithmetic")
    dropping = [flag for flag, on in [("--verify", cfg.verify), ("--keep incorrect", cfg.keep == "incorrect")] if on]
    dropping += [flag for flag in ("--decontaminate", "--size", "--mix") if getattr(cfg, flag[2:])]
    if cfg.as_published and dropping:
        p.error(f"--as-published keeps every record; it cannot be combined with {', '.join(dropping)}")
    cfg.generations = cfg.generations or ("first" if cfg.as_published else "correct")
    return cfg


# ----------------------------------------------------------------------------- reading


def load_raw(
    inputs: list[str], split: str | None = None, subset: str | None = None, limit: int | None = None
) -> Iterator[tuple[str, int, dict | DataError]]:
    """Yield (source, line, record) from every input, at most `limit` per input; a malformed JSON line or item yields
    its DataError instead of a record (so --skip-bad can count it). A file that cannot be read at all raises."""
    for name in inputs:
        path = Path(name)
        if not path.exists():
            if path.suffix in (".jsonl", ".json", ".parquet") or not HF_DATASET_NAME.fullmatch(name):
                raise DataError(f"{name}: file not found")
            rows = enumerate(schemas.load_hub(name, subset, split, streaming=limit is not None), 1)
        elif path.suffix == ".parquet":
            rows = parquet_rows(path)
        elif path.suffix in (".json", ".jsonl"):
            rows = utils.iter_json_lines(path)
        else:
            raise DataError(f"{name}: unsupported input (expected .jsonl, .json, .parquet or a Hugging Face dataset)")
        yield from ((name, line, row) for line, row in itertools.islice(rows, limit))


def parquet_rows(path: Path) -> Iterator[tuple[int, dict]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        batches = pq.ParquetFile(path).iter_batches(batch_size=1024)
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"{path}: not a Parquet file ({str(e).splitlines()[0]})") from None
    yield from enumerate((row for batch in batches for row in batch.to_pylist()), 1)


# ----------------------------------------------------------------------------- one record


@dataclass
class Example:
    id: str
    source: str
    problem: str  # the prompt without instruction boilerplate: what dedup and decontamination compare
    messages: list[dict]
    solution: str  # what verification grades: an answer boxed in an abandoned line of thought must not count
    domain: str
    answer: object = None
    tests: list | None = None
    starter_code: str = ""
    n_tokens: int = 0  # tokens the trainers see: summed over the record's training sequences
    longest: int = 0  # tokens of its longest training sequence: what --max-length judges, as the trainers do

    def to_record(self) -> dict:
        record = {"messages": self.messages, "id": self.id, "source": self.source, "domain": self.domain}
        optional = {"answer": self.answer, "tests": self.tests, "starter_code": self.starter_code}
        record.update({k: v for k, v in optional.items() if v not in (None, "", [])})
        record["n_tokens"] = self.n_tokens
        return record


def parse_reply(
    source: str, record_id: str, reply: schemas.Reply, style: str, as_published: bool = False
) -> tuple[Example | None, str | None]:
    """(example, None); (example, the filter it fails), which only --as-published keeps; or (None, the filter that
    drops it, a reply that cannot be written in the target markup). --as-published --style keep writes every reply
    as published, so only an empty one, another turn or an unselected generation is dropped."""
    _, solution, defect = markup.split_reasoning(reply.response)
    defect = reply.skip or defect
    if defect and not (as_published and style == "keep" and defect in KEPT_AS_PUBLISHED):
        return None, defect
    has_boxed = "\\boxed" in solution
    domain = reply.domain
    if domain is None:
        looks_like_code = reply.tests or (FENCED_PYTHON.search(solution) and not has_boxed)
        domain = "code" if looks_like_code else "math"
    if not defect and not (FENCED_BLOCK.search(solution) if domain == "code" else has_boxed):
        defect = "no_answer"
    user = reply.user
    if user is None:  # a raw problem: SkyThought's training prompt
        user = markup.training_prompt(reply.problem, domain, reply.starter_code)
    system = markup.system_prompt(style, reply.system)
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": user})
    messages.append({"role": "assistant", "content": markup.convert_style(reply.response, style)})
    gold = {"answer": reply.answer, "tests": reply.tests, "starter_code": reply.starter_code}
    return Example(record_id, source, reply.problem, messages, solution, domain, **gold), defect


# ----------------------------------------------------------------------------- stages


def drop(examples: list[Example], reasons: list, counts: dict, would_drop: dict | None = None) -> list[Example]:
    """The examples whose reason is None; each other is counted under its reason per source: nothing leaves silently.
    With would_drop (--as-published) nothing leaves: the reasons are counted there instead."""
    tally = counts if would_drop is None else would_drop
    for example, reason in zip(examples, reasons):
        tally[example.source][reason] += bool(reason)
    return examples if would_drop is not None else [e for e, r in zip(examples, reasons) if not r]


def parse_all(raw_records, cfg, counts: dict[str, Counter], would_drop, found) -> list[Example]:
    """Every reply of every record as an Example, or counted under the filter that drops it; `found` counts the
    schema each record was read in, per source."""
    options = schemas.Options(teacher=cfg.teacher, generations=cfg.generations)
    examples = []
    for source, line, raw in tqdm(raw_records, desc="parse", unit=" rec", leave=False):
        counts[source]["read"] += 1
        try:
            if isinstance(raw, DataError):  # not UTF-8, not JSON or not an object: it already names file and line
                raise raw
            schema = schemas.detect(raw, cfg.schema)
            replies = schema.read(raw, options)
        except ValueError as e:
            if not cfg.skip_bad:
                raise e if isinstance(e, DataError) else DataError(f"{source}:{line}: {e}") from None
            counts[source]["unparsable"] += 1
            continue
        found[source][schema.name] += 1
        counts[source]["extra_generations"] += len(replies) - 1
        key, record_id = schemas.first_field(raw, ("id", "uuid"))
        record_id = str(record_id) if key else f"{Path(source).name}:{line}"
        for reply in replies:
            example, defect = parse_reply(source, record_id + reply.key, reply, cfg.style, cfg.as_published)
            if example is None or (defect and not cfg.as_published):
                counts[source][defect] += 1
                continue
            would_drop[source][defect] += bool(defect)
            examples.append(example)
    return examples


def verify_one(job: tuple) -> bool | str:
    """Whether the solution is right, or the grader's complaint about the record's gold answer or tests."""
    domain, solution, answer, tests, starter_code = job
    try:
        if domain == "code":
            import sandbox

            return bool(sandbox.grade_code(solution, tests, starter_code, stop_on_first_failure=True)["correct"])
        import grading

        return bool(grading.grade_math(solution, answer)["correct"])
    except ValueError as e:  # e.g. starter code without a method: one bad record must not end a long run
        return str(e)


def verify_all(examples: list[Example], workers: int) -> list[bool | str]:
    jobs = [(e.domain, e.solution, e.answer, e.tests, e.starter_code) for e in examples]
    if workers <= 1 or len(jobs) < 2:
        return [verify_one(job) for job in tqdm(jobs, desc="verify", leave=False)]
    with ProcessPoolExecutor(workers) as pool:
        chunk = max(1, min(32, len(jobs) // (workers * 8)))
        return list(tqdm(pool.map(verify_one, jobs, chunksize=chunk), total=len(jobs), desc="verify", leave=False))


def count_tokens(tokenizer, conversations: list[list[dict]]) -> list[tuple[int, int]]:
    """(tokens, longest sequence) of each chat-templated record, exactly as the trainers tokenize it (sft.py): a
    template that rewrites earlier turns makes one training sequence per reply; the trainers see all their tokens (the
    sum, repeated prompts included) but drop or cut each sequence over --max-length on its own (the longest)."""
    tokenized = sft.tokenize_conversations(tokenizer, conversations)
    counted = tqdm(tokenized, total=len(conversations), desc="tokenize", leave=False)
    return [
        (sum(len(ids) for ids, _ in r.sequences), max((len(ids) for ids, _ in r.sequences), default=0)) for r in counted
    ]


def duplicates(examples: list[Example], mode: str, threshold: float) -> list[str | None]:
    """Which records repeat an earlier prompt (exact_duplicate / near_duplicate), in order: the first of each prompt
    stays (dedup runs after verification, so that is its first correct response)."""
    seen: set[str] = set()
    near = NearDuplicateIndex(threshold) if mode == "near" else None
    verdicts = []
    for example in tqdm(examples, desc="dedup", leave=False):
        key = hashlib.sha1(" ".join(words(example.problem)).encode()).hexdigest()
        if key in seen:
            verdicts.append("exact_duplicate")
        elif near and not near.add_if_new(example.problem):
            verdicts.append("near_duplicate")
        else:
            verdicts.append(None)
        seen.add(key)
    return verdicts


def sample(examples: list[Example], size: int | None, mix: dict | None, seed: int) -> tuple[list[bool], dict]:
    """Which records --size/--mix keep (deterministic in the records and the seed), and each domain's shortfall."""
    if not size and not mix:
        return [True] * len(examples), {}
    wanted = mix or {None: size}
    chosen, shortfall = set(), {}
    for domain, count in wanted.items():
        pool = [i for i, e in enumerate(examples) if domain in (None, e.domain)]
        chosen.update(random.Random(f"{seed}:{domain}").sample(pool, min(count, len(pool))))
        if count > len(pool):
            shortfall[domain or "all"] = count - len(pool)
    return [i in chosen for i in range(len(examples))], shortfall


# ----------------------------------------------------------------------------- report


def counts_table(by_source: dict[str, Counter]) -> str:
    """Each count per source (file name, last 24 characters) and in total; extra_generations only when there are."""
    total = sum(by_source.values(), Counter())
    columns = [*by_source.values(), total]
    header = ["", *(Path(s).name[-24:] for s in by_source), "total"]
    names = [name for name in COUNTS if name != "extra_generations" or total[name]]
    return utils.format_table(header, [[name, *(c[name] for c in columns)] for name in names])


def plot_lengths(path: Path, tokenized: list[int], kept: list[int], max_length: int) -> None:
    """Each record's longest training sequence (what --max-length judges), all tokenized and those written."""
    fig, ax = utils.pyplot().subplots(figsize=(8, 4))
    bins = np.linspace(0, max(tokenized + [max_length]), 60)
    ax.hist(tokenized, bins, color="lightgray", label=f"tokenized ({len(tokenized)})")
    ax.hist(kept, bins, color="tab:blue", label=f"written ({len(kept)})")
    ax.axvline(max_length, color="tab:red", linestyle="--", label=f"--max-length {max_length}")
    ax.set(xlabel="tokens of a record's longest training sequence", ylabel="records", title=path.stem)
    ax.legend(loc="upper right")  # "best" searches the data: seconds on a large histogram
    utils.save_figure(fig, path, dpi=100, bbox_inches="tight")


def length_summary(lengths: list[int]) -> dict:
    if not lengths:
        return {}
    percentiles = {f"p{q}": int(np.percentile(lengths, q)) for q in (50, 90, 99)}
    return {**percentiles, "max": max(lengths), "total": sum(lengths)}


@contextmanager
def timed(timings: dict, stage: str):
    start = time.perf_counter()
    yield
    timings[stage] = round(time.perf_counter() - start, 3)


def synthetic_raw(cfg) -> Iterator[tuple[str, int, dict]]:
    """Generated traces through the same filters as teacher traces (the miniature experiment's training set)."""
    import synthetic

    for line, record in enumerate(synthetic.generate(cfg.size or 17000, seed=cfg.seed), 1):
        yield f"synthetic:{cfg.synthetic}", line, record


def main(cfg: argparse.Namespace) -> dict:
    if cfg.keep == "incorrect":
        cfg.verify = True
    if cfg.size and cfg.mix and sum(cfg.mix.values()) != cfg.size:
        raise SystemExit(f"--size {cfg.size} differs from the --mix total {sum(cfg.mix.values())}")
    output = Path(cfg.output)
    counts: dict[str, Counter] = defaultdict(Counter)
    would_drop: dict[str, Counter] = defaultdict(Counter)  # --as-published: what the filters would have dropped
    found: dict[str, Counter] = defaultdict(Counter)  # the schema each record was read in, per source
    dry = would_drop if cfg.as_published else None
    timings, contaminated_by = {}, Counter()
    # before the long stages: a wrong name fails at once
    tokenizer = utils.load_tokenizer(cfg.tokenizer, template_kwargs=cfg.chat_template_kwargs)
    if not getattr(tokenizer, "is_fast", False):
        raise SystemExit(f"--tokenizer {cfg.tokenizer}: needs a fast (Rust) tokenizer, to count 100M characters fast")

    with timed(timings, "parse"):
        raw = synthetic_raw(cfg) if cfg.synthetic else load_raw(cfg.input, cfg.split, cfg.subset, cfg.limit)
        examples = parse_all(raw, cfg, counts, would_drop, found)
    if cfg.decontaminate:
        with timed(timings, "decontaminate"):
            benchmarks = BenchmarkIndex.from_dir(cfg.eval_dir, cfg.decontam_ngram, cfg.decontam_threshold)
            hits = [benchmarks.match(e.problem) for e in tqdm(examples, desc="decontaminate", leave=False)]
            contaminated_by.update(h for h in hits if h)
            examples = drop(examples, ["contaminated" if h else None for h in hits], counts)
    # Verification forks its workers before the tokenizer's thread pool exists (forking after it would disable it).
    if cfg.verify:
        with timed(timings, "verify"):
            has_gold = [e.answer is not None if e.domain == "math" else bool(e.tests) for e in examples]
            examples = drop(examples, [None if gold else "unverifiable" for gold in has_gold], counts)
            verdicts = verify_all(examples, cfg.workers)
            complaints = [(e.id, v) for e, v in zip(examples, verdicts) if isinstance(v, str)]
            if complaints:
                n = len(complaints)
                print(f"warning: the grader could not check {n} records (counted unverifiable), e.g. {complaints[0]}")
            examples = drop(examples, ["unverifiable" if isinstance(v, str) else None for v in verdicts], counts)
            verdicts = [v for v in verdicts if not isinstance(v, str)]
            wanted = cfg.keep == "correct"
            examples = drop(examples, [None if v == wanted else "rejected" for v in verdicts], counts)
    with timed(timings, "tokenize"):
        tokenized = count_tokens(tokenizer, [e.messages for e in examples])
        for example, (n_tokens, longest) in zip(examples, tokenized):
            example.n_tokens, example.longest = n_tokens, longest
        examples = drop(examples, ["too_long" if e.longest > cfg.max_length else None for e in examples], counts, dry)
    with timed(timings, "dedup"):
        if cfg.dedup != "none":
            examples = drop(examples, duplicates(examples, cfg.dedup, cfg.near_dup_threshold), counts, dry)
    keep, shortfall = sample(examples, cfg.size, cfg.mix, cfg.seed)
    examples = drop(examples, [None if k else "not_sampled" for k in keep], counts)
    with timed(timings, "write"):
        utils.write_jsonl(output, (e.to_record() for e in examples))

    for example in examples:
        counts[example.source]["kept"] += 1
    lengths = [e.n_tokens for e in examples]
    total, dropped = sum(counts.values(), Counter()), sum(would_drop.values(), Counter())
    seconds = sum(timings.values())
    report = {
        "output": str(output),
        "config": vars(cfg),
        "schemas": {source: dict(names) for source, names in found.items()},
        "counts": {name: total[name] for name in COUNTS},
        "per_source": {s: {name: c[name] for name in COUNTS} for s, c in counts.items()},
        "why": {name: WHY[name] for name in FILTERS if total[name] or dropped[name]},
        "contaminated_by": dict(contaminated_by),
        "domains": dict(Counter(e.domain for e in examples)),
        "mix_shortfall": shortfall,
        "n_tokens": length_summary(lengths),
        "timings_s": timings,
        "records_per_s": round(total["read"] / max(seconds, 1e-9), 1),
        "tokens_per_s": round(sum(n for n, _ in tokenized) / max(timings["tokenize"], 1e-9)),
    }
    if cfg.as_published:  # kept anyway: what each default filter would have dropped, and why
        report["would_drop"] = {name: dropped[name] for name in FILTERS if dropped[name]}
        report["would_drop_per_source"] = {s: {n: c[n] for n in FILTERS if c[n]} for s, c in would_drop.items()}
    report_path = output.with_name(output.stem + "_report.json")
    utils.atomic_write_text(report_path, json.dumps(report, indent=2) + "\n")
    longest = [n for _, n in tokenized]
    plot_lengths(output.with_name(output.stem + "_lengths.png"), longest, [e.longest for e in examples], cfg.max_length)
    for source, names in found.items():
        print(f"{source}: read as " + ", ".join(f"{name} ({n} records)" for name, n in names.items()))
    print(counts_table(counts))
    if not examples:  # the report says where every record went; an empty training file must not pass silently
        removed = ", ".join(f"{name} {total[name]}" for name in FILTERS if total[name])
        why = f" ({removed})" if removed else ""
        raise DataError(f"no records kept out of {total['read']} read{why}; see {report_path}")
    if cfg.as_published:
        would = "; ".join(f"{name} {n} ({WHY[name]})" for name, n in report["would_drop"].items()) or "nothing"
        print(f"--as-published kept every record the style can write; the default filters would have dropped: {would}")
    print(
        f"token lengths: {report['n_tokens']}  domains: {report['domains']}  contaminated by: {dict(contaminated_by)}"
    )
    for domain, missing in shortfall.items():
        print(f"warning: --mix/--size asked for {missing} more {domain} records than passed the filters")
    print(
        f"wrote {len(examples)} records to {output} in {seconds:.1f}s ({report['records_per_s']} records/s read, "
        f"{report['tokens_per_s']} tokens/s tokenized); stages: {timings}"
    )
    return report


if __name__ == "__main__":
    try:
        main(parse_args())
    except DataError as e:
        sys.exit(f"error: {e}")
