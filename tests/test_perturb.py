"""perturb.py: exact properties on synthetic records; the issue's measured properties on the bundled long-CoT
fixture (tests/data/perturb/long_cot.jsonl). Where a response's thought lies is tested in test_markup.py."""

import contextlib
import json
import re
import subprocess
import sys
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from conftest import send_json  # noqa: E402

import perturb  # noqa: E402
import reasoning_steps  # noqa: E402
from markup import split_thought  # noqa: E402

FIXTURE = REPO / "tests" / "data" / "perturb" / "long_cot.jsonl"
SOLUTION = "To finish, 12 + 30 = 42, so the answer is \\boxed{42}."


def sky_t1(steps, solution=SOLUTION):
    return (
        "<|begin_of_thought|>\n\n"
        + "\n\n".join(steps)
        + "\n\n<|end_of_thought|>\n\n<|begin_of_solution|>\n\n"
        + solution
        + "\n\n<|end_of_solution|>"
    )


def step_text(r, j):
    check = " But let me verify it once more." if j % 2 else ""
    return f"Record {r} step {j}: we add {r * 7 + j} and {j * 3 + 11} and keep going with the plan.{check}"


def synthetic(n_records=6, n_steps=10):
    return [
        {
            "prompt": f"Problem {r}: what is 6 times 7?",
            "response": sky_t1([step_text(r, j) for j in range(n_steps)]),
            "answer": "42",
            "id": f"rec{r}",
        }
        for r in range(n_records)
    ]


def mixed_shapes():
    """Every shape and markup perturb.py must handle, with the thought in the last assistant turn."""
    thought = [step_text(9, j) for j in range(6)]
    return [
        {
            "messages": [
                {"role": "system", "content": "sys"},
                {"role": "user", "content": "q1"},
                {"role": "assistant", "content": "First answer 123."},
                {"role": "user", "content": "q2"},
                {"role": "assistant", "content": sky_t1(thought)},
            ],
            "id": 7,
            "source": "s",
            "n_tokens": 99,
        },
        {
            "system": "sys",
            "conversations": [{"from": "user", "value": "q"}, {"from": "assistant", "value": sky_t1(thought[::-1])}],
        },
        {
            "prompt": "q r1",
            "response": "<think>\n" + "\n\n".join(thought) + "\n</think>\n\nSo the answer is \\boxed{5}.",
        },
        {"prompt": "q plain", "response": "\n\n".join(thought) + "\n\nThus 2 + 3 = \\boxed{5}."},
        {"prompt": "q none", "response": "\n\n".join(thought)},
    ]


