"""Perturb the reasoning of long chain-of-thought training data: the paper's content and structure ablations (Table 2).

    python perturb.py --input data/train.jsonl --output out/cot_digits70.jsonl --kind digits --ratio 0.7
    python perturb.py --input data/train.jsonl --output out/cot_reflection50.jsonl --kind keywords --ratio 0.5
    python perturb.py --input data/train.jsonl --output out/cot_reflection50_llm.jsonl --kind keywords --ratio 0.5 \\
        --rewriter llm --llm-url http://localhost:8000/v1 --llm-model Qwen/Qwen2.5-72B-Instruct
    python perturb.py --input data/train.jsonl --output out/cot_insert33.jsonl --kind insert --ratio 0.33 --seed 0

Only the thought of the last assistant turn changes (markup.split_thought), except with `digits`, which corrupts the
whole response by default, as the authors did. Kinds and their sources:
  digits    skythought/tools/corrupt_data.py (SkyThought commit 66e8423): each number matching \\b\\d+(\\.\\d+)?\\b
            becomes randint(0, 10) with probability --ratio; --digit-mode digit redraws digit characters instead.
  keywords  skythought/tools/tag_output.py, remove_reflection_prompt (commit 0a0a3d1): each record is rewritten with
            probability --ratio, its reflection episodes (transition phrases such as "wait", what they revisit and
            revise) removed. --rewriter llm: a model does it, as the authors' gpt-4o-mini did; rules (default): the
            offline approximation of remove_reflections(); sentences: this repo's earlier variant, not the authors'.
  shuffle, delete, insert   paper, Table 2 (no public script): a --ratio share of the steps is permuted in place /
            removed / joined by as many steps of other records at random places (own steps keep their order).
  replace   not in the paper (this repo's former `insert`): a --ratio share of the steps is overwritten by steps of
            other records, i.e. delete plus insert.
Steps are reasoning_steps.py's: blank-line paragraphs with tiny fragments merged (--min-step-chars), or a model's cuts
(--splitter llm). Step counts are stochastically rounded, so the expected share is --ratio on any length distribution;
the summary prints the realised one. Each record draws from random.Random(sha256(seed:id:kind)) and donors from a pool
ordered by id: outputs depend neither on file order nor on threads. Each record gets a `perturbation` summary; other
fields stay (`n_tokens` counts the original text).
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

import openai_client
from markup import split_thought
from reasoning_steps import join_steps, llm_split, split_steps
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
    r"\bi(?:'ve|\s+have|\s+must\s+have|\s+might\s+have|\s+may\s+have|\s+think\s+i)?\s+(?:made\s+an?\s+(?:mistake|error)|"
    r"messed\s+up|miscalculated|mixed\s+up|confused)|\b(?:that|this|it)(?:'s|\s+is|\s+was)\s+(?:not\s+(?:right|correct)|"
    r"wrong|incorrect)\b|\b(?:that|this|it)\s+(?:can't|cannot|doesn't|does\s+not)\s+(?:be|seem|look)\s+right\b|"
    r"\bmiscalculat|\bmy\s+mistake\b|\bmistake\s+(?:in|was)\b",
    re.I,
)
# Connectives that carry the argument: never a marker; a sentence whose only marker is one of these is never removed.
ARGUMENT_CONNECTIVES = re.compile(r"\b(?:but|however|so|therefore|thus|hence|actually)\b", re.I)
# --rewriter sentences: the repo's earlier keyword list, kept as it was so that old runs can be repeated.
SENTENCE_KEYWORDS = tuple(
    "wait|alternatively|let me think again|but|hmm|double-check|double check|verify|let me check|"
    "let me reconsider|on second thought|however|actually".split("|")
)
REWRITE_PROMPT = """\
The reasoning below was written while solving a problem. Rewrite it so that it runs straight through, without \
reflection. A reflection episode starts with a transition phrase such as "Wait", "Hmm", "Alternatively", "Let me \
double-check" or "Let me think again", goes back over something already written, and often revises it. For every \
episode, delete the transition phrase, the content it goes back over, and the reflection itself. Where an episode \
corrects a mistake, keep only the corrected version, in the place of the mistaken one; where it only checks or \
re-derives something, delete the check. Connectives that carry the argument ("but", "however", "so") are not \
transitions. Copy everything else exactly as written, including LaTeX, code and line breaks. Do not summarise, \
paraphrase or add anything. Output only the rewritten reasoning.

