r"""Math answer extraction and equivalence for AIME24, AMC23, MATH500 and OlympiadBench.

    python -c 'from grading import grade_math; print(grade_math(r"so \boxed{\dfrac12}", "0.5"))'
    python -m pytest tests/test_grading.py -q
    python -m pytest tests/test_grading.py -q -s -k throughput    # comparisons/s on every bundled gold

How a comparison is decided:
  1. Fast paths, in-process, no sympy: string equality after normalisation (\text, units, degrees, \$,
     thousands separators, `x =`), exact rational values (fractions, decimals, mixed numbers, percent),
     element-wise tuples/intervals (bracket shapes must agree) and order-insensitive answer lists.
     When both sides are plain numbers or plain words the fast path is final.
  2. Anything undecided goes to math-verify (sympy) in a helper subprocess. math-verify's own timeout uses
     signal.alarm, which raises outside the main thread and cannot interrupt a big-integer power running
     inside C. A separate process can always be killed: each comparison gets a hard deadline of
     `timeout` + 1 s, after which the helper is killed and restarted on the next call. It works from
     threads and from (daemonic) multiprocessing workers: every process lazily starts its own helper.
     Answers longer than MAX_SYMBOLIC_CHARS are never sent to sympy.
"""

import json
import os
import re
import select
import signal
import subprocess
import sys
import threading
from decimal import Decimal, InvalidOperation
from fractions import Fraction

from markup import solution_part

MAX_ANSWER_CHARS = 2000  # longer "answers" are judged wrong unread: some regexes are quadratic in length
MAX_SYMBOLIC_CHARS = 1000  # the longest bundled gold is ~300 chars; longer predictions are rambling, not answers
HELPER_STARTUP_S = 120  # importing sympy on a loaded CI machine can take many seconds
HELPER_KILL_GRACE_S = 1.0  # the helper stops itself at `timeout`; the kill is for code that ignores signals
HELPER_MEMORY_BYTES = 4 << 30  # a runaway 9^{9^{9}} should fail with MemoryError, not swap the machine

# ---------------------------------------------------------------- extraction

_BOX_RE = re.compile(r"\\(?:boxed|fbox)(?![a-zA-Z])")
_BOX_TOKEN_RE = re.compile(r"\s+([^\s$]+)")  # the \boxed 5 form
_SPACES_RE = re.compile(r"\s*")
_BRACE_TOKEN_RE = re.compile(r"\\.|[{}]", re.S)
_INLINE_MATH_RE = re.compile(r"\$\$(.+?)\$\$|\$(.+?)\$|\\\((.+?)\\\)|\\\[(.+?)\\\]", re.S)
_ANSWER_PHRASE_RE = re.compile(r"\b(?:final\s+)?answer\s*(?:is|:)\s*:?(.*)", re.I)


def _all_boxed(text: str) -> list[str]:
    """Non-empty contents of every \\boxed{..}, \\boxed x and \\fbox{..}, in order of appearance."""
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
            content = text[brace + 1 : closing[brace]] if brace in closing else None
        else:
            token = _BOX_TOKEN_RE.match(text, m.end())
            content = token[1] if token else None
        if content and content.strip():
            found.append(content.strip())
    return found


def extract_boxed(text: str) -> str | None:
    """Content of the last non-empty box: models restate the final answer after earlier drafts."""
    boxes = _all_boxed(text)
    return boxes[-1] if boxes else None


def _inline_math(text: str, last: bool) -> str | None:
    matches = list(_INLINE_MATH_RE.finditer(text))
    if not matches:
        return None
    m = matches[-1 if last else 0]
    return next(g for g in m.groups() if g is not None).strip() or None


