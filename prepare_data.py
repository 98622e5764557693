"""Turn raw long-CoT traces into the chat records that train_lora.py and train_full.py read.

    python prepare_data.py --input NovaSky-AI/Sky-T1_data_17k --output cot17k.jsonl
    python prepare_data.py --input raw_qwq.jsonl --input raw_r1.jsonl --output cot.jsonl \\
        --tokenizer Qwen/Qwen2.5-32B-Instruct --max-length 16384 --verify --decontaminate --size 17000 \\
        --mix math=12000,code=5000
    python prepare_data.py --input traces.parquet --output wrong.jsonl --verify --keep incorrect --style r1
    python prepare_data.py --synthetic arithmetic --size 17000 --output synth.jsonl --tokenizer out/tiny-model \\
        --verify   # the toy task

Inputs: local .jsonl / .json / .parquet files, or a Hugging Face dataset name (`owner/name`, not a local path). Each
record may be Sky-T1 ShareGPT {system, conversations}, chat {messages}, {prompt, response}, or raw {problem|question,
response|generated_solution|solution, answer|expected_answer|final_answer, tests|input_output, starter_code, domain,
id}. Responses use Sky-T1 or R1 markup (markup.py).

Output: one JSON object per line, read as is by sft.load_conversations (it uses `messages`, ignores the rest):
    messages   [{"role": "system", ...} (not for --style r1), {"role": "user", ...}, {"role": "assistant", ...}]
    id         the input record's `id`, else "<file name>:<line>"
    source     the input file or dataset name
    domain     "math" | "code" (a `domain` field overrides; else code if it has tests, or its solution has a
               ```python block and no \\boxed)
    answer     gold final answer, when known (math);  tests: [{"input", "output", "testtype"}] when known (code)
    starter_code  when non-empty (code);  n_tokens: tokens of the whole chat-templated record under --tokenizer
Prompts follow Sky-T1's data scripts (markup.training_prompt): a raw math problem becomes "Return your final response
within \\boxed{}. {problem}", a raw code problem gets APPS's "Generate an executable Python function ..." prefix
(plus its starter code); prompts of chat-shaped records are kept. System prompt (markup.system_prompt): --style
sky-t1 -> Sky-T1's, r1 -> none (DeepSeek-R1's advice), keep -> the record's. Sky-T1_data_17k itself carries no gold
answers or tests (it was verified when it was made): --verify counts it unverifiable.

Filters, in this order, each counted per source in the report (OUTPUT_report.json, OUTPUT_lengths.png):
unparsable; empty; no_thought (no reasoning markup); truncated (thought or solution never closed, or empty solution);
no_answer (math solution without \\boxed, code solution without a fenced block); contaminated (--decontaminate);
unverifiable / rejected (--verify); too_long (> --max-length); exact_duplicate / near_duplicate prompts; not_sampled.
Deduplication comes after verification, so of several responses to one problem the first correct one survives.
A malformed record stops the run with one line naming file, line and problem (--skip-bad: counted as unparsable);
a run that keeps no record still writes its report, then exits non-zero naming the filters that removed them.
main(cfg) reads through load_raw(); any iterator of (source, line, record) can stand in for it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import sys
import time
import unicodedata
import zlib
from collections import Counter, defaultdict
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
from tqdm import tqdm

import markup
import sft
import utils
from utils import DataError

FENCED_PYTHON = re.compile(r"```(?:python3?|py)[ \t]*\n", re.I)
FENCED_BLOCK = re.compile(r"```[^\n]*\n.*?```", re.S)
HF_DATASET_NAME = re.compile(r"[\w.-]+/[\w.-]+")
BENCHMARKS = ("aime24", "amc23", "math500", "olympiadbench", "livecodebench")
# Every way a record can leave, in pipeline order; each is counted per source in the report.
FILTERS = ("unparsable", "empty", "no_thought", "truncated", "no_answer", "contaminated", "unverifiable", "rejected")
FILTERS += ("too_long", "exact_duplicate", "near_duplicate", "not_sampled")


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
    add("--split", default="train", help="split of a Hugging Face dataset input")
    add("--style", choices=markup.STYLES, default="sky-t1", help="reasoning markup the student learns (paper: sky-t1)")
    add("--tokenizer", default="Qwen/Qwen2.5-32B-Instruct", help="the student's: lengths count its chat template too")
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
    return cfg


# ----------------------------------------------------------------------------- reading


def load_raw(inputs: list[str], split: str = "train") -> Iterator[tuple[str, int, dict | str]]:
    """Yield (source, line, record) from every input; a malformed JSON line or item yields its DataError instead of a
    record (so --skip-bad can count it). A file that cannot be read at all raises DataError."""
    for name in inputs:
        path = Path(name)
        if not path.exists():
            if path.suffix in (".jsonl", ".json", ".parquet") or not HF_DATASET_NAME.fullmatch(name):
                raise DataError(f"{name}: file not found")
            import datasets

            for line, row in enumerate(datasets.load_dataset(name, split=split), 1):
                yield name, line, row
        elif path.suffix == ".parquet":
            yield from ((name, line, row) for line, row in parquet_rows(path))
        elif path.suffix in (".json", ".jsonl"):
            yield from ((name, line, row) for line, row in utils.iter_json_lines(path))
        else:
            raise DataError(f"{name}: unsupported input (expected .jsonl, .json, .parquet or a Hugging Face dataset)")


def parquet_rows(path: Path) -> Iterator[tuple[int, dict]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        batches = pq.ParquetFile(path).iter_batches(batch_size=1024)
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"{path}: not a Parquet file ({str(e).splitlines()[0]})") from None
    yield from enumerate((row for batch in batches for row in batch.to_pylist()), 1)


# ----------------------------------------------------------------------------- one record


def first_field(record: dict, names: tuple[str, ...]):
    return next(((n, record[n]) for n in names if record.get(n) is not None), (None, None))


def normalise_tests(tests) -> list[dict]:
    """Accept [{input, output, testtype}], {input(s): [...], output(s): [...]} (CodeContests, APPS), or as JSON text."""
    if isinstance(tests, str):
        try:
            tests = json.loads(tests)
        except json.JSONDecodeError:
            raise ValueError("field 'tests': not valid JSON") from None
    if isinstance(tests, dict):
        if tests.get("fn_name"):
            raise ValueError("field 'tests': call-based (fn_name) tests are unsupported; give [{input, output}]")
        inputs, outputs = tests.get("input", tests.get("inputs")), tests.get("output", tests.get("outputs"))
        if not (isinstance(inputs, list) and isinstance(outputs, list) and len(inputs) == len(outputs)):
            raise ValueError("field 'tests': needs equally long 'input'/'inputs' and 'output'/'outputs' lists")
        tests = [{"input": i, "output": o} for i, o in zip(inputs, outputs)]
    if not isinstance(tests, list) or not all(
        isinstance(t, dict) and isinstance(t.get("input"), str) and isinstance(t.get("output"), str) for t in tests
    ):
        raise ValueError("field 'tests': expected a list of {input: str, output: str, testtype}")
    return [{"input": t["input"], "output": t["output"], "testtype": t.get("testtype", "stdin")} for t in tests]


def read_fields(raw: dict) -> dict:
    """The parts of a record of any supported shape; ValueError names the offending field."""
    if "conversations" in raw or "messages" in raw or ("prompt" in raw and "response" in raw):
        try:
            messages = sft.to_messages(raw)
        except ValueError as e:
            if str(e) == "no non-empty assistant turn":  # a blank reply is the `empty` filter's, not a shape error
                return {"response": ""}
            raise
        users = [m["content"] for m in messages if m["role"] == "user"]
        if len(users) != 1 or messages[-1]["role"] != "assistant":
            raise ValueError("expected exactly one user turn followed by the assistant's reply")
        system = next((m["content"] for m in messages if m["role"] == "system"), None)
        problem = markup.BOILERPLATE.sub("", users[0]).strip()
        fields = {"system": system, "user": users[0], "problem": problem, "response": messages[-1]["content"]}
    else:
        problem_key, problem = first_field(raw, ("problem", "question"))
        response_key, response = first_field(raw, ("response", "generated_solution", "solution"))
        if problem_key is None or response_key is None:
            raise ValueError(
                "unknown record shape: expected 'conversations', 'messages', 'prompt'+'response' or "
                "'problem'+'response'|'generated_solution'|'solution'"
            )
        for key, value in ((problem_key, problem), (response_key, response)):
            if not isinstance(value, str):
                raise ValueError(f"field {key!r}: expected a string, got {type(value).__name__}")
        fields = {"system": raw.get("system"), "user": None, "problem": problem.strip(), "response": response}
    tests_key, tests = first_field(raw, ("tests", "input_output"))
    fields["tests"] = normalise_tests(tests) if tests_key else None
    fields["answer"] = first_field(raw, ("answer", "expected_answer", "final_answer"))[1]
    fields["starter_code"] = raw.get("starter_code") or ""
    fields["domain"] = raw.get("domain")
    if fields["domain"] not in (None, "math", "code"):
        raise ValueError(f"field 'domain': expected 'math' or 'code', got {fields['domain']!r}")
    return fields


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
    n_tokens: int = 0

    def to_record(self) -> dict:
        record = {"messages": self.messages, "id": self.id, "source": self.source, "domain": self.domain}
        optional = {"answer": self.answer, "tests": self.tests, "starter_code": self.starter_code}
        record.update({k: v for k, v in optional.items() if v not in (None, "", [])})
        record["n_tokens"] = self.n_tokens
        return record


def parse_example(source: str, line: int, raw: dict, style: str) -> tuple[Example | None, str | None]:
    """(example, None), or (None, the filter that drops it); ValueError when the record cannot be read at all."""
    fields = read_fields(raw)
    _, solution, defect = markup.split_reasoning(fields["response"])
    if defect:
        return None, defect
    has_boxed = "\\boxed" in solution
    domain = fields["domain"]
    if domain is None:
        looks_like_code = fields["tests"] or (FENCED_PYTHON.search(solution) and not has_boxed)
        domain = "code" if looks_like_code else "math"
    if not (FENCED_BLOCK.search(solution) if domain == "code" else has_boxed):
        return None, "no_answer"
    user = fields["user"]
    if user is None:  # a raw problem: SkyThought's training prompt
        user = markup.training_prompt(fields["problem"], domain, fields["starter_code"])
    system = markup.system_prompt(style, fields["system"])
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": user})
    messages.append({"role": "assistant", "content": markup.convert_style(fields["response"], style)})
    record_id = str(raw["id"]) if raw.get("id") is not None else f"{Path(source).name}:{line}"
    gold = {"answer": fields["answer"], "tests": fields["tests"], "starter_code": fields["starter_code"]}
    return Example(record_id, source, fields["problem"], messages, solution, domain, **gold), None


# ----------------------------------------------------------------------------- text similarity


def words(text: str) -> list[str]:
    return re.findall(r"\w+", unicodedata.normalize("NFKC", text).lower())


class BenchmarkIndex:
    """Word n-grams of every benchmark problem. A prompt is contaminated when it shares with one benchmark item at least
    `threshold` of the shorter one's n-grams: robust to light edits, and to a problem pasted into a longer prompt."""

    def __init__(self, items: list[tuple[str, str]], n: int, threshold: float):
        self.n, self.threshold, self.names, self.sizes = n, threshold, [], []
        self.owner: dict[str, int] = {}
        self.whole: dict[str, int] = {}  # prompts shorter than n words can only match whole
        for i, (name, text) in enumerate(items):
            grams = self.ngrams(words(text))
            self.names.append(name)
            self.sizes.append(len(grams))
            self.owner.update(dict.fromkeys(grams, i))
            self.whole[" ".join(words(text))] = i

    @classmethod
    def from_dir(cls, eval_dir: str, n: int, threshold: float) -> "BenchmarkIndex":
        items = []
        for name in BENCHMARKS:
            for line, record in utils.iter_json_records(Path(eval_dir) / f"{name}.jsonl"):
                _, text = first_field(record, ("problem", "question", "prompt"))
                if not isinstance(text, str):
                    raise DataError(f"{eval_dir}/{name}.jsonl:{line}: field 'problem' (or 'question'/'prompt') missing")
                items.append((name, text))
        return cls(items, n, threshold)

    def ngrams(self, tokens: list[str]) -> set[str]:
        return {" ".join(tokens[i : i + self.n]) for i in range(len(tokens) - self.n + 1)}

    def match(self, text: str) -> str | None:
        """The benchmark a prompt overlaps, or None."""
        tokens = words(text)
        grams = self.ngrams(tokens)
        if not grams:
            hit = self.whole.get(" ".join(tokens))
            return None if hit is None else self.names[hit]
        shared = Counter(self.owner[g] for g in grams if g in self.owner)
        for item, count in shared.most_common():
            if count / max(1, min(len(grams), self.sizes[item])) >= self.threshold:
                return self.names[item]
        return None


