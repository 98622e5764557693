r"""Where is the final answer of a math response? Extraction for grading.py, which compares what this finds.

    python -c 'from answer_extraction import extract_answer; print(extract_answer("So there are 9 divisors."))'
    python -m pytest tests/test_answer_extraction.py tests/test_grading.py -q -k "extract or prose or made_up"

The answer is looked for in the solution block (markup.solution_part: the Sky-T1 solution, the text after </think>,
or the whole response when it has no reasoning markup), by the first rule that finds one:
  1. the last \boxed{}/\fbox{}; boxes separated by a short gap with no sentence break ("\boxed{2} and \boxed{5}",
     "(a) \boxed{1}, (b) \boxed{3}") are the parts of one multi-part answer;
  2. the last answer phrase ("final answer is", "Answer:", "**Final Answer**", "the final answers are:" and a list),
     keeping the answer's span (a number, formula or short LaTeX), not the sentence: "Final answer: The speed is 250
     meters per second." gives 250;
  3. a concluding sentence among the last two of the final paragraph ("Therefore, there are 9 divisors.", "So the area
     is $12$ square units."), keeping the value set in bold ("is *n* = **5**." gives 5); not a question or a sentence
     that goes on reasoning ("Hmm, so the sum is 6?"), and none when the last one does ("... Let me check n = 0.");
  4. the last formula or **bold** value of the final paragraph when it is stated (it opens a line or follows ':', '=',
     'is', 'gives' ...) and only closing remarks follow it ("v/c = z = **0.033**"), or a whole response that is one
     short formula.
Closing remarks are looked past in rules 3 and 4: up to MAX_REMARKS sentences at the end, each ended by its full stop,
without maths, conclusion word or sign of reasoning going on ("I think that's the final answer.", a paragraph "This
problem demonstrates ..."; not "I can solve it with an integrating factor."), and pleasantries ("I hope it helps").
answer_parts returns the parts and whether they are labelled (part (a), Subproblem 1, a bulleted list); extract_answer
joins them. There is no last-number fallback: a number near the end of a response is often a draft. A text that visibly
stops mid-sentence ("..., where the"; not "the answer is: a") was cut off: a prose answer or a box followed by more
working before the cut is a draft, while a box followed only by a remark's words ("\boxed{5}. I hope this is what you
were looking for") ends a finished response; a response whose thought never closed counts only an answer that ends it
(closing remarks aside) and none before a cut; grading.grade_math gives none to a response the backend stopped at its
token limit.
"""

import re
from typing import NamedTuple

from markup import markup_of, solution_part

BOX_GAP_CHARS = 40  # boxes this close, with no sentence break between them, are parts of one answer
# A degenerate response ("so so so ..." for a megabyte) must not take hours: an answer is read within this many
# characters after its phrase or copula, and only the last ANSWER_CANDIDATES phrases (or conclusion words of a
# sentence) are tried.
ANSWER_WINDOW_CHARS = 2000
ANSWER_CANDIDATES = 100

