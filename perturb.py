"""Perturb the reasoning of long chain-of-thought training data: the paper's content vs structure ablations.

    python perturb.py --input data/train.jsonl --output out/cot_shuffle67.jsonl --kind shuffle --ratio 0.67 --seed 0
    python perturb.py --input data/train.jsonl --output out/cot_digits70.jsonl --kind digits --ratio 0.7
    python perturb.py --input data/train.jsonl --output out/cot_nokeywords.jsonl --kind keywords --ratio 1.0
    python perturb.py --input data/train.jsonl --output out/cot_delete33.jsonl --kind delete --ratio 0.33 \\
        --splitter llm --llm-url http://localhost:8000/v1 --llm-model meta-llama/Llama-3.3-70B-Instruct

Only the last assistant turn changes, and in it only the thought (markup.split_thought): the text between
<|begin_of_thought|> and <|end_of_thought|> (Sky-T1), or before </think> (R1; the opening <think> may be absent, as
when the chat template supplies it). A response with neither markup is all thought except a clear final block, which
is kept as the solution: from the last paragraph holding "\\boxed{" or "final answer", or a trailing fenced code
block, to the end. The report counts records per case (sky-t1, r1, final_block, none).

Kinds. digits: each digit character is redrawn uniformly with probability --ratio (--digit-mode number:
each number becomes a random integer 0-10, as the authors' corrupt_data.py did). keywords: a --ratio
fraction of the sentences containing a reasoning keyword is removed. shuffle / delete / insert: round(ratio
x n) of the n steps are permuted among their own positions / removed / replaced by steps of other records.
Every record draws from random.Random(sha256(f"{seed}:{id}:{kind}")), so outputs do not depend on file order
or threads. Each output record gets a `perturbation` summary; the other fields are kept as they were (a
record without `id` gets a hash of its conversation), so an `n_tokens` field still counts the original text.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import random
import re
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

from tqdm import tqdm

import utils
from markup import BLANK_LINES, split_thought
from sft import to_messages
from utils import DataError, iter_json_records, write_jsonl

KINDS = ("digits", "keywords", "shuffle", "delete", "insert")
STRUCTURE_KINDS = ("shuffle", "delete", "insert")
# Reasoning keywords of backtracking, reflection and verification; whole words or phrases, case-insensitive.
DEFAULT_KEYWORDS = (
    "wait",
    "alternatively",
    "let me think again",
    "but",
    "hmm",
    "double-check",
    "double check",
    "verify",
    "let me check",
    "let me reconsider",
    "on second thought",
    "however",
    "actually",
)
STEP_MARK = "[STEP]"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", required=True, help="training JSONL/JSON in any shape sft.to_messages accepts")
    p.add_argument("--output", required=True, help="perturbed JSONL, written atomically")
    p.add_argument(
        "--kind", required=True, choices=KINDS, help="content (digits, keywords) or structure (shuffle, delete, insert)"
    )
    p.add_argument(
        "--ratio",
        type=float,
        required=True,
        help="fraction of digits / keyword sentences / steps to perturb; 0 is the identity",
    )
    p.add_argument("--seed", type=int, default=0, help="with the record id, fixes every random choice")
    p.add_argument(
        "--digit-mode",
        choices=("digit", "number"),
        default="digit",
        help="digit: the paper's text (each digit redrawn); number: the authors' code (each number -> randint(0, 10))",
    )
    p.add_argument(
        "--spare-solution",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="digits only: keep the solution block intact; off by default because the authors' corrupt_data.py "
        "corrupted the whole response, final answer included",
    )
    p.add_argument("--keywords-file", help="one keyword or phrase per line (# comments) instead of the built-in list")
    p.add_argument(
        "--min-step-chars",
        type=int,
        default=40,
        help="blank-line fragments shorter than this join a neighbour, so a step is a thought, not a formula line",
    )
    p.add_argument(
        "--splitter",
        choices=("blank", "llm"),
        default="blank",
        help="blank: split at blank lines (Sky-T1 asks for them between steps); llm: ask a model, as the paper did",
    )
    p.add_argument("--llm-url", help="OpenAI-compatible base URL, e.g. http://localhost:8000/v1 (vLLM, SGLang, ...)")
    p.add_argument("--llm-model", default="meta-llama/Llama-3.3-70B-Instruct", help="model name the server expects")
    p.add_argument("--llm-workers", type=int, default=8, help="concurrent requests; servers batch them")
    p.add_argument(
        "--llm-timeout", type=float, default=600.0, help="seconds per request; long thoughts take minutes to copy"
    )
    p.add_argument(
        "--llm-retries",
        type=int,
        default=3,
        help="retries per record on network errors and HTTP 408/429/5xx before falling back",
    )
    cfg = p.parse_args(argv)
    if not 0.0 <= cfg.ratio <= 1.0:
        p.error("--ratio must be within [0, 1]")
    if cfg.splitter == "llm" and not cfg.llm_url:
        p.error("--splitter llm needs --llm-url")
    return cfg


# ----------------------------------------------------------------------------- steps

_FORMULA_STARTS = ("\\[", "\\]", "$$", "\\begin", "\\end", "=")


def split_steps(thought: str, min_chars: int) -> tuple[list[str], list[str]]:
    """Steps and the separators between them (len(seps) == len(steps) - 1); join_steps restores the text exactly.

    A blank-line fragment joins the previous step when either is shorter than min_chars, when it is display
    math, an equation continuation or starts in lower case ("where: ..."), when the previous one ends with ':'
    (it introduces the fragment), or inside an open ``` fence (code keeps its blank lines).
    """
    if not thought:
        return [], []
    cuts = [0]
    for m in BLANK_LINES.finditer(thought):
        cuts += [m.start(), m.end()]
    cuts.append(len(thought))
    spans = list(zip(cuts[::2], cuts[1::2]))
    merged = [list(spans[0])]
    for start, stop in spans[1:]:
        prev, piece = thought[merged[-1][0] : merged[-1][1]], thought[start:stop]
        if (
            len(piece.strip()) < min_chars
            or len(prev.strip()) < min_chars
            or prev.rstrip().endswith(":")
            or piece.lstrip().startswith(_FORMULA_STARTS)
            or piece.lstrip()[:1].islower()
            or prev.count("```") % 2 == 1
        ):
            merged[-1][1] = stop
        else:
            merged.append([start, stop])
    pieces = [thought[a:b] for a, b in merged]
    return pieces, [thought[merged[i][1] : merged[i + 1][0]] for i in range(len(merged) - 1)]


