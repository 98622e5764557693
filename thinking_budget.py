"""Thinking budget: s1's budget forcing (Muennighoff et al. 2025, "s1: Simple test-time scaling", section 3.1), for
every backend of evaluate.py, and the test-time scaling table and plot of --thinking-budgets.

    python evaluate.py --model M --tasks aime24 --max-thinking-tokens 4096                 # cap the thought
    python evaluate.py --model M --tasks aime24 --min-thinking-tokens 2048                 # extend it with "Wait"
    python evaluate.py --model M --tasks aime24,math500 --thinking-budgets 1024,2048,4096  # the scaling curve

How a sample is generated (s1's README, "vLLM with budget forcing", and its lm-evaluation-harness fork,
eval/lm-evaluation-harness/lm_eval/models/vllm_causallms.py: thinking_n_ignore, thinking_n_ignore_str "Wait", the
"Final Answer:" cue):
  1. think: generate from the prompt, at most the tokens left of the budget, stopping at the model's own end of thought
     (Sky-T1 <|end_of_thought|>, R1 </think>) or its end of turn;
  2. an end of thought before --min-thinking-tokens is replaced with "Wait" and the thought goes on (step 1 again);
  3. a thought that reaches --max-thinking-tokens is ended for the model: its own end-of-thought markup (Sky-T1 also
     opens the solution) and the cue "Final Answer: ", so that it answers instead of thinking on;
  4. answer: generate at most --max-answer-tokens from the prompt, the thought and its end.
Each step continues the text so far (prompt + thought, as s1 does), so hf, vllm and openai (its completions endpoint)
generate the same greedy samples. A sample records thinking_tokens (generated in the thought, with the inserted
"Wait"s), answer_tokens, waits, and thought_cut (the budget ended it).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import utils
from markup import BEGIN_SOLUTION, BEGIN_THOUGHT, END_THOUGHT, THINK_CLOSE, THINK_OPEN

END_MARKERS = [END_THOUGHT, THINK_CLOSE]  # a model writes its own; stopping at both serves either markup
# What ends a thought for the model, in each markup's own layout (markup.format_response).
CLOSINGS = {"r1": f"\n{THINK_CLOSE}\n\n", "sky-t1": f"\n\n{END_THOUGHT}\n\n{BEGIN_SOLUTION}\n\n"}
ANSWER_CUE = "Final Answer: "  # s1's cue, so the model answers instead of going on thinking after the forced end
WAIT = "Wait"  # s1's string to extend a thought (its ablation: better than none, "Hmm" or "Alternatively")

# complete(requests) -> [(text, tokens, finish_reason)] per request {"prompt", "max_tokens", "seed", "stop"}: the
# backend continues each prompt text; a text that stopped at a stop string ends with it.
Complete = Callable[[list[dict]], list[tuple[str, int, str | None]]]


def markup_for(prompt: str, thought: str, prompt_style: str) -> str:
    """The markup a thought is written in: Sky-T1 if it opened <|begin_of_thought|>, R1 if it or the prompt (R1's
    template ends with <think>) opened <think>; otherwise Sky-T1 for the Sky-T1 prompts and R1's for the others."""
    if BEGIN_THOUGHT in thought:
        return "sky-t1"
    if THINK_OPEN in thought or prompt.rstrip().endswith(THINK_OPEN):
        return "r1"
    return "sky-t1" if prompt_style.startswith("sky-t1") else "r1"


def max_new_tokens(max_thinking: int, max_answer: int, count_tokens: Callable[[str], int]) -> int:
    """The most tokens a budget-forced sample adds to its prompt: the thought, the forced end, the answer."""
    return max_thinking + max(count_tokens(c + ANSWER_CUE) for c in CLOSINGS.values()) + max_answer


@dataclass(eq=False)  # a sample is itself, not any sample with the same fields
class _Sample:
    prompt: str
    seed: int
    max_thinking: int
    thought: str = ""
    closing: str = ""
    thinking_tokens: int = 0
    waits: int = 0
    steps: int = 0  # calls to the backend so far
    cut: bool = False
    answer: tuple[str, int, str | None] = field(default=("", 0, None))


def step_seed(sample: _Sample) -> int:
    """The sample's seed for its first call, then a new one per call: the same seed again would replay the same
    random draws after a "Wait" or the forced end."""
    sample.steps += 1
    return sample.seed if sample.steps == 1 else (sample.seed * 1_000_003 + sample.steps) % 2**31