_BOX_RE = re.compile(r"\\(?:boxed|fbox)(?![a-zA-Z])")
_BOX_TOKEN_RE = re.compile(r"\s+([^\s$]+)")  # the \boxed 5 form
_SPACES_RE = re.compile(r"\s*")
_BRACE_TOKEN_RE = re.compile(r"\\.|[{}]", re.S)
_COMMANDS = r"boxed|fbox|[dtc]?frac|sqrt|left|right|text|mathrm|pi|infty|cdot|times|le|ge|leq|geq|neq|pm|circ"
_DOUBLE_ESCAPED_RE = re.compile(rf"(?<!\\)\\\\(?=(?:{_COMMANDS})(?![a-zA-Z]))")  # \\frac: a JSON-escaping slip
_CHAT_TAIL_RE = re.compile(r"(?<!\s)\s*(?:<\|(?:im_start|im_end|endoftext|eot_id|end_of_text)\|>|</s>).*\Z", re.S)
_SENTENCE_BREAK_RE = re.compile(r"[.!?]\s+[A-Z]|\n\s*\n")
_MATH_RE = re.compile(  # \( and \[ do not nest: an unclosed one ends at the next, not at the end of the text
    r"\$\$(.+?)\$\$|(?<!\\)\$(.+?)(?<!\\)\$|\\\(((?:(?!\\\().)+?)\\\)|\\\[((?:(?!\\\[).)+?)\\\]", re.S
)
_JOIN_RE = re.compile(r"\s*(?:,|;|\band\b|\bor\b)\s*")
_PHRASE_RE = re.compile(
    r"\b(?:final\s+)?answers?\s*(?:(?:is|are|was|would\s+be|should\s+be|will\s+be)\b|:|\*\*|\n|(?=\$|\\[(\[]))",
    re.I,
)
_LABEL = r"(?:\*\*)?(?:sub-?problem|part|question)\s*\(?\w{1,3}\)?\s*[:.]?(?:\*\*)?"
_LABEL_RE = re.compile(rf"{_LABEL}|\(\s*[a-z0-9]{{1,3}}\s*\)|^\s*[a-z0-9]\)", re.I | re.M)
_LIST_ITEM_RE = re.compile(rf"^[ \t]*(?:[-*•][ \t]+|\d+[.)][ \t]+|{_LABEL}[ \t]*)", re.I | re.M)
_ITEM_LABEL_RE = re.compile(rf"^\s*{_LABEL}\s*", re.I)
_VALUE_RE = re.compile(  # a formula ($$..$$, \[..\], $..$, \(..\)) or a **bold** value
    r"\$\$(.+?)\$\$|\\\[(.+?)\\\]|(?<![\\$])\$([^$]+)\$|\\\((.+?)\\\)|\*\*([^*\n]+)\*\*", re.S
)
_STATES_RE = re.compile(r"(?:^|\n)\s*\Z|(?::|=|\b(?:is|are|gives?|get|obtain|becomes?))\s*\Z", re.I)  # before it
_REMARK_RE = re.compile(r"[\d$\\=]")  # a closing sentence without any of these is a remark, not an answer
# ... unless it shows the reasoning going on ("Wait, let me check the other case.", "Now we need the area.").
_OPEN_REASONING_RE = re.compile(
    r"\?|\b(?:wait|hmm+|but|however|maybe|perhaps|let(?:'s|\s+me|\s+us)|(?:double-?|re)?check(?:ing)?|verify"
    r"|alternatively|suppose|assume|consider|try|now|if|although|though|know|recall"
    r"|(?:I|we)(?:'ll|\s+(?:can|could|will|would|should|must|might|have\s+to|need|want)))\b",
    re.I,
)
# A text that ends on one of these stops mid-sentence: it was cut off, whatever came before. Lower case only: "the
# answer is A" ends a sentence.
_MID_SENTENCE_RE = re.compile(
    r"(?:[,;:(\[{=+]|(?<!-)-|\\|\b(?:the|a|an|of|to|and|or|but|is|are|was|were|be|we|that|which|where|when|with|by|for|in|on"
    r"|at|as|from|if|then|than|this|its|our|into|gives?|get|let))\s*\Z"
)
# ... except a choice letter after an answer phrase with its colon: "So the answer is: a" ends a sentence.
_CHOICE_END_RE = re.compile(r"\banswers?(?:\s+(?:is|are))?\s*:\**\s*\(?[a-e]\)?\s*\Z", re.I)
_COMPLETE_RE = re.compile(r"[.!][)\]*\"'”’]*\Z")  # a sentence ended by its full stop (or "!"), maybe in brackets
_UNIT_RE = re.compile(r"\s*[^\W\d_%°]|\s*[%°]")  # what a unit right after a value starts with: not ", so" nor "+"
MAX_REMARKS = 5  # closing sentences without maths looked past at the end of a text
_CONCLUSION_RE = re.compile(
    r"\b(?:therefore|thus|hence|so|consequently|in conclusion|in summary|finally|this means|which means)\b", re.I
)
_COPULA_RE = re.compile(
    r"\s(?:is|are|was|were|be|equals?|becomes?|gives?|yields?|(?:find|get|see|conclude|obtain|have)\s+that)\s"
    r"|(?<![<>!\\=])=(?!=)|:\s",
    re.I,
)
_WORD_COPULA_RE = re.compile(
    r"\s(?:is|are|was|were|equals?|becomes?|(?:find|get|see|conclude|have)\s+that)\s|:\s", re.I
)
_SENTENCE_END_RE = re.compile(r"\.(?!\d)|[!?]|\n")
_SENTENCE_SPLIT_RE = re.compile(r"(?:(?<=[.!?])|(?<=[.!?]\$)|(?<=[.!?]\$\$)|(?<=\\\]))\s+(?=[A-Z*$\\])|\n")
_PARAGRAPH_RE = re.compile(r"\n\s*\n")
_BOILERPLATE_RE = re.compile(r"\bI hope\b|\bhope (?:this|it) helps|\blet me know\b|\bfeel free\b|\bthank you\b", re.I)
_MATHY_RE = re.compile(r"[\d\\^_=+*/<>|√π∞]|^-[\w(]")
_BARE_NUMBER_RE = re.compile(r"(?<![\w.\\])[-+]?\d[\d,]*(?:\.\d+)?%?(?!\w)")
_FILLER_RE = re.compile(r"^(?:(?:approximately|about|exactly|roughly|around|probably|simply|just|then|now)\s+)+", re.I)
_BOLD_RE = re.compile(r"\*\*([^*\n]+)\*\*")