def join_steps(steps: list[str], seps: list[str]) -> str:
    return "".join(step + sep for step, sep in zip(steps, seps + [""]))


def _squeeze(text: str) -> str:
    return re.sub(r"\s+", "", text)


def align_segments(thought: str, segments: list[str]) -> tuple[list[str], list[str]] | None:
    """Map a model's segmentation onto the original bytes; None unless it kept every non-space character."""
    if _squeeze("".join(segments)) != _squeeze(thought):
        return None
    spans, pos = [], 0
    for segment in segments:
        need = len(_squeeze(segment))
        if not need:
            continue
        while thought[pos].isspace():
            pos += 1
        start = pos
        while need:
            need -= not thought[pos].isspace()
            pos += 1
        spans.append((start, pos))
    return [thought[a:b] for a, b in spans], [thought[spans[i][1] : spans[i + 1][0]] for i in range(len(spans) - 1)]


def llm_split(thought: str, cfg) -> tuple[list[str], list[str]] | None:
    """Ask an OpenAI-compatible server to cut the thought at backtracking, verification and reflection points.

    The model copies the text with a [STEP] line between steps, rather than returning a JSON list, because
    LaTeX backslashes inside JSON strings ("\\frac" -> form feed) are the commonest way such answers break.
    None when the server fails after its retries or the copy does not align with the thought (the caller falls back
    to blank lines).
    """
    if not thought:
        return [], []
    prompt = (
        "Split the reasoning below into steps. Start a new step wherever the writer backtracks, verifies, reflects "
        "(e.g. 'Wait', 'Alternatively', 'Let me check') or moves on to a new sub-goal. Copy the text exactly, without "
        f"changing, adding or dropping any character, and put a line containing only {STEP_MARK} between consecutive "
        f"steps. Output nothing else.\n\n<reasoning>\n{thought}\n</reasoning>"
    )
    # max_tokens is explicit because some servers default to a few hundred, and a cut copy fails validation.
    try:
        content, _ = utils.chat_completion(
            cfg.llm_url,
            cfg.llm_model,
            [{"role": "user", "content": prompt}],
            timeout=cfg.llm_timeout,
            retries=cfg.llm_retries,
            temperature=0.0,
            max_tokens=len(thought) // 2 + 1024,
        )
    except utils.ChatCompletionError:
        return None
    return align_segments(thought, content.split(STEP_MARK))


