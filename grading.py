r"""Math answer equivalence for AIME24, AMC23, MATH500, OlympiadBench and free-form long-CoT outputs.

    python -c 'from grading import grade_math; print(grade_math(r"so \boxed{\dfrac12}", "0.5"))'
    python -m pytest tests/test_grading.py -q
    python bench/grader_agreement.py      # agreement with Math-Verify's and lm-evaluation-harness's own test cases

grade_math = answer_extraction.extract_answer (where the final answer is) + math_equal (is it the gold?).
math_equal compares normalised text (units and \text words after a number, degree and percent signs without
rescaling, ordinals, thousands separators, LaTeX spacing, unicode, \dfrac, e-notation):
  1. fast paths, in-process: equal text; a left-hand side "x =", "f(x) =", "(p,q) =" dropped unless both sides have
     one (then the names must agree); "and"/"or"/\pm lists and sets compared as multisets, tuples and intervals in
     order with their brackets, inequalities as intervals; exact rational values, and a value that rounds to a gold
     stated to 3+ significant digits (4210.35 for 4210, 7.78 for 70/9);
  2. anything undecided goes to math-verify (sympy, plus an exp-rewrite for hyperbolic forms) in a helper process
     with a hard deadline of `timeout` + 1 s (symbolic.py). Answers longer than MAX_SYMBOLIC_CHARS never reach sympy.
Rules chosen against a peer on purpose (bench/RESULTS.md lists the cases): no last-number fallback; "50%" is not 0.5;
a comma separates list items or thousands, never decimals; an inequality and its interval are equal both ways.
"""

import functools
import math
import re
from decimal import Decimal, InvalidOperation
from fractions import Fraction

import symbolic
from answer_extraction import all_boxes, answer_parts, extract_answer, extract_boxed, tidy  # noqa: F401 (API)
from markup import solution_part

MAX_ANSWER_CHARS = 2000  # longer answers and golds are judged wrong unread: some regexes are quadratic in length,
# and it keeps every run of digits under int()'s limit of 4,300
MAX_SYMBOLIC_CHARS = 1000  # the longest bundled gold is ~300 chars; longer predictions are rambling, not answers
MAX_SYMBOLIC_PAIRS = 24  # element pairs of a list sent to sympy one by one; beyond that the list is wrong

# ---------------------------------------------------------------- normalisation