def all_boxes(text: str) -> list[tuple[int, int, str]]:
    """(start, end, content) of every non-empty \\boxed{..}, \\boxed x and \\fbox{..}, in order of appearance."""
    boxes = list(_BOX_RE.finditer(text))
    if not boxes:
        return []
    # One pass pairs every brace, so a degenerate \boxed{\boxed{\boxed{... stays linear; escaped \{ do not group.
    closing, opened = {}, []
    for token in _BRACE_TOKEN_RE.finditer(text, boxes[0].end()):
        if token[0] == "{":
            opened.append(token.start())
        elif token[0] == "}" and opened:
            closing[opened.pop()] = token.start()
    found = []
    for m in boxes:
        brace = _SPACES_RE.match(text, m.end()).end()
        if text.startswith("{", brace):
            end = closing.get(brace)
            content, end = (text[brace + 1 : end], end + 1) if end is not None else (None, 0)
        else:
            token = _BOX_TOKEN_RE.match(text, m.end())
            content, end = (token[1], token.end()) if token else (None, 0)
        if content and content.strip():
            found.append((m.start(), end, content.strip()))
    return found


def extract_boxed(text: str) -> str | None:
    """Content of the last non-empty box: models restate the final answer after earlier drafts."""
    boxes = all_boxes(text)
    return boxes[-1][2] if boxes else None


class Found(NamedTuple):
    parts: list[str]  # one answer, or the parts of a multi-part one
    end: int  # offset in the searched text where the answer's statement ends
    labelled: bool = False  # the parts are labelled (Subproblem 1, part (b), a list): each answers its own question


def _box_answer(text: str) -> Found | None:
    """The last box, with the boxes just before it when only a short gap separates them."""
    boxes = all_boxes(text)
    if not boxes:
        return None
    group, gaps = [boxes[-1]], []  # from the last box backwards
    for box in reversed(boxes[:-1]):
        gap = text[box[1] : group[-1][0]]
        if len(gap) > BOX_GAP_CHARS or _SENTENCE_BREAK_RE.search(gap):
            break
        group.append(box)
        gaps.append(gap)
    group.reverse()
    labelled = any(_LABEL_RE.search(gap) for gap in gaps)
    return Found(list(dict.fromkeys(content for _, _, content in group)), boxes[-1][1], labelled)


def _leading_math(text: str) -> str | None:
    """The formula that opens `text`, joined with formulas that follow it after ',', 'and', 'or'."""
    m = _MATH_RE.match(text)
    if not m:
        return None
    parts = [next(g for g in m.groups() if g is not None).strip()]
    while (joint := _JOIN_RE.match(text, m.end())) and (m := _MATH_RE.match(text, joint.end())):
        parts.append(next(g for g in m.groups() if g is not None).strip())
    return ", ".join(p for p in parts if p) or None


def _is_mathy(token: str) -> bool:
    core = token.strip(",.;:*\"'")
    return bool(core) and (bool(_MATHY_RE.search(core)) or (len(core) == 1 and core.isalpha() and core not in "aAI"))


