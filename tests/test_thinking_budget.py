"""thinking_budget.py: s1's budget forcing against a scripted backend (each rule exactly), then on the tiny model
through evaluate.py --backend hf, --thinking-budgets writing the test-time scaling table and plot."""

import json
from types import SimpleNamespace

import pytest

import evaluate
import generation
import thinking_budget
from markup import BEGIN_SOLUTION, END_THOUGHT, THINK_CLOSE
from thinking_budget import ANSWER_CUE, CLOSINGS, WAIT


def settings(min_thinking: int = 0, style: str = "sky-t1") -> SimpleNamespace:
    return SimpleNamespace(min_thinking_tokens=min_thinking, max_answer_tokens=5, prompt_style=style)


class Scripted:
    """A backend whose thought steps return the next scripted (text, tokens, finish_reason), cut to the request's
    max_tokens (one token per character), and whose answer is always '\\boxed{4}' in 3 tokens."""

    def __init__(self, steps: list[tuple[str, str]]):
        self.steps, self.requests = list(steps), []

    def __call__(self, requests: list[dict]) -> list[tuple[str, int, str]]:
        self.requests.append(requests)
        out = []
        for r in requests:
            if not r["stop"]:
                out.append(("\\boxed{4}", 3, "stop"))
                continue
            text, reason = self.steps.pop(0)
            if len(text) > r["max_tokens"]:
                text, reason = text[: r["max_tokens"]], "length"
            out.append((text, len(text), reason))
        return out


def force(complete, cfg, budget: int, prompt: str = "<|im_start|>assistant\n") -> dict:
    job = {"seed": 11, "max_thinking_tokens": budget}
    return thinking_budget.force([job], [prompt], complete, len, cfg)[0]


def test_a_thought_at_the_budget_is_ended_in_its_markup_with_the_answer_cue():
    complete = Scripted([("x" * 50, "stop")])
    sample = force(complete, settings(), budget=10)
    closing = f"\n\n{END_THOUGHT}\n\n{BEGIN_SOLUTION}\n\n"
    assert sample["response"] == "x" * 10 + closing + ANSWER_CUE + "\\boxed{4}"
    assert (sample["thinking_tokens"], sample["answer_tokens"], sample["tokens"]) == (10, 3, 13)
    assert sample["thought_cut"] and sample["finish_reason"] == "stop" and sample["waits"] == 0
    think, answer = complete.requests[0][0], complete.requests[1][0]
    assert think["max_tokens"] == 10 and think["stop"] == [END_THOUGHT, THINK_CLOSE] and think["seed"] == 11
    assert answer["prompt"] == "<|im_start|>assistant\n" + "x" * 10 + closing + ANSWER_CUE
    assert answer["max_tokens"] == 5 and answer["stop"] == [] and answer["seed"] != 11  # new draws after the cut
    # R1: the template opened <think>, so the thought is closed with </think>
    r1 = force(Scripted([("y" * 50, "stop")]), settings(style="none"), 4, prompt="<|im_start|>assistant\n<think>\n")
    assert r1["response"] == "yyyy" + CLOSINGS["r1"] + ANSWER_CUE + "\\boxed{4}"


def test_a_thought_ended_within_the_budget_is_kept_and_answered():
    complete = Scripted([(f"short{THINK_CLOSE}", "stop")])
    sample = force(complete, settings(), budget=100)
    assert sample["response"] == f"short{THINK_CLOSE}\\boxed{{4}}" and not sample["thought_cut"]
    assert complete.requests[1][0]["prompt"].endswith(f"short{THINK_CLOSE}")  # the model's own end, nothing added
    # A reply that ends its turn without closing a thought is complete as it is.
    plain = force(Scripted([("done, \\boxed{4}", "stop")]), settings(), budget=100)
    assert plain["response"] == "done, \\boxed{4}" and plain["answer_tokens"] == 0 and plain["finish_reason"] == "stop"


def test_an_early_end_of_thought_becomes_wait_until_the_minimum():
    steps = [(f"ab{END_THOUGHT}", "stop"), ("cd", "stop"), (f"efgh{END_THOUGHT}", "stop")]
    complete = Scripted(steps)
    sample = force(complete, settings(min_thinking=40), budget=100)
    # "ab" and its marker (21 tokens), Wait (4), "cd" (2) and its end of turn, Wait (4): 31; then 54, past 40
    thought = f"ab{WAIT}cd{WAIT}efgh{END_THOUGHT}"
    assert sample["response"] == thought + "\\boxed{4}" and sample["waits"] == 2 and not sample["thought_cut"]
    prompts = [batch[0]["prompt"] for batch in complete.requests]
    assert prompts[1].endswith(f"ab{WAIT}") and prompts[2].endswith(f"ab{WAIT}cd{WAIT}")
    assert len({batch[0]["seed"] for batch in complete.requests}) == 4
    used = len(f"ab{END_THOUGHT}") + len(WAIT) + 2 + len(WAIT)
    assert complete.requests[2][0]["max_tokens"] == 100 - used
    # No room left in the budget for a "Wait": the model's own end stands.
    short = force(Scripted([(f"ab{THINK_CLOSE}", "stop")]), settings(min_thinking=50), budget=12)
    assert (
        short["response"] == f"ab{THINK_CLOSE}\\boxed{{4}}" and short["waits"] == 0 and short["thinking_tokens"] == 10
    )


