"""markup.py: reading a response (split_reasoning, split_thought, solution_part), writing one (format_response,
convert_style), and the prompts a student sees in training and evaluation."""

import re
from pathlib import Path

import pytest

import markup
import utils
from markup import convert_style, eval_messages, format_response, in_style, split_reasoning, split_thought

# real long-CoT responses in Sky-T1 markup (data/sample/README.md)
SKY_SAMPLE = Path(__file__).resolve().parents[1] / "data" / "sample" / "sky_t1_minerva_math.jsonl"

THOUGHT, SOLUTION = "Let me think.\nStill thinking.", "The answer is \\boxed{3}."
# The published layouts, written out by hand so that format_response is checked against them, not against itself.
SKY = (
    "<|begin_of_thought|>\n\nLet me think.\nStill thinking.\n\n<|end_of_thought|>\n\n"
    "<|begin_of_solution|>\n\nThe answer is \\boxed{3}.\n\n<|end_of_solution|>"
)
R1 = "<think>\nLet me think.\nStill thinking.\n</think>\n\nThe answer is \\boxed{3}."
AM = "<think>\nLet me think.\nStill thinking.\n</think>\n<answer>\nThe answer is \\boxed{3}.\n</answer>"
LIMO = "Idea one.\n\nWait, idea two.\n\n**Final Answer**\n\\boxed{5}"


# ----------------------------------------------------------------------------- reading a response


def test_markup_of():
    assert markup.markup_of(SKY) == "sky-t1" and markup.markup_of("hmm <|end_of_thought|>") == "sky-t1"
    assert markup.markup_of(R1) == "r1" and markup.markup_of("hmm </think> 3") == "r1"
    assert markup.markup_of("just \\boxed{2}") is None


@pytest.mark.parametrize(
    "response, expected",
    [
        (SKY, (THOUGHT, SOLUTION, None)),
        (R1, (THOUGHT, SOLUTION, None)),
        ("Reason.\n</think>\nSo \\boxed{1}", ("Reason.", "So \\boxed{1}", None)),  # R1 without its opening tag
        ("  \n", ("", "", "empty")),
        ("just \\boxed{2}", ("", "", "no_thought")),
        ("<|begin_of_thought|>\n\nhmm", ("", "", "truncated")),  # thought never closed
        ("<|begin_of_thought|>\nhmm\n<|end_of_thought|>\n\nno block", ("hmm", "", "truncated")),
        ("<|begin_of_thought|>\nhmm\n<|end_of_thought|>\n<|begin_of_solution|>\ncut", ("hmm", "", "truncated")),
        (
            "<|begin_of_thought|>\nhmm\n<|end_of_thought|>\n<|begin_of_solution|>\n \n<|end_of_solution|>",
            ("hmm", "", "truncated"),
        ),
        ("<think>\nhmm", ("", "", "truncated")),
        ("<think>\nhmm\n</think>\n\n  ", ("hmm", "", "truncated")),  # empty solution
        ("<think>\n\n</think>\n\nSo \\boxed{1}", ("", "So \\boxed{1}", "no_thought")),  # empty thought
        # AM-DeepSeek-R1-Distilled: the solution in an <answer> wrapper, which is not part of it
        ("<think>\nhmm\n</think>\n<answer>\nSo \\boxed{1}\n</answer>", ("hmm", "So \\boxed{1}", None)),
        ("<think>\nhmm\n</think>\n<answer>\nSo \\boxed{1}", ("hmm", "", "truncated")),  # wrapper never closed
        # no markup (LIMO): all thought but the final block; without one there is no telling them apart
        (LIMO, ("Idea one.\n\nWait, idea two.", "**Final Answer**\n\\boxed{5}", None)),
        ("Idea one.\n\nIdea two.", ("", "", "no_thought")),
    ],
)
def test_split_reasoning(response, expected):
    assert split_reasoning(response) == expected


def test_solution_part():
    assert markup.solution_part(SKY) == "\n\nThe answer is \\boxed{3}.\n\n"
    # the last solution block counts, and a cut one runs to the end
    two = SKY + "\n<|begin_of_solution|>\nSecond \\boxed{4}"
    assert markup.solution_part(two) == "\nSecond \\boxed{4}"
    assert markup.solution_part("a </think> b </think> final \\boxed{5}") == " final \\boxed{5}"
    assert markup.solution_part("no markup \\boxed{6}") is None


# Every case split_thought handles: (response, markup, thought).
THOUGHT_CASES = [
    (SKY, "sky-t1", THOUGHT),
    ("  <|begin_of_thought|>\n\nStill going, cut off\n", "sky-t1", "Still going, cut off"),  # no end marker
    (R1, "r1", THOUGHT),
    ("First idea.\n\nSecond idea.\n</think>\n\nSo \\boxed{2}.", "r1", "First idea.\n\nSecond idea."),  # no <think>
    ("<think>\nFirst idea.\n\nSecond idea, cut off", "r1", "First idea.\n\nSecond idea, cut off"),  # no </think>
    ("Idea one.\n\nIdea two.\n\nThus 2 + 3 = \\boxed{5}.", "final_block", "Idea one.\n\nIdea two."),
    ("Think.\n\nMore.\n\nThe final answer:\n```python\nprint(1)\n```\n", "final_block", "Think.\n\nMore."),
    ("Idea one.\n\nIdea two.", "none", "Idea one.\n\nIdea two."),
    ("", "none", ""),
]


