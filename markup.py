"""Reasoning markup and prompts: how a long chain of thought is written down, and what the student is asked.

Two markups exist in the wild, and replies without any; every script that reads, converts, perturbs or grades a response
uses this module:
    sky-t1  <|begin_of_thought|> thought <|end_of_thought|> <|begin_of_solution|> solution <|end_of_solution|>
            (Sky-T1_data_17k, Bespoke-Stratos; the Sky-T1 system prompt asks for it)
    r1      <think> thought </think> solution (DeepSeek-R1 and its distillations; the opening <think> may be missing,
            because R1's chat template puts it in the generation prompt). AM-DeepSeek-R1-Distilled wraps the solution
            in <answer>...</answer>: read as R1, the wrapper removed when the response is converted.
    none    no markup (LIMO): all of it is thought except a clear final block (final_block_start).
"keep" means: leave a response in whatever markup the teacher wrote.

Prompts follow the authors' SkyThought repository: the training-data templates of skythought/tools (numina.yaml,
apps.yaml, convert_to_data.py) and the evaluation templates of skythought/evals/tasks/*.yaml.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

BEGIN_THOUGHT, END_THOUGHT = "<|begin_of_thought|>", "<|end_of_thought|>"
BEGIN_SOLUTION, END_SOLUTION = "<|begin_of_solution|>", "<|end_of_solution|>"
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"  # AM-DeepSeek-R1-Distilled's wrapper around the R1 solution
STYLES = ("sky-t1", "r1", "keep")

# The Sky-T1 system prompt, verbatim from SkyThought (skythought/tools/util/prompts.py).
SKY_T1_SYSTEM_PROMPT = (Path(__file__).resolve().parent / "data" / "sky_t1_system_prompt.txt").read_text(
    encoding="utf-8"
)

# User turns. MATH_PROMPT is both the training template (numina.yaml) and the evaluation one (Sky-T1 eval tasks).
MATH_PROMPT = "Return your final response within \\boxed{{}}. {problem}"
CODE_PREFIX = "Generate an executable Python function generated from the given prompt."
STDIN_INSTRUCTION = (
    CODE_PREFIX
    + " The function should take stdin as input and print the output. Simply call the function after the definition."
)
FUNCTIONAL_INSTRUCTION = CODE_PREFIX + " Return the function body without invoking it at the final solution."
# Training data (apps.yaml / taco.yaml): the instruction, the problem, then the starter code when there is one.
CODE_STDIN_PROMPT = STDIN_INSTRUCTION + " {problem}"
CODE_CALL_PROMPT = FUNCTIONAL_INSTRUCTION + " {problem}\n{starter_code}"
# Evaluation (SkyThought's LiveCodeBench task): the starter code in a fence and an explicit answer format.
CODE_FORMAT = "Put your final solution in a single ```python code block."
# evaluate.py --prompt-style: (system prompt, maths user turn).
PROMPT_STYLES = {
    "sky-t1": (SKY_T1_SYSTEM_PROMPT, MATH_PROMPT),
    "step-by-step": (None, "{problem}\nPlease reason step by step, and put your final answer within \\boxed{{}}."),
    # The paper's Table 2 harness (Qwen2.5-Math evaluation, prompt type "Sky-T1"): the system prompt, the bare question.
    "sky-t1-bare": (SKY_T1_SYSTEM_PROMPT, "{problem}"),
    "none": (None, "{problem}"),
}
# Instruction boilerplate (Sky-T1 math/APPS/TACO, R1) that would otherwise make unrelated prompts look alike to
# deduplication and decontamination.
BOILERPLATE = re.compile(
    r"Return your final response within \\boxed\{\}\.|"
    + re.escape(CODE_PREFIX)
    + r"( The function should take stdin as input and print the output\."
    r" Simply call the function after the definition\.|"
    r" Return the function body without invoking it at the final solution\.)?|^\s*QUESTION:|"
    r"Use (Standard Input|Call-Based) format\s*ANSWER:\s*$|"
    r"Please reason step by step, and put your final answer within \\boxed\{\}\.?"
)


# ----------------------------------------------------------------------------- reading a response


def markup_of(response: str) -> str | None:
    """ "sky-t1", "r1", or None when the response carries no reasoning markup."""
    if BEGIN_THOUGHT in response or END_THOUGHT in response:
        return "sky-t1"
    if THINK_OPEN in response or THINK_CLOSE in response:
        return "r1"
    return None


def split_reasoning(response: str) -> tuple[str, str, str | None]:
    """(thought, solution, defect) of a complete response; defect is None, "empty", "no_thought" or "truncated".
    Sky-T1 and R1 markup as marked (an <answer> wrapper around the R1 solution is removed; one never closed is
    truncated). Without markup, all of it is thought except its final block (final_block_start); without a final
    block there is no telling thought from solution: no_thought, as for an empty thought."""
    if not response.strip():
        return "", "", "empty"
    markup = markup_of(response)
    if markup is None:
        start = final_block_start(response)
        thought = "" if start is None else response[:start].strip()
        if not thought:
            return "", "", "no_thought"
        return thought, response[start:].strip(), None
    begin, end = (BEGIN_THOUGHT, END_THOUGHT) if markup == "sky-t1" else (THINK_OPEN, THINK_CLOSE)
    head, closed, rest = response.partition(end)
    if not closed:
        return "", "", "truncated"
    thought, solution = head.replace(begin, "", 1).strip(), rest.strip()
    if markup == "sky-t1":
        _, opened, tail = rest.partition(BEGIN_SOLUTION)
        solution, closed, _ = tail.partition(END_SOLUTION)
        if not (opened and closed):
            return thought, "", "truncated"
        solution = solution.strip()
    elif solution.startswith(ANSWER_OPEN):
        inner = solution[len(ANSWER_OPEN) :]
        solution = inner[: -len(ANSWER_CLOSE)].strip() if inner.endswith(ANSWER_CLOSE) else ""
    if not thought:
        return "", solution, "no_thought"
    if not solution:
        return thought, "", "truncated"
    return thought, solution, None


def solution_part(response: str) -> str | None:
    """The final answer's region: the last Sky-T1 solution block (to its end marker, or to the end of a cut response),
    else the text after the last </think>; None when the response has neither. Graders look here first, so an answer
    boxed in an abandoned line of thought does not count."""
    start = response.rfind(BEGIN_SOLUTION)
    if start >= 0:
        return response[start + len(BEGIN_SOLUTION) :].split(END_SOLUTION)[0]
    if THINK_CLOSE in response:
        return response.rsplit(THINK_CLOSE, 1)[1]
    return None


@dataclass
class Parts:
    """head + thought + tail == the response, byte for byte; perturbations change only `thought`."""

    head: str
    thought: str
    tail: str
    markup: str  # sky-t1 | r1 | final_block | none


BLANK_LINES = re.compile(r"\n[ \t]*\n(?:[ \t]*\n)*")


def split_thought(text: str) -> Parts:
    """Locate the thought of a response, complete or not. Sky-T1: between the thought markers (to the end if the end
    marker is missing); R1: before </think>, after <think> if present (to the end if </think> is missing). Without
    markup, all of it is thought except a clear final block, kept as the solution (final_block_start)."""
    begin, end = text.find(BEGIN_THOUGHT), text.find(END_THOUGHT)
    if begin != -1 or end != -1:
        start = 0 if begin == -1 else begin + len(BEGIN_THOUGHT)
        stop = len(text) if end == -1 else end
        markup = "sky-t1"
    elif THINK_OPEN in text or THINK_CLOSE in text:
        open_at, close_at = text.find(THINK_OPEN), text.find(THINK_CLOSE)
        start = 0 if open_at == -1 else open_at + len(THINK_OPEN)
        stop = len(text) if close_at == -1 else close_at
        markup = "r1"
    else:
        final = final_block_start(text)
        start, stop = 0, len(text) if final is None else final
        markup = "none" if final is None else "final_block"
    body = text[start:stop]
    lead, trail = len(body) - len(body.lstrip()), len(body) - len(body.rstrip())
    return Parts(text[: start + lead], body.strip(), text[max(stop - trail, start + lead) :], markup)


def final_block_start(text: str) -> int | None:
    """Where the final block of a response without markup starts, or None when it has none. The block runs from the
    last paragraph (blank-line separated) holding "\\boxed{" or "final answer", or from a trailing fenced code
    block, to the end: LIMO's "... **Final Answer** \\boxed{..}", a program closing a code answer. The one rule
    for splitting such a response, in prepare_data.py (split_reasoning) and perturb.py (split_thought)."""
    anchors = [m.start() for m in re.finditer(r"\\boxed\{|final answer", text, re.I)]
    fences = [m.start() for m in re.finditer(r"^[ \t]*```", text, re.M)]
    if text.rstrip().endswith("```") and len(fences) >= 2:
        anchors.append(fences[-2])
    if not anchors:
        return None
    return max([m.end() for m in BLANK_LINES.finditer(text, 0, max(anchors))], default=0)


# ----------------------------------------------------------------------------- writing a response


def format_response(thought: str, solution: str, style: str) -> str:
    """A thought and a solution in the given markup, laid out as the published data sets lay them out."""
    if style == "r1":  # DeepSeek-R1's layout
        return f"{THINK_OPEN}\n{thought}\n{THINK_CLOSE}\n\n{solution}"
    if style == "sky-t1":  # Sky-T1_data_17k's layout
        return f"{BEGIN_THOUGHT}\n\n{thought}\n\n{END_THOUGHT}\n\n{BEGIN_SOLUTION}\n\n{solution}\n\n{END_SOLUTION}"
    raise ValueError(f"style must be sky-t1 or r1, not {style!r}")


def in_style(response: str, style: str) -> bool:
    """Already in the target markup, so it stays byte for byte as the teacher wrote it. An R1 response without its
    opening <think> is not (converting adds it, since the student's template does not supply it), nor one whose
    solution is in an <answer> wrapper (converting removes it)."""
    if style == "keep":
        return True
    if style == "r1":
        wrapped = response.rpartition(THINK_CLOSE)[2].lstrip().startswith(ANSWER_OPEN)
        return response.lstrip().startswith(THINK_OPEN) and not wrapped
    return markup_of(response) == style


def convert_style(response: str, style: str) -> str:
    """Re-mark a complete response in another markup (one without markup: split at its final block); one already in it
    is returned untouched."""
    if in_style(response, style):
        return response
    thought, solution, defect = split_reasoning(response)
    if defect:
        raise ValueError(f"cannot convert a response that is {defect}")
    return format_response(thought, solution, style)


# ----------------------------------------------------------------------------- prompts


def system_prompt(style: str, record_system: str | None = None) -> str | None:
    """The system turn a training record gets: Sky-T1's prompt for sky-t1; none for r1 (DeepSeek-R1's usage
    recommendations advise against a system prompt); the record's own for keep."""
    if style == "sky-t1":
        return SKY_T1_SYSTEM_PROMPT
    if style == "r1":
        return None
    if style == "keep":
        return record_system
    raise ValueError(f"style must be one of {', '.join(STYLES)}, not {style!r}")


def training_prompt(problem: str, domain: str, starter_code: str = "") -> str:
    """The user turn of a raw training problem, as SkyThought's data scripts write it."""
    if domain == "math":
        return MATH_PROMPT.format(problem=problem)
    if starter_code:
        return CODE_CALL_PROMPT.format(problem=problem, starter_code=starter_code)
    return CODE_STDIN_PROMPT.format(problem=problem)


def eval_messages(problem: dict, style: str) -> list[dict]:
    """The chat prompt of one evaluation problem {"kind": "math"|"code", "problem", ["tests", "starter_code"]}."""
    system, math_template = PROMPT_STYLES[style]
    if problem["kind"] == "math":
        user = math_template.format(problem=problem["problem"])
    else:
        user = problem["problem"]
        if problem.get("starter_code"):
            user += f"\n\nUse the following starter code:\n```python\n{problem['starter_code']}\n```"
        if style != "none":
            stdin = problem["tests"][0]["testtype"] == "stdin"
            instruction = STDIN_INSTRUCTION if stdin else FUNCTIONAL_INSTRUCTION
            user = f"{instruction} {user}\n\n{CODE_FORMAT}"
    messages = [{"role": "system", "content": system}] if system else []
    return messages + [{"role": "user", "content": user}]