def _phrase_answer(text: str) -> str | None:
    """Answer after the last 'final answer is' / 'Answer:'; None if it does not look like a short answer."""
    matches = list(_ANSWER_PHRASE_RE.finditer(text))
    if not matches:
        return None
    tail = matches[-1][1].strip().strip("*").strip()
    if tail.startswith(("$", "\\(", "\\[")):
        return _inline_math(tail, last=False)
    answer = re.split(r"\.(?:\s|$)", tail)[0].strip()
    return answer if 0 < len(answer) <= 100 else None


def extract_answer(text: str) -> str | None:
    """Final answer of a response. A wrong extraction is worse than None, so fallbacks are narrow:
    box, then 'answer is X' phrases, in the solution block when there is one; then a box anywhere
    (a truncated solution may only have one in the thoughts); then the last $..$ of the solution block."""
    if not text:
        return None
    solution = solution_part(text)
    region = text if solution is None else solution
    answer = extract_boxed(region) or _phrase_answer(region)
    if answer is None and solution is not None:
        answer = extract_boxed(text) or _inline_math(solution, last=True)
    return answer


# ---------------------------------------------------------------- normalisation

_UNIT_WORDS = (
    r"cm|mm|km|meters?|inch(?:es)?|feet|foot|ft|miles?|units?|square|sq|degrees?|cents?|dollars?"
    r"|hours?|minutes?|min|seconds?|sec|days?|weeks?|years?|km/h|mph|pounds?|kg|grams?"
)
_REWRITES = [  # (pattern, replacement) applied in order; order matters (e.g. \text unwrapped before units)
    (re.compile(r"(?<!\\)\\[!,;:> ]|\\q?quad(?![a-zA-Z])|~|\\displaystyle"), " "),  # not the \\ row break
    (re.compile(r"\\(?:left|right|[bB]igg?[lr]?)(?![a-zA-Z])"), ""),
    (re.compile(r"\\\$|\$|\\[()\[\]]"), ""),  # dollar signs and math delimiters
    (re.compile(r"\\%"), "%"),
    (re.compile(r"\\[dt]frac(?![a-zA-Z])"), r"\\frac"),
    (re.compile(r"\^\s*\{?\s*\\circ\s*\}?|\\circ|°|\\degree"), ""),
    (re.compile(r"\\(?:text|textbf|textit|mathrm|mathbf|mbox|operatorname)\s*\{([^{}]*)\}"), r"\1"),
    (re.compile(rf"(?<=\S)(?:\s*(?<![\\a-zA-Z])(?:{_UNIT_WORDS})\b(?:\^\{{?\d\}}?)?)+\s*$"), ""),
]
_FRAC_SHORT_RE = re.compile(r"\\frac(\{[^{}]*\}|\w)(\{[^{}]*\}|\w)")
_LHS_RE = re.compile(r"^(?:(?:\\[a-zA-Z]+ ?)?[a-zA-Z][a-zA-Z ]*(?:_\{?\w+\}?)?(?:\([a-z]\))?=(?!=)|[a-zA-Z]\\in)")
_WORD_RE = re.compile(r"[A-Za-z]+")
_PROSE_RE = re.compile(r"(?<![\\a-zA-Z{])[a-zA-Z]{4,}")  # a word outside \commands and {pmatrix}
_DEPTH_CHANGE = {"(": 1, "[": 1, "{": 1, ")": -1, "]": -1, "}": -1}
_DECIMAL_RE = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)")
_FRACTION_RE = re.compile(r"([+-]?\d+)/(\d+)")
_LATEX_FRACTION_RE = re.compile(r"([+-]?)(\d*)\\frac\{(\d+\.?\d*)\}\{(\d+\.?\d*)\}")


def _squeeze_spaces(s: str) -> str:
    # Spaces carry meaning only between a command and a letter (\pi r, \lfloor m).
    return re.sub(r"(\\[a-zA-Z]+)?\s+(?=([a-zA-Z])?)", _squeezed, s)


def _squeezed(m: re.Match) -> str:
    """A run of spaces: one space after a command followed by a letter, nothing otherwise (the command stays)."""
    command, letter = m[1] or "", m[2]
    if command and letter:
        return command + " "
    return command