# ----------------------------------------------------------------------------- perturbations


def record_rng(seed: int, record_id, kind: str) -> random.Random:
    return random.Random(int.from_bytes(hashlib.sha256(f"{seed}:{record_id}:{kind}".encode()).digest()[:8], "big"))


def corrupt_digits(text: str, ratio: float, rng: random.Random, mode: str) -> tuple[str, dict]:
    """ASCII digits only (str.isdigit would also hit '²'); non-digit characters never move."""
    stats = {"n_units": 0, "n_resampled": 0, "n_changed": 0}

    def redraw(m: re.Match) -> str:
        stats["n_units"] += 1
        if rng.random() >= ratio:
            return m.group()
        stats["n_resampled"] += 1
        new = rng.choice("0123456789") if mode == "digit" else str(rng.randint(0, 10))
        stats["n_changed"] += new != m.group()
        return new

    return re.sub(r"[0-9]" if mode == "digit" else r"\b\d+(?:\.\d+)?\b", redraw, text), stats


_SENTENCE = re.compile(r"[^\n]+?(?:[.!?]+(?=\s)|$)[ \t]*", re.M)


def keyword_pattern(keywords) -> re.Pattern:
    alternatives = sorted((r"\s+".join(map(re.escape, k.split())) for k in keywords), key=len, reverse=True)
    return re.compile(r"\b(?:" + "|".join(alternatives) + r")\b", re.I)


def remove_keyword_sentences(text: str, ratio: float, rng: random.Random, pattern: re.Pattern) -> tuple[str, dict]:
    """Remove round(ratio x m) of the m sentences that contain a keyword. A line left empty goes too, and so
    does the blank line after it if it stood alone as a paragraph, so no gap of extra blank lines remains."""
    lines = text.splitlines(keepends=True)
    hits = [
        (i, m.span()) for i, line in enumerate(lines) for m in _SENTENCE.finditer(line) if pattern.search(m.group())
    ]
    chosen = sorted(rng.sample(range(len(hits)), round(ratio * len(hits))))
    cut: dict[int, list] = {}
    for h in chosen:
        cut.setdefault(hits[h][0], []).append(hits[h][1])
    out, skip_blank = [], False
    for i, line in enumerate(lines):
        if skip_blank and not line.strip():
            skip_blank = False
            continue
        skip_blank = False
        for a, b in reversed(cut.get(i, [])):
            line = line[:a] + line[b:]
        if i in cut:  # the space that preceded a removed last sentence
            line = line.rstrip(" \t\n") + line[len(line.rstrip("\n")) :]
        if i in cut and not line.strip():
            skip_blank = not out or not out[-1].strip()
            continue
        out.append(line)
    return "".join(out), {"n_units": len(hits), "n_changed": len(chosen), "positions": chosen}


