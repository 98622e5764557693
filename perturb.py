"""Perturb the reasoning of long chain-of-thought training data: the paper's content vs structure ablations (Table 2).

    python perturb.py --input data/train.jsonl --output out/cot_digits70.jsonl --kind digits --ratio 0.7
    python perturb.py --input data/train.jsonl --output out/cot_reflection50.jsonl --kind keywords --ratio 0.5
    python perturb.py --input data/train.jsonl --output out/cot_reflection50.jsonl --kind keywords --ratio 0.5 \\
        --rewriter llm --llm-url http://localhost:8000/v1 --llm-model Qwen/Qwen2.5-72B-Instruct
    python perturb.py --input data/train.jsonl --output out/cot_insert33.jsonl --kind insert --ratio 0.33 --seed 0

Only the last assistant turn changes, and in it only the thought (markup.split_thought): the text between
<|begin_of_thought|> and <|end_of_thought|> (Sky-T1), or before </think> (R1; the opening <think> may be absent), or,
without markup, all of it except a clear final block (from the last paragraph holding "\\boxed{" or "final answer", or
a trailing fenced code block). `digits` is the exception: by default it corrupts the whole response, as the authors did.

Kinds and their sources:
  digits    skythought/tools/corrupt_data.py (SkyThought commit 66e8423): every number matching \\b\\d+(\\.\\d+)?\\b is
            replaced with randint(0, 10) with probability --ratio. --digit-mode digit redraws single digit characters.
  keywords  skythought/tools/tag_output.py + util/prompts.py remove_reflection_prompt (commit 0a0a3d1; paper sec. 4):
            each record is rewritten with probability --ratio, removing its reflection episodes (transition phrases
            such as "wait", what they revisit and revise) so the thought runs straight through. --rewriter llm asks a
            model as the authors did (gpt-4o-mini, temperature 0.7); the default `rules` is the offline approximation
            of remove_reflections(); `sentences` is this repo's earlier variant (a --ratio share of keyword sentences
            deleted from every record), not the authors' method.
  shuffle / delete / insert   paper sec. 4 (no public script): a --ratio share of the steps is permuted among its own
            positions / removed / joined by as many steps of other records at random places (own steps keep their order).
  replace   not in the paper: a --ratio share of the steps is overwritten by steps of other records (delete + insert);
            this repo's former `insert`.
Steps are blank-line paragraphs with tiny fragments merged (or --splitter llm). Step counts are drawn by stochastic
rounding (floor(ratio x n) plus one with probability of the remainder), so the expected share of changed steps is
--ratio on any length distribution; the summary prints the realised share. Every record draws from
random.Random(sha256(f"{seed}:{id}:{kind}")) and donors come from a pool ordered by id, so outputs depend neither on
file order nor on threads. Each output record gets a `perturbation` summary; other fields are kept as they were (a
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

KINDS = ("digits", "keywords", "shuffle", "delete", "insert", "replace")
STRUCTURE_KINDS = ("shuffle", "delete", "insert", "replace")
# Transition phrases that open a reflection episode (remove_reflection_prompt names "wait" and "let me think again";
# the rest are the same move in QwQ/R1 traces): backtracking, checking, trying another way. Whole words, any case.
TRANSITION_PHRASES = tuple(
    "wait|hold on|hmm|alternatively|another way|another approach|on second thought|let me think again|"
    "let me reconsider|reconsidering|re-examine|reexamine|recheck|re-check|double-check|double check|"
    "double-checking|let me check|let's check|i should check|verify|verifying|let me confirm|to confirm|"
    "to be sure|to be safe|make sure i|just to make sure|sanity check|cross-check|recalculate|recompute|re-evaluate|"
    "let me try again|oops".split("|")
)
# An error admitted about something already written: the reflection is a correction, and what precedes it its target.
ERROR_ADMISSION = re.compile(
    r"\b(?:i|i've|i\s+have|i\s+must\s+have|i\s+might\s+have|i\s+may\s+have|i\s+think\s+i)\s+"
    r"(?:made\s+an?\s+(?:mistake|error)|messed\s+up|miscalculated|mixed\s+up|confused)|"
    r"\b(?:that|this|it)(?:'s|\s+is|\s+was)\s+(?:not\s+(?:right|correct)|wrong|incorrect)\b|"
    r"\b(?:that|this|it)\s+(?:can't|cannot|doesn't|does\s+not)\s+(?:be|seem|look)\s+right\b|"
    r"\bmiscalculat|\bmy\s+mistake\b|\bmistake\s+(?:in|was)\b",
    re.I,
)
# Sentence-initial "Actually," revises; inside a sentence "actually" only stresses ("which is actually 5").
OPENING_ACTUALLY = re.compile(r"^\W*(?:(?:but|and|so|oh|no|okay|ok)\W+)*actually\b", re.I)
# Connectives that carry the argument: never a marker by themselves. The summary counts how many of the sentences
# whose only marker is one of these were kept.
ARGUMENT_CONNECTIVES = re.compile(r"\b(?:but|however|so|therefore|thus|hence|actually)\b", re.I)
# --rewriter sentences: the repo's earlier keyword list, kept as it was so that old runs can be repeated.
SENTENCE_KEYWORDS = tuple(
    "wait|alternatively|let me think again|but|hmm|double-check|double check|verify|let me check|"
    "let me reconsider|on second thought|however|actually".split("|")
)
STEP_MARK = "[STEP]"
REWRITE_PROMPT = """The reasoning below was written while solving a problem. Rewrite it so that it runs straight \
through, without reflection.