@pytest.mark.parametrize("text, markup_label, thought", THOUGHT_CASES)
def test_split_thought_finds_the_thought_and_round_trips_byte_for_byte(text, markup_label, thought):
    parts = split_thought(text)
    assert (parts.markup, parts.thought) == (markup_label, thought)
    assert parts.head + parts.thought + parts.tail == text
    assert parts.thought == parts.thought.strip()  # the whitespace around it stays in head and tail


def test_split_thought_keeps_markers_and_the_solution_out_of_the_thought():
    parts = split_thought(SKY)
    assert parts.head == "<|begin_of_thought|>\n\n" and parts.tail.startswith("\n\n<|end_of_thought|>")
    parts = split_thought("Idea one.\n\nIdea two.\n\nThus 2 + 3 = \\boxed{5}.")
    assert parts.tail == "\n\nThus 2 + 3 = \\boxed{5}."
    # an answer in the first paragraph: everything is the final block, nothing is thought
    parts = split_thought("The final answer is 4.\n\nBecause two and two.")
    assert (parts.markup, parts.thought, parts.tail) == (
        "final_block",
        "",
        "The final answer is 4.\n\nBecause two and two.",
    )


def test_final_block_start_is_the_one_rule_for_replies_without_markup():
    assert LIMO[markup.final_block_start(LIMO) :] == "**Final Answer**\n\\boxed{5}"
    code = "Plan.\n\nMore plan.\n\n```python\nprint(1)\n```\n"
    assert code[markup.final_block_start(code) :] == "```python\nprint(1)\n```\n"
    assert markup.final_block_start("The final answer is 4.\n\nBecause.") == 0  # an answer up front: all of it
    assert markup.final_block_start("Idea.\n\n```python\nx = 1\n```\n\nThen more words.") is None
    # split_thought (perturb.py) and split_reasoning (prepare_data.py) cut a reply without markup at the same place
    for text in (LIMO, code, "A.\n\nB.\n\nThus 2 + 3 = \\boxed{5}."):
        parts, (thought, solution, _) = split_thought(text), split_reasoning(text)
        assert (parts.markup, parts.thought, parts.tail.strip()) == ("final_block", thought, solution)


# ----------------------------------------------------------------------------- writing a response


def test_format_response_writes_the_published_layouts():
    assert format_response(THOUGHT, SOLUTION, "sky-t1") == SKY
    assert format_response(THOUGHT, SOLUTION, "r1") == R1
    with pytest.raises(ValueError, match="sky-t1 or r1"):
        format_response(THOUGHT, SOLUTION, "keep")


def test_in_style():
    assert in_style(SKY, "sky-t1") and not in_style(SKY, "r1")
    assert in_style(R1, "r1") and not in_style(R1, "sky-t1")
    assert in_style("  " + R1, "r1")
    assert not in_style("Reason.\n</think>\n\nSo \\boxed{1}", "r1")  # R1 markup, but its opening tag is missing
    assert not in_style(AM, "r1") and in_style(AM, "keep")  # R1 markup, but its solution is wrapped in <answer>
    assert not in_style(LIMO, "r1") and not in_style(LIMO, "sky-t1") and in_style(LIMO, "keep")
    assert in_style("anything at all", "keep")


def test_convert_style_both_ways_and_round_trip():
    assert convert_style(SKY, "r1") == R1
    assert convert_style(R1, "sky-t1") == SKY
    assert convert_style(convert_style(SKY, "r1"), "sky-t1") == SKY
    # already in the target markup, or keep: the very same string, byte for byte
    odd_layout = "<think>Let me think.</think>   The answer is \\boxed{3}.  "
    assert convert_style(odd_layout, "r1") is odd_layout and convert_style(odd_layout, "keep") is odd_layout
    assert convert_style(SKY, "sky-t1") is SKY and convert_style(SKY, "keep") is SKY
    # R1 without its opening tag gets it, since the student's chat template does not supply it
    assert convert_style("Reason.\n</think>\nSo \\boxed{1}", "r1") == "<think>\nReason.\n</think>\n\nSo \\boxed{1}"
    # AM's <answer> wrapper goes when the reply is converted, and stays with keep; a reply without markup is split
    assert convert_style(AM, "r1") == R1 and convert_style(AM, "sky-t1") == SKY and convert_style(AM, "keep") is AM
    assert (
        convert_style(LIMO, "r1") == "<think>\nIdea one.\n\nWait, idea two.\n</think>\n\n**Final Answer**\n\\boxed{5}"
    )
    with pytest.raises(ValueError, match="truncated"):
        convert_style("<think>\nhmm", "sky-t1")
    with pytest.raises(ValueError, match="no_thought"):
        convert_style("just \\boxed{2}", "r1")