def _math_run(sentence: str) -> str | None:
    """The leading run of formula-like tokens: '12 square units' gives 12, '4 and -3 are roots' gives '4 and -3'."""
    tokens = []
    for m in re.finditer(r"\S+", sentence):
        if _is_mathy(m[0]) or (tokens and m[0].lower() in ("and", "or")):
            tokens.append(m)
        else:
            break
    while tokens and tokens[-1][0].lower() in ("and", "or"):
        tokens.pop()
    span = sentence[tokens[0].start() : tokens[-1].end()].strip(" ,;:*").rstrip(".") if tokens else ""
    return span or None


def _sole_value(sentence: str) -> str | None:
    """The only formula or number of a sentence ('Jane started 3 hours ago.'), None if there are several."""
    found = [next(g for g in m.groups() if g is not None) for m in _MATH_RE.finditer(sentence)]
    found += _BARE_NUMBER_RE.findall(_MATH_RE.sub(" ", sentence))
    return found[0].strip().rstrip(",") if len(found) == 1 else None


def _copulas(sentence: str, pattern: re.Pattern = _COPULA_RE) -> list[int]:
    """Offsets just after each copula outside formulas ('the volume of $V=abc$ is 120' has one)."""
    masked = _MATH_RE.sub(lambda m: "#" * len(m[0]), sentence)
    return [m.end() for m in pattern.finditer(masked)]


def _bold_value(sentence: str) -> str | None:
    """The last value the writer set in bold: the answer itself ("is *n* = **5**" gives 5, not "n* = **5")."""
    bold = [m[1] for m in _BOLD_RE.finditer(sentence) if _is_mathy(m[1].split(" ", 1)[0])]
    return _answer_span(bold[-1], words=False) if bold else None


def _answer_span(text: str, words: bool, sole: bool = True) -> str | None:
    """The answer at the start of `text` (what follows 'the answer is'): a formula, a run of formula-like tokens, what
    follows a copula ('the speed is 250 m/s'), a short word answer when `words`, or the sentence's only value."""
    text = text.lstrip(" \t\n*:,")
    math = _leading_math(text)
    if math:
        return math
    end = _SENTENCE_END_RE.search(text)
    sentence = text[: end.start()] if end else text
    bold = _bold_value(sentence)
    if bold:
        return bold
    for start in [0] + _copulas(sentence):
        rest = _FILLER_RE.sub("", sentence[start:].lstrip(" *:"))
        span = _leading_math(rest) or _math_run(rest)
        if span:
            return span
    plain = sentence.strip(" *.")
    if words and plain and len(plain) <= 30 and len(plain.split()) <= 3:
        return plain
    return _sole_value(sentence) if sole else None


def _sentence_end(text: str, pos: int) -> int:
    end = _SENTENCE_END_RE.search(text, pos)
    return end.end() if end else len(text)


def _listed_parts(tail: str) -> list[str] | None:
    """'the final answers are:' then '- NPP = 15,000 kcal' lines, or 'Subproblem 0: ...' blocks: each item's value."""
    items = list(_LIST_ITEM_RE.finditer(tail))
    if len(items) < 2 or tail[: items[0].start()].strip(" \t\n*:"):
        return None
    parts = []
    for item, following in zip(items, items[1:] + [None]):
        chunk = _ITEM_LABEL_RE.sub("", tail[item.end() : following.start() if following else len(tail)])
        span = _answer_span(chunk, words=False)
        if not span:
            return None
        parts.append(span)
    return parts


def _phrase_answer(region: str) -> Found | None:
    for m in reversed(list(_PHRASE_RE.finditer(region))[-ANSWER_CANDIDATES:]):
        rest = region[m.end() : m.end() + ANSWER_WINDOW_CHARS]
        parts = _listed_parts(rest)
        if parts:
            return Found(parts, len(region), labelled=True)
        span = _answer_span(_ITEM_LABEL_RE.sub("", rest.lstrip(" \t\n*:")), words=True)
        if span and not span.endswith(":"):
            return Found([span], _sentence_end(region, m.end() + 1))
    return None


def _stops_mid_sentence(text: str) -> bool:
    """The text ends where no sentence can ('..., where the', '... 3 +'): it was cut off."""
    tail = text[-200:]
    return bool(_MID_SENTENCE_RE.search(tail)) and not _CHOICE_END_RE.search(tail)


def _no_reasoning(text: str) -> bool:
    """No maths, conclusion word or sign of reasoning going on: a remark's words, whether or not it was finished."""
    return not (_REMARK_RE.search(text) or _OPEN_REASONING_RE.search(text) or _CONCLUSION_RE.search(text))