def run(tmp_path, records, kind, ratio, *extra, name="out"):
    src = tmp_path / f"{name}_in.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    cfg = perturb.parse_args(
        [
            "--input",
            str(src),
            "--output",
            str(tmp_path / f"{name}.jsonl"),
            "--kind",
            kind,
            "--ratio",
            str(ratio),
            *map(str, extra),
        ]
    )
    report = perturb.main(cfg)
    return [json.loads(line) for line in (tmp_path / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()], report


def assistant(record):
    slot, key = perturb._assistant_slot(record)
    return slot[key]


def thought_steps(record):
    return reasoning_steps.split_steps(split_thought(assistant(record)).thought, 40)[0]


@pytest.mark.parametrize("kind", perturb.KINDS)
def test_ratio_zero_is_byte_identical(tmp_path, kind):
    records = synthetic(3) + mixed_shapes()
    out, report = run(tmp_path, records, kind, 0.0)
    assert [assistant(o) for o in out] == [assistant(r) for r in records]
    assert report["changed"] == 0 and report["unchanged_records"] == len(records)
    assert report["markup"] == {"sky-t1": 5, "r1": 1, "final_block": 1, "none": 1} and report["share"] == 0
    assert out[3]["n_tokens"] == 99 and out[3]["source"] == "s" and out[3]["id"] == 7  # other fields kept


def test_only_the_last_assistant_turn_and_the_thought_change(tmp_path):
    records = mixed_shapes()
    out, _ = run(tmp_path, records, "delete", 0.5)
    assert out[0]["messages"][2]["content"] == "First answer 123."
    for before, after in zip(records, out):
        b, a = split_thought(assistant(before)), split_thought(assistant(after))
        assert (a.head, a.tail) == (b.head, b.tail) and a.thought != b.thought
    assert assistant(out[3]).endswith(
        "\n\nThus 2 + 3 = \\boxed{5}."
    )  # the final block of an unmarked response survives


def fixture_records(copies=1):
    """The bundled fixture, each record `copies` times under its own id (so each draws its own chances)."""
    rows = [json.loads(line) for line in FIXTURE.read_text(encoding="utf-8").splitlines()]
    return [{**r, "id": f"{r['id']}-{k}"} for k in range(copies) for r in rows]


def thought_of(record):
    return split_thought(assistant(record)).thought


def is_subsequence(part, whole):
    rest = iter(whole)
    return all(any(p == w for w in rest) for p in part)


def test_draw_count_is_stochastic_rounding():
    rng = perturb.random.Random(0)
    for n, ratio in [(1, 0.2), (2, 0.33), (7, 0.5), (3, 0.67), (5, 1.0), (9, 0.0)]:
        draws = [perturb.draw_count(ratio, n, rng) for _ in range(4000)]
        assert set(draws) <= {int(ratio * n), int(ratio * n) + 1}
        assert abs(sum(draws) / len(draws) - ratio * n) < 0.05 * n


@pytest.mark.parametrize("kind", ["delete", "shuffle", "insert", "replace"])
def test_realised_share_follows_ratio_on_short_records(tmp_path, kind):
    """round(0.2 x 2) = 0 would leave every 2-step record whole: the share must follow --ratio anyway."""
    short = [{"prompt": f"p{i}", "response": sky_t1([step_text(i, 0), step_text(i, 1)])} for i in range(150)]
    out, report = run(tmp_path, short, kind, 0.2)
    chosen = sum(len(o["perturbation"]["positions"]) for o in out)
    assert 0.14 < chosen / 300 < 0.26 and report["units"] == 300
    if kind != "shuffle":  # a single chosen step cannot move, so shuffle's "moved" share is lower
        assert report["changed"] == chosen and report["share"] == round(chosen / 300, 4)


def test_shuffle_keeps_the_multiset_and_moves_steps(tmp_path):
    records = synthetic(8, 10)
    out, _ = run(tmp_path, records, "shuffle", 1.0)
    for before, after in zip(records, out):
        assert Counter(thought_steps(after)) == Counter(thought_steps(before))
        assert thought_steps(after) != thought_steps(before)
        assert split_thought(assistant(after)).tail == split_thought(assistant(before)).tail
    out, _ = run(tmp_path, records, "shuffle", 0.3)
    for before, after in zip(records, out):
        kept = set(range(10)) - set(after["perturbation"]["positions"])
        assert len(after["perturbation"]["positions"]) == 3
        assert all(thought_steps(after)[i] == thought_steps(before)[i] for i in kept)
    # two chosen steps: a plain shuffle would keep their order half the time; the rotation never does
    two = [{"prompt": f"p{i}", "response": sky_t1([step_text(i, 0), step_text(i, 1)])} for i in range(20)]
    out, _ = run(tmp_path, two, "shuffle", 1.0)
    assert all(o["perturbation"]["n_changed"] == 2 for o in out)


@pytest.mark.parametrize("ratio", [0.33, 0.67, 1.0])
def test_delete_removes_the_drawn_steps_in_order(tmp_path, ratio):
    records = synthetic(5, 10)
    out, report = run(tmp_path, records, "delete", ratio)
    for before, after in zip(records, out):
        positions = after["perturbation"]["positions"]
        assert len(positions) in (int(ratio * 10), int(ratio * 10) + 1)
        assert thought_steps(after) == [s for i, s in enumerate(thought_steps(before)) if i not in positions]
        assert assistant(after).endswith(split_thought(assistant(before)).tail)
    assert report["changed"] == sum(len(o["perturbation"]["positions"]) for o in out)


def test_insert_keeps_every_own_step_in_order_and_adds_ratio_of_them(tmp_path):
    records = fixture_records()
    out, report = run(tmp_path, records, "insert", 0.5)
    added = 0
    for before, after in zip(records, out):
        own, summary = thought_steps(before), after["perturbation"]
        new_steps = reasoning_steps.split_steps(thought_of(after), 40)[0]
        assert is_subsequence(own, new_steps) and len(new_steps) == len(own) + summary["n_changed"]
        assert summary["n_changed"] in (len(own) // 2, (len(own) + 1) // 2)
        by_id = {r["id"]: r for r in records}
        for pos, (source_id, source_step) in zip(summary["positions"], summary["sources"]):
            assert source_id != before["id"] and new_steps[pos] == thought_steps(by_id[source_id])[source_step]
        assert split_thought(assistant(after)).tail == split_thought(assistant(before)).tail
        added += summary["n_changed"]
    assert report["changed"] == added and 0.4 < added / report["units"] < 0.6
    with pytest.raises(perturb.DataError, match="at least two records"):
        run(tmp_path, synthetic(1, 10), "insert", 0.5)


def test_replace_overwrites_steps_with_steps_of_other_records(tmp_path):
    records = synthetic(6, 10)
    out, _ = run(tmp_path, records, "replace", 0.5)
    for r, after in enumerate(out):
        steps, summary = thought_steps(after), after["perturbation"]
        assert len(steps) == 10 and summary["n_changed"] == 5
        for pos, (source_id, source_step) in zip(summary["positions"], summary["sources"]):
            assert source_id != f"rec{r}" and steps[pos] == step_text(int(source_id[3:]), source_step)
        for pos in set(range(10)) - set(summary["positions"]):
            assert steps[pos] == step_text(r, pos)


def test_digits_default_is_the_authors_number_mode(tmp_path, capsys):
    records = fixture_records()
    out, report = run(tmp_path, records, "digits", 1.0)
    number = re.compile(r"\b\d+(?:\.\d+)?\b")
    found = [m.group() for r in records for m in number.finditer(assistant(r))]
    assert report["units"] == len(found) and sum(float(n) > 10 for n in found) > 20
    assert all(0 <= float(m.group()) <= 10 for o in out for m in number.finditer(assistant(o)))
    assert all(o["perturbation"]["digit_mode"] == "number" for o in out)
    assert 0 < report["chars_changed"] <= sum(len(n) for n in found) and report["chars_total"] == sum(
        len(assistant(r)) for r in records
    )
    assert f"characters changed: {report['chars_changed']} of {report['chars_total']}" in capsys.readouterr().out
    out, report = run(tmp_path, records, "digits", 0.0)
    assert report["chars_changed"] == 0 and [assistant(o) for o in out] == [assistant(r) for r in records]


def test_digit_mode_number_replaces_whole_numbers(tmp_path):
    record = {"prompt": "p", "response": sky_t1(["Here pi is 3.14159 and 1234 apples cost 56 coins today, as stated."])}
    out, report = run(tmp_path, [record], "digits", 1.0)
    new_thought = split_thought(assistant(out[0])).thought
    numbers = re.findall(r"\d+(?:\.\d+)?", new_thought)
    assert report["units"] == 3 + 4 and len(numbers) == 3  # the solution's four numbers count too
    assert all(0 <= int(n) <= 10 for n in numbers)
    assert re.sub(r"\d+(?:\.\d+)?", "N", new_thought) == "Here pi is N and N apples cost N coins today, as stated."
    assert report["chars_changed"] == sum(o["perturbation"]["chars_changed"] for o in out)


def test_digit_mode_digit_is_uniform_and_nothing_else_moves(tmp_path):
    thought = ["Compute 7777 + 77.77 = x, then 777 * 7 (seven sevens) over and over again. " * 40 for _ in range(5)]
    record = {"prompt": "p", "response": sky_t1(thought)}
    out, report = run(tmp_path, [record], "digits", 1.0, "--digit-mode", "digit")
    before, after = assistant(record), assistant(out[0])
    assert len(after) == len(before)
    assert all(a == b for a, b in zip(after, before) if not b.isdigit())
    digits = [a for a, b in zip(after, before) if b in "0123456789"]
    assert all(d in "0123456789" for d in digits) and len(digits) == report["units"]
    counts = Counter(digits)
    chi2 = sum((counts[d] - len(digits) / 10) ** 2 / (len(digits) / 10) for d in "0123456789")
    assert chi2 < 27.9, counts  # 9 degrees of freedom, p = 0.001
    assert report["chars_changed"] == report["changed"]  # one character per changed digit
    assert split_thought(after).tail != split_thought(before).tail  # the final answer too, as the authors did
    records = synthetic(40, 10)
    out, report = run(tmp_path, records, "digits", 0.5, "--digit-mode", "digit", "--spare-solution")
    assert 0.4 < report["changed"] / report["units"] < 0.5  # resampled half the time, 1 in 10 lands on itself
    for before, after in zip(records, out):
        assert split_thought(assistant(after)).tail == split_thought(assistant(before)).tail
        assert re.sub(r"[0-9]", "#", assistant(after)) == re.sub(r"[0-9]", "#", assistant(before))


def markers(text):
    return perturb.reflection_markers(text, perturb.phrase_pattern(perturb.TRANSITION_PHRASES))


def test_keywords_rewrites_each_record_with_probability_ratio(tmp_path):
    records = fixture_records(copies=25)  # 200 records, 175 with reflection markers
    out, report = run(tmp_path, records, "keywords", 0.5)
    marked = [markers(thought_of(r)) > 0 for r in records]
    changed = [thought_of(o) != thought_of(r) for o, r in zip(out, records)]
    rewritten = [o["perturbation"]["rewritten"] for o in out]
    assert sum(marked) == 175 and report["with_markers"] == 175
    assert all(c == (m and w) for c, m, w in zip(changed, marked, rewritten))  # a rewrite always removes something
    assert 0.4 < sum(c for c, m in zip(changed, marked) if m) / sum(marked) < 0.6
    assert report["changed"] == sum(rewritten) and report["share"] == round(sum(rewritten) / 200, 4)


def test_keywords_at_one_remove_every_marker_and_keep_connective_sentences(tmp_path, capsys):
    records = fixture_records()
    out, report = run(tmp_path, records, "keywords", 1.0)
    assert report["markers_before"] > 10 and report["markers_after"] == 0
    for before, after in zip(records, out):
        b, a = split_thought(assistant(before)), split_thought(assistant(after))
        assert (a.head, a.tail) == (b.head, b.tail) and markers(a.thought) == 0
        assert (a.thought == b.thought) == (before["id"] == "straight-0")  # the one record without reflection
    # every sentence whose only marker is a connective is kept, so are the "but"/"however"-only ones
    old_list = perturb.phrase_pattern(perturb.SENTENCE_KEYWORDS)
    connective = kept = but_only = but_kept = 0
    for before, after in zip(records, out):
        for a, b in perturb.sentence_spans(thought_of(before)):
            sentence = thought_of(before)[a:b].strip()
            if perturb.sentence_role(sentence, perturb.phrase_pattern(perturb.TRANSITION_PHRASES)) == "connective":
                connective, kept = connective + 1, kept + (sentence in thought_of(after))
            if {m.group().lower() for m in old_list.finditer(sentence)} in ({"but"}, {"however"}):
                but_only, but_kept = but_only + 1, but_kept + (sentence in thought_of(after))
    assert connective == kept == report["connective_sentences_kept"] > 15 and but_kept >= 0.9 * but_only > 5
    text = {o["id"]: thought_of(o) for o in out}
    # a correction: its target and the reflection go, the corrected text stays
    assert "62 km/h" not in text["train-0"] and "which is 72 km/h." in text["train-0"]
    assert "24 plus 21" not in text["percent-0"] and "Adding the two parts again gives 36." in text["percent-0"]
    # a check and an alternative go with the rest of their step
    assert "Let me verify" not in text["train-0"] and "quadratic formula" not in text["quadratic-0"]
    assert "marked sentences" in capsys.readouterr().out


def test_remove_reflections_rules_on_exact_steps():
    transitions = perturb.phrase_pattern(perturb.TRANSITION_PHRASES)
    steps = [
        "We add 17 and 25. The sum is 41.",
        "Wait, that's not right. It is 42. Then we halve it.",
        "Let me double-check the halving. Half of 42 is 21. But the question asks for double. Double is 84.",
        "So x = 17. I made a mistake. The value is 18.",
        "Hmm.",
        "The answer is 84.",
    ]
    text, stats = perturb.remove_reflections(steps, ["\n\n"] * 5, transitions)
    assert text == (
        "We add 17 and 25.\n\nIt is 42. Then we halve it.\n\nBut the question asks for double. Double is 84.\n\n"
        "So x = 17. The value is 18.\n\nThe answer is 84."  # a target stated with "so" stays
    )
    assert stats == {"sentences_removed": 6, "steps_removed": 1}
    plain = ["No reflection here, but a connective.  ", "Wait."]
    assert perturb.remove_reflections(plain[:1], [], transitions)[0] == plain[0]  # untouched, spaces included
    assert perturb.remove_reflections(plain[1:], [], transitions)[0] == ""


def test_keywords_sentence_mode_removes_the_right_fraction_and_nothing_else(tmp_path):
    plain = [f"Plain sentence number {i} stays here." for i in range(10)]
    keyed = [f"Wait, keyword sentence {i} goes." if i % 2 else f"Let me double-check item {i}." for i in range(10)]
    paragraphs = [f"{plain[i]} {keyed[i]}" if i < 5 else f"{keyed[i]}\n\n{plain[i]}" for i in range(10)]
    record = {"prompt": "p", "response": sky_t1(["\n\n".join(paragraphs)]), "id": "kw"}
    out, report = run(tmp_path, [record], "keywords", 0.5, "--rewriter", "sentences")
    thought = split_thought(assistant(out[0])).thought
    sentences = re.findall(r"[^.\n]+\.", thought)
    assert [s.strip() for s in sentences if s.strip() in plain] == plain
    assert sum(s.strip() in keyed for s in sentences) == 5 and len(sentences) == 15
    assert report["units"] == 10 and report["changed"] == 5 and out[0]["perturbation"]["rewriter"] == "sentences"
    assert "\n\n\n" not in thought and not re.search(r"[ \t]\n", thought)
    assert assistant(out[0]).endswith(split_thought(record["response"]).tail)
    words = tmp_path / "words.txt"
    words.write_text("# custom list\nstays\n", encoding="utf-8")
    out, report = run(tmp_path, [record], "keywords", 1.0, "--rewriter", "sentences", "--keywords-file", words)
    thought = split_thought(assistant(out[0])).thought
    assert report["units"] == 10 and not any(p in thought for p in plain) and all(k in thought for k in keyed)


def test_deterministic_per_seed_and_record(tmp_path):
    records = synthetic(6, 10)
    for kind in perturb.KINDS:
        first, _ = run(tmp_path, records, kind, 0.5, "--seed", 1, name="a")
        again, _ = run(tmp_path, records, kind, 0.5, "--seed", 1, name="b")
        other, _ = run(tmp_path, records, kind, 0.5, "--seed", 2, name="c")
        assert first == again
        assert [assistant(o) for o in other] != [assistant(f) for f in first]
    # a record's perturbation depends on its id, not on where it sits in the file (donors included)
    for kind in perturb.KINDS:
        forward, _ = run(tmp_path, records, kind, 0.5, name="f")
        backward, _ = run(tmp_path, records[::-1], kind, 0.5, name="r")
        assert forward == backward[::-1]


def test_records_without_id_get_a_stable_hash_id(tmp_path):
    records = [
        {"prompt": "same", "response": sky_t1([step_text(0, j) for j in range(4)])},
        {"prompt": "same", "response": sky_t1([step_text(1, j) for j in range(4)])},
    ]
    out, _ = run(tmp_path, records, "shuffle", 1.0)
    again, _ = run(tmp_path, records, "shuffle", 1.0)
    assert [o["id"] for o in out] == [o["id"] for o in again]
    assert out[0]["id"] != out[1]["id"] and re.fullmatch(r"[0-9a-f]{16}", out[0]["id"])


class FakeServer(BaseHTTPRequestHandler):
    """An OpenAI-compatible endpoint; a subclass's answer(body) gives the reply text, or an HTTP error code."""

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        assert self.path == "/v1/chat/completions" and body["max_tokens"] > 1024
        answer = self.answer(body)
        if isinstance(answer, int):
            self.send_response(answer)
            self.end_headers()
            return
        send_json(self, {"choices": [{"message": {"role": "assistant", "content": answer}}]})

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def serving(handler):
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()


def reasoning_of(body):
    return re.search(r"<reasoning>\n(.*)\n</reasoning>", body["messages"][0]["content"], re.S).group(1)


class FakeSplitter(FakeServer):
    """Splits at sentences, corrupts 'BROKEN' thoughts, fails 'FLAKY' once and 'DOWN' always."""

    calls = Counter()  # per record tag, the first word of its thought

    def answer(self, body):
        assert body["model"] == "fake-70b" and body["temperature"] == 0.0
        thought = reasoning_of(body)
        tag = thought.split()[0]
        FakeSplitter.calls[tag] += 1
        if tag == "DOWN" or (tag == "FLAKY" and FakeSplitter.calls[tag] == 1):
            return 503 if tag == "DOWN" else 500
        reply = thought.replace(". ", ".\n[STEP]\n").replace("\n\n", "\n[STEP]\n")
        return reply.replace("plan", "idea") if "BROKEN" in thought else reply


def test_llm_splitter_against_a_local_server(tmp_path):
    def lines(tag):
        return [f"{tag} line {j}. It has two sentences about the plan." for j in range(3)]

    records = [{"prompt": f"p{t}", "response": sky_t1(lines(t)), "id": t} for t in ("OK", "BROKEN", "FLAKY", "DOWN")]
    with serving(FakeSplitter) as url:
        llm = ["--splitter", "llm", "--llm-url", url, "--llm-model", "fake-70b", "--llm-retries", 1]
        out, report = run(tmp_path, records, "shuffle", 0.0, *llm)
    assert [assistant(o) for o in out] == [assistant(r) for r in records]  # aligned to the original bytes
    assert [o["perturbation"]["splitter"] for o in out] == ["llm", "llm_fallback", "llm", "llm_fallback"]
    assert [o["perturbation"]["n_steps"] for o in out] == [6, 3, 6, 3]  # sentences vs blank-line paragraphs
    # a reply that does not align is not retried; server errors are, --llm-retries times
    assert report["llm_fallback"] == 2 and FakeSplitter.calls == {"OK": 1, "BROKEN": 1, "FLAKY": 2, "DOWN": 2}


class FakeRewriter(FakeServer):
    """Removes the steps holding 'Wait' from 'OK' thoughts; answers 'LONG' with more text than it was sent,
    'MARKUP' with reasoning markup, and 'DOWN' with HTTP 503."""

    calls = Counter()

    def answer(self, body):
        assert body["model"] == "fake-mini" and body["temperature"] == 0.7 and isinstance(body["seed"], int)
        assert "runs straight through" in body["messages"][0]["content"]
        thought = reasoning_of(body)
        tag = thought.split()[0]
        FakeRewriter.calls[tag] += 1
        replies = {"OK": "\n\n".join(step for step in thought.split("\n\n") if "Wait" not in step)}
        replies.update(LONG=thought + "\n\nAnd one more thought.", MARKUP="<think>\n" + thought[:40], DOWN=503)
        return replies[tag]


def test_llm_rewriter_against_a_local_server(tmp_path, capsys):
    def thought(tag, r):
        return [
            f"{tag} record {r} adds 2 and 3 to get 5.",
            "Wait, let me check that sum again, it is 5.",
            "So it is 5.",
        ]

    tags = ("OK", "LONG", "MARKUP", "DOWN")
    records = [
        {"prompt": f"p{t}{r}", "response": sky_t1(thought(t, r)), "id": f"{t}{r}"} for t in tags for r in range(6)
    ]
    with serving(FakeRewriter) as url:
        llm = ["--rewriter", "llm", "--llm-url", url, "--llm-model", "fake-mini", "--llm-retries", 0]
        out, report = run(tmp_path, records, "keywords", 0.5, *llm)
    rewritten = [o["perturbation"]["rewritten"] for o in out]
    assert sum(FakeRewriter.calls.values()) == sum(rewritten) < len(records)  # only the drawn records are sent
    for before, after, chosen in zip(records, out, rewritten):
        new, tag = thought_of(after), before["id"][:-1]
        assert split_thought(assistant(after)).tail == split_thought(assistant(before)).tail
        if not chosen:
            assert new == thought_of(before) and after["perturbation"]["rewriter"] == "llm"
        elif tag == "OK":  # the model's rewrite, as it sent it
            assert new == thought_of(before).replace("Wait, let me check that sum again, it is 5.\n\n", "")
            assert after["perturbation"]["rewriter"] == "llm"
        else:  # an unusable reply or a server error: the offline rules instead
            assert after["perturbation"]["rewriter"] == "rules_fallback" and "Wait" not in new
    assert report["llm_fallback"] == sum(r and o["id"][:2] != "OK" for r, o in zip(rewritten, out)) > 0
    assert f"llm: {report['llm_fallback']} records fell back" in capsys.readouterr().out


def test_cli_runs_as_a_subprocess(tmp_path):
    src, dst = tmp_path / "cot.jsonl", tmp_path / "cot_shuffle67.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in synthetic(4, 9)), encoding="utf-8")
    done = subprocess.run(
        [
            sys.executable,
            "perturb.py",
            "--input",
            src,
            "--output",
            dst,
            "--kind",
            "shuffle",
            "--ratio",
            "0.67",
            "--seed",
            "0",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "4 records" in done.stdout and "mean steps per record 9" in done.stdout
    out = [json.loads(line) for line in dst.read_text(encoding="utf-8").splitlines()]
    assert [o["perturbation"]["n_changed"] > 0 for o in out] == [True] * 4


@pytest.mark.parametrize(
    "content, where",
    [
        (b'{"prompt": "p", "response": "r"}\n{"prompt": oops}\n', ":2: invalid JSON"),
        (b'{"prompt": "p", "response": "  "}\n', ":1: no non-empty assistant turn"),
        (
            b'{"prompt": "p", "response": "r"}\n\n{"prompt": "Caf\xe9", "response": "r"}\n',
            ":3: not UTF-8 text (byte 0xe9)",
        ),
    ],
)
def test_bad_input_is_a_one_line_error_naming_file_and_line(tmp_path, content, where):
    src = tmp_path / "bad.jsonl"
    src.write_bytes(content)
    done = subprocess.run(
        [
            sys.executable,
            "perturb.py",
            "--input",
            src,
            "--output",
            tmp_path / "o.jsonl",
            "--kind",
            "delete",
            "--ratio",
            "0.5",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1 and done.stderr.strip().count("\n") == 0
    assert done.stderr.startswith(f"error: {src}{where}")
    assert "Traceback" not in done.stderr and not (tmp_path / "o.jsonl").exists()