_UNICODE = str.maketrans(
    {
        "π": r"\pi ", "θ": r"\theta ", "α": r"\alpha ", "β": r"\beta ", "γ": r"\gamma ", "δ": r"\delta ",
        "Δ": r"\Delta ", "λ": r"\lambda ", "μ": r"\mu ", "σ": r"\sigma ", "φ": r"\phi ", "ω": r"\omega ",
        "ε": r"\epsilon ", "ρ": r"\rho ", "τ": r"\tau ", "√": r"\sqrt", "×": r"\times ", "·": r"\cdot ",
        "⋅": r"\cdot ", "−": "-", "–": "-", "∞": r"\infty ", "≤": r"\le ", "≥": r"\ge ", "≠": r"\ne ", "±": r"\pm ",
        "∓": r"\mp ", "∪": r"\cup ", "∩": r"\cap ", "∈": r"\in ", "½": r"\frac{1}{2}", "¼": r"\frac{1}{4}",
        "¾": r"\frac{3}{4}", "⅓": r"\frac{1}{3}", "⅔": r"\frac{2}{3}", "…": r"\dots ", "′": "'",
        "\u00a0": " ", "\u2009": " ", "\u202f": " ",
    }
    | {c: " " for c in [*range(32), *range(127, 160)] if not chr(c).isspace()}  # control characters: noise
)  # fmt: skip
_SUPERSCRIPT_RE = re.compile("[⁰¹²³⁴⁵⁶⁷⁸⁹⁻⁺]+")
_SUPERSCRIPT_DIGITS = str.maketrans("⁰¹²³⁴⁵⁶⁷⁸⁹⁻⁺", "0123456789-+")
_UNIT_WORDS = (
    r"cm|mm|km|m/s|km/h|km/s|meters?|metres?|inch(?:es)?|feet|foot|ft|yards?|miles?|units?|square|sq|cubic|degrees?"
    r"|radians?|cents?|dollars?|yuan|euros?|hours?|hrs?|minutes?|mins?|seconds?|secs?|days?|weeks?|months?|years?"
    r"|mph|pounds?|lbs?|kg|grams?|liters?|litres?|ml|kcal|calories|joules?|newtons?|watts?|volts?|ohms?|kJ|eV|Hz"
)
_TEXT_RE = re.compile(
    r"\\(?:text|textbf|textit|textrm|textnormal|textsf|mathrm|mathbf|mathit|mathsf|mbox|hbox|operatorname)\s*"
    r"\{((?:[^{}]|\{[^{}]*\})*)\}"  # one level of braces inside: \text{m/s^{2}}
)
_REWRITES = [  # (pattern, replacement) in order: thousands marks before spacing, \text unwrapped before units
    (re.compile(r"(?<=\d)\s*(?:\{\s*,\s*\}|,\s*\\!|\\!\s*,)\s*(?=\d{3}(?!\d))"), ","),  # 11,\!111 and 14{,}916
    (re.compile(r"(?<=\d)(?:\\[,!]|\\ |~)(?=\d{3}(?!\d))"), ""),  # 10\,080
    (re.compile(r"(?<!\\)\\[!,;:> ]|\\q?quad|~|\\(?:display|text|script)style"), " "),  # not the \\ row break
    (re.compile(r"\\(?:left|right|[bB]igg?[lr]?)(?![a-zA-Z])\.?"), ""),
    (re.compile(r"\\\$|\$|\\[()\[\]]"), " "),  # currency and math delimiters
    (re.compile(r"\\[dtc]frac(?![a-zA-Z])"), r"\\frac"),
    (re.compile(r"\+\s*\\infty"), r"\\infty"),
]
_UNITS_REWRITES = [
    (re.compile(r"\s*(?:\^\s*\{?\s*\\circ\s*\}?|\\circ|\\degree|°)\s*(?:[CF](?![a-zA-Z]))?"), " "),  # 700°C
    (re.compile(r"(?<=\d)\s*(?:\^\s*\{\s*(?:st|nd|rd|th)\s*\}|\^?(?:st|nd|rd|th))(?![a-zA-Z])"), " "),  # 12^{th}
    (re.compile(r"(?<=\d)\s*(?:\\?%|(?:percent(?:age)?|pct)\b)"), "%"),  # a sign, not a factor of 1/100
    (re.compile(r"(?<=\S)(?:,|\s)\s*(?:for|where|when|if|provided|assuming)\b(?![^,;]*[,;]|.*\\end\{).*$", re.S), ""),
    (re.compile(rf"(?<=\S)(?:\s*(?<![\\a-zA-Z])(?:{_UNIT_WORDS})\b(?:\s*\^\s*\{{?-?\d\}}?)?)+\s*\.?$"), ""),
]
_STRUCTURE_REWRITES = [
    (re.compile(r"\\frac(\{[^{}]*\}|\w)(\{[^{}]*\}|\w)"), lambda m: r"\frac" + _brace(m[1]) + _brace(m[2])),
    (re.compile(r"\\sqrt ?(\w)"), r"\\sqrt{\1}"),
    (re.compile(r"([\^_])\{(\w)\}"), r"\1\2"),
    (re.compile(r">=|\\geq?(?:slant)?(?![a-z])"), r"\\ge "),
    (re.compile(r"<=|\\leq?(?:slant)?(?![a-z])"), r"\\le "),
    (re.compile(r"!=|\\neq?(?![a-z])"), r"\\ne "),
    (re.compile(r"\\lt(?![a-z])"), "<"),
    (re.compile(r"\\gt(?![a-z])"), ">"),
    (re.compile(r"\\begin\{(?:[bBvV]?matrix|array)\}(?:\{[^{}]*\})?"), r"\\begin{pmatrix}"),
    (re.compile(r"\\end\{(?:[bBvV]?matrix|array)\}"), r"\\end{pmatrix}"),
    (re.compile(r"\\\\\s*(?=\\end\{pmatrix\})"), ""),
    (re.compile(r"^[(\[]\s*(\\begin\{pmatrix\}.*\\end\{pmatrix\})\s*[)\]]$", re.S), r"\1"),
    (re.compile(r"^([0-9A-Z]+)_\{?\d+\}?$"), r"\1"),  # 52_8: the base is given by the question
    (re.compile(r"^\(([A-Za-z])\)$"), r"\1"),  # (C) -> C
    (re.compile(r"\s+"), " "),
]
_QUALIFIER_RE = re.compile(r"(?<=\S)\s+(?:for|where|when|if|with|provided|assuming)\b(?!.*\\end\{).*$", re.S)
_DEPTH_CHANGE = {"(": 1, "[": 1, "{": 1, ")": -1, "]": -1, "}": -1}
_COMMA_RE = re.compile(r"[,;]")
_SEMICOLON_RE = re.compile(";")
_SPACED_COMMA_RE = re.compile(r",(?=\s)")
_THOUSANDS_IN_LIST_RE = re.compile(r",\s.*\d,\d{3}(?!\d)|\d,\d{3}(?!\d).*,\s")
_AND_OR_RE = re.compile(r"\s+(?:and|or)\s+|(?<=[)\]}])\s*(?:and|or)\s*(?=[(\[{])|(?<=[\d)\]}])or(?=[A-Z])")
_RELATION_RE = re.compile(r"(?<![<>!\\])=(?!=)|\\approx(?![a-z])|\\in(?![a-z])")
_INEQUALITY_RE = re.compile(r"<|>|\\le(?![a-z])|\\ge(?![a-z])")
_PM_RE = re.compile(r"\\[pm][mp](?![a-z])")
_NAME_NOISE_RE = re.compile(
    r"(?<=[a-zA-Z}])\([^()]*\)|_\{[^{}]*\}|_\w|\\(?:overline|angle|vec|hat|bar|frac|prime|mathbf)(?![a-zA-Z])"
    r"|[|:{}\s,()'\[\]]"
)
_NAME_CORE_RE = re.compile(r"(?:[a-zA-Z]|\\[a-zA-Z]+)+")
_WORDS_RE = re.compile(r"[A-Za-z]+")
_BARE_LETTER_RE = re.compile(r"(?<=[\d}])([a-zA-Z])$")  # \frac{41}{4}m: math-verify drops a last m as metres
_COMMAND_RE = re.compile(r"\\[a-zA-Z]+")
_VARIABLE_RE = re.compile(r"[a-df-zA-Z]")  # e is Euler's number
_PROSE_RE = re.compile(r"(?<![\\a-zA-Z{])[a-zA-Z]{4,}")  # a word outside \commands and {pmatrix}
_UNIT_TAIL_RE = re.compile(  # km/s, kcal m^{-2}, meters per second: words with exponents, '/' and spaces
    rf"(?:\s+|(?<=\d)(?=(?:{_UNIT_WORDS})\b))(?:[A-Za-zÅµΩ€]+\.?(?:\s*\^\{{?-?\d\}}?)?(?:[\s/·]+|$))+$"
)
_CURRENCY_RE = re.compile(r"^(?:\\?\$|€|£|¥)\s*|\s*(?:\\?%|\\?\$|€)$")
_SPACE_THOUSANDS_RE = re.compile(r"[+-]?\d{1,3}(?: \d{3})+(?:\.\d+)?")
_THOUSANDS_RE = re.compile(r"[+-]?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
# Exponents of at most 3 digits: the exact value of 1e999999999 is a 415 MB integer. Larger ones are left to sympy,
# which works under a deadline in its helper process.
_EXPONENT = r"[+-]?\d{1,3}"
_DECIMAL_RE = re.compile(rf"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE]{_EXPONENT})?")
_SCIENTIFIC_RE = re.compile(rf"([+-]?(?:\d+\.?\d*|\.\d+))(?:\\times|\\cdot|\*)10\^\{{?({_EXPONENT})\}}?")
_POWER_OF_TEN_RE = re.compile(rf"([+-]?)10\^\{{?({_EXPONENT})\}}?")
_FRACTION_RE = re.compile(r"([+-]?\d+)/(\d+)")
_LATEX_FRACTION_RE = re.compile(r"([+-]?)(\d*)\\frac\{([+-]?\d+\.?\d*)\}\{(\d+\.?\d*)\}")


def _brace(group: str) -> str:
    return group if group.startswith("{") else "{" + group + "}"


def _squeeze(s: str) -> str:
    """Spaces removed, but for one between a command and a letter (\\pi r, \\lfloor m)."""
    return re.sub(r"(\\[a-zA-Z]+)\s+(?=[a-zA-Z])|\s+", lambda m: m[1] + " " if m[1] else "", s).strip()


@functools.lru_cache(maxsize=8192)  # a gold is compared with every sample drawn for its problem
def _clean(s: str) -> str:
    """Canonical text of an answer, single spaces kept: '32, 349' is a list where '32,349' is a number."""
    s = tidy(s).translate(_UNICODE)
    s = _SUPERSCRIPT_RE.sub(lambda m: "^{" + m[0].translate(_SUPERSCRIPT_DIGITS) + "}", s)
    for pattern, replacement in _REWRITES:
        s = pattern.sub(replacement, s)
    for _ in range(3):  # \textbf{\text{x}} unwraps from the inside
        s, unwrapped = _TEXT_RE.subn(r" \1 ", s)
        if not unwrapped:
            break
    for pattern, replacement in _UNITS_REWRITES:
        s = pattern.sub(replacement, s.strip())
    for pattern, replacement in _STRUCTURE_REWRITES:
        s = pattern.sub(replacement, s.strip())
    s = s.strip().rstrip(".").strip()
    if s[:1] == "{" and _enclosing(s):
        s = s[1:-1].strip()  # {1,3}: grouping braces
    if s.startswith("\\{") and s.endswith("\\}") and _enclosing(s[1:]):
        s = s[2:-2].strip()  # a set of answers is compared as an unordered list
    if s[:1] == "(" and _enclosing(s) and not _top_level(s[1:-1], _COMMA_RE):
        s = s[1:-1].strip()  # (9+1)
    return s


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


def _top_level(s: str, separator: re.Pattern) -> list[re.Match]:
    """Matches of `separator` outside any brackets."""
    found, depth, scanned = [], 0, 0
    for m in separator.finditer(s):
        depth += sum(_DEPTH_CHANGE.get(c, 0) for c in s[scanned : m.start()])
        scanned = m.start()
        if depth == 0:
            found.append(m)
    return found


def _split_top(s: str, separator: re.Pattern) -> list[str]:
    bounds = [0] + [i for m in _top_level(s, separator) for i in (m.start(), m.end())] + [len(s)]
    return [s[a:b].strip() for a, b in zip(bounds[::2], bounds[1::2]) if s[a:b].strip()]


def _items(s: str) -> list[str]:
    """The answers of a list: ',' ';' 'and' 'or' outside brackets separate them ('15,000, 11,000': only ', ' does),
    'a \\pm b' is two; with both ';' and ',', ';' separates answers and ',' the parts of one ('p=5,q=2;p=7,q=2')."""
    groups = _split_top(s, _SEMICOLON_RE)
    commas = _SPACED_COMMA_RE if _THOUSANDS_IN_LIST_RE.search(s) else _COMMA_RE
    if len(groups) > 1 and any(_top_level(g, commas) for g in groups):
        items = [f"({g})" for g in groups]
    else:
        items = [x for g in groups for x in _split_top(g, commas)]
    items = [_QUALIFIER_RE.sub("", re.sub(r"^(?:and|or)\s+", "", y)) for x in items for y in _split_top(x, _AND_OR_RE)]
    expanded = []
    for item in items:
        signs = _PM_RE.findall(item)
        if len(signs) == 1:
            expanded += [_PM_RE.sub("+", item), _PM_RE.sub("-", item)]
        else:
            expanded.append(item)
    return expanded or [s]


def _is_name(s: str) -> bool:
    """x, f(x), y_p(t), (p,q), |AB|, A:B, \\frac{NO}{BO}: what names an answer rather than computes it."""
    return 0 < len(s) <= 40 and bool(_NAME_CORE_RE.fullmatch(_NAME_NOISE_RE.sub("", s)))


def _relation(s: str) -> tuple[str | None, str, bool]:
    """(left-hand side if it is a name, value, is_equation) of 'name = value', 'x \\in S', 'a = b = c \\approx d'.
    The value is the last exact part of a chain; an equation has a left-hand side that is not a name."""
    found = _top_level(s, _RELATION_RE)
    if not found:
        return None, s, False
    bounds = [0] + [i for m in found for i in (m.start(), m.end())] + [len(s)]
    parts = [s[a:b].strip() for a, b in zip(bounds[::2], bounds[1::2])]
    approx = next((i for i, m in enumerate(found) if m[0].startswith("\\approx")), None)
    value = parts[approx] if approx else parts[-1]  # x = 1/3 \approx 0.33: the exact 1/3
    lhs = parts[0]
    return (lhs, value, False) if _is_name(lhs) else (None, value, True)


def _function_name(lhs: str) -> str:
    return re.sub(r"\([^()]*\)|[\s_{}]", "", lhs)  # W(n) and W(x) name the same function, X_{d} and Xd one value


def _as_interval(s: str) -> str:
    """'x > 5' -> '(5,\\infty)', '-2 \\le x < 7' -> '[-2,7)': an inequality on a name is the interval it defines."""
    found = _top_level(s, _INEQUALITY_RE)
    if not 1 <= len(found) <= 2:
        return s
    bounds = [0] + [i for m in found for i in (m.start(), m.end())] + [len(s)]
    parts = [s[a:b].strip() for a, b in zip(bounds[::2], bounds[1::2])]
    ops = [m[0].strip() for m in found]
    if "|" in s:
        return s  # 1 \le |z| \le 2 is not one interval
    if len(ops) == 1 and _is_name(parts[1]) and not _is_name(parts[0]):  # 5 \ge x -> x \le 5
        parts, ops = parts[::-1], [{"<": ">", ">": "<", "\\le": "\\ge", "\\ge": "\\le"}[ops[0]]]
    if len(ops) == 1 and _is_name(parts[0]) and parts[1] and not _is_name(parts[1]):
        low, high = ("-\\infty", parts[1]) if ops[0] in ("<", "\\le") else (parts[1], "\\infty")
        opening, closing = "[" if ops[0] == "\\ge" else "(", "]" if ops[0] == "\\le" else ")"
        return f"{opening}{low},{high}{closing}"
    if len(ops) == 2 and _is_name(parts[1]) and not (_is_name(parts[0]) or _is_name(parts[2])):
        if all(op in ("<", "\\le") for op in ops):
            return f"{'(' if ops[0] == '<' else '['}{parts[0]},{parts[2]}{')' if ops[1] == '<' else ']'}"
        if all(op in (">", "\\ge") for op in ops):
            return f"{'(' if ops[1] == '>' else '['}{parts[2]},{parts[0]}{')' if ops[0] == '>' else ']'}"
    return s


def _collection(s: str) -> tuple[str, list[str]] | None:
    """('set', items) for {..}, (brackets, items) for tuples and intervals, ('union', parts) for A \\cup B."""
    if s.startswith("\\{") and s.endswith("\\}") and _enclosing(s[1:]):
        return "set", _items(s[2:-2])
    if _enclosing(s) and s[0] + s[-1] in ("()", "[]", "(]", "[)") and _top_level(s[1:-1], _COMMA_RE):
        return s[0] + s[-1], _split_top(s[1:-1], _COMMA_RE)
    parts = _split_top(s, re.compile(r"\\cup(?![a-z])"))
    return ("union", parts) if len(parts) > 1 else None


# ---------------------------------------------------------------- numbers


def _parse_number(text: str) -> tuple[Fraction, int | None, int] | None:
    """(value, decimals stated or None when exact, significant digits) of a plain number, or None."""
    t = _CURRENCY_RE.sub("", text.strip())
    if re.search(r",\s", t):
        return None  # '32, 349' is a list
    t = t.replace(" ", "") if _SPACE_THOUSANDS_RE.fullmatch(t) else _squeeze(t)
    if _THOUSANDS_RE.fullmatch(t):
        t = t.replace(",", "")
    try:
        if _DECIMAL_RE.fullmatch(t):
            digits = re.sub(r"[eE].*|\D", "", t).lstrip("0")
            decimals = len(t.split(".")[1]) if "." in t else 0
            if "e" in t.lower():
                decimals = None  # 1e-4 states no precision: exact
            return Fraction(Decimal(t)), decimals, len(digits)
        if m := _SCIENTIFIC_RE.fullmatch(t):
            return Fraction(Decimal(m[1])) * Fraction(10) ** int(m[2]), None, 0
        if m := _POWER_OF_TEN_RE.fullmatch(t):
            return Fraction(10) ** int(m[2]) * (-1 if m[1] == "-" else 1), None, 0
        if m := _FRACTION_RE.fullmatch(t):
            return Fraction(int(m[1]), int(m[2])), None, 0
        if m := _LATEX_FRACTION_RE.fullmatch(t):  # also the mixed number 1\frac{4}{5} of MATH answers
            value = int(m[2] or 0) + Fraction(Decimal(m[3])) / Fraction(Decimal(m[4]))
            return (-value if m[1] == "-" else value), None, 0
    except (ZeroDivisionError, InvalidOperation):
        pass
    return None


def _number(s: str) -> tuple[Fraction, int | None, int] | None:
    """A number, allowing a unit after it: '300 km/s', '15,000 kcal m^{-2}', '12 grade'."""
    value = _parse_number(s)
    if value is None and len(s) <= 100 and (tail := _UNIT_TAIL_RE.search(s)):
        value = _parse_number(s[: tail.start()])
    return value


def _numbers_equal(pred: tuple, gold: tuple) -> bool:
    """Exact equality; or the gold is a rounded value (3+ significant digits stated: 4210, 16386.17, 7.78) and the
    prediction is within 1e-4 of it or rounds to it; or the gold is exact (1/12) and the prediction is it to 6+
    significant digits."""
    (p, p_decimals, p_digits), (g, g_decimals, g_digits) = pred, gold
    if p == g:
        return True
    if g_decimals is not None and g_digits >= 3 and p_decimals != 0 and abs(p - g) <= abs(g) * Fraction(1, 10**4):
        return True  # the relative tolerance of the paper's harness (Qwen2.5-Math), 6630.65 for 6630; 32347 is a count
    if g_decimals is not None and g_digits >= (3 if g_decimals else 4):
        return _round_half_up(p, g_decimals) == g
    if g_decimals is None and p_decimals is not None and p_digits >= 6:
        return abs(p - g) <= Fraction(1, 10**p_decimals)
    return False


def _round_half_up(x: Fraction, decimals: int) -> Fraction:
    """x rounded to `decimals` places, halves away from zero, exactly: Decimal.quantize would need a context as
    precise as the longest prediction (it raises on 123456789012345678901234567890123 rounded to 2 places)."""
    scale = 10**decimals
    rounded = Fraction(math.floor(abs(x) * scale + Fraction(1, 2)), scale)
    return -rounded if x < 0 else rounded


# ---------------------------------------------------------------- fast comparison


def _compare_atom(pred: str, gold: str) -> bool | None:
    pred_number, gold_number = _number(pred), _number(gold)
    if pred_number and gold_number:
        return _numbers_equal(pred_number, gold_number)
    pred, gold = _squeeze(pred), _squeeze(gold)
    if _WORDS_RE.fullmatch(pred) or _WORDS_RE.fullmatch(gold):
        # Names and choice letters: sympy would read 'east' as e*a*s*t and equate it with 'seat'.
        return pred == gold if len(pred) == len(gold) == 1 else pred.lower() == gold.lower()
    if (pred_number or gold_number) and _VARIABLE_RE.search(_COMMAND_RE.sub("", gold if pred_number else pred)):
        return False  # a number is not an expression in n, k or x
    if ("\\begin{pmatrix}" in pred) != ("\\begin{pmatrix}" in gold):
        return False  # a matrix or vector is not a scalar
    return None


def _compare_item(pred: str, gold: str, timeout: float | None = None) -> bool | None:
    """One answer against one answer: True/False when cheap rules settle it, None when only sympy can (or, with a
    `timeout`, sympy decides)."""
    if _squeeze(pred) == _squeeze(gold):
        return True
    (pred_lhs, pred_value, pred_equation), (gold_lhs, gold_value, gold_equation) = _relation(pred), _relation(gold)
    if gold_equation:  # 2x+4y-3=0: only an equation can equal it
        return _symbolic(pred, gold, timeout) if pred_equation or pred_lhs else False
    if pred_lhs and gold_lhs and _function_name(pred_lhs) != _function_name(gold_lhs):
        return False
    pred, gold = _as_interval(pred_value), _as_interval(gold_value)
    if _squeeze(pred) == _squeeze(gold):
        return True
    pred_items, gold_items = _collection(pred), _collection(gold)
    if pred_items and gold_items:
        (pred_kind, pred_items), (gold_kind, gold_items) = pred_items, gold_items
        if pred_kind == gold_kind:
            return _match(pred_items, gold_items, pred_kind in ("set", "union"), timeout)
        if {pred_kind, gold_kind} == {"set", "()"}:  # a tuple written as a set: same elements, same order
            return _match(pred_items, gold_items, False, timeout)
        return False
    if pred_items or gold_items:  # a tuple, interval or union against a plain number
        verdict = False if _number(gold if pred_items else pred) else None
    else:
        verdict = _compare_atom(pred, gold)
    return _symbolic(pred_value, gold_value, timeout) if verdict is None else verdict


def _symbolic(pred: str, gold: str, timeout: float | None) -> bool | None:
    if timeout is None:
        return None
    pred, gold = (_BARE_LETTER_RE.sub(r"{\1}", _squeeze(x)) for x in (pred, gold))
    if len(pred) + len(gold) > MAX_SYMBOLIC_CHARS or _PROSE_RE.search(pred + " " + gold):
        return False  # math-verify would salvage some fragment of prose, e.g. the 0 of "... with f(a)=0"
    return symbolic.symbolic_equal(pred, gold, timeout)


def _match(pred_items: list[str], gold_items: list[str], unordered: bool, timeout: float | None) -> bool | None:
    """Element-wise (ordered) or as multisets; a prediction that repeats an answer is read once unless the gold
    repeats answers too. Elements the fast rules cannot settle go to sympy one pair at a time, at most
    MAX_SYMBOLIC_PAIRS of them (without a `timeout`: None)."""
    if unordered and len(set(map(_squeeze, gold_items))) == len(gold_items):
        pred_items = list({_squeeze(p): p for p in pred_items}.values())
    if len(pred_items) != len(gold_items):
        return False
    if not unordered:
        verdicts = [_compare_item(p, g) for p, g in zip(pred_items, gold_items)]
        pending = [(p, g) for p, g, verdict in zip(pred_items, gold_items, verdicts) if verdict is None]
        if False in verdicts or len(pending) > MAX_SYMBOLIC_PAIRS:
            return False
        if pending and timeout is None:
            return None
        return all(_compare_item(p, g, timeout) for p, g in pending)
    unmatched, pending = list(pred_items), []
    for gold in gold_items:  # greedy matching is exact because equality is transitive
        verdicts = [_compare_item(p, gold) for p in unmatched]
        if True in verdicts:
            unmatched.pop(verdicts.index(True))
        elif None in verdicts:
            pending.append(gold)
        else:
            return False
    if len(pending) * len(unmatched) > MAX_SYMBOLIC_PAIRS:
        return False
    if pending and timeout is None:
        return None
    for gold in pending:
        found = next((i for i, p in enumerate(unmatched) if _compare_item(p, gold, timeout)), None)
        if found is None:
            return False
        unmatched.pop(found)
    return True


def _compare(pred: str, gold: str, timeout: float | None = None) -> bool | None:
    """Cleaned prediction against cleaned gold; lists split here, single answers in _compare_item."""
    if _squeeze(pred) == _squeeze(gold):
        return True
    pred_number, gold_number = _number(pred), _number(gold)  # 32,348 is one number, not the list 32, 348
    if pred_number and gold_number:
        return _numbers_equal(pred_number, gold_number)
    pred_items, gold_items = _items(pred), _items(gold)
    if len(pred_items) == 1 and len(gold_items) == 1:
        return _compare_item(pred, gold, timeout)
    for single, many in ((pred_items, gold_items), (gold_items, pred_items)):
        if len(single) == 1:  # one answer against a list: a set, or a tuple (3,-1) read in order
            shape = _collection(_relation(single[0])[1])
            if not shape or shape[0] not in ("set", "()"):
                return False
            pair = (shape[1], many) if single is pred_items else (many, shape[1])
            return _match(*pair, shape[0] == "set", timeout)
    return _match(pred_items, gold_items, True, timeout)


# ---------------------------------------------------------------- public API


def _gold_text(gold, in_list: bool = False) -> str | list[str]:
    if isinstance(gold, list) and not in_list:
        return [_gold_text(item, in_list=True) for item in gold]
    if isinstance(gold, float):  # amc23 stores 27.0 for "27"
        return str(int(gold)) if gold.is_integer() else repr(gold)
    if isinstance(gold, (int, str)):
        return str(gold)
    raise TypeError(f"grading.py: gold answer must be str, int, float or a list of them, got {type(gold).__name__}")


def _gold_answer(gold) -> str | None:
    """The gold as one text (several answers joined as the list "a, b, c"); None for an empty gold, or one longer than
    MAX_ANSWER_CHARS, which no prediction can match."""
    gold = _gold_text(gold)
    if sum(map(len, gold if isinstance(gold, list) else [gold])) > MAX_ANSWER_CHARS:
        return None
    if isinstance(gold, list):
        gold = ", ".join(_clean(item) for item in gold if item.strip())
    return gold or None


def answer_from_record(record: dict) -> str | list[str]:
    """Gold answer of a bundled benchmark record: `answer` (str/int/float) or OlympiadBench's
    `final_answer`, which is split into a list when `is_multiple_answer` is set."""
    if "final_answer" in record:
        text = ",".join(record["final_answer"]).replace("$", "").strip()
        return _split_top(text, _COMMA_RE) if record.get("is_multiple_answer") else text
    if "answer" in record:
        return _gold_text(record["answer"])
    raise KeyError(f"grading.py: record has neither 'answer' nor 'final_answer' (keys: {sorted(record)})")


def math_equal(pred: str | None, gold, timeout: float = 5.0) -> bool:
    """Whether `pred` equals `gold` (str, int, float, or list = all of several answers, any order).
    Symbolic comparisons take at most `timeout` + symbolic.HELPER_KILL_GRACE_S seconds each."""
    if pred is None or not pred.strip() or len(pred) > MAX_ANSWER_CHARS:
        return False
    gold = _gold_answer(gold)  # several answers, any order: the list "a, b, c"
    return gold is not None and bool(_compare(_clean(pred), _clean(gold), timeout))


def grade_math(response: str | None, gold, timeout: float = 5.0, finish_reason: str | None = None) -> dict:
    """{"extracted": answer or None, "correct": bool} for one model response. A response the backend cut off at its
    token limit (finish_reason "length") has no answer, whatever number happens to stand near its end."""
    if finish_reason == "length":
        return {"extracted": None, "correct": False}
    parts, labelled = answer_parts(response or "")
    extracted = ", ".join(parts) or None
    correct = math_equal(extracted, gold, timeout)
    if extracted is None or correct or _gold_answer(gold) is None:
        return {"extracted": extracted, "correct": correct}
    wanted = len(gold) if isinstance(gold, list) else len(_items(_clean(_gold_text(gold))))
    candidates = []
    if 0 < wanted < len(parts) <= 8 and (labelled or all(math_equal(p, parts[-1], timeout) for p in parts[:-1])):
        # Labelled parts whose gold answers only the last ones (Minerva's "Subproblem 2" restates 0 and 1), or one
        # answer written several ways ("45^\circ" or "\frac{\pi}{4}").
        candidates.append(parts[-wanted:])
    if isinstance(gold, list) and len(gold) > 1:
        # One box per answer, far apart ("(a) ... \boxed{3}. (b) ... \boxed{5}."): the gold says how many to take.
        text = tidy(response)
        candidates.append([content for _, _, content in all_boxes(solution_part(text) or text)][-len(gold) :])
    for candidate in candidates:
        if len(candidate) == wanted and math_equal(", ".join(candidate), gold, timeout):
            return {"extracted": ", ".join(candidate), "correct": True}
    return {"extracted": extracted, "correct": False}