<reasoning>
{thought}
</reasoning>"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", required=True, help="training JSONL/JSON in any shape sft.to_messages accepts")
    p.add_argument("--output", required=True, help="perturbed JSONL, written atomically")
    p.add_argument("--kind", required=True, choices=KINDS, help="content (digits, keywords) or structure (the rest)")
    p.add_argument(
        "--ratio",
        type=float,
        required=True,
        help="digits: chance per number; keywords: chance per record of a rewrite (paper: 0.2, 0.5, 1); structure: "
        "share of steps (paper: 0.33, 0.67, 1); 0 is the identity",
    )
    p.add_argument("--seed", type=int, default=0, help="with the record id, fixes every random choice")
    p.add_argument(
        "--digit-mode",
        choices=("number", "digit"),
        default="number",
        help="number: the authors' corrupt_data.py, each number -> randint(0, 10); digit: each digit redrawn",
    )
    p.add_argument(
        "--spare-solution",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="digits: keep the solution intact (off: the authors' corrupt_data.py corrupted the final answer too)",
    )
    p.add_argument(
        "--rewriter",
        choices=("rules", "llm", "sentences"),
        default="rules",
        help="keywords: rules = offline approximation of the authors' model rewrite; llm = the authors' method, any "
        "model (needs --llm-url); sentences = the repo's earlier variant, a --ratio share of keyword sentences deleted",
    )
    p.add_argument("--keywords-file", help="one phrase per line (# comments): replaces the transition phrases/keywords")
    p.add_argument("--min-step-chars", type=int, default=40, help="shorter blank-line fragments join a neighbour")
    p.add_argument(
        "--splitter",
        choices=("blank", "llm"),
        default="blank",
        help="blank: steps at blank lines (Sky-T1 asks for them between steps); llm: a model cuts at reflections",
    )
    p.add_argument("--llm-url", help="OpenAI-compatible base URL, e.g. http://localhost:8000/v1 (vLLM, SGLang, ...)")
    p.add_argument(
        "--llm-model", default="meta-llama/Llama-3.3-70B-Instruct", help="served model (authors: gpt-4o-mini)"
    )
    p.add_argument("--llm-workers", type=int, default=8, help="concurrent requests; servers batch them")
    p.add_argument("--llm-timeout", type=float, default=600.0, help="seconds per request; long thoughts take minutes")
    p.add_argument("--llm-retries", type=int, default=3, help="retries on network errors and HTTP 408/429/5xx")
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


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """(start, stop) of each sentence, line by line; a line without a full stop is one sentence."""
    return [m.span() for m in _SENTENCE.finditer(text) if m.group().strip()]


def sentence_role(sentence: str, transitions: re.Pattern) -> str | None:
    """ "correction" (an admitted error: "I made a mistake", "that's not right"), "reflection" (a transition phrase),
    "connective" (its only marker is a connective that carries the argument, such as "but", "however", "so" or
    "actually": never removed) or None."""
    if ERROR_ADMISSION.search(sentence):
        return "correction"
    if transitions.search(sentence):
        return "reflection"
    return "connective" if ARGUMENT_CONNECTIVES.search(sentence) else None


def cut_spans(text: str, spans: list[tuple[int, int]]) -> str:
    """text without the spans; lines they leave empty go, and at most one blank line remains between paragraphs."""
    if not spans:
        return text
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
    return join_steps(new_steps, seps, kept), {"sentences_removed": len(cut), "steps_removed": len(steps) - len(kept)}


def reflection_markers(text: str, transitions: re.Pattern) -> int:
    """Sentences that carry a reflection marker."""
    return sum(sentence_role(text[a:b], transitions) in ("reflection", "correction") for a, b in sentence_spans(text))


