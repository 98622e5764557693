"""A synthetic long chain-of-thought task a tiny model learns on a CPU: evaluating bracketed arithmetic.

    python synthetic.py --output out/synthetic/train.jsonl --size 4000                  # training records
    python synthetic.py --output out/synthetic/test.jsonl --size 200 --split test --task-file
    python synthetic.py --output out/synthetic/wrong.jsonl --size 4000 --wrong-answers  # every final answer wrong

A problem is a fully bracketed expression over single digits, e.g. "Evaluate ((7 - 3) * (2 + 5)) - 9.", whose every
intermediate value lies in 0..max_value and whose products have single-digit factors: each step is then one fact a
small transformer can learn, and the answer is exact. The assistant turn has the Sky-T1 shape, with the moves that
make long CoT long: a step that checks an earlier one by the inverse operation, a slip caught by "Wait" and fixed,
and a final verification, each step a blank-line paragraph of more than 40 characters, the unit perturb.py acts on.

Train and test problems are disjoint by construction: a problem's split is a function of its text's hash.
Training records follow prepare_data.py's schema; --task-file writes evaluate.py's {"id", "problem", "answer"}.
"""

from __future__ import annotations

import argparse
import hashlib
import operator
import random
import sys
from dataclasses import dataclass

from markup import PROMPT_STYLES, eval_messages, format_response
from utils import write_jsonl

TEST_SHARE = 5  # one problem text in TEST_SHARE belongs to the test split
OPS = {"+": operator.add, "-": operator.sub, "*": operator.mul}


@dataclass
class Node:
    """A leaf holds a digit; an inner node an operator and two children."""

    value: int
    op: str | None = None
    left: "Node | None" = None
    right: "Node | None" = None


def infix(node: Node, top: bool = True) -> str:
    """The expression as text, every inner operation bracketed: "(7 - 3) * (2 + 5)"."""
    if node.op is None:
        return str(node.value)
    text = f"{infix(node.left, False)} {node.op} {infix(node.right, False)}"
    return text if top else f"({text})"


def random_expression(rng: random.Random, n_ops: int, max_value: int) -> Node | None:
    """A random tree with n_ops operators, or None if a value leaves 0..max_value or a product has a factor over 9."""
    if n_ops == 0:
        return Node(rng.randint(1, 9))
    left_ops = rng.randint(0, n_ops - 1)
    left, right = random_expression(rng, left_ops, max_value), random_expression(rng, n_ops - 1 - left_ops, max_value)
    if left is None or right is None:
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
        if text not in seen and split_of(text) == split:
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


def slip(rng: random.Random, value: int, max_value: int) -> int:
    """A plausible wrong result: off by one, or a carry slip of ten."""
    return rng.choice([v for v in (value - 1, value + 1, value - 10, value + 10) if 0 <= v <= max_value and v != value])


