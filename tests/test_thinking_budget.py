"""thinking_budget.py: s1's budget forcing against a scripted backend (each rule exactly), then on the tiny model
through evaluate.py --backend hf, --thinking-budgets writing the test-time scaling table and plot."""

import importlib.machinery
import json
import sys
import types
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


def test_a_full_context_ends_the_thought_and_never_asks_for_less_than_one_token():
    """vLLM's max_model_len (capped at the model's max_position_embeddings) may be shorter than budget + forced end
    + answer: the thought stops where its forced end and one answer token fit, and with no room left the sample ends
    with no answer, cut off ("length"), as a plain sample at the context's end."""
    prompt, closing = "<|im_start|>assistant\n", CLOSINGS["sky-t1"] + ANSWER_CUE
    forced_end = max(len(c + ANSWER_CUE) for c in CLOSINGS.values())
    context = len(prompt) + 20 + forced_end + 1
    complete = Scripted([("x" * 50, "stop")])
    job = {"seed": 11, "max_thinking_tokens": 100}
    room = lambda text: context - len(text)  # noqa: E731 - one token a character
    (sample,) = thinking_budget.force([job], [prompt], complete, len, settings(), room)
    think, answer = complete.requests[0][0], complete.requests[1][0]
    assert think["max_tokens"] == 20 and sample["thought_cut"] and sample["thinking_tokens"] == 20
    assert answer["prompt"] == prompt + "x" * 20 + closing and 1 <= answer["max_tokens"] <= 5
    assert sample["response"] == "x" * 20 + closing + "\\boxed{4}"

    # A prompt that fills the context, or a "Wait" after an early end of turn that leaves no room: no request below
    # one token, and no answer.
    for context, min_thinking in ((len(prompt) + forced_end, 0), (len(prompt) + forced_end + 4, 40)):
        complete = Scripted([("abc", "stop")])
        room = lambda text, context=context: context - len(text)  # noqa: E731
        (sample,) = thinking_budget.force([job], [prompt], complete, len, settings(min_thinking), room)
        assert all(r["max_tokens"] >= 1 for batch in complete.requests for r in batch)
        assert sample["finish_reason"] == "length" and sample["answer_tokens"] == 0 and sample["thought_cut"]
        assert sample["response"].endswith(closing) and sample["waits"] == (1 if min_thinking else 0)


def test_zero_or_negative_thinking_flags_are_refused_by_name(capsys):
    hf = ["--model", "m", "--tasks", "aime24", "--backend", "hf"]
    for flags, name in (
        (["--max-thinking-tokens", "0"], "--max-thinking-tokens"),
        (["--min-thinking-tokens", "-1"], "--min-thinking-tokens"),
    ):
        with pytest.raises(SystemExit):
            evaluate.parse_args([*hf, *flags])
        assert f"{name} must be at least" in capsys.readouterr().err
    assert (
        generation.job_budget(SimpleNamespace(max_thinking_tokens=5, min_thinking_tokens=0, thinking_budgets=None)) == 5
    )


def test_answer_and_minimum_settings_guard_a_folder_only_under_a_thinking_budget(tmp_path):
    base = ["--model", "m", "--tasks", "aime24", "--backend", "hf"]
    evaluate.check_config(tmp_path, evaluate.parse_args(base))
    evaluate.check_config(tmp_path, evaluate.parse_args([*base, "--max-answer-tokens", "64"]))  # no budget: unused
    assert "max_answer_tokens" not in evaluate.run_settings(evaluate.parse_args(base))
    budget = [*base, "--max-thinking-tokens", "32"]
    (tmp_path / "b").mkdir()
    evaluate.check_config(tmp_path / "b", evaluate.parse_args(budget))
    for flags in (["--max-answer-tokens", "64"], ["--min-thinking-tokens", "8"]):
        with pytest.raises(SystemExit, match=flags[0][2:].replace("-", "_")):
            evaluate.check_config(tmp_path / "b", evaluate.parse_args([*budget, *flags]))
    with pytest.raises(SystemExit, match="min_thinking_tokens 0 -> 8"):  # it turns budget forcing on
        evaluate.check_config(tmp_path, evaluate.parse_args([*base, "--min-thinking-tokens", "8"]))


class FillingLLM:
    """vllm.LLM whose every request fills its max_tokens with <|im_start|> (one token each, also re-encoded)."""

    params: list = []

    def __init__(self, **engine):
        FillingLLM.engine = engine

    def generate(self, prompts, params, lora_request=None):
        FillingLLM.params += params
        out = [SimpleNamespace(text="<|im_start|>" * p.max_tokens, token_ids=[1] * p.max_tokens) for p in params]
        return [SimpleNamespace(outputs=[SimpleNamespace(**o.__dict__, finish_reason="length")]) for o in out]


@pytest.fixture
def filling_vllm(monkeypatch):
    module = types.ModuleType("vllm")
    module.__spec__ = importlib.machinery.ModuleSpec("vllm", None)
    module.LLM, module.SamplingParams = FillingLLM, SimpleNamespace  # SimpleNamespace takes max_tokens < 1 silently
    monkeypatch.setitem(sys.modules, "vllm", module)
    FillingLLM.params = []