def _brace(group: str) -> str:
    return group if group.startswith("{") else "{" + group + "}"


def _clean(s: str) -> str:
    """Canonical LaTeX for comparison; keeps thousands commas because lists are split on commas."""
    s = s.strip()
    for pattern, replacement in _REWRITES:
        s = pattern.sub(replacement, s)
    s = _squeeze_spaces(s).strip().rstrip(".")
    s = _FRAC_SHORT_RE.sub(lambda m: r"\frac" + _brace(m[1]) + _brace(m[2]), s)
    s = re.sub(r"\\sqrt ?(\w)", r"\\sqrt{\1}", s)
    s = re.sub(r"([\^_])\{(\w)\}", r"\1\2", s)
    if s.startswith("\\{") and s.endswith("\\}") and _enclosing(s[1:-1]):
        s = s[2:-2]  # a set of answers is compared as an unordered list
    s = ",".join(_LHS_RE.sub("", item) for item in _split_top_level(s))
    s = re.sub(r"^([0-9A-Z]+)_\{?\d+\}?$", r"\1", s)  # 52_8: the base is given by the question
    return re.sub(r"^\(([A-Za-z])\)$", r"\1", s)  # (C) -> C


def _split_top_level(s: str) -> list[str]:
    """Split on commas/semicolons outside any brackets; '(3,4]' and '\\{1,2\\}' stay whole."""
    items, depth, start = [], 0, 0
    for i, c in enumerate(s):
        depth += _DEPTH_CHANGE.get(c, 0)
        if depth == 0 and c in ",;":
            items.append(s[start:i])
            start = i + 1
    items.append(s[start:])
    return [item.strip() for item in items if item.strip()]


def _enclosing(s: str) -> bool:
    """True if s[0] opens a bracket that closes exactly at s[-1]."""
    if len(s) < 2 or s[0] not in "([{" or s[-1] not in ")]}":
        return False
    depth = 0
    for i, c in enumerate(s):
        depth += _DEPTH_CHANGE.get(c, 0)
        if depth == 0:
            return i == len(s) - 1
    return False


def _rational(s: str) -> Fraction | None:
    try:
        if _DECIMAL_RE.fullmatch(s):
            return Fraction(Decimal(s))
        if m := _FRACTION_RE.fullmatch(s):
            return Fraction(int(m[1]), int(m[2]))
        if m := _LATEX_FRACTION_RE.fullmatch(s):  # also the mixed number 1\frac{4}{5} of MATH answers
            value = int(m[2] or 0) + Fraction(Decimal(m[3])) / Fraction(Decimal(m[4]))
            return -value if m[1] == "-" else value
    except (ZeroDivisionError, InvalidOperation):
        pass
    return None


def _numeric_values(s: str) -> set[Fraction] | None:
    """Exact values a plain number may mean: 50% is both 50 and 1/2 depending on the question."""
    percent = s.endswith("%")
    value = _rational(s[:-1] if percent else s)
    if value is None:
        return None
    return {value, value / 100} if percent else {value}


# ---------------------------------------------------------------- fast comparison


def _compare_atoms(pred: str, gold: str) -> bool | None:
    """True/False when cheap rules settle it, None when only symbolic math can."""
    pred, gold = _clean(pred), _clean(gold)
    whole_pred, whole_gold = (re.sub(r"(?<=\d),(?=\d{3}(?!\d))", "", x) for x in (pred, gold))
    if whole_pred == whole_gold:
        return True
    pred_values, gold_values = _numeric_values(whole_pred), _numeric_values(whole_gold)
    if pred_values is not None and gold_values is not None:
        return bool(pred_values & gold_values)
    if _WORD_RE.fullmatch(whole_pred) or _WORD_RE.fullmatch(whole_gold):
        # Names and choice letters: sympy would read 'east' as e*a*s*t and equate it with 'seat'.
        return whole_pred.lower() == whole_gold.lower()
    pred_items, gold_items = _split_top_level(pred), _split_top_level(gold)
    if len(pred_items) > 1 or len(gold_items) > 1:
        return _compare_lists(pred_items, gold_items, ordered=False)
    if _enclosing(pred) and _enclosing(gold) and "," in pred + gold:
        if (pred[0], pred[-1]) != (gold[0], gold[-1]):
            return False  # (1,2) vs [1,2]: an open and a closed interval differ
        return _compare_lists(_split_top_level(pred[1:-1]), _split_top_level(gold[1:-1]), ordered=True)
    return None