def solve(
    expression: Node, rng: random.Random, slip_rate: float, check_rate: float, wrong_answer: bool, max_value: int
) -> tuple[str, int]:
    """The Sky-T1 response and the final answer it states (the true value unless wrong_answer).

    Operations are done innermost first, left to right, each rewriting the expression. With probability slip_rate
    a result is first written wrong and a "Wait" step fixes it; with wrong_answer one slip goes unnoticed and
    propagates, like a teacher's wrong trace. check_rate: chance that a step is followed by an inverse-operation check.
    """
    order: list[Node] = []

    def post_order(node: Node) -> None:
        if node.op is not None:
            post_order(node.left)
            post_order(node.right)
            order.append(node)

    post_order(expression)
    uncaught = rng.randrange(len(order)) if wrong_answer else -1
    shown: dict[int, int] = {}  # id(node) -> the value the trace carries for it (differs after an uncaught slip)

    def carried(node: Node) -> int:
        return shown.get(id(node), node.value)

    def rewritten(node: Node, top: bool = True) -> str:
        if id(node) in shown or node.op is None:
            return str(carried(node))
        text = f"{rewritten(node.left, False)} {node.op} {rewritten(node.right, False)}"
        return text if top else f"({text})"

    def consequence(last: bool) -> str:
        """What the step's result means: the answer, or the rewritten expression (as the trace carries it)."""
        if last:
            return "the value of the whole expression"
        return f"so the expression becomes {rewritten(expression)}"

    steps = [f"We need to evaluate {infix(expression)}, working from the innermost brackets outwards."]
    facts = []
    ordinals = ["First", "Next", "Then", "After that", "Now", "Next", "Then", "After that", "Now", "Then"]
    for k, node in enumerate(order):
        a, b = carried(node.left), carried(node.right)
        result = OPS[node.op](a, b)
        if not 0 <= result <= max_value:  # only after an uncaught slip; the caller redraws
            raise ValueError("slip left the value range")
        last = k == len(order) - 1
        ordinal = ordinals[k % len(ordinals)]
        if k == uncaught:
            result = slip(rng, result, max_value)
        elif rng.random() < slip_rate:
            wrong = slip(rng, result, max_value)
            shown[id(node)] = wrong
            steps.append(f"{ordinal}, {a} {node.op} {b} = {wrong}, {consequence(last)}.")
            ordinal = f"Wait, that is not right: {a} {node.op} {b} is {result}, not {wrong}. Fixing it"
        shown[id(node)] = result
        fact = f"{a} {node.op} {b} = {result}"
        facts.append(fact)
        steps.append(f"{ordinal}, {fact}, {consequence(last)}.")
        if rng.random() < check_rate:
            steps.append(f"Let me check that step: {inverse_check(node.op, a, b, result)}, so {fact} holds.")
    answer = carried(expression)
    steps.append(f"Let me verify the whole computation: {', '.join(facts)}. So the answer is {answer}.")
    thought = "\n\n".join(steps)
    # The solution states only the result: the derivation lives in the thought, so perturbing the thought's
    # structure leaves nothing intact for the model to fall back on.
    solution = f"{infix(expression)} = {answer}.\n\n\\boxed{{{answer}}}"
    return format_response(thought, solution, "sky-t1"), answer


def generate(
    n: int,
    seed: int = 0,
    split: str = "train",
    min_ops: int = 2,
    max_ops: int = 4,
    max_value: int = 99,
    slip_rate: float = 0.15,
    check_rate: float = 0.3,
    wrong_answers: bool = False,
    prompt_style: str = "sky-t1",
) -> list[dict]:
    """n training records {"id", "messages": [system, user, assistant], "domain", "answer", "source"} of one split.

    answer is always the true value; with wrong_answers every trace ends on a wrong one instead (the paper's
    "wrong answers" set, which prepare_data.py --keep incorrect would select from a teacher's samples).
    The prompt is the one evaluate.py --prompt-style writes (markup.eval_messages), so training and evaluation
    prompts match token for token; "step-by-step" has no system prompt, which halves the tokens of a sample (the CPU
    demo's choice).
    """
    records = []
    for i, expression in enumerate(sample_problems(n, seed, split, min_ops, max_ops, max_value)):
        problem = problem_text(expression)
        for attempt in range(100):
            rng = random.Random(f"trace:{seed}:{problem}:{attempt}")
            try:
                response, stated = solve(expression, rng, slip_rate, check_rate, wrong_answers, max_value)
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


def task_records(n: int, seed: int = 0, min_ops: int = 2, max_ops: int = 4, max_value: int = 99) -> list[dict]:
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
    p.add_argument("--min-ops", type=int, default=2, help="fewest operations per problem (more steps = longer chains)")
    p.add_argument("--max-ops", type=int, default=4, help="most operations per problem")
    p.add_argument(
        "--max-value", type=int, default=99, help="largest intermediate value; smaller means fewer facts to learn"
    )
    p.add_argument(
        "--slip-rate", type=float, default=0.15, help="chance a step is first written wrong, then fixed after 'Wait'"
    )
    p.add_argument(
        "--check-rate", type=float, default=0.3, help="chance a step is followed by a check by the inverse operation"
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
    cfg = p.parse_args(argv)
    if not 1 <= cfg.min_ops <= cfg.max_ops:
        p.error("need 1 <= --min-ops <= --max-ops")
    if cfg.size < 1:
        p.error("--size must be at least 1")
    return cfg


if __name__ == "__main__":
    sys.exit(0 if main(parse_args()) else 1)