def _is_remark(sentence: str) -> bool:
    """A closing remark, not part of the answer or of the reasoning: a pleasantry, or a sentence ended by its full stop
    without maths, conclusion word or sign of reasoning going on ("I think that's the final answer.", "This problem
    demonstrates how modular arithmetic simplifies products."; not "Therefore, the winner is Evelyn.", nor a sentence
    cut off mid-word)."""
    sentence = sentence.strip()
    return bool(_BOILERPLATE_RE.search(sentence)) or (bool(_COMPLETE_RE.search(sentence)) and _no_reasoning(sentence))


def _without_remarks(region: str) -> str:
    """`region` without the closing remarks that end it (at most MAX_REMARKS sentences, whole paragraphs included):
    "... is indeed 225.\n\nI think that's the final answer." ends at "225."."""
    text = region.rstrip()
    for _ in range(MAX_REMARKS):
        breaks = list(_SENTENCE_SPLIT_RE.finditer(text, max(0, len(text) - 2000)))
        if not breaks or not _is_remark(text[breaks[-1].end() :]):
            break
        text = text[: breaks[-1].start()].rstrip()
    return text


def _only_remarks(text: str) -> bool:
    """Nothing but a unit, punctuation and closing remarks: ", which is the smallest such integer.", " percent" or
    "\n\nHope it helps!"."""
    sentences = [s for s in _SENTENCE_SPLIT_RE.split(text) if s.strip(" \t\n.,;:!$*)]}\\")]
    if sentences and len(sentences[0].split()) <= 2 and not _REMARK_RE.search(sentences[0]):
        if text.startswith(sentences[0]) and _UNIT_RE.match(sentences[0]) and not _stops_mid_sentence(sentences[0]):
            sentences = sentences[1:]  # a unit right after the value: "$28$ percent", "**12** cm"
    return len(sentences) <= MAX_REMARKS and all(_is_remark(s) for s in sentences)


def _closing_sentences(region: str) -> list[tuple[int, str]]:
    """(offset, text) of the last two sentences of the last paragraph, closing remarks and pleasantries left out."""
    region = _without_remarks(region)
    paragraph_start = max([m.end() for m in _PARAGRAPH_RE.finditer(region)], default=0)
    sentences, start = [], paragraph_start
    for m in list(_SENTENCE_SPLIT_RE.finditer(region, paragraph_start)) + [None]:
        end = m.start() if m else len(region)
        text = region[start:end]
        if text.strip() and not _BOILERPLATE_RE.search(text):
            sentences.append((start, text))
        start = m.end() if m else start
    return sentences[-2:]


def _goes_on(sentence: str) -> bool:
    """The sentence asks or goes on reasoning, from its last conclusion word on ("Hmm, so the sum is 6?"; not "Now we
    solve it: x = 2/3 Therefore, the probability is 2/3.", one sentence for want of a full stop)."""
    words = list(_CONCLUSION_RE.finditer(sentence))
    return bool(_OPEN_REASONING_RE.search(sentence[words[-1].start() :] if words else sentence))


def _conclusion_answer(region: str) -> Found | None:
    """'Therefore, there are 9 divisors.' near the end; failing that, a last sentence 'X is <formula>'."""
    # A question or a sentence that goes on reasoning concludes nothing; after one, the text ends mid-reasoning
    # ("So the sum is 6. Let me check the other case.").
    closing = _closing_sentences(region)
    if closing and _goes_on(closing[-1][1]):
        return None
    closing = [(offset, sentence) for offset, sentence in closing if not _goes_on(sentence)]
    for offset, sentence in reversed(closing):
        opening = len(sentence) - len(sentence.lstrip(" *"))
        for m in reversed(list(_CONCLUSION_RE.finditer(sentence))[-ANSWER_CANDIDATES:]):
            # "..., so we check 3 cases" is no conclusion; a sentence that opens with "Therefore" may be one.
            rest = sentence[m.end() : m.end() + ANSWER_WINDOW_CHARS]
            span = _answer_span(rest, words=False, sole=m.start() <= opening)
            if span:
                return Found([span], offset + len(sentence))
    if closing:
        offset, sentence = closing[-1]
        for start in _copulas(sentence, _WORD_COPULA_RE):
            if len(sentence) - start > ANSWER_WINDOW_CHARS:
                continue  # the value cannot end the sentence
            rest = sentence[start:].lstrip(" *:")
            span = (
                _bold_value(rest)
                or _leading_math(rest)
                or (_math_run(rest) if _is_mathy(rest.split(" ", 1)[0]) else None)
            )
            if span and len(rest.strip(" .$*\\()[]")) <= len(span) + 4:  # the value ends the sentence
                return Found([span], offset + len(sentence))
    return None