def force(jobs: list[dict], prompts: list[str], complete: Complete, count_tokens, cfg, room=None) -> list[dict]:
    """Budget-forced samples of a chunk: per job {"response", "tokens", "finish_reason", "thinking_tokens",
    "answer_tokens", "waits", "thought_cut"}. Each job carries its budget (max_thinking_tokens); cfg gives
    min_thinking_tokens, max_answer_tokens and prompt_style. room(text) -> the tokens the engine's context has left
    after text (None: no limit): a thought stops where its forced end and one answer token still fit, and a sample
    with no room left for its answer ends there (finish_reason "length", no answer), as a plain sample would."""
    room = room or (lambda text: math.inf)
    forced_end = max(count_tokens(c + ANSWER_CUE) for c in CLOSINGS.values())
    samples = [_Sample(p, job["seed"], job["max_thinking_tokens"]) for job, p in zip(jobs, prompts)]
    thinking = list(samples)
    while thinking:
        limits = [
            min(s.max_thinking - s.thinking_tokens, room(s.prompt + s.thought) - forced_end - 1) for s in thinking
        ]
        asked = [(s, limit) for s, limit in zip(thinking, limits) if limit >= 1]  # never a request for < 1 token
        requests = [
            {"prompt": s.prompt + s.thought, "max_tokens": limit, "seed": step_seed(s), "stop": END_MARKERS}
            for s, limit in asked
        ]
        replies = iter(complete(requests) if requests else [])
        # A full context ends the thought as the budget would: no tokens generated, not ended by the model.
        outputs = [next(replies) if limit >= 1 else ("", 0, "length") for limit in limits]
        still = []
        for s, (text, tokens, reason) in zip(thinking, outputs):
            s.thought += text
            s.thinking_tokens += tokens
            marker = next((m for m in END_MARKERS if s.thought.endswith(m)), None)
            ended = marker is not None or reason == "stop"  # its end of thought, or of the whole reply
            # s1: an early end is ignored and "Wait" appended, while the budget has room for it
            wait = count_tokens(WAIT)
            if ended and s.thinking_tokens < cfg.min_thinking_tokens and s.thinking_tokens + wait < s.max_thinking:
                s.thought = (s.thought[: -len(marker)] if marker else s.thought) + WAIT
                s.thinking_tokens += wait
                s.waits += 1
                still.append(s)
                continue
            if not ended:  # the budget (or the context) is spent: end the thought for the model
                s.closing, s.cut = CLOSINGS[markup_for(s.prompt, s.thought, cfg.prompt_style)] + ANSWER_CUE, True
        thinking = still
    answering = [s for s in samples if s.cut or any(s.thought.endswith(m) for m in END_MARKERS)]
    limits = [min(cfg.max_answer_tokens, room(s.prompt + s.thought + s.closing)) for s in answering]
    asked = [(s, limit) for s, limit in zip(answering, limits) if limit >= 1]
    requests = [
        {"prompt": s.prompt + s.thought + s.closing, "max_tokens": limit, "seed": step_seed(s), "stop": []}
        for s, limit in asked
    ]
    for (s, _), output in zip(asked, complete(requests) if requests else []):
        s.answer = output
    for s, limit in zip(answering, limits):
        if limit < 1:  # the context is full: cut off with no answer, as at --max-tokens
            s.answer = ("", 0, "length")
    records = []
    for s in samples:
        text, tokens, reason = s.answer
        # A reply that ended without closing its thought (its end of turn, past --min-thinking-tokens) is complete.
        reason = reason if s in answering else "stop"
        record = {"response": s.thought + s.closing + text, "tokens": s.thinking_tokens + tokens}
        record |= {"finish_reason": reason, "thinking_tokens": s.thinking_tokens, "answer_tokens": tokens}
        records.append(record | {"waits": s.waits, "thought_cut": s.cut})
    return records


# ----------------------------------------------------------------------------- --thinking-budgets


def scaling_table(by_budget: dict[int, dict]) -> str:
    """Accuracy (%) per task and budget, with the mean thinking tokens the samples used: s1's Figure 1 as a table."""
    tasks = list(next(iter(by_budget.values())))
    header = ["budget", *(f"{task} acc" for task in tasks), *(f"{task} tokens" for task in tasks)]
    rows = []
    for budget, results in by_budget.items():
        accuracy = [f"{100 * results[task]['accuracy']:.1f}" for task in tasks]
        rows.append([budget, *accuracy, *(round(results[task]["thinking_tokens"]) for task in tasks)])
    return utils.format_table(header, rows)


def write_scaling(out_dir: Path, by_budget: dict[int, dict]) -> None:
    """test_time_scaling.json, .md and .png: accuracy against the thinking budget, one line per task."""
    summary = {
        str(b): {t: {k: r[k] for k in ("accuracy", "thinking_tokens", "problems", "n")} for t, r in results.items()}
        for b, results in by_budget.items()
    }
    utils.atomic_write_text(out_dir / "test_time_scaling.json", json.dumps(summary, indent=2) + "\n")
    utils.atomic_write_text(out_dir / "test_time_scaling.md", scaling_table(by_budget) + "\n")
    plt = utils.pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    budgets = list(by_budget)
    for task in next(iter(by_budget.values())):
        ax.plot(budgets, [100 * by_budget[b][task]["accuracy"] for b in budgets], marker="o", label=task)
    ax.set_xscale("log", base=2)
    ax.set_xticks(budgets, [str(b) for b in budgets])
    ax.set(xlabel="thinking budget (tokens, --max-thinking-tokens)", ylabel="accuracy (%)")
    ax.set_title("Test-time scaling with budget forcing")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    utils.save_figure(fig, out_dir / "test_time_scaling.png", dpi=120)