def perturb_steps(
    steps: list[str], seps: list[str], kind: str, ratio: float, rng: random.Random, donor
) -> tuple[str, dict]:
    """shuffle: the chosen positions get an ordinary shuffle of their own steps, redrawn as a rotation if it
    came out as the identity, so any two or more chosen steps always move. delete: the chosen steps go.
    insert: each chosen step is replaced by donor(), a step of another record."""
    n = len(steps)
    positions = sorted(rng.sample(range(n), round(ratio * n)))
    stats = {"n_units": n, "n_changed": 0, "positions": positions}
    if kind == "shuffle":
        order = positions[:]
        rng.shuffle(order)
        if order == positions and len(order) > 1:
            order = order[1:] + order[:1]
        new = steps[:]
        for dst, src in zip(positions, order):
            new[dst] = steps[src]
        stats["n_changed"], stats["sources"] = sum(d != s for d, s in zip(positions, order)), order
        return join_steps(new, seps), stats
    if kind == "delete":
        removed = set(positions)
        kept = [i for i in range(n) if i not in removed]
        stats["n_changed"] = len(positions)
        return "".join(steps[i] + (seps[i] if j < len(kept) - 1 else "") for j, i in enumerate(kept)), stats
    new, stats["sources"] = steps[:], []
    for pos in positions:
        source_id, source_step, new[pos] = donor()
        stats["sources"].append([source_id, source_step])
    stats["n_changed"] = len(positions)
    return join_steps(new, seps), stats


# ----------------------------------------------------------------------------- records


def _assistant_slot(record: dict) -> tuple[dict, str]:
    """The container and key holding the last assistant turn, in the record's own shape."""
    if "messages" in record:
        return [m for m in record["messages"] if m["role"] == "assistant"][-1], "content"
    if "conversations" in record:
        return [t for t in record["conversations"] if t["from"] in ("assistant", "gpt")][-1], "value"
    return record, "response"


def load_records(path: str) -> list[dict]:
    items = []
    for line, record in iter_json_records(path):
        try:
            messages = to_messages(record)
        except ValueError as e:
            raise DataError(f"{path}:{line}: {e}") from None
        slot, key = _assistant_slot(record)
        record_id = record.get("id")
        if record_id is None:
            record_id = hashlib.sha256(json.dumps(messages, ensure_ascii=False).encode()).hexdigest()[:16]
        items.append({"record": record, "slot": slot, "key": key, "id": record_id, "parts": split_thought(slot[key])})
    if not items:
        raise DataError(f"{path}: no records (empty file)")
    return items


