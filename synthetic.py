"""A synthetic long chain-of-thought task a tiny model learns on a CPU: evaluating bracketed arithmetic.

    python synthetic.py --output out/synthetic/train.jsonl --size 4000                  # training records
    python synthetic.py --output out/synthetic/test.jsonl --size 200 --split test --task-file
    python synthetic.py --output out/synthetic/wrong.jsonl --size 4000 --wrong-answers  # every final answer wrong

A problem is a bracketed chain of operations on single digits, e.g. "Evaluate ((7 - 3) * 2) - 5.", whose every
intermediate value lies in 0..max_value and whose products have single-digit factors: each step is then one fact a
small transformer can learn, and the answer is exact. The assistant turn has the Sky-T1 shape, with the moves that
make long CoT long: a step that checks an earlier one by the inverse operation, a slip caught by "Wait" and fixed,
and a final verification, each step a blank-line paragraph: the unit perturb.py acts on (reasoning_steps.py; demo.py
passes --min-step-chars STEP_MIN_CHARS, so that no step is merged into its neighbour).

Train and test problems are disjoint by construction: a problem's split is a function of its text's hash.
Training records follow prepare_data.py's schema; --task-file writes evaluate.py's {"id", "problem", "answer"}.
"""

from __future__ import annotations

import argparse
import hashlib
import operator
import random
import re
import sys
from dataclasses import dataclass

from markup import PROMPT_STYLES, eval_messages, format_response
from utils import write_jsonl

TEST_SHARE = 5  # one problem text in TEST_SHARE belongs to the test split
# The miniature's task (demo.py): values 0..20, so ~500 facts cover it; the student is pretrained on problems of 1-3
# operations, the teacher's traces and the held-out problems have 3-4.
MAX_VALUE = 20
MIN_OPS, MAX_OPS = 3, 4
PRETRAINING_MAX_OPS = 3
STEP_MIN_CHARS = 12  # every paragraph of a trace is longer ("First, 9 + 5 = 14." has 18 characters)
OPS = {"+": operator.add, "-": operator.sub, "*": operator.mul}
TEACHERS = ("confirming", "catching")
VERIFICATIONS = ("recompute", "undo")
# The catching teacher's slips, at about the rates the grid's SFT students slip (their first error on held-out
# problems, 3 seeds of the correct set at commit 3336d3b): the problem copied wrong (chance per trace), another
# operation of the problem taken (per step), a verification that goes astray (per trace; the recompute verification
# only: the undo one cannot replace the answer). Wrong facts keep slip_rate.
TEACHER_SLIPS = {"copy": 0.2, "operation": 0.05, "verification": 0.3}
ORDINALS = ["First", "Next", "Then", "After that", "Now", "Next", "Then", "After that", "Now", "Then"]


@dataclass
class Node:
    """A leaf holds a digit; an inner node an operator and two children."""

    value: int
    op: str | None = None
    left: "Node | None" = None
    right: "Node | None" = None


def render(node: Node, values: dict[int, int], top: bool = True) -> str:
    """The expression with the operations already done (id(node) -> the value written for it) replaced by values."""
    if id(node) in values or node.op is None:
        return str(values.get(id(node), node.value))
    text = f"{render(node.left, values, False)} {node.op} {render(node.right, values, False)}"
    return text if top else f"({text})"


def infix(node: Node, top: bool = True) -> str:
    """The expression as text, every inner operation bracketed: "(7 - 3) * (2 + 5)"."""
    return render(node, {}, top)


def random_expression(rng: random.Random, n_ops: int, max_value: int) -> Node | None:
    """A random chain of n_ops operators, each applied to the value so far and a digit ("((6 - 3) - 2) * 6"), or None
    if a value leaves 0..max_value or a product has a factor over 9. A chain, not any tree: its operations come in
    the order of the text, so a step's operation follows the digit the previous step used (see sample_problems)."""
    if n_ops == 0:
        return Node(rng.randint(1, 9))
    left, right = random_expression(rng, n_ops - 1, max_value), Node(rng.randint(1, 9))
    if left is None:
        return None
    op = rng.choice("+-*")
    if op == "*" and max(left.value, right.value) > 9:
        return None
    value = OPS[op](left.value, right.value)
    return Node(value, op, left, right) if 0 <= value <= max_value else None