def _compare_lists(pred_items: list[str], gold_items: list[str], ordered: bool) -> bool | None:
    if len(pred_items) != len(gold_items):
        # Tuples of different lengths differ; an unordered list may hide answers in '1 \pm \sqrt 2'.
        numeric = all(_numeric_values(_clean(x)) is not None for x in pred_items + gold_items)
        return False if ordered or numeric else None
    if ordered:
        verdicts = [_compare_atoms(p, g) for p, g in zip(pred_items, gold_items)]
        if False in verdicts:
            return False
        return True if all(verdicts) else None
    unmatched = list(pred_items)
    for gold_item in gold_items:  # greedy matching is exact because equality is transitive
        verdicts = [_compare_atoms(p, gold_item) for p in unmatched]
        if True not in verdicts:
            return None if None in verdicts else False
        unmatched.pop(verdicts.index(True))
    return True


# ---------------------------------------------------------------- symbolic comparison (helper process)


class _SymbolicTimeout(BaseException):
    """BaseException so that sympy's and math-verify's `except Exception` cannot swallow it."""


def _serve_symbolic() -> None:
    """Helper-process loop: one JSON [pred, gold, timeout] per stdin line, '1' or '0' per stdout line."""
    import functools
    import logging
    import resource

    from math_verify import parse, verify

    @functools.lru_cache(maxsize=4096)  # a gold is compared with every sample drawn for its problem
    def parse_latex(text):
        return parse(f"${text}$", parsing_timeout=None)

    logging.getLogger("math_verify").setLevel(logging.CRITICAL)  # it warns about the timeouts we disable
    resource.setrlimit(resource.RLIMIT_AS, (HELPER_MEMORY_BYTES, HELPER_MEMORY_BYTES))
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C belongs to the parent, which closes our stdin

    def on_alarm(signum, frame):
        raise _SymbolicTimeout

    signal.signal(signal.SIGALRM, on_alarm)
    replies = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # a stray print from sympy must not corrupt the one-line-per-request protocol
    print("ready", file=replies, flush=True)
    for line in sys.stdin:
        pred, gold, timeout = json.loads(line)
        equal = False
        try:
            signal.setitimer(signal.ITIMER_REAL, timeout)
            equal = verify(parse_latex(gold), parse_latex(pred), timeout_seconds=None)
        except (Exception, _SymbolicTimeout):
            pass
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        print("1" if equal else "0", file=replies, flush=True)


class _SymbolicHelper:
    """One math-verify helper process per parent process, shared by its threads under a lock."""

    def __init__(self):
        self.lock = threading.Lock()
        self.proc = None

    def _readline(self, timeout: float) -> str | None:
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        return self.proc.stdout.readline().strip() if ready else None

    def _stop(self) -> None:
        self.proc.kill()
        self.proc.wait()
        self.proc = None

    def _start(self) -> None:
        here = os.path.dirname(os.path.abspath(__file__))
        code = f"import sys; sys.path.insert(0, {here!r}); import grading; grading._serve_symbolic()"
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        if self._readline(HELPER_STARTUP_S) != "ready":
            self._stop()
            raise RuntimeError(
                "grading.py: the math-verify helper process did not start "
                "(is math-verify installed? see its stderr above)"
            )

    def equal(self, pred: str, gold: str, timeout: float) -> bool:
        with self.lock:
            if self.proc is None or self.proc.poll() is not None:
                self._start()
            try:
                self.proc.stdin.write(json.dumps([pred, gold, timeout]) + "\n")
                self.proc.stdin.flush()
                reply = self._readline(timeout + HELPER_KILL_GRACE_S)
            except OSError:  # the helper died, e.g. killed by the OOM killer
                reply = None
            if reply not in ("0", "1"):
                self._stop()
            return reply == "1"