def ask_llm(cfg, prompt: str, reply_limit: int, **sampling) -> str | None:
    """One chat turn with the --llm-url model (the rewriter's, and reasoning_steps.llm_split's for --splitter llm), or
    None when the server fails after its retries. max_tokens is explicit: some servers default to a few hundred
    tokens, and a cut reply fails validation."""
    limits = {"timeout": cfg.llm_timeout, "retries": cfg.llm_retries, "max_tokens": reply_limit // 2 + 1024}
    messages = [{"role": "user", "content": prompt}]
    try:
        content, _, _ = openai_client.chat_completion(cfg.llm_url, cfg.llm_model, messages, **limits, **sampling)
    except openai_client.ChatCompletionError:
        return None
    return content


def llm_rewrite(thought: str, seed: int, cfg) -> str | None:
    """The authors' rewrite (tag_output.py) through any OpenAI-compatible server, with our own prompt for the same
    instruction. Only the thought is sent, so the markup and the solution stay byte for byte. None when the server
    fails, or the reply is empty, longer than the thought or carries markup (a rewrite only removes)."""
    prompt = REWRITE_PROMPT.format(thought=thought)
    content = ask_llm(cfg, prompt, len(thought), temperature=0.7, seed=seed)  # tag_output.py sampled at 0.7
    if content is None:
        return None
    content = content.strip().removeprefix("<reasoning>").removesuffix("</reasoning>").strip()
    if not content or len(content) > len(thought) or re.search(r"<\|(?:begin|end)_of_|</?think>", content):
        return None
    return content


def remove_keyword_sentences(text: str, ratio: float, rng: random.Random, pattern: re.Pattern) -> tuple[str, dict]:
    """--rewriter sentences: remove a stochastically rounded ratio x m of the m sentences holding a keyword."""
    hits = [(a, b) for a, b in sentence_spans(text) if pattern.search(text[a:b])]
    chosen = sorted(rng.sample(range(len(hits)), draw_count(ratio, len(hits), rng)))
    stats = {"n_units": len(hits), "n_changed": len(chosen), "positions": chosen}
    return cut_spans(text, [hits[h] for h in chosen]), stats


def perturb_steps(steps: list[str], seps: list[str], kind: str, ratio: float, rng, donor) -> tuple[str, dict]:
    """shuffle: the chosen positions get an ordinary shuffle of their own steps, redrawn as a rotation if it came out
    as the identity, so any two or more chosen steps always move. delete: the chosen steps go. insert: as many steps
    of other records (donor()) are placed at random positions among the record's own, which keep their order; each is
    set off by a blank line. replace: each chosen step is overwritten by a donor step."""
    n = len(steps)
    k = draw_count(ratio, n, rng)
    if kind == "insert":
        slots = sorted(rng.sample(range(n + k), k))  # the inserted steps' places in the new sequence
        own, inserted = iter(range(n)), set(slots)
        order = [None if t in inserted else next(own) for t in range(n + k)]  # own step index, None for a donor's
        sources, pieces = [], []
        for t, i in enumerate(order):
            if t:  # a step's own separator between two own neighbours, else a blank line
                pieces.append(seps[order[t - 1]] if i is not None and i - 1 == order[t - 1] else "\n\n")
            if i is None:
                source_id, source_step, text = donor()
                sources.append([source_id, source_step])
            pieces.append(steps[i] if i is not None else text)
        return "".join(pieces), {"n_units": n, "n_changed": k, "positions": slots, "sources": sources}
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
        return join_steps(steps, seps, sorted(set(range(n)).difference(positions))), stats
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


def phrase_pattern(phrases: tuple[str, ...], path: str | None = None) -> re.Pattern:
    """Whole words or phrases, any case, any run of spaces between words; from the file at `path` when given."""
    if path:
        try:
            with open(path, encoding="utf-8") as f:
                phrases = [k.strip() for k in f if k.strip() and not k.lstrip().startswith("#")]
        except OSError as e:
            raise DataError(f"{path}: {e.strerror}") from None
        if not phrases:
            raise DataError(f"{path}: no phrases (one per line expected)")
    alternatives = sorted((r"\s+".join(map(re.escape, k.split())) for k in phrases), key=len, reverse=True)
    return re.compile(r"\b(?:" + "|".join(alternatives) + r")\b", re.I)


def split_all(items: list[dict], cfg, report: dict) -> None:
    """it["steps"], it["seps"] and it["splitter"] for every record."""
    found = [None] * len(items)
    if cfg.splitter == "llm":
        segment = functools.partial(llm_split, ask=functools.partial(ask_llm, cfg))
        with ThreadPoolExecutor(cfg.llm_workers) as pool:
            replies = pool.map(segment, [it["parts"].thought for it in items])
            found = list(tqdm(replies, total=len(items), desc="llm split"))
        report["llm_fallback"] = sum(f is None for f in found)
    for it, f in zip(items, found):
        it["steps"], it["seps"] = f if f is not None else split_steps(it["parts"].thought, cfg.min_step_chars)
        it["splitter"] = cfg.splitter if f is not None or cfg.splitter == "blank" else "llm_fallback"
    report["mean_steps"] = round(sum(len(it["steps"]) for it in items) / len(items), 2)


def donor_pool(items: list[dict]) -> tuple[list, dict]:
    """Every step of the file, records ordered by (id, response), not file order; where each record's block starts."""
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


def rewrite_keywords(items: list[dict], cfg) -> int:
    """--rewriter rules|llm: it["new_thought"] and it["stats"] of every record; returns the model's failures."""
    transitions = phrase_pattern(TRANSITION_PHRASES, cfg.keywords_file)
    for it in items:
        it["rewrite"] = it["rng"].random() < cfg.ratio  # tag_output.py: one draw per sample
    chosen = [it for it in items if it["rewrite"] and it["parts"].thought]
    replies = {}
    if cfg.rewriter == "llm":
        with ThreadPoolExecutor(cfg.llm_workers) as pool:
            futures = [pool.submit(llm_rewrite, it["parts"].thought, it["rng"].getrandbits(31), cfg) for it in chosen]
            replies = {id(it): f.result() for it, f in zip(chosen, tqdm(futures, desc="llm rewrite"))}
    for it in items:
        thought = it["parts"].thought
        stats = {"rewriter": cfg.rewriter, "rewritten": it["rewrite"], "n_units": 1, "n_changed": int(it["rewrite"])}
        new = replies.get(id(it)) if it["rewrite"] else thought
        if new is None:
            new, removal = remove_reflections(*split_steps(thought, cfg.min_step_chars), transitions)
            stats.update(removal, rewriter="rules_fallback" if cfg.rewriter == "llm" else "rules")
        before, after = reflection_markers(thought, transitions), reflection_markers(new, transitions)
        connectives = [thought[a:b].strip() for a, b in sentence_spans(thought)]
        connectives = [c for c in connectives if sentence_role(c, transitions) == "connective"]
        stats.update(markers_before=before, markers_after=after, with_markers=before > 0, thought_chars=len(thought))
        stats.update(changed_with_markers=before > 0 and new != thought, thought_chars_removed=len(thought) - len(new))
        stats.update(
            connective_sentences=len(connectives), connective_sentences_kept=sum(c in new for c in connectives)
        )
        it["new_thought"], it["stats"] = new, stats
    return sum(reply is None for reply in replies.values())


def perturb_file(cfg) -> dict:
    items = load_records(cfg.input)
    report = {"kind": cfg.kind, "ratio": cfg.ratio, "seed": cfg.seed, "records": len(items), "llm_fallback": 0}
    report.update(markup=dict(Counter(it["parts"].markup for it in items)), unchanged_records=0)
    for it in items:
        it["rng"], it["kind"] = record_rng(cfg.seed, it["id"], cfg.kind), cfg.kind
    if cfg.kind in STRUCTURE_KINDS:
        split_all(items, cfg, report)
        step_pool, pool_first = donor_pool(items)
    if cfg.kind == "keywords" and cfg.rewriter != "sentences":
        report["llm_fallback"] = rewrite_keywords(items, cfg)
    if cfg.kind == "keywords" and cfg.rewriter == "sentences":
        pattern = phrase_pattern(SENTENCE_KEYWORDS, cfg.keywords_file)

    out, totals = [], Counter()  # every count of the records' summaries, summed
    for r, it in enumerate(tqdm(items, desc=f"perturb {cfg.kind}")):
        rng, parts, old_text = it["rng"], it["parts"], it["slot"][it["key"]]
        summary = {"kind": cfg.kind, "ratio": cfg.ratio, "seed": cfg.seed, "markup": parts.markup}
        if cfg.kind == "digits":
            scope = parts.thought if cfg.spare_solution else old_text
            new_text, stats = corrupt_digits(scope, cfg.ratio, rng, cfg.digit_mode)
            new_text = parts.head + new_text + parts.tail if cfg.spare_solution else new_text
            summary.update(digit_mode=cfg.digit_mode, scope="thought" if cfg.spare_solution else "response")
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
        totals.update({k: v for k, v in stats.items() if isinstance(v, int)})
        if unit_name(cfg) != "records":  # a rewritten record is its own unit
            summary[f"n_{unit_name(cfg)}"] = stats["n_units"]
        summary.update((k, v) for k, v in stats.items() if k != "n_units")
        report["unchanged_records"] += new_text == old_text
        it["slot"][it["key"]] = new_text
        out.append({**it["record"], "id": it["id"], "perturbation": summary})
    write_jsonl(cfg.output, out)
    report.update(totals, units=totals.pop("n_units", 0), changed=totals.pop("n_changed", 0))
    report["share"] = round(report["changed"] / report["units"], 4) if report["units"] else 0.0
    return report


def unit_name(cfg) -> str:
    if cfg.kind == "digits":
        return "digits" if cfg.digit_mode == "digit" else "numbers"
    if cfg.kind == "keywords":
        return "keyword_sentences" if cfg.rewriter == "sentences" else "records"
    return "steps"


def main(cfg) -> dict:
    report, unit = perturb_file(cfg), unit_name(cfg)
    verbs = {"insert": "added", "delete": "deleted", "shuffle": "moved", "replace": "replaced", "keywords": "rewritten"}
    verb = "changed" if unit in ("digits", "numbers", "keyword_sentences") else verbs[cfg.kind]
    print(f"perturb {cfg.kind} ratio {cfg.ratio} seed {cfg.seed}: {report['records']} records -> {cfg.output}")
    print("  thought markup: " + ", ".join(f"{k} {v}" for k, v in sorted(report["markup"].items())))
    if "mean_steps" in report:
        print(f"  mean steps per record {report['mean_steps']}")
    print(
        f"  {unit.replace('_', ' ')}: {report['units']} seen, {report['changed']} {verb} (realised share "
        f"{report['share']:.3f}) | records left unchanged: {report['unchanged_records']}"
    )
    if cfg.kind == "digits":
        share = report["chars_changed"] / max(report["chars_total"], 1)
        print(f"  characters changed: {report['chars_changed']} of {report['chars_total']} ({share:.2%})")
    if cfg.kind == "keywords" and cfg.rewriter != "sentences":
        removed = report["thought_chars_removed"] / max(report["thought_chars"], 1)
        print(
            f"  records with reflection markers: {report['with_markers']}, changed "
            f"{report['changed_with_markers']} | marked sentences {report['markers_before']} -> "
            f"{report['markers_after']} | thought text removed {removed:.1%}\n  sentences whose only marker is a "
            f"connective (but, however, so, ...): kept {report['connective_sentences_kept']} of "
            f"{report['connective_sentences']}"
        )
    if cfg.splitter == "llm" and "mean_steps" in report or cfg.rewriter == "llm" and cfg.kind == "keywords":
        print(f"  llm: {report['llm_fallback']} records fell back to the offline method (blank-line steps / rules)")
    return report


if __name__ == "__main__":
    try:
        main(parse_args())
    except DataError as e:
        sys.exit(f"error: {e}")