def _final_value_answer(region: str) -> Found | None:
    """The last formula or **bold** value of the final paragraph, when it is stated (it opens a line or follows ':',
    '=', 'is', 'gives' ...) and only closing remarks follow it: "v/c = z = **0.033**", "... gives\n\\[x = 5\\]\n\nThis
    is the final answer."; or a whole response that is one short formula."""
    stripped = _without_remarks(region)
    paragraph_start = max([m.end() for m in _PARAGRAPH_RE.finditer(stripped)], default=0)
    values = list(_VALUE_RE.finditer(stripped, max(paragraph_start, len(stripped) - 1500)))  # linear in the text
    value, span = (values[-1] if values else None), None
    if value and _STATES_RE.search(stripped[max(0, value.start() - 200) : value.start()]):
        breaks = list(_SENTENCE_SPLIT_RE.finditer(stripped, max(0, value.start() - 300), value.start()))
        sentence = stripped[breaks[-1].end() if breaks else max(0, value.start() - 300) :]
        if _only_remarks(stripped[value.end() :]) and not _goes_on(sentence):  # not "I know that m is \(5\) kg."
            bold = value[5]
            inner = next(g for g in value.groups() if g is not None).strip()
            span = _answer_span(bold, words=True) if bold else inner
    elif len(stripped) <= 80 and "\n" not in stripped and _is_mathy(stripped.split(" ", 1)[0]):
        span = _math_run(stripped)
    return Found([span], len(region)) if span else None


def _find_answer(region: str) -> Found | None:
    """The answer by the first rule that finds one."""
    return _box_answer(region) or _phrase_answer(region) or _conclusion_answer(region) or _final_value_answer(region)


def tidy(text: str) -> str:
    """Undo JSON double escaping (\\\\frac) and drop chat-template tokens a response may end with."""
    return _CHAT_TAIL_RE.sub("", _DOUBLE_ESCAPED_RE.sub(r"\\", text))


def answer_parts(text: str) -> tuple[list[str], bool]:
    """(parts of the final answer, whether they are labelled parts) of a response; ([], False) when none is stated."""
    if not text:
        return [], False
    text = tidy(text)
    solution = solution_part(text)
    region = text if solution is None else solution
    if _stops_mid_sentence(region):
        # Cut off: a prose answer before the cut is a draft, and so is a box followed by more working ("\boxed{5}.
        # Let me double-check: 2 + 3 ="); a box followed only by words of a remark ("\boxed{5}. I hope this is what
        # you were looking for") ends a finished response, unless it stands in a thought that never closed.
        found = _box_answer(region) if solution is not None or markup_of(text) is None else None
        rest = region[found.end :].lstrip(" \t\n.,;:!$)]}\\*") if found else ""
        if found and all(_BOILERPLATE_RE.search(s) or _no_reasoning(s) for s in _SENTENCE_SPLIT_RE.split(rest)):
            return found.parts, found.labelled
        return [], False
    if solution is None and markup_of(text) is not None:
        # The thought never closed: it may have been cut off mid-way, so only an answer that ends it (closing remarks
        # aside) counts, not a draft or a number that happens to stand last.
        body = _without_remarks(region)
        paragraph = body[max([m.end() for m in _PARAGRAPH_RE.finditer(body)], default=0) :]
        found = _find_answer(paragraph)
        ends_it = found and _only_remarks(paragraph[found.end :])
        return (found.parts, found.labelled) if ends_it else ([], False)
    found = _find_answer(region)
    if found is None and solution is not None:  # a solution block that states no answer: the thought's last box
        found = _box_answer(text[: text.rfind(solution)])
    return (found.parts, found.labelled) if found else ([], False)


def extract_answer(text: str) -> str | None:
    """Final answer of a response (see the module docstring; multi-part answers joined), or None."""
    return ", ".join(answer_parts(text)[0]) or None