_helpers: dict[int, _SymbolicHelper] = {}  # keyed by pid: a forked child must not share its parent's pipes


def _symbolic_equal(pred: str, gold: str, timeout: float) -> bool:
    return _helpers.setdefault(os.getpid(), _SymbolicHelper()).equal(pred, gold, timeout)


# ---------------------------------------------------------------- public API


def _gold_text(gold) -> str | list[str]:
    if isinstance(gold, list):
        return [_gold_text(item) for item in gold]
    if isinstance(gold, float):  # amc23 stores 27.0 for "27"
        return str(int(gold)) if gold.is_integer() else repr(gold)
    if isinstance(gold, (int, str)):
        return str(gold)
    raise TypeError(f"grading.py: gold answer must be str, int, float or list, got {type(gold).__name__}")


def answer_from_record(record: dict) -> str | list[str]:
    """Gold answer of a bundled benchmark record: `answer` (str/int/float) or OlympiadBench's
    `final_answer`, which is split into a list when `is_multiple_answer` is set."""
    if "final_answer" in record:
        text = ",".join(record["final_answer"]).replace("$", "").strip()
        return _split_top_level(text) if record.get("is_multiple_answer") else text
    if "answer" in record:
        return _gold_text(record["answer"])
    raise KeyError(f"grading.py: record has neither 'answer' nor 'final_answer' (keys: {sorted(record)})")


def math_equal(pred: str | None, gold, timeout: float = 5.0) -> bool:
    """Whether `pred` equals `gold` (str, int, float, or list = all of several answers, any order).
    Symbolic comparisons take at most `timeout` + HELPER_KILL_GRACE_S seconds."""
    if pred is None or not pred.strip() or len(pred) > MAX_ANSWER_CHARS:
        return False
    gold = _gold_text(gold)
    if isinstance(gold, list) and len(gold) == 1:
        gold = gold[0]
    if isinstance(gold, list):
        verdict = _compare_lists(_split_top_level(_clean(pred)), gold, ordered=False) if gold else False
        gold = ",".join(gold)
    else:
        verdict = _compare_atoms(pred, gold)
    if verdict is not None:
        return verdict
    pred, gold = _clean(pred), _clean(gold)
    if len(pred) + len(gold) > MAX_SYMBOLIC_CHARS or _PROSE_RE.search(pred + " " + gold):
        return False  # math-verify would salvage some fragment of prose, e.g. the 0 of "... with f(a)=0"
    return _symbolic_equal(pred, gold, timeout)


def grade_math(response: str | None, gold, timeout: float = 5.0, finish_reason: str | None = None) -> dict:
    """{"extracted": answer or None, "correct": bool} for one model response. A response the backend cut off at its
    token limit (finish_reason "length") has no answer, whatever number happens to stand near its end."""
    if finish_reason == "length":
        return {"extracted": None, "correct": False}
    extracted = extract_answer(response or "")
    correct = math_equal(extracted, gold, timeout)
    if not correct and isinstance(gold, list) and len(gold) > 1 and response:
        # Multi-answer problems are often answered with one box per answer.
        boxes = _all_boxed(solution_part(response) or response)[-len(gold) :]
        joined = ", ".join(boxes)
        if len(boxes) == len(gold) and math_equal(joined, gold, timeout):
            extracted, correct = joined, True
    return {"extracted": extracted, "correct": correct}