def split_of(problem: str) -> str:
    return "test" if int(hashlib.sha256(problem.encode()).hexdigest(), 16) % TEST_SHARE == 0 else "train"


def problem_text(expression: Node) -> str:
    return f"Evaluate {infix(expression)}."


def sample_problems(n: int, seed: int, split: str, min_ops: int, max_ops: int, max_value: int) -> list[Node]:
    """n distinct expressions of the split; deterministic in its arguments."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', not {split!r}")
    rng = random.Random(f"synthetic:{seed}:{split}")
    found, seen = [], set()
    for _ in range(n * 1000):
        if len(found) == n:
            return found
        expression = random_expression(rng, rng.randint(min_ops, max_ops), max_value)
        if expression is None or expression.op is None:
            continue
        text = problem_text(expression)
        digits = re.findall(r"\d", text)
        # Distinct digits: the operation after a step is then found by the digit the step just used, the lookup
        # (an induction head's) a model of this size learns; with repeats it would have to count positions.
        if len(set(digits)) == len(digits) and text not in seen and split_of(text) == split:
            seen.add(text)
            found.append(expression)
    raise ValueError(f"could not find {n} distinct {split} problems with {min_ops}-{max_ops} operations; ask for fewer")


def inverse_check(op: str, a: int, b: int, result: int) -> str:
    """The equation a check step writes: a + b = r is checked as r - b = a, a - b = r as r + b = a, a * b = r as
    b * a = r."""
    if op == "+":
        return f"{result} - {b} = {a}"
    if op == "-":
        return f"{result} + {b} = {a}"
    return f"{b} * {a} = {result}"


def check_reply(op: str, a: int, b: int, claimed: int, max_value: int) -> str:
    """A check of "a op b = claimed" by the inverse operation, in the words the student is pretrained to check with
    when asked: it holds, or it fails and says the right result."""
    result = OPS[op](a, b)
    check = inverse_check(op, a, b, claimed)
    if claimed == result:
        return f"Let me check that step: {check}, so {a} {op} {b} = {result} holds."
    back = check.rsplit(" = ", 1)[0]
    undone = OPS["+" if op == "-" else "-"](claimed, b) if op != "*" else None
    return (
        f"Let me check that step: {back} = {undone}, not {a}. "
        if undone is not None and 0 <= undone <= max_value
        else "Let me check that step. "
    ) + f"Wait, that is not right: {a} {op} {b} is {result}, not {claimed}."


def slip(rng: random.Random, value: int, max_value: int) -> int:
    """A plausible wrong result: off by one, or a carry slip of ten."""
    return rng.choice([v for v in (value - 1, value + 1, value - 10, value + 10) if 0 <= v <= max_value and v != value])


def post_order(expression: Node) -> list[Node]:
    """The operations in the order a solver does them: innermost first, left to right."""
    order: list[Node] = []

    def visit(node: Node) -> None:
        if node.op is not None:
            visit(node.left)
            visit(node.right)
            order.append(node)

    visit(expression)
    return order


def solve(
    expression: Node,
    rng: random.Random,
    slip_rate: float,
    check_rate: float,
    miss_rate: float,
    wrong_answer: bool,
    max_value: int,
    teacher: str = "confirming",
    verification: str = "recompute",
) -> tuple[str, int]:
    """The teacher's Sky-T1 response and the final answer it states (the true value unless wrong_answer).

    Operations are done innermost first, left to right, one fact per step. With probability slip_rate
    a result is first written wrong and a "Wait" step fixes it at once; check_rate: chance that a step is followed by
    a check by the inverse operation. The final verification is a second computation from the problem, that can
    disagree: with probability miss_rate one slip goes unnoticed and propagates, and the verification catches it and
    repairs the answer. With wrong_answer the unnoticed slip is repeated by the verification, like a teacher's
    confident wrong trace.

    teacher="confirming" (the grid's teacher) checks only steps it got right, so every check confirms. "catching"
    also makes the slips the SFT student makes (TEACHER_SLIPS: a problem copied wrong, the wrong next operation, a
    wrong fact, and with verification="recompute" a verification that goes wrong) and catches each with a check that
    works, in the student's pretrained words where it has them (check_reply): issue 28's "checks that can work".

    verification="recompute" computes the answer again from the problem; "undo" (undo_verification) undoes each step
    from the answer back to the problem's first digit, so that a verification the student gets wrong cannot replace a
    right first computation.
    """
    catching = teacher == "catching"
    order = post_order(expression)
    missed = rng.randrange(len(order)) if wrong_answer or rng.random() < miss_rate else -1
    shown: dict[int, int] = {}  # id(node) -> the value the trace carries for it (differs after an unnoticed slip)

    def carried(node: Node) -> int:
        return shown.get(id(node), node.value)

    steps = [f"We need to evaluate {infix(expression)}, one operation at a time, innermost first."]
    copied = catching and rng.random() < TEACHER_SLIPS["copy"] and miscopied(rng, expression)
    if copied:
        steps[0] = steps[0].replace(infix(expression), copied)
        steps.append(f"Let me check that against the problem. Wait, that is not right: it is {infix(expression)}, "
                     f"not {copied}. Fixing it, we need to evaluate {infix(expression)}.")  # fmt: skip
    slipped = None
    for k, node in enumerate(order):
        a, b = carried(node.left), carried(node.right)
        result = OPS[node.op](a, b)
        if not 0 <= result <= max_value:  # only after an unnoticed slip; the caller redraws
            raise ValueError("slip left the value range")
        ordinal = ""
        other = catching and k != missed and rng.random() < TEACHER_SLIPS["operation"]
        other = other and wrong_operation(rng, order, k, a, max_value)
        if k == missed:
            wrong = slip(rng, result, max_value)
            slipped, result = (f"{a} {node.op} {b}", result, wrong), wrong
        elif other:
            op, digit, _ = other
            steps.append(step_sentence(k, Node(0, op), a, digit, OPS[op](a, digit)))
            ordinal = (f"Let me check that step against the problem. Wait, that is not right: after "
                       f"{previous_digit(order, k)} it has {node.op} {b}, not {op} {digit}. Fixing it")  # fmt: skip
        elif rng.random() < slip_rate:
            wrong = slip(rng, result, max_value)
            steps.append(step_sentence(k, node, a, b, wrong))
            ordinal = f"Wait, that is not right: {a} {node.op} {b} is {result}, not {wrong}. Fixing it"
            if catching:  # the slip is found by checking it, as the student checks a fact when asked
                ordinal = f"{check_reply(node.op, a, b, wrong, max_value)} Fixing it"
        shown[id(node)] = result
        fact = f"{a} {node.op} {b} = {result}"
        steps.append(step_sentence(k, node, a, b, result, ordinal))
        if k != missed and rng.random() < check_rate:  # a checked slip would not go unnoticed
            steps.append(f"Let me check that step: {inverse_check(node.op, a, b, result)}, so {fact} holds.")
    if verification == "undo":
        written = [(carried(n.left), n.op, n.right.value, carried(n)) for n in order]
        checks, answer = undo_verification(written, wrong_answer)
    else:  # the catching teacher's verification can itself go wrong, as the student's does
        astray = catching and missed < 0 and rng.random() < TEACHER_SLIPS["verification"]
        astray = rng.randrange(len(order)) if astray else -1
        checks, answer = recompute_verification(order, shown, slipped, wrong_answer, astray, rng, max_value)
    thought = "\n\n".join(steps + checks)
    # The solution states only the result: the derivation lives in the thought, so perturbing the thought's
    # structure leaves nothing intact for the model to fall back on.
    solution = f"The value of the expression is {answer}.\n\n\\boxed{{{answer}}}"
    return format_response(thought, solution, "sky-t1"), answer


def recompute_verification(
    order: list[Node],
    shown: dict[int, int],
    slipped: tuple | None,
    wrong_answer: bool,
    astray: int,
    rng: random.Random,
    max_value: int,
) -> tuple[list[str], int]:
    """The "recompute" verification of a first computation (order: its operations; shown: the values it wrote where
    an unnoticed slip changed them; slipped: that slip): the answer computed again from the problem, and the answer.
    It repeats the slip only in a wrong-answer trace; otherwise it disagrees, names the slip and repairs the answer.
    astray: the operation the verification itself takes wrongly (another operation of the problem; -1: none), which
    a check against the problem then finds."""
    expression = order[-1]
    first = shown.get(id(expression), expression.value)
    again = {} if not wrong_answer else shown
    facts, mistaken = [], None
    for j, node in enumerate(order):
        a, b = again.get(id(node.left), node.left.value), again.get(id(node.right), node.right.value)
        value = again.get(id(node), OPS[node.op](a, b))
        wrong = j == astray and wrong_operation(rng, order, j, a, max_value)
        if wrong and (later := chain_values(order, j, wrong[2], max_value)) and later[-1] != first:
            mistaken = (j, node, wrong)
            facts.append(f"{a} {wrong[0]} {wrong[1]} = {wrong[2]}")
            again = {**again, id(node): wrong[2]}
            continue
        again = again if wrong_answer else {**again, id(node): value}
        facts.append(f"{a} {node.op} {b} = {value}")
    answer = again.get(id(expression), expression.value)
    verify = f"Let me verify by computing it again from the start: {', '.join(facts)}."
    if mistaken:
        j, node, (op, digit, _) = mistaken
        return [
            f"{verify} This gives {answer}, not {first}.",
            f"Let me check the verification against the problem. Wait, that is not right: after "
            f"{previous_digit(order, j)} it has {node.op} {node.right.value}, not {op} {digit}. So the answer is "
            f"{first}.",
        ], first
    if answer == first:
        return [f"{verify} This also gives {answer}, so the answer is {answer}."], answer
    operation, true, wrong = slipped
    return [
        f"{verify} This gives {answer}, not {first}.",
        f"Wait, the first computation has a slip: {operation} is {true}, not {wrong}. So the answer is {answer}.",
    ], answer


def undo_verification(written: list[tuple[int, str, int, int]], wrong_answer: bool) -> tuple[list[str], int]:
    """The "undo" verification of a first computation whose steps wrote a op b = r (written, in order): each step's
    inverse from the answer back ("18 - 5 = 13, 13 - 8 = 5, 5 - 4 = 1"), and the answer. An unnoticed slip does not
    undo (its inverse gives another value): the verification names it and redoes the steps from there. A wrong-answer
    trace repeats its slip as if it held."""
    checks = []
    for k in reversed(range(len(written))):
        a, op, b, r = written[k]
        true = OPS[op](a, b)
        if r == true or wrong_answer:
            checks.append(inverse_check(op, a, b, r))
            continue
        undone = OPS["+" if op == "-" else "-"](r, b) if op != "*" else -1
        checks.append(f"{inverse_check(op, a, b, r).rsplit(' = ', 1)[0]} = {undone}, not {a}" if undone >= 0
                      else f"{a} {op} {b} = {true}, not {r}")  # fmt: skip
        value, redone = true, []
        for _, op2, b2, _ in written[k + 1 :]:
            redone.append(f"{value} {op2} {b2} = {OPS[op2](value, b2)}")
            value = OPS[op2](value, b2)
        fix = f" Redoing it from there: {', '.join(redone)}." if redone else ""
        return [
            f"Let me verify by undoing each step from the answer: {', '.join(checks)}.",
            f"Wait, the first computation has a slip: {a} {op} {b} is {true}, not {r}.{fix} So the answer is {value}.",
        ], value
    answer = written[-1][3]
    return [f"Let me verify by undoing each step from the answer: {', '.join(checks)}. This leads back to the start, "
            f"so the answer is {answer}."], answer  # fmt: skip


def previous_digit(order: list[Node], k: int) -> int:
    """The digit of the problem the k-th operation follows: the chain's first digit, or the (k-1)-th's operand."""
    return order[0].left.value if k == 0 else order[k - 1].right.value


def wrong_operation(rng: random.Random, order: list[Node], k: int, a: int, max_value: int) -> tuple | None:
    """The student's commonest slip after long-CoT SFT (issue 28, measured on the grid's correct set): step k applies
    another operation of the problem to the value so far. (op, digit, value), or None if none stays in range."""
    options = [(n.op, n.right.value) for j, n in enumerate(order) if j != k]
    options = [(op, d) for op, d in options if (op, d) != (order[k].op, order[k].right.value)]
    rng.shuffle(options)
    for op, digit in options:
        value = OPS[op](a, digit)
        if 0 <= value <= max_value and (op != "*" or max(a, digit) <= 9):
            return op, digit, value
    return None


def chain_values(order: list[Node], j: int, value: int, max_value: int) -> list[int]:
    """The chain's values from the j-th operation on when the j-th gives value; [] if one leaves the task's facts."""
    values = [value]
    for node in order[j + 1 :]:
        a, b = value, node.right.value
        value = OPS[node.op](a, b)
        if not 0 <= value <= max_value or node.op == "*" and max(a, b) > 9:
            return []
        values.append(value)
    return values


def miscopied(rng: random.Random, expression: Node) -> str:
    """The problem as the student copies it wrong: one operator or digit changed to another (any of + - * or 1-9)."""
    text = infix(expression)
    spots = [i for i, ch in enumerate(text) if ch in "+-*" or ch.isdigit()]
    i = rng.choice(spots)
    pool = "+-*" if text[i] in "+-*" else "123456789"
    return text[:i] + rng.choice([c for c in pool if c != text[i]]) + text[i + 1 :]


def step_sentence(k: int, node: Node, a: int, b: int, result: int, ordinal: str = "") -> str:
    """The k-th operation as the teacher writes it, one fact: "Next, 14 - 5 = 9." The step carries the value on
    instead of rewriting the expression, as the student's own fact-by-fact computation does, so that long-CoT SFT
    asks the student for an arrangement of what it can already do."""
    return f"{ordinal or ORDINALS[k % len(ORDINALS)]}, {a} {node.op} {b} = {result}."


def short_solution(expression: Node) -> str:
    """The student's own answer before long-CoT SFT: a short chain of big steps, each rewrite doing two operations
    in one go, with no reflection and no verification: "((7 - 3) * (2 + 5)) - 9 = (4 * 7) - 9 = 19.", then the boxed
    answer. Two operations at once is where a small model slips, as a short chain of thought does on a hard problem."""
    order = post_order(expression)
    done: dict[int, int] = {}
    chain = [infix(expression)]
    for start in range(0, len(order), 2):
        done.update((id(node), node.value) for node in order[start : start + 2])
        chain.append(render(expression, done))
    return f"{' = '.join(chain)}.\n\n\\boxed{{{expression.value}}}"


def generate(
    n: int,
    seed: int = 0,
    split: str = "train",
    min_ops: int = MIN_OPS,
    max_ops: int = MAX_OPS,
    max_value: int = MAX_VALUE,
    slip_rate: float = 0.15,
    check_rate: float = 0.3,
    wrong_answers: bool = False,
    prompt_style: str = "sky-t1",
    miss_rate: float = 0.1,
    teacher: str = "confirming",
    verification: str = "recompute",
) -> list[dict]:
    """n training records {"id", "messages": [system, user, assistant], "domain", "answer", "source"} of one split.

    answer is always the true value; with wrong_answers every trace ends on a wrong one instead (the paper's
    "wrong answers" set, which prepare_data.py --keep incorrect would select from a teacher's samples).
    The prompt is the one evaluate.py --prompt-style writes (markup.eval_messages), so training and evaluation
    prompts match token for token; "step-by-step" has no system prompt, which halves the tokens of a sample (the CPU
    demo's choice).
    """
    if teacher not in TEACHERS:
        raise ValueError(f"teacher must be one of {', '.join(TEACHERS)}, not {teacher!r}")
    if verification not in VERIFICATIONS:
        raise ValueError(f"verification must be one of {', '.join(VERIFICATIONS)}, not {verification!r}")
    records = []
    for i, expression in enumerate(sample_problems(n, seed, split, min_ops, max_ops, max_value)):
        problem = problem_text(expression)
        for attempt in range(100):
            rng = random.Random(f"trace:{seed}:{problem}:{attempt}")
            try:
                response, stated = solve(
                    expression, rng, slip_rate, check_rate, miss_rate, wrong_answers, max_value, teacher, verification
                )
            except ValueError:
                continue
            if (stated != expression.value) == wrong_answers:
                break
        else:
            raise ValueError(
                f"{problem}: no trace with a {'wrong' if wrong_answers else 'right'} answer in 100 attempts"
            )
        records.append(
            {
                "id": f"synthetic-{split}-{seed}-{i}",
                "messages": eval_messages({"kind": "math", "problem": problem}, prompt_style)
                + [{"role": "assistant", "content": response}],
                "domain": "math",
                "answer": str(expression.value),
                "source": "synthetic",
            }
        )
    return records


def facts(max_value: int) -> list[tuple[int, str, int]]:
    """Every operation a problem can contain: operands and result in 0..max_value, products of single digits."""
    found = []
    for a in range(max_value + 1):
        for b in range(max_value + 1):
            for op, fn in OPS.items():
                if 0 <= fn(a, b) <= max_value and (op != "*" or max(a, b) <= 9):
                    found.append((a, op, b))
    return found


def pretraining_records(
    n_short: int, seed: int = 0, max_ops: int = PRETRAINING_MAX_OPS, max_value: int = MAX_VALUE, turns: int = 1
) -> list[dict]:
    """What the student knows before long-CoT SFT, as chats of `turns` unrelated exchanges: every fact ("Evaluate
    14 - 9." -> "14 - 9 = 5."), checking a stated fact by the inverse operation when asked (true and false claims, in
    the teacher's words), one step or a fact-by-fact computation when asked, short solutions (short_solution) of
    n_short train-split problems with 1..max_ops operations, and the teacher's paragraphs to repeat (its markup lines
    among them, as text a real student has read). It never sees a
    reflection inside its own solution: reasoning that way unasked is what long-CoT SFT teaches."""
    rng = random.Random(f"pretraining:{seed}")
    exchanges: list[tuple[str, str]] = []

    def add(user: str, assistant: str) -> None:
        exchanges.append((user, assistant))

    for a, op, b in facts(max_value):
        result = OPS[op](a, b)
        add(f"Evaluate {a} {op} {b}.", f"{a} {op} {b} = {result}.\n\n\\boxed{{{result}}}")
        claimed = result if rng.random() < 0.5 else slip(rng, result, max_value)
        add(f"Check {a} {op} {b} = {claimed}.", check_reply(op, a, b, claimed, max_value))
    for expression in sample_problems(n_short, seed, "train", 1, max_ops, max_value):
        add(problem_text(expression), short_solution(expression))
        # Reasoning step by step when asked, in the teacher's step sentences, and fact by fact (the teacher's
        # verification): an instruct model writes a plain chain of thought on request. Doing it unasked, with checks,
        # corrections and a verification, is what long-CoT SFT teaches.
        order = post_order(expression)
        steps = [step_sentence(k, node, node.left.value, node.right.value, node.value)
                 for k, node in enumerate(order)]  # fmt: skip
        add(f"Compute {infix(expression)} step by step.", "\n\n".join(steps) + f"\n\n\\boxed{{{expression.value}}}")
        again = [f"{n.left.value} {n.op} {n.right.value} = {n.value}" for n in order]
        add(f"Compute {infix(expression)} fact by fact.", f"{', '.join(again)}. So it is {expression.value}.")
    # The teacher's words, each paragraph of its traces on easy problems seen once as text to repeat: as a real
    # student has read such text, so its embeddings and LM head know the tokens, but it is never asked to reason so.
    for record in generate(n_short // 4, seed + 1, "train", 1, max_ops, max_value, prompt_style="none"):
        paragraph = rng.choice(record["messages"][-1]["content"].split("\n\n"))
        add(f"Repeat after me: {paragraph}", paragraph)
    rng.shuffle(exchanges)
    return [
        {
            "id": f"pretraining-{seed}-{start // turns}",
            "messages": [
                {"role": role, "content": text}
                for user, assistant in exchanges[start : start + turns]
                for role, text in (("user", user), ("assistant", assistant))
            ],
            "domain": "math",
            "source": "synthetic-pretraining",
        }
        for start in range(0, len(exchanges), turns)
    ]


def task_records(
    n: int, seed: int = 0, min_ops: int = MIN_OPS, max_ops: int = MAX_OPS, max_value: int = MAX_VALUE
) -> list[dict]:
    """Held-out problems as an evaluate.py custom task: {"id", "problem", "answer"}."""
    return [
        {"id": f"synthetic-test-{seed}-{i}", "problem": problem_text(e), "answer": str(e.value)}
        for i, e in enumerate(sample_problems(n, seed, "test", min_ops, max_ops, max_value))
    ]


def main(cfg) -> int:
    if cfg.task_file:
        if cfg.split != "test":
            raise SystemExit("--task-file writes held-out problems: use it with --split test")
        records = task_records(cfg.size, cfg.seed, cfg.min_ops, cfg.max_ops, cfg.max_value)
    else:
        records = generate(
            cfg.size,
            cfg.seed,
            cfg.split,
            cfg.min_ops,
            cfg.max_ops,
            cfg.max_value,
            cfg.slip_rate,
            cfg.check_rate,
            cfg.wrong_answers,
            cfg.prompt_style,
            cfg.miss_rate,
            cfg.teacher,
            cfg.verification,
        )
    n = write_jsonl(cfg.output, records)
    print(f"wrote {n} {cfg.split} {'problems' if cfg.task_file else 'records'} to {cfg.output}")
    return n


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", required=True, help="JSONL file, written atomically")
    p.add_argument("--size", type=int, default=4000, help="number of distinct problems")
    p.add_argument("--seed", type=int, default=0, help="fixes problems and traces")
    p.add_argument(
        "--split", choices=["train", "test"], default="train", help="which side of the hash split to draw from"
    )
    p.add_argument(
        "--task-file", action="store_true", help="write evaluate.py's {id, problem, answer} instead of training records"
    )
    p.add_argument("--min-ops", type=int, default=MIN_OPS, help="fewest operations per problem (more = longer chains)")
    p.add_argument("--max-ops", type=int, default=MAX_OPS, help="most operations per problem")
    p.add_argument(
        "--max-value",
        type=int,
        default=MAX_VALUE,
        help="largest intermediate value; smaller means fewer facts to learn",
    )
    p.add_argument(
        "--slip-rate", type=float, default=0.15, help="chance a step is first written wrong, then fixed after 'Wait'"
    )
    p.add_argument(
        "--check-rate", type=float, default=0.3, help="chance a step is followed by a check by the inverse operation"
    )
    p.add_argument(
        "--miss-rate", type=float, default=0.1, help="chance of a slip noticed only by the final verification"
    )
    p.add_argument(
        "--prompt-style",
        choices=list(PROMPT_STYLES),
        default="sky-t1",
        help="the evaluate.py --prompt-style the records' prompts follow (sky-t1: Sky-T1 system prompt)",
    )
    p.add_argument(
        "--wrong-answers", action="store_true", help="every trace ends on a wrong answer (an unnoticed slip)"
    )
    p.add_argument(
        "--verification",
        choices=VERIFICATIONS,
        default="recompute",
        help="recompute: the answer again from the problem; undo: each step undone from the answer (demo.py's)",
    )
    p.add_argument(
        "--teacher",
        choices=TEACHERS,
        default="confirming",
        help="confirming: checks only right steps (they always hold); catching: makes the student's slips and "
        "catches each with a working check (issue 28)",
    )
    cfg = p.parse_args(argv)
    if not 1 <= cfg.min_ops <= cfg.max_ops:
        p.error("need 1 <= --min-ops <= --max-ops")
    if cfg.size < 1:
        p.error("--size must be at least 1")
    return cfg


if __name__ == "__main__":
    sys.exit(0 if main(parse_args()) else 1)