A reflection episode starts with a transition phrase such as "Wait", "Hmm", "Alternatively", "Let me double-check" or \
"Let me think again", goes back over something already written, and often revises it. For every episode, delete the \
transition phrase, the content it goes back over, and the reflection itself. Where an episode corrects a mistake, keep \
only the corrected version, in the place of the mistaken one; where it only checks or re-derives something, delete \
the check. Connectives that carry the argument ("but", "however", "so") are not transitions.

Copy everything else exactly as written, including LaTeX, code and line breaks. Do not summarise, paraphrase or add \
anything. Output only the rewritten reasoning.

<reasoning>
{thought}
</reasoning>"""
REWRITE_TEMPERATURE = 0.7  # tag_output.py's sampling temperature


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", required=True, help="training JSONL/JSON in any shape sft.to_messages accepts")
    p.add_argument("--output", required=True, help="perturbed JSONL, written atomically")
    p.add_argument("--kind", required=True, choices=KINDS, help="content (digits, keywords) or structure (the rest)")
    p.add_argument(
        "--ratio",
        type=float,
        required=True,
        help="digits: chance per number; keywords: chance per record of a rewrite (paper: 0.2, 0.5, 1.0); structure "
        "kinds: share of steps (paper: 0.33, 0.67, 1.0); 0 is the identity",
    )
    p.add_argument("--seed", type=int, default=0, help="with the record id, fixes every random choice")
    p.add_argument(
        "--digit-mode",
        choices=("number", "digit"),
        default="number",
        help="number: the authors' corrupt_data.py (each number -> randint(0, 10)); digit: each digit redrawn",
    )
    p.add_argument(
        "--spare-solution",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="digits only: keep the solution block intact; off by default because the authors' corrupt_data.py "
        "corrupted the whole response, final answer included",
    )
    p.add_argument(
        "--rewriter",
        choices=("rules", "llm", "sentences"),
        default="rules",
        help="keywords: rules = offline approximation of the authors' rewrite; llm = a model removes the episodes, "
        "as the authors did (needs --llm-url); sentences = this repo's earlier variant, a --ratio share of keyword "
        "sentences deleted from every record",
    )
    p.add_argument(
        "--keywords-file",
        help="one phrase per line (# comments): the transition phrases (rules) or keywords (sentences) to use instead "
        "of the built-in lists",
    )
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
        help="blank: split at blank lines (Sky-T1 asks for them between steps); llm: ask a model to cut at reflections",
    )
    p.add_argument("--llm-url", help="OpenAI-compatible base URL, e.g. http://localhost:8000/v1 (vLLM, SGLang, ...)")
    p.add_argument(
        "--llm-model",
        default="meta-llama/Llama-3.3-70B-Instruct",
        help="model name the server expects (the authors rewrote with gpt-4o-mini)",
    )
    p.add_argument("--llm-workers", type=int, default=8, help="concurrent requests; servers batch them")
    p.add_argument(
        "--llm-timeout", type=float, default=600.0, help="seconds per request; long thoughts take minutes to copy"
    )
    p.add_argument(
        "--llm-retries",
        type=int,
        default=3,
        help="retries per record on network errors and HTTP 408/429/5xx before falling back to the offline method",
    )
    cfg = p.parse_args(argv)
    if not 0.0 <= cfg.ratio <= 1.0:
        p.error("--ratio must be within [0, 1]")
    if (cfg.splitter == "llm" or cfg.rewriter == "llm") and not cfg.llm_url:
        p.error("--splitter llm and --rewriter llm need --llm-url")
    return cfg


def draw_count(ratio: float, n: int, rng: random.Random) -> int:
    """Stochastic rounding of ratio x n: its expectation is exactly ratio x n, so short records are perturbed at
    low ratios as often as the ratio says (round() would leave a 2-step record untouched at 0.2)."""
    exact = ratio * n
    whole = int(exact)
    return whole + (rng.random() < exact - whole)


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


def join_kept(steps: list[str], seps: list[str], kept: list[int]) -> str:
    """The kept steps, each followed by its own separator except the last."""
    return "".join(steps[i] + (seps[i] if j < len(kept) - 1 else "") for j, i in enumerate(kept))


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


def ask_llm(cfg, prompt: str, reply_limit: int, **sampling) -> str | None:
    """One chat turn; None when the server fails after its retries. max_tokens is explicit because some servers
    default to a few hundred, and a cut reply fails validation."""
    try:
        content, _ = utils.chat_completion(
            cfg.llm_url,
            cfg.llm_model,
            [{"role": "user", "content": prompt}],
            timeout=cfg.llm_timeout,
            retries=cfg.llm_retries,
            max_tokens=reply_limit // 2 + 1024,
            **sampling,
        )
    except utils.ChatCompletionError:
        return None
    return content


def llm_split(thought: str, cfg) -> tuple[list[str], list[str]] | None:
    """Ask an OpenAI-compatible server to cut the thought at backtracking, verification and reflection points.

    The model copies the text with a [STEP] line between steps, rather than returning a JSON list, because
    LaTeX backslashes inside JSON strings ("\\frac" -> form feed) are the commonest way such answers break.
    None when the server fails or the copy does not align with the thought (the caller falls back to blank lines).
    """
    if not thought:
        return [], []
    prompt = (
        "Split the reasoning below into steps. Start a new step wherever the writer backtracks, verifies, reflects "
        "(e.g. 'Wait', 'Alternatively', 'Let me check') or moves on to a new sub-goal. Copy the text exactly, without "
        f"changing, adding or dropping any character, and put a line containing only {STEP_MARK} between consecutive "
        f"steps. Output nothing else.\n\n<reasoning>\n{thought}\n</reasoning>"
    )
    content = ask_llm(cfg, prompt, len(thought), temperature=0.0)
    return None if content is None else align_segments(thought, content.split(STEP_MARK))


# ----------------------------------------------------------------------------- perturbations


def record_rng(seed: int, record_id, kind: str) -> random.Random:
    return random.Random(int.from_bytes(hashlib.sha256(f"{seed}:{record_id}:{kind}".encode()).digest()[:8], "big"))


def corrupt_digits(text: str, ratio: float, rng: random.Random, mode: str) -> tuple[str, dict]:
    """number (corrupt_data.py): each match of \\b\\d+(\\.\\d+)?\\b becomes str(randint(0, 10)) with probability
    ratio; chars_changed adds the length of each number that changed, as the authors' summary did. digit: each ASCII
    digit is redrawn uniformly (str.isdigit would also hit '²'); non-digit characters never move."""
    stats = {"n_units": 0, "n_resampled": 0, "n_changed": 0, "chars_changed": 0, "chars_total": len(text)}

    def redraw(m: re.Match) -> str:
        stats["n_units"] += 1
        if rng.random() >= ratio:
            return m.group()
        stats["n_resampled"] += 1
        new = rng.choice("0123456789") if mode == "digit" else str(rng.randint(0, 10))
        if new != m.group():
            stats["n_changed"] += 1
            stats["chars_changed"] += len(m.group())
        return new

    return re.sub(r"[0-9]" if mode == "digit" else r"\b\d+(?:\.\d+)?\b", redraw, text), stats


_SENTENCE = re.compile(r"[^\n]+?(?:[.!?]+(?=\s)|$)[ \t]*", re.M)


def phrase_pattern(phrases) -> re.Pattern:
    alternatives = sorted((r"\s+".join(map(re.escape, k.split())) for k in phrases), key=len, reverse=True)
    return re.compile(r"\b(?:" + "|".join(alternatives) + r")\b", re.I)


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """(start, stop) of each sentence, line by line; a line without a full stop is one sentence."""
    return [m.span() for m in _SENTENCE.finditer(text) if m.group().strip()]


def sentence_role(sentence: str, transitions: re.Pattern) -> str | None:
    """ "correction" (an admitted error, "I made a mistake", "that's not right"), "reflection" (a transition phrase or
    an opening "Actually"), "connective" (its only marker is a connective that carries the argument, such as "but",
    "however" or "so": never removed) or None."""
    if ERROR_ADMISSION.search(sentence):
        return "correction"
    if transitions.search(sentence) or OPENING_ACTUALLY.match(sentence):
        return "reflection"
    return "connective" if ARGUMENT_CONNECTIVES.search(sentence) else None


def cut_spans(text: str, spans: list[tuple[int, int]]) -> str:
    """text without the spans; lines they leave empty go, and at most one blank line remains between paragraphs."""
    for a, b in sorted(spans, reverse=True):
        text = text[:a] + "\0" + text[b:]
    lines = [line.replace("\0", "").rstrip(" \t") for line in text.split("\n")]
    kept = [line for line, marked in zip(lines, text.split("\n")) if line.strip() or "\0" not in marked]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(kept)).strip()


def remove_reflections(steps: list[str], seps: list[str], transitions: re.Pattern) -> tuple[str, dict]:
    """The offline stand-in for the authors' model rewrite, read sentence by sentence (sentence_role). A run of
    reflection sentences in one step opens an episode. If the run admits an error it is a correction: the run goes,
    and so does its target, the sentence before it, while the corrected text after it stays. Otherwise the run
    revisits (checks, re-derives, tries another way) and goes with the sentences after it in its step, up to the first
    connective sentence, where the argument resumes. Connective sentences are never removed, so a target stated with
    "so" stays; a check spanning several steps loses only its first; steps left empty go. --rewriter llm removes
    whole episodes."""
    flat = [(i, span) for i, step in enumerate(steps) for span in sentence_spans(step)]
    roles = [sentence_role(steps[i][a:b], transitions) for i, (a, b) in flat]
    cut, f = set(), 0
    while f < len(flat):
        if roles[f] not in ("reflection", "correction"):
            f += 1
            continue
        end = f
        while end < len(flat) and flat[end][0] == flat[f][0] and roles[end] in ("reflection", "correction"):
            end += 1
        cut.update(range(f, end))
        if "correction" in roles[f:end]:
            if f > 0 and roles[f - 1] is None:
                cut.add(f - 1)
        else:
            while end < len(flat) and flat[end][0] == flat[f][0] and roles[end] is None:
                cut.add(end)
                end += 1
        f = end
    new_steps = [cut_spans(step, [flat[c][1] for c in cut if flat[c][0] == i]) for i, step in enumerate(steps)]
    kept = [i for i in range(len(steps)) if new_steps[i]]
    return join_kept(new_steps, seps, kept), {"sentences_removed": len(cut), "steps_removed": len(steps) - len(kept)}


def reflection_markers(text: str, transitions: re.Pattern) -> int:
    """Sentences that carry a reflection marker."""
    return sum(sentence_role(text[a:b], transitions) in ("reflection", "correction") for a, b in sentence_spans(text))


def llm_rewrite(thought: str, seed: int, cfg) -> str | None:
    """The authors' rewrite (tag_output.py) through any OpenAI-compatible server, with our own prompt for the same
    instruction. Only the thought is sent, so the markup and the solution stay byte for byte. None when the server
    fails, or the reply is empty, longer than the thought or carries markup (a rewrite only removes)."""
    content = ask_llm(
        cfg, REWRITE_PROMPT.format(thought=thought), len(thought), temperature=REWRITE_TEMPERATURE, seed=seed
    )
    if content is None:
        return None
    content = content.strip().removeprefix("<reasoning>").removesuffix("</reasoning>").strip()
    if not content or len(content) > len(thought) or re.search(r"<\|(?:begin|end)_of_|</?think>", content):
        return None
    return content


def remove_keyword_sentences(text: str, ratio: float, rng: random.Random, pattern: re.Pattern) -> tuple[str, dict]:
    """--rewriter sentences: remove a stochastically rounded ratio x m of the m sentences holding a keyword. A line
    left empty goes too, and so does the blank line after it if it stood alone, so no gap of blank lines remains."""
    lines = text.splitlines(keepends=True)
    hits = [
        (i, m.span()) for i, line in enumerate(lines) for m in _SENTENCE.finditer(line) if pattern.search(m.group())
    ]
    chosen = sorted(rng.sample(range(len(hits)), draw_count(ratio, len(hits), rng)))
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
    """shuffle: the chosen positions get an ordinary shuffle of their own steps, redrawn as a rotation if it came out
    as the identity, so any two or more chosen steps always move. delete: the chosen steps go. insert: as many steps
    of other records (donor()) are placed at random positions among the record's own, which keep their order; each is
    set off by a blank line. replace: each chosen step is overwritten by a donor step."""
    n = len(steps)
    k = draw_count(ratio, n, rng)
    if kind == "insert":
        slots = sorted(rng.sample(range(n + k), k))  # the inserted steps' places in the new sequence
        sequence, own, sources, slot_set = [], iter(range(n)), [], set(slots)
        for t in range(n + k):
            if t in slot_set:
                source_id, source_step, text = donor()
                sources.append([source_id, source_step])
                sequence.append((None, text))
            else:
                i = next(own)
                sequence.append((i, steps[i]))
        out = sequence[0][1] if sequence else ""
        for (a, _), (b, text) in zip(sequence, sequence[1:]):
            out += (seps[a] if a is not None and b == a + 1 else "\n\n") + text
        return out, {"n_units": n, "n_changed": k, "positions": slots, "sources": sources}
    positions = sorted(rng.sample(range(n), k))
    stats = {"n_units": n, "n_changed": k, "positions": positions}
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
        return join_kept(steps, seps, [i for i in range(n) if i not in set(positions)]), stats
    new, stats["sources"] = steps[:], []
    for pos in positions:
        source_id, source_step, new[pos] = donor()
        stats["sources"].append([source_id, source_step])
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


def load_phrases(path: str | None, default: tuple[str, ...]) -> re.Pattern:
    if not path:
        return phrase_pattern(default)
    try:
        with open(path, encoding="utf-8") as f:
            phrases = [k.strip() for k in f if k.strip() and not k.lstrip().startswith("#")]
    except OSError as e:
        raise DataError(f"{path}: {e.strerror}") from None
    if not phrases:
        raise DataError(f"{path}: no phrases (one per line expected)")
    return phrase_pattern(phrases)


def split_all(items: list[dict], cfg, report: dict) -> None:
    """it["steps"], it["seps"] and it["splitter"] for every record."""
    found = [None] * len(items)
    if cfg.splitter == "llm":
        with ThreadPoolExecutor(cfg.llm_workers) as pool:
            replies = pool.map(functools.partial(llm_split, cfg=cfg), [it["parts"].thought for it in items])
            found = list(tqdm(replies, total=len(items), desc="llm split"))
        report["llm_fallback"] = sum(f is None for f in found)
    for it, f in zip(items, found):
        it["steps"], it["seps"] = f if f is not None else split_steps(it["parts"].thought, cfg.min_step_chars)
        if cfg.splitter == "blank":
            it["splitter"] = "blank"
        else:
            it["splitter"] = "llm" if f is not None else "llm_fallback"
    report["mean_steps"] = round(sum(len(it["steps"]) for it in items) / len(items), 2)


def donor_pool(items: list[dict]) -> tuple[list, dict]:
    """Every step of the file, records in order of (id, response) rather than file order, and where each record's
    own block of steps starts, so donor_step can skip it."""
    order = sorted(range(len(items)), key=lambda r: (json.dumps(items[r]["id"]), items[r]["slot"][items[r]["key"]]))
    pool, first = [], {}
    for r in order:
        first[r] = len(pool)
        pool += [(r, j) for j in range(len(items[r]["steps"]))]
    return pool, first


def donor_step(rng: random.Random, items: list[dict], step_pool: list, first: int, r: int, path: str):
    """(record id, step index, step text) of a random step of any record but the r-th, whose steps are
    step_pool[first : first + n]."""
    n_own = len(items[r]["steps"])
    if len(step_pool) == n_own:
        raise DataError(f"{path}: --kind {items[r]['kind']} needs steps from at least two records")
    k = rng.randrange(len(step_pool) - n_own)
    owner, j = step_pool[k if k < first else k + n_own]
    return items[owner]["id"], j, items[owner]["steps"][j]


def rewrite_keywords(items: list[dict], cfg, report: dict) -> None:
    """--kind keywords with --rewriter rules|llm: it["new_thought"] and it["stats"] for every record."""
    transitions = load_phrases(cfg.keywords_file, TRANSITION_PHRASES)
    for it in items:
        it["rewrite"] = it["rng"].random() < cfg.ratio  # tag_output.py: one draw per sample
        it["llm_seed"] = it["rng"].getrandbits(31)
    chosen = [it for it in items if it["rewrite"] and it["parts"].thought]
    replies = {}
    if cfg.rewriter == "llm":
        with ThreadPoolExecutor(cfg.llm_workers) as pool:
            futures = [pool.submit(llm_rewrite, it["parts"].thought, it["llm_seed"], cfg) for it in chosen]
            replies = {id(it): f.result() for it, f in zip(chosen, tqdm(futures, desc="llm rewrite"))}
        report["llm_fallback"] = sum(reply is None for reply in replies.values())
    connective_total = connective_kept = 0
    for it in items:
        thought = it["parts"].thought
        stats = {"rewriter": cfg.rewriter, "rewritten": it["rewrite"], "n_units": 1, "n_changed": int(it["rewrite"])}
        new = thought
        if it["rewrite"]:
            new = replies.get(id(it))
            if new is None:
                new, removal = remove_reflections(*split_steps(thought, cfg.min_step_chars), transitions)
                stats.update(removal)
                stats["rewriter"] = "rules_fallback" if cfg.rewriter == "llm" else "rules"
        stats["markers_before"] = reflection_markers(thought, transitions)
        stats["markers_after"] = reflection_markers(new, transitions)
        connectives = [thought[a:b].strip() for a, b in sentence_spans(thought)]
        connectives = [c for c in connectives if sentence_role(c, transitions) == "connective"]
        connective_total += len(connectives)
        connective_kept += sum(c in new for c in connectives)
        it["new_thought"], it["stats"] = new, stats
        with_markers = stats["markers_before"] > 0
        report["records_with_markers"] += with_markers
        report["changed_with_markers"] += with_markers and new != thought
        report["markers_before"] += stats["markers_before"]
        report["markers_after"] += stats["markers_after"]
        report["thought_chars"] += len(thought)
        report["thought_chars_removed"] += len(thought) - len(new)
    report["connective_sentences"], report["connective_sentences_kept"] = connective_total, connective_kept


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
        "chars_changed": 0,
        "chars_total": 0,
    }
    for it in items:
        it["rng"], it["kind"] = record_rng(cfg.seed, it["id"], cfg.kind), cfg.kind
    if cfg.kind in STRUCTURE_KINDS:
        split_all(items, cfg, report)
        step_pool, pool_first = donor_pool(items)
    if cfg.kind == "keywords" and cfg.rewriter != "sentences":
        report.update(dict.fromkeys(("records_with_markers", "changed_with_markers", "markers_before"), 0))
        report.update(dict.fromkeys(("markers_after", "thought_chars", "thought_chars_removed"), 0))
        rewrite_keywords(items, cfg, report)
    if cfg.kind == "keywords" and cfg.rewriter == "sentences":
        pattern = load_phrases(cfg.keywords_file, SENTENCE_KEYWORDS)

    out = []
    for r, it in enumerate(tqdm(items, desc=f"perturb {cfg.kind}")):
        rng, parts, old_text = it["rng"], it["parts"], it["slot"][it["key"]]
        summary = {"kind": cfg.kind, "ratio": cfg.ratio, "seed": cfg.seed, "markup": parts.markup}
        if cfg.kind == "digits":
            if cfg.spare_solution:
                thought, stats = corrupt_digits(parts.thought, cfg.ratio, rng, cfg.digit_mode)
                new_text = parts.head + thought + parts.tail
            else:
                new_text, stats = corrupt_digits(old_text, cfg.ratio, rng, cfg.digit_mode)
            summary.update(digit_mode=cfg.digit_mode, scope="thought" if cfg.spare_solution else "response")
            report["chars_changed"] += stats["chars_changed"]
            report["chars_total"] += stats["chars_total"]
        elif cfg.kind == "keywords" and cfg.rewriter == "sentences":
            thought, stats = remove_keyword_sentences(parts.thought, cfg.ratio, rng, pattern)
            new_text = parts.head + thought + parts.tail
            summary["rewriter"] = "sentences"
        elif cfg.kind == "keywords":
            new_text, stats = parts.head + it["new_thought"] + parts.tail, it["stats"]
        else:
            donor = functools.partial(donor_step, rng, items, step_pool, pool_first[r], r, cfg.input)
            thought, stats = perturb_steps(it["steps"], it["seps"], cfg.kind, cfg.ratio, rng, donor)
            new_text = parts.head + thought + parts.tail
            summary["splitter"] = it["splitter"]
        report["units"] += stats["n_units"]
        report["changed"] += stats["n_changed"]
        summary[f"n_{unit_name(cfg)}"] = stats.pop("n_units")
        summary.update(stats)
        report["unchanged_records"] += new_text == old_text
        it["slot"][it["key"]] = new_text
        out.append({**it["record"], "id": it["id"], "perturbation": summary})
    write_jsonl(cfg.output, out)
    report["share"] = round(report["changed"] / report["units"], 4) if report["units"] else 0.0
    return report


def unit_name(cfg) -> str:
    if cfg.kind == "digits":
        return "digits" if cfg.digit_mode == "digit" else "numbers"
    if cfg.kind == "keywords":
        return "keyword_sentences" if cfg.rewriter == "sentences" else "records"
    return "steps"


def main(cfg) -> dict:
    report = perturb_file(cfg)
    unit = unit_name(cfg).replace("_", " ")
    print(f"perturb {cfg.kind} ratio {cfg.ratio} seed {cfg.seed}: {report['records']} records -> {cfg.output}")
    print("  thought markup: " + ", ".join(f"{k} {v}" for k, v in sorted(report["markup"].items())))
    if "mean_steps" in report:
        fallback = (
            f" | llm split fell back to blank lines for {report['llm_fallback']}" if cfg.splitter == "llm" else ""
        )
        print(f"  mean steps per record {report['mean_steps']}{fallback}")
    verb = {"insert": "added", "delete": "deleted", "shuffle": "moved", "replace": "replaced"}.get(cfg.kind, "changed")
    if cfg.kind == "keywords" and cfg.rewriter != "sentences":
        verb = "rewritten"
    print(
        f"  {unit}: {report['units']} seen, {report['changed']} {verb} (realised share {report['share']:.3f}) | "
        f"records left unchanged: {report['unchanged_records']}"
    )
    if cfg.kind == "digits":
        share = report["chars_changed"] / max(report["chars_total"], 1)
        print(f"  characters changed: {report['chars_changed']} of {report['chars_total']} ({share:.2%})")
    if "records_with_markers" in report:
        removed = report["thought_chars_removed"] / max(report["thought_chars"], 1)
        print(
            f"  records with reflection markers: {report['records_with_markers']}, changed "
            f"{report['changed_with_markers']} | marked sentences {report['markers_before']} -> "
            f"{report['markers_after']} | thought text removed {removed:.1%}"
        )
        print(
            f"  sentences whose only marker is a connective (but, however, so, ...): kept "
            f"{report['connective_sentences_kept']} of {report['connective_sentences']}"
        )
        if cfg.rewriter == "llm":
            print(f"  llm rewrite fell back to the rules for {report['llm_fallback']} records")
    return report


if __name__ == "__main__":
    try:
        main(parse_args())
    except DataError as e:
        sys.exit(f"error: {e}")
