"""reasoning_steps.py: the blank-line splitter's merging rules on an exact thought; the model segmenter's copy aligned
back onto the thought's bytes (a fake `ask`, no server: perturb.py's --splitter llm against a local server is tested in
test_perturb.py); and, for any text, that steps and separators give the thought back exactly."""

import sys
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import reasoning_steps  # noqa: E402


def test_blank_line_splitter_merges_fragments_into_meaningful_steps():
    parts = [
        "First we set up the energy balance for the whole system.",
        "The flux through the surface of the star follows the law below.",
        "\\[ F = \\sigma T^4 \\quad \\text{with T the effective temperature} \\]",  # display math
        "where sigma is the Stefan-Boltzmann constant in cgs units here.",  # lower case: same sentence
        "Ok.",  # under --min-step-chars
        "Now the code we would run to check all of the arithmetic:",
        "```python\nX = 1 + 2 + 3 + 4 + 5 + 6 + 7 + 8 + 9 + 10 + 11",  # introduced by ':'
        "Z = X * 2  # double the sum to compare with the table later\n```",  # inside an open fence
        "Wait, that seems too large, so let me recompute the radius.",
    ]
    thought = "\n\n".join(parts[:4]) + "\n \n\n" + "\n\n".join(parts[4:])
    steps, seps = reasoning_steps.split_steps(thought, 40)
    assert reasoning_steps.join_steps(steps, seps) == thought
    assert [s.replace("\n \n\n", "\n\n") for s in steps] == [
        "\n\n".join(p) for p in (parts[:1], parts[1:5], parts[5:8], parts[8:])
    ]
    assert seps == ["\n\n"] * 3


def test_llm_split_aligns_the_models_copy_onto_the_original_bytes():
    thought = "First  we add 2 and 3.\nThat gives 5.\n\nWait, let me check: 5 - 3 = 2.\n\n\\[ x = 5 \\]"
    asked = []

    def ask(reply):
        def one_turn(prompt, reply_limit, **sampling):
            asked.append((prompt, reply_limit, sampling))
            return reply

        return one_turn

    # the model re-spaced the text and cut it at the reflection: the steps are the thought's own bytes
    copy = "First we add 2 and 3. That gives 5.\n[STEP]\nWait, let me check: 5 - 3 = 2.\n[STEP]\n\\[ x = 5 \\]"
    steps, seps = reasoning_steps.llm_split(thought, ask(copy))
    assert steps == ["First  we add 2 and 3.\nThat gives 5.", "Wait, let me check: 5 - 3 = 2.", "\\[ x = 5 \\]"]
    assert seps == ["\n\n", "\n\n"] and reasoning_steps.join_steps(steps, seps) == thought
    prompt, reply_limit, sampling = asked[0]
    assert f"<reasoning>\n{thought}\n</reasoning>" in prompt and "[STEP]" in prompt
    assert reply_limit == len(thought) and sampling == {"temperature": 0.0}
    # a copy that changed, dropped or added a character, or no reply at all: None, and the caller falls back
    assert reasoning_steps.llm_split(thought, ask(copy.replace("5 - 3", "5 - 2"))) is None
    assert reasoning_steps.llm_split(thought, ask(copy.replace("\\[ x = 5 \\]", ""))) is None
    assert reasoning_steps.llm_split(thought, ask(copy + " Done.")) is None
    assert reasoning_steps.llm_split(thought, ask(None)) is None
    assert reasoning_steps.llm_split("", ask(copy)) == ([], []) and len(asked) == 5  # nothing asked for no thought


TEXT = st.text(st.sampled_from(list("ab =:$`\\[]\n\t")) | st.characters(), max_size=300)


@settings(max_examples=200, deadline=None)
@given(thought=TEXT, min_chars=st.integers(0, 60), cuts=st.lists(st.integers(0, 300), max_size=8))
def test_steps_and_separators_give_any_thought_back(thought, min_chars, cuts):
    steps, seps = reasoning_steps.split_steps(thought, min_chars)
    assert reasoning_steps.join_steps(steps, seps) == thought and len(seps) == max(len(steps) - 1, 0)
    # any segmentation of the thought, re-spaced as a model might copy it, aligns back onto the thought's bytes
    bounds = sorted({min(c, len(thought)) for c in cuts} | {0, len(thought)})
    copy = [" ".join(thought[a:b].split()) for a, b in zip(bounds, bounds[1:])]
    aligned = reasoning_steps.align_segments(thought, copy)
    assert aligned is not None and reasoning_steps.join_steps(*aligned) == thought.strip()
    assert all(step == step.strip() and step for step in aligned[0])