class NearDuplicateIndex:
    """MinHash LSH over word-3-gram shingles; LSH candidates are confirmed by their exact Jaccard similarity."""

    PRIME = (1 << 61) - 1

    def __init__(self, threshold: float, num_perm: int = 128, seed: int = 0):
        rng = np.random.default_rng(seed)
        # a, b, shingle < 2^32 keep a * shingle + b below 2^64: exact universal hashing in uint64.
        self.a = rng.integers(1, 1 << 32, num_perm, dtype=np.uint64)
        self.b = rng.integers(0, 1 << 32, num_perm, dtype=np.uint64)
        self.threshold = threshold
        # The (bands b, rows r) whose S-curve midpoint (1/b)^(1/r) is highest at or below the threshold: few misses.
        midpoint = {(num_perm // r, r): (r / num_perm) ** (1 / r) for r in range(1, num_perm + 1) if num_perm % r == 0}
        below = [shape for shape, m in midpoint.items() if m <= threshold]
        self.bands, self.rows = max(below, key=midpoint.get, default=(num_perm, 1))
        self.buckets: dict[tuple[int, bytes], list[int]] = defaultdict(list)
        self.shingle_sets: list[set[int]] = []

    @staticmethod
    def shingles(text: str) -> set[int]:
        tokens = words(text)
        grams = [" ".join(tokens[i : i + 3]) for i in range(max(1, len(tokens) - 2))]
        return {zlib.crc32(g.encode()) for g in grams}

    def add_if_new(self, text: str) -> bool:
        """Index the text and return True, unless it is a near duplicate of one already indexed."""
        shingles = self.shingles(text)
        x = np.fromiter(shingles, dtype=np.uint64, count=len(shingles))
        signature = ((np.outer(x, self.a) + self.b) % np.uint64(self.PRIME)).min(axis=0)
        keys = [(band, signature[band * self.rows : (band + 1) * self.rows].tobytes()) for band in range(self.bands)]
        candidates = {j for key in keys for j in self.buckets.get(key, ())}
        for j in candidates:
            other = self.shingle_sets[j]
            if len(shingles & other) / len(shingles | other) >= self.threshold:
                return False
        for key in keys:
            self.buckets[key].append(len(self.shingle_sets))
        self.shingle_sets.append(shingles)
        return True


# ----------------------------------------------------------------------------- stages


def keep_where(examples: list[Example], keep: list, reason: str, counts: dict[str, Counter]) -> list[Example]:
    """The examples whose flag is true; the others are counted under `reason` per source: nothing leaves silently."""
    for example, ok in zip(examples, keep):
        counts[example.source][reason] += not ok
    return [e for e, ok in zip(examples, keep) if ok]


def parse_all(raw_records, cfg, counts: dict[str, Counter]) -> list[Example]:
    examples = []
    for source, line, raw in tqdm(raw_records, desc="parse", unit=" rec", leave=False):
        counts[source]["read"] += 1
        if isinstance(raw, DataError):  # not UTF-8, not JSON or not an object: the error already names file and line
            if not cfg.skip_bad:
                raise raw
            counts[source]["unparsable"] += 1
            continue
        try:
            example, defect = parse_example(source, line, raw, cfg.style)
        except ValueError as e:
            if not cfg.skip_bad:
                raise DataError(f"{source}:{line}: {e}") from None
            example, defect = None, "unparsable"
        if defect:
            counts[source][defect] += 1
        else:
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


def count_tokens(tokenizer, conversations: list[list[dict]], batch_size: int = 256) -> list[int]:
    """Tokens of each whole chat-templated record, as training tokenizes it. The Rust tokenizer encodes a batch on all
    cores; its encode_batch_fast skips character offsets and, unlike tokenizer(...), copies no ids into Python lists."""
    lengths = []
    for start in tqdm(range(0, len(conversations), batch_size), desc="tokenize", leave=False):
        texts = [tokenizer.apply_chat_template(c, tokenize=False) for c in conversations[start : start + batch_size]]
        encodings = tokenizer.backend_tokenizer.encode_batch_fast(texts, add_special_tokens=False)
        lengths += [len(encoding) for encoding in encodings]
    return lengths


def deduplicate(examples: list[Example], mode: str, threshold: float, counts: dict[str, Counter]) -> list[Example]:
    """Keep the first record of each prompt (after verification, so that is its first correct response)."""
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
    examples = keep_where(examples, [v != "exact_duplicate" for v in verdicts], "exact_duplicate", counts)
    return keep_where(examples, [v is None for v in verdicts if v != "exact_duplicate"], "near_duplicate", counts)


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
    """Each filter's count per source (file name, last 24 characters) and in total."""
    total = sum(by_source.values(), Counter())
    columns = [*by_source.values(), total]
    header = ["", *(Path(s).name[-24:] for s in by_source), "total"]
    return utils.format_table(header, [[name, *(c[name] for c in columns)] for name in ("read", *FILTERS, "kept")])


def plot_lengths(path: Path, tokenized: list[int], kept: list[int], max_length: int) -> None:
    fig, ax = utils.pyplot().subplots(figsize=(8, 4))
    bins = np.linspace(0, max(tokenized + [max_length]), 60)
    ax.hist(tokenized, bins, color="lightgray", label=f"tokenized ({len(tokenized)})")
    ax.hist(kept, bins, color="tab:blue", label=f"written ({len(kept)})")
    ax.axvline(max_length, color="tab:red", linestyle="--", label=f"--max-length {max_length}")
    ax.set(xlabel="tokens per chat-templated record", ylabel="records", title=path.stem)
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
    timings, contaminated_by = {}, Counter()
    tokenizer = utils.load_tokenizer(cfg.tokenizer)  # before the long stages: a wrong name fails at once
    if not getattr(tokenizer, "is_fast", False):
        raise SystemExit(f"--tokenizer {cfg.tokenizer}: needs a fast (Rust) tokenizer, to count 100M characters fast")

    with timed(timings, "parse"):
        examples = parse_all(synthetic_raw(cfg) if cfg.synthetic else load_raw(cfg.input, cfg.split), cfg, counts)
    if cfg.decontaminate:
        with timed(timings, "decontaminate"):
            benchmarks = BenchmarkIndex.from_dir(cfg.eval_dir, cfg.decontam_ngram, cfg.decontam_threshold)
            hits = [benchmarks.match(e.problem) for e in tqdm(examples, desc="decontaminate", leave=False)]
            contaminated_by.update(h for h in hits if h)
            examples = keep_where(examples, [h is None for h in hits], "contaminated", counts)
    # Verification forks its workers before the tokenizer's thread pool exists (forking after it would disable it).
    if cfg.verify:
        with timed(timings, "verify"):
            has_gold = [e.answer is not None if e.domain == "math" else bool(e.tests) for e in examples]
            examples = keep_where(examples, has_gold, "unverifiable", counts)
            verdicts = verify_all(examples, cfg.workers)
            complaints = [(e.id, v) for e, v in zip(examples, verdicts) if isinstance(v, str)]
            if complaints:
                n = len(complaints)
                print(f"warning: the grader could not check {n} records (counted unverifiable), e.g. {complaints[0]}")
            examples = keep_where(examples, [not isinstance(v, str) for v in verdicts], "unverifiable", counts)
            verdicts = [v for v in verdicts if not isinstance(v, str)]
            examples = keep_where(examples, [v == (cfg.keep == "correct") for v in verdicts], "rejected", counts)
    with timed(timings, "tokenize"):
        tokenized = count_tokens(tokenizer, [e.messages for e in examples])
        for example, n in zip(examples, tokenized):
            example.n_tokens = n
        examples = keep_where(examples, [n <= cfg.max_length for n in tokenized], "too_long", counts)
    with timed(timings, "dedup"):
        examples = deduplicate(examples, cfg.dedup, cfg.near_dup_threshold, counts) if cfg.dedup != "none" else examples
    keep, shortfall = sample(examples, cfg.size, cfg.mix, cfg.seed)
    examples = keep_where(examples, keep, "not_sampled", counts)
    with timed(timings, "write"):
        utils.write_jsonl(output, (e.to_record() for e in examples))

    for example in examples:
        counts[example.source]["kept"] += 1
    lengths = [e.n_tokens for e in examples]
    total = sum(counts.values(), Counter())
    seconds = sum(timings.values())
    report = {
        "output": str(output),
        "config": vars(cfg),
        "counts": {name: total[name] for name in ("read", *FILTERS, "kept")},
        "per_source": {s: {name: c[name] for name in ("read", *FILTERS, "kept")} for s, c in counts.items()},
        "contaminated_by": dict(contaminated_by),
        "domains": dict(Counter(e.domain for e in examples)),
        "mix_shortfall": shortfall,
        "n_tokens": length_summary(lengths),
        "timings_s": timings,
        "records_per_s": round(total["read"] / max(seconds, 1e-9), 1),
        "tokens_per_s": round(sum(tokenized) / max(timings["tokenize"], 1e-9)),
    }
    report_path = output.with_name(output.stem + "_report.json")
    utils.atomic_write_text(report_path, json.dumps(report, indent=2) + "\n")
    plot_lengths(output.with_name(output.stem + "_lengths.png"), tokenized, lengths, cfg.max_length)
    print(counts_table(counts))
    if not examples:  # the report says where every record went; an empty training file must not pass silently
        removed = ", ".join(f"{name} {total[name]}" for name in FILTERS if total[name])
        why = f" ({removed})" if removed else ""
        raise DataError(f"no records kept out of {total['read']} read{why}; see {report_path}")
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