def test_style_round_trip_on_bundled_long_cot_sample():
    responses = [r["response"] for r in utils.read_jsonl(SKY_SAMPLE)]
    untouched = 0
    for response in responses:
        r1 = convert_style(response, "r1")
        back = convert_style(r1, "sky-t1")
        assert convert_style(back, "r1") == r1
        thought, solution, defect = split_reasoning(response)
        assert defect is None and back == format_response(thought, solution, "sky-t1") and "<|" not in r1
        assert re.sub(r"\s+", "", back) == re.sub(r"\s+", "", response)  # at most whitespace at section edges differs
        untouched += back == response
        parts = split_thought(response)
        assert parts.markup == "sky-t1" and parts.head + parts.thought + parts.tail == response
        assert parts.thought == thought
    assert untouched == 12  # the 12 responses in Sky-T1's exact layout come back byte for byte


# ----------------------------------------------------------------------------- prompts


def test_system_prompt():
    assert markup.system_prompt("sky-t1", "mine") == markup.SKY_T1_SYSTEM_PROMPT
    assert markup.SKY_T1_SYSTEM_PROMPT.startswith("Your role as an assistant involves thoroughly exploring questions")
    assert markup.system_prompt("r1", "mine") is None
    assert markup.system_prompt("keep", "mine") == "mine" and markup.system_prompt("keep") is None
    with pytest.raises(ValueError, match="think"):
        markup.system_prompt("think")


CODE_STDIN = (
    "Generate an executable Python function generated from the given prompt. The function should take stdin as input "
    "and print the output. Simply call the function after the definition."
)
CODE_CALL = (
    "Generate an executable Python function generated from the given prompt. Return the function body without "
    "invoking it at the final solution."
)
STARTER = "class Solution:\n    def add(self, a, b):"


def test_training_prompt():
    assert (
        markup.training_prompt("What is 2 + 2?", "math")
        == "Return your final response within \\boxed{}. What is 2 + 2?"
    )
    assert markup.training_prompt("Add.", "math", STARTER).endswith("}. Add.")  # starter code is for code only
    assert markup.training_prompt("Read two numbers.", "code") == CODE_STDIN + " Read two numbers."
    assert markup.training_prompt("Add two numbers.", "code", STARTER) == f"{CODE_CALL} Add two numbers.\n{STARTER}"


def test_boilerplate_strips_the_training_instructions_and_nothing_else():
    for domain, starter in (("math", ""), ("code", ""), ("code", STARTER)):
        prompt = markup.training_prompt("Sum the digits of n.", domain, starter)
        assert markup.BOILERPLATE.sub("", prompt).strip() == f"Sum the digits of n.\n{starter}".strip()
    step = "What is 1 + 1?\nPlease reason step by step, and put your final answer within \\boxed{}."
    assert markup.BOILERPLATE.sub("", step).strip() == "What is 1 + 1?"
    assert markup.BOILERPLATE.sub("", "Return the final answer.") == "Return the final answer."


def test_eval_messages_math():
    problem = {"kind": "math", "problem": "What is 2 + 2?"}
    assert eval_messages(problem, "sky-t1") == [
        {"role": "system", "content": markup.SKY_T1_SYSTEM_PROMPT},
        {"role": "user", "content": "Return your final response within \\boxed{}. What is 2 + 2?"},
    ]
    step = "What is 2 + 2?\nPlease reason step by step, and put your final answer within \\boxed{}."
    assert eval_messages(problem, "step-by-step") == [{"role": "user", "content": step}]
    assert eval_messages(problem, "none") == [{"role": "user", "content": "What is 2 + 2?"}]


@pytest.mark.parametrize("testtype, starter", [("stdin", ""), ("functional", STARTER), ("stdin", STARTER)])
def test_eval_messages_code(testtype, starter):
    problem = {
        "kind": "code",
        "problem": "Add two numbers.",
        "tests": [{"input": "1 2", "output": "3", "testtype": testtype}],
    }
    if starter:
        problem["starter_code"] = starter
    body = "Add two numbers."
    if starter:
        body += f"\n\nUse the following starter code:\n```python\n{starter}\n```"
    instruction = CODE_STDIN if testtype == "stdin" else CODE_CALL
    user = f"{instruction} {body}\n\nPut your final solution in a single ```python code block."
    assert eval_messages(problem, "sky-t1") == [
        {"role": "system", "content": markup.SKY_T1_SYSTEM_PROMPT},
        {"role": "user", "content": user},
    ]
    assert eval_messages(problem, "step-by-step") == [{"role": "user", "content": user}]
    assert eval_messages(problem, "none") == [{"role": "user", "content": body}]  # the bare problem
