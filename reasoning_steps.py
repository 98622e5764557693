"""Reasoning steps: how a long-CoT thought is cut into steps, the unit of the paper's structure perturbations
(paper, Table 2, no public script; its v1 text: shuffle, delete and insert "break logical consistency across steps").
perturb.py's structure kinds move, remove and borrow these steps; its rules rewriter reads one step at a time.

    python -c "import reasoning_steps as r; print(r.split_steps('We add 2 and 3.\\n\\nOk.\\n\\nThen double 5.', 12))"
    python perturb.py --input data/train.jsonl --output out/cot_shuffle67.jsonl --kind shuffle --ratio 0.67
    python perturb.py --input data/train.jsonl --output out/cot_shuffle67.jsonl --kind shuffle --ratio 0.67 \\
        --splitter llm --llm-url http://localhost:8000/v1 --llm-model meta-llama/Llama-3.3-70B-Instruct

A step is a blank-line paragraph (Sky-T1's system prompt asks for "steps separated with '\\n\\n'") with tiny fragments
merged into a neighbour: split_steps, perturb.py --min-step-chars (default 40); display math, continuations in lower
case, what a colon introduces and code inside an open fence stay with the step they belong to. --splitter llm: a model
cuts the thought where the writer backtracks, verifies, reflects or moves to a new sub-goal (llm_split), and its copy
is aligned back onto the original bytes (align_segments), so that what no perturbation touches comes out byte for
byte; a copy that changed any non-space character is rejected, and perturb.py falls back to blank lines for that
record. Either way join_steps restores the thought exactly from its steps and the separators between them.
"""

from __future__ import annotations

import re
from typing import Callable

from markup import BLANK_LINES

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


def join_steps(steps: list[str], seps: list[str], kept=None) -> str:
    """The steps (or the `kept` ones), each followed by its own separator except the last."""
    kept = range(len(steps)) if kept is None else kept
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


def llm_split(thought: str, ask: Callable[..., str | None]) -> tuple[list[str], list[str]] | None:
    """Ask a model to cut the thought at backtracking, verification and reflection points. ask(prompt, reply_limit,
    **sampling) is one chat turn with it, None when the server fails (perturb.py passes its ask_llm: --llm-url).

    The model copies the text with a [STEP] line between steps, rather than returning a JSON list, because
    LaTeX backslashes inside JSON strings ("\\frac" -> form feed) are the commonest way such answers break.
    None when the server fails or the copy does not align with the thought (the caller falls back to blank lines).
    """
    if not thought:
        return [], []
    prompt = (
        "Split the reasoning below into steps. Start a new step wherever the writer backtracks, verifies, reflects "
        "(e.g. 'Wait', 'Alternatively', 'Let me check') or moves on to a new sub-goal. Copy the text exactly, without "
        "changing, adding or dropping any character, and put a line containing only [STEP] between consecutive "
        f"steps. Output nothing else.\n\n<reasoning>\n{thought}\n</reasoning>"
    )
    content = ask(prompt, len(thought), temperature=0.0)
    return None if content is None else align_segments(thought, content.split("[STEP]"))