def perturb_file(cfg) -> dict:
    items = load_records(cfg.input)
    report = {
        "kind": cfg.kind,
        "ratio": cfg.ratio,
        "seed": cfg.seed,
        "records": len(items),
        "markup": dict(Counter(it["parts"].markup for it in items)),
        "units": 0,
        "changed": 0,
        "unchanged_records": 0,
        "llm_fallback": 0,
    }
    if cfg.kind in STRUCTURE_KINDS:
        if cfg.splitter == "llm":
            thoughts = [it["parts"].thought for it in items]
            with ThreadPoolExecutor(cfg.llm_workers) as pool:
                replies = pool.map(functools.partial(llm_split, cfg=cfg), thoughts)
                found = list(tqdm(replies, total=len(items), desc="llm split"))
            report["llm_fallback"] = sum(f is None for f in found)
        else:
            found = [None] * len(items)
        for it, f in zip(items, found):
            it["steps"], it["seps"] = f if f is not None else split_steps(it["parts"].thought, cfg.min_step_chars)
            if cfg.splitter == "blank":
                it["splitter"] = "blank"
            else:
                it["splitter"] = "llm" if f is not None else "llm_fallback"
        report["mean_steps"] = round(sum(len(it["steps"]) for it in items) / len(items), 2)
        # Every step of the file in record order, so a record's own steps are one block [first, first + n) to skip.
        step_pool = [(r, j) for r, it in enumerate(items) for j in range(len(it["steps"]))]
        pool_first = [0]
        for it in items:
            pool_first.append(pool_first[-1] + len(it["steps"]))
    if cfg.kind == "keywords":
        keywords = DEFAULT_KEYWORDS
        if cfg.keywords_file:
            try:
                with open(cfg.keywords_file, encoding="utf-8") as f:
                    keywords = [k.strip() for k in f if k.strip() and not k.lstrip().startswith("#")]
            except OSError as e:
                raise DataError(f"{cfg.keywords_file}: {e.strerror}") from None
            if not keywords:
                raise DataError(f"{cfg.keywords_file}: no keywords (one per line expected)")
        pattern = keyword_pattern(keywords)

    out = []
    for r, it in enumerate(tqdm(items, desc=f"perturb {cfg.kind}")):
        rng, parts = record_rng(cfg.seed, it["id"], cfg.kind), it["parts"]
        summary = {"kind": cfg.kind, "ratio": cfg.ratio, "seed": cfg.seed, "markup": parts.markup}
        if cfg.kind == "digits":
            if cfg.spare_solution:
                thought, stats = corrupt_digits(parts.thought, cfg.ratio, rng, cfg.digit_mode)
                new_text = parts.head + thought + parts.tail
            else:
                new_text, stats = corrupt_digits(it["slot"][it["key"]], cfg.ratio, rng, cfg.digit_mode)
            summary.update(digit_mode=cfg.digit_mode, scope="thought" if cfg.spare_solution else "response")
        elif cfg.kind == "keywords":
            thought, stats = remove_keyword_sentences(parts.thought, cfg.ratio, rng, pattern)
            new_text = parts.head + thought + parts.tail
        else:
            donor = functools.partial(donor_step, rng, items, step_pool, pool_first[r], r, cfg.input)
            thought, stats = perturb_steps(it["steps"], it["seps"], cfg.kind, cfg.ratio, rng, donor)
            new_text = parts.head + thought + parts.tail
            summary["splitter"] = it["splitter"]
        report["units"] += stats["n_units"]
        report["changed"] += stats["n_changed"]
        summary[f"n_{unit_name(cfg)}"] = stats.pop("n_units")
        summary.update(stats)
        report["unchanged_records"] += new_text == it["slot"][it["key"]]
        it["slot"][it["key"]] = new_text
        out.append({**it["record"], "id": it["id"], "perturbation": summary})
    write_jsonl(cfg.output, out)
    return report


def donor_step(rng: random.Random, items: list[dict], step_pool: list, first: int, r: int, path: str):
    """(record id, step index, step text) of a random step of any record but the r-th, whose steps are
    step_pool[first : first + n]."""
    n_own = len(items[r]["steps"])
    if len(step_pool) == n_own:
        raise DataError(f"{path}: --kind insert needs steps from at least two records")
    k = rng.randrange(len(step_pool) - n_own)
    owner, j = step_pool[k if k < first else k + n_own]
    return items[owner]["id"], j, items[owner]["steps"][j]


def unit_name(cfg) -> str:
    if cfg.kind == "digits":
        return "digits" if cfg.digit_mode == "digit" else "numbers"
    return "keyword_sentences" if cfg.kind == "keywords" else "steps"


def main(cfg) -> dict:
    report = perturb_file(cfg)
    unit = unit_name(cfg).replace("_", " ")
    print(f"perturb {cfg.kind} ratio {cfg.ratio} seed {cfg.seed}: {report['records']} records -> {cfg.output}")
    print("  thought markup: " + ", ".join(f"{k} {v}" for k, v in sorted(report["markup"].items())))
    if "mean_steps" in report:
        fallback = ""
        if cfg.splitter == "llm":
            fallback = f" | llm split fell back to blank lines for {report['llm_fallback']}"
        print(f"  mean steps per record {report['mean_steps']}{fallback}")
    print(
        f"  {unit}: {report['units']} seen, {report['changed']} changed | "
        f"records left unchanged: {report['unchanged_records']}"
    )
    return report


if __name__ == "__main__":
    try:
        main(parse_args())
    except DataError as e:
        sys.exit(f"error: {e}")