def test_vllm_at_the_models_context_limit_never_asks_for_less_than_one_token(
    filling_vllm, tiny_model_dir, tmp_path, monkeypatch
):
    import transformers

    task = tmp_path / "one.jsonl"
    task.write_text(json.dumps({"id": "a", "problem": "What is 2 + 2?", "answer": "4"}) + "\n")
    tokenizer = transformers.AutoTokenizer.from_pretrained(tiny_model_dir)
    prompt = generation.prompt_text(
        tokenizer, evaluate.eval_messages({"kind": "math", "problem": "What is 2 + 2?"}, "sky-t1")
    )
    limit = len(tokenizer(prompt, add_special_tokens=False)["input_ids"]) + 40  # the budget of 64 does not fit
    real = transformers.AutoConfig.from_pretrained

    def config(*args, **kwargs):  # the tiny model with a short context, as vllm_backend reads it
        loaded = real(*args, **kwargs)
        loaded.max_position_embeddings = limit
        return loaded

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", config)
    args = f"--model {tiny_model_dir} --tasks {task} --max-thinking-tokens 64 --max-answer-tokens 8".split()
    evaluate.main(evaluate.parse_args([*args, "--output-dir", str(tmp_path / "out"), "--workers", "1"]))
    assert FillingLLM.engine["max_model_len"] == limit
    assert [p.max_tokens >= 1 for p in FillingLLM.params] == [True, True]  # the thought, then the answer
    (sample,) = [json.loads(line) for line in (tmp_path / "out" / "samples.jsonl").read_text().splitlines()]
    assert (
        sample["thought_cut"] and sample["answer_tokens"] >= 1 and CLOSINGS["sky-t1"] + ANSWER_CUE in sample["response"]
    )
    assert len(tokenizer(prompt + sample["response"], add_special_tokens=False)["input_ids"]) <= limit


def test_thinking_budgets_size_the_engine_for_every_problem_on_a_resume(filling_vllm, tiny_model_dir, tmp_path):
    """The engine the budgets share is built once: for every problem's prompt, not for what the first budget's run
    (a resume) has left to do."""
    task = tmp_path / "two.jsonl"
    problems = [{"id": "long", "problem": "What is " + " + ".join(["2"] * 100) + "?", "answer": "200"}]
    task.write_text("".join(json.dumps(p) + "\n" for p in [*problems, {"id": "short", "problem": "1?", "answer": "1"}]))
    out = tmp_path / "out"
    args = f"--model {tiny_model_dir} --tasks {task} --max-answer-tokens 4 --output-dir {out} --workers 1".split()
    evaluate.main(evaluate.parse_args([*args, "--thinking-budgets", "8"]))
    full = FillingLLM.engine["max_model_len"]
    for name in ("generations.jsonl", "samples.jsonl"):  # budget 8 left with the short problem to do
        path = out / "budget-8" / name
        path.write_text("".join(line + "\n" for line in path.read_text().splitlines() if '"long"' in line))
    evaluate.main(evaluate.parse_args([*args, "--thinking-budgets", "8,16"]))
    assert FillingLLM.engine["max_model_len"] == full + 8  # the long prompt, and the larger budget


def test_openai_runs_every_budget_concurrently_after_a_resume(tiny_model_dir, tmp_path, monkeypatch):
    """The openai backend is set up once for all budgets: its requests are not chunked by the first run's job count
    (one, on a resume), so a later budget's samples are still sent side by side."""
    import threading
    import time

    import openai_client

    lock, flight = threading.Lock(), {"now": 0, "most": 0}

    def reply(base_url, model, messages, prompt=None, max_tokens=1, **request):
        with lock:
            flight["now"] += 1
            flight["most"] = max(flight["most"], flight["now"])
        time.sleep(0.2)
        with lock:
            flight["now"] -= 1
        return "x" * max_tokens, max_tokens, "length"

    monkeypatch.setattr(openai_client, "chat_completion", reply)
    task = tmp_path / "three.jsonl"
    task.write_text("".join(json.dumps({"id": i, "problem": f"{i}?", "answer": "0"}) + "\n" for i in range(3)))
    out = tmp_path / "out"
    args = f"--model {tiny_model_dir} --backend openai --tasks {task} --max-answer-tokens 2".split()
    args += f"--output-dir {out} --workers 1 --concurrency 4".split()
    evaluate.main(evaluate.parse_args([*args, "--thinking-budgets", "4"]))
    for name in ("generations.jsonl", "samples.jsonl"):  # budget 4 left with one sample to do
        path = out / "budget-4" / name
        path.write_text("".join(line + "\n" for line in path.read_text().splitlines() if '"id": "0"' not in line))
    flight["most"] = 0
    evaluate.main(evaluate.parse_args([*args, "--thinking-budgets", "4,8"]))
    assert flight["most"] >= 2  # budget 8's three samples in flight together