def test_thinking_budgets_on_the_tiny_model_write_the_scaling_table_and_plot(
    tiny_model_dir, tmp_path, one_torch_thread
):
    task = tmp_path / "add.jsonl"
    task.write_text(json.dumps({"id": "a", "problem": "What is 2 + 2?", "answer": "4"}) + "\n")
    out = tmp_path / "out"
    args = f"--model {tiny_model_dir} --backend hf --tasks {task} --thinking-budgets 256,512,1024".split()
    args += f"--max-answer-tokens 8 --output-dir {out} --workers 1".split()
    by_budget = evaluate.main(evaluate.parse_args(args))
    assert list(by_budget) == [256, 512, 1024]
    for budget in by_budget:
        (sample,) = [json.loads(line) for line in (out / f"budget-{budget}" / "samples.jsonl").read_text().splitlines()]
        # a random model does not end its thought: it is ended for it at the budget, in Sky-T1 markup (the prompt's)
        assert sample["thought_cut"] and sample["thinking_tokens"] == budget and sample["answer_tokens"] <= 8
        assert CLOSINGS["sky-t1"] + ANSWER_CUE in sample["response"]
        assert by_budget[budget]["add"]["thinking_tokens"] == sample["thinking_tokens"]
    assert (out / "test_time_scaling.png").read_bytes()[:4] == b"\x89PNG"
    table = (out / "test_time_scaling.md").read_text().splitlines()
    assert table[0].split() == ["budget", "add", "acc", "add", "tokens"] and len(table) == 4
    assert json.loads((out / "test_time_scaling.json").read_text())["512"]["add"]["problems"] == 1
    config = json.loads((out / "budget-512" / "config.json").read_text())
    assert config["max_thinking_tokens"] == 512
    with pytest.raises(SystemExit):  # one folder per budget: its samples cannot be mixed with another budget's
        evaluate.main(
            evaluate.parse_args([*args[:-4], "--max-thinking-tokens", "256", "--output-dir", str(out / "budget-512")])
        )


def test_budget_arguments_are_checked():
    with pytest.raises(SystemExit):
        evaluate.parse_args(["--responses", "r.jsonl", "--tasks", "aime24", "--max-thinking-tokens", "8"])
    with pytest.raises(SystemExit):
        evaluate.parse_args(["--model", "m", "--tasks", "aime24", "--backend", "hf", "--thinking-budgets", "8,x"])
    hf = ["--model", "m", "--tasks", "aime24", "--backend", "hf"]
    for flags in (["--min-thinking-tokens", "100", "--max-thinking-tokens", "50"], ["--data-parallel-size", "2"]):
        with pytest.raises(SystemExit):
            evaluate.parse_args([*hf, *flags])
    cfg = evaluate.parse_args([*hf, "--thinking-budgets", "64,8,64"])
    assert cfg.thinking_budgets == [8, 64]
    # the engine the runs share fits the largest budget's thought, its forced end and the answer, not --max-tokens
    characters = lambda text, add_special_tokens=False: {"input_ids": list(text)}  # noqa: E731 - one token a character
    longest_end = max(len(closing + ANSWER_CUE) for closing in CLOSINGS.values())
    assert generation.max_new_tokens(cfg, characters) == 64 + longest_end + cfg.max_answer_tokens
    assert generation.max_new_tokens(evaluate.parse_args(hf), characters) == 32768  # no budget: --max-tokens


def test_hf_stops_a_thought_at_its_end_marker(tiny_model_dir, tmp_path, monkeypatch, one_torch_thread):
    """The end of thought as the hf backend finds it: cut right after the marker, counted up to the token that
    completes it (as vLLM counts), then the answer follows the model's own end. The random model's greedy text
    stands in for a marker it writes."""
    task = tmp_path / "one.jsonl"
    task.write_text(json.dumps({"id": "a", "problem": "What is 2 + 2?", "answer": "4"}) + "\n")
    base = f"--model {tiny_model_dir} --backend hf --tasks {task} --workers 1".split()
    evaluate.main(evaluate.parse_args([*base, "--max-tokens", "40", "--output-dir", str(tmp_path / "plain")]))
    plain = json.loads((tmp_path / "plain" / "samples.jsonl").read_text())["response"]
    marker = next(word for word in plain[6:].split() if len(word) >= 4 and word.isalpha())
    monkeypatch.setattr(thinking_budget, "END_MARKERS", [marker])
    args = [*base, "--max-thinking-tokens", "40", "--max-answer-tokens", "5", "--output-dir", str(tmp_path / "cut")]
    evaluate.main(evaluate.parse_args(args))
    sample = json.loads((tmp_path / "cut" / "samples.jsonl").read_text())
    thought = plain[: plain.index(marker) + len(marker)]
    assert sample["response"].startswith(thought) and not sample["thought_cut"]
    assert sample["answer_tokens"] == 5 and len(sample["response"]) > len(thought)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    ids = tokenizer(plain, add_special_tokens=False)["input_ids"]
    fewest = next(n for n in range(1, len(ids) + 1) if marker in tokenizer.decode(ids[:n]))
    assert sample["thinking_tokens"] == fewest
