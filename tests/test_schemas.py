"""schemas.py: each published long-CoT data set read as published. tests/data/schemas/ holds three made-up records per
set in its published field names (checked against the dataset cards and loaders: s1K/s1K-1.1 features and s1's
tokenization code, OpenR1-Math-220k's dataset_info, the AM and Nemotron cards). Each is run through prepare_data.py:
every record kept, its thought and solution where the set puts them, its gold answer carried so --verify passes.
Then detection, forcing, the one-line error, each set's options (--teacher, --generations) and the hub loader."""

import json
import re
from pathlib import Path

import pytest

import markup
import prepare_data
import schemas
import utils
from utils import DataError

SCHEMA_DIR = Path(__file__).resolve().parent / "data" / "schemas"
SKY_SPLIT = re.compile(
    r"<\|begin_of_thought\|>(.*)<\|end_of_thought\|>\s*<\|begin_of_solution\|>(.*)<\|end_of_solution\|>", re.S
)


def rows(name: str) -> list[dict]:
    return utils.read_jsonl(SCHEMA_DIR / name)


def run(tmp_path, tokenizer_dir, name, *args, out="out.jsonl"):
    argv = ["--input", str(SCHEMA_DIR / name), "--output", str(tmp_path / out), "--tokenizer", str(tokenizer_dir)]
    report = prepare_data.main(prepare_data.parse_args(argv + ["--workers", "1", *args]))
    return report, utils.read_jsonl(tmp_path / out)


def think_split(reply: str) -> tuple[str, str]:
    """A published R1 reply split the plain way, independently of markup.py."""
    head, _, tail = reply.replace("<|eot_id|>", "").partition("</think>")
    return head.replace("<think>", "").strip(), tail.strip()


def openr1_first_correct(raw):
    i = next(i for i, (v, c) in enumerate(zip(raw["correctness_math_verify"], raw["is_reasoning_complete"])) if v and c)
    return think_split(raw["generations"][i])


# fixture -> (schema detected, kept records, (thought, solution) each kept one must have, gold answers)
PUBLISHED = {
    "sky_t1.jsonl": ("sharegpt", 3, lambda r: SKY_SPLIT.search(r["conversations"][1]["value"]).groups(), None),
    "openthoughts3.jsonl": ("sharegpt", 3, lambda r: think_split(r["conversations"][1]["value"]), None),
    "light_r1.jsonl": ("sharegpt", 3, lambda r: think_split(r["conversations"][1]["value"]), None),
    "s1k_1.1.jsonl": (
        "s1k-1.1",
        3,
        lambda r: (r["deepseek_thinking_trajectory"], r["deepseek_attempt"]),
        ["9", "210", "53"],  # the bare `solution`, or its last \boxed{}
    ),
    "s1k.jsonl": ("s1k", 3, lambda r: ("\n".join(r["thinking_trajectories"]), r["attempt"]), ["12", "1024", "12"]),
    "limo.jsonl": ("limo", 3, lambda r: tuple(r["solution"].rsplit("\n\n", 1)), ["8", "70", "10"]),
    "openr1_math.jsonl": ("openr1-math", 3, openr1_first_correct, ["5", "54", "17"]),
    "am.jsonl": (
        "am",
        3,
        lambda r: (r["messages"][1]["info"]["think_content"], r["messages"][1]["info"]["answer_content"]),
        ["12", "7", None],  # the third is code: its gold is info.test_case
    ),
    "nemotron.jsonl": ("nemotron", 2, lambda r: think_split(r["output"]), None),  # the third has reasoning off
}


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_each_published_set_is_read_whole_with_thought_solution_and_gold_in_place(tmp_path, tiny_model_dir, name):
    schema, kept, parts, gold = PUBLISHED[name]
    published = [r for r in rows(name) if r.get("reasoning") != "off"]
    report, records = run(tmp_path, tiny_model_dir, name, *(["--verify"] if gold else []))
    source = str(SCHEMA_DIR / name)
    assert report["schemas"] == {source: {schema: 3}}  # the report names the schema it detected
    assert report["counts"]["kept"] == len(records) == kept
    assert report["counts"]["rejected"] == report["counts"]["unverifiable"] == 0  # gold carried: --verify works
    for record, raw in zip(records, published):
        thought, solution = SKY_SPLIT.search(record["messages"][-1]["content"]).groups()
        assert (thought.strip(), solution.strip()) == tuple(p.strip() for p in parts(raw))
        assert "<answer>" not in solution and "<think>" not in thought
    if gold:
        assert [r.get("answer") for r in records] == gold
    if name == "am.jsonl":
        assert records[2]["domain"] == "code" and records[2]["tests"][1] == {
            "input": "5 6\n",
            "output": "30\n",
            "testtype": "stdin",
        }
    if name == "nemotron.jsonl":
        assert report["counts"]["reasoning_off"] == 1


def test_s1k_teacher_picks_the_pair_and_s1k_has_only_gemini(tmp_path, tiny_model_dir):
    _, records = run(tmp_path, tiny_model_dir, "s1k_1.1.jsonl", "--teacher", "gemini", "--style", "r1")
    for record, raw in zip(records, rows("s1k_1.1.jsonl")):
        assert (
            record["messages"][-1]["content"]
            == f"<think>\n{raw['gemini_thinking_trajectory']}\n</think>\n\n" + (raw["gemini_attempt"])
        )
    with pytest.raises(DataError, match=r"s1k\.jsonl:1: --teacher deepseek: s1K holds only Gemini's traces"):
        run(tmp_path, tiny_model_dir, "s1k.jsonl", "--teacher", "deepseek")
    assert schemas.DEFAULT_TEACHER == "deepseek"


def test_openr1_generations_first_correct_all(tmp_path, tiny_model_dir):
    published = rows("openr1_math.jsonl")
    report, records = run(tmp_path, tiny_model_dir, "openr1_math.jsonl", "--generations", "first", "--style", "r1")
    assert [r["messages"][-1]["content"] for r in records] == [r["messages"][1]["content"] for r in published]
    assert [r["id"] for r in records] == [r["uuid"] for r in published]
    # correct: each verified, complete generation is a record; dedup then keeps the first per problem
    report, records = run(tmp_path, tiny_model_dir, "openr1_math.jsonl", "--dedup", "none", "--style", "r1")
    counts = report["counts"]
    assert (counts["read"], counts["extra_generations"], counts["wrong_generation"], counts["kept"]) == (3, 6, 4, 5)
    uuid1, uuid2, uuid3 = (r["uuid"] for r in published)
    ids = [f"{uuid1}#g0", f"{uuid1}#g1", f"{uuid2}#g1", f"{uuid3}#g0", f"{uuid3}#g2"]  # #g3 verified, incomplete
    assert [r["id"] for r in records] == ids
    assert records[2]["messages"][-1]["content"] == published[1]["generations"][1]
    report, records = run(tmp_path, tiny_model_dir, "openr1_math.jsonl", "--generations", "all", "--dedup", "none")
    assert report["counts"]["kept"] == 8 and report["counts"]["truncated"] == 1  # the unfinished one: no solution
    report, _ = run(tmp_path, tiny_model_dir, "openr1_math.jsonl")  # default: correct, one per problem
    assert report["config"]["generations"] == "correct" and report["counts"]["kept"] == 3


def test_am_answer_wrapper_removed_when_converted_and_kept_with_keep(tmp_path, tiny_model_dir):
    published = rows("am.jsonl")
    _, r1 = run(tmp_path, tiny_model_dir, "am.jsonl", "--style", "r1", out="r1.jsonl")
    _, kept = run(tmp_path, tiny_model_dir, "am.jsonl", "--style", "keep", out="keep.jsonl")
    for raw, converted, verbatim in zip(published, r1, kept):
        info = raw["messages"][1]["info"]
        assert (
            converted["messages"][-1]["content"]
            == f"<think>\n{info['think_content']}\n</think>\n\n" + (info["answer_content"])
        )
        assert verbatim["messages"][-1]["content"] == raw["messages"][1]["content"]
        assert verbatim["messages"][-1]["content"].endswith("\n</answer>")


def test_nemotron_system_prompt_follows_the_style_and_reasoning_off_is_counted(tmp_path, tiny_model_dir):
    def systems(style):
        _, records = run(tmp_path, tiny_model_dir, "nemotron.jsonl", "--style", style, out=f"{style}.jsonl")
        return [r["messages"][0]["content"] if r["messages"][0]["role"] == "system" else None for r in records]

    assert systems("sky-t1") == [markup.SKY_T1_SYSTEM_PROMPT] * 2
    assert systems("r1") == [None, None]
    assert systems("keep") == ["detailed thinking on"] * 2  # v1.1's system_prompt field; v1's rendered system turn
    _, records = run(tmp_path, tiny_model_dir, "nemotron.jsonl", "--style", "keep")
    assert records[1]["messages"][1]["content"] == "Read a line of text and print how many characters it has."
    assert not records[1]["messages"][2]["content"].endswith("<|eot_id|>")
    off = tmp_path / "off.jsonl"
    off.write_text(json.dumps(rows("nemotron.jsonl")[2]) + "\n")
    with pytest.raises(DataError, match=r"^no records kept out of 1 read \(reasoning_off 1\)"):
        prepare_data.main(
            prepare_data.parse_args(
                ["--input", str(off), "--output", str(tmp_path / "o.jsonl")] + ["--tokenizer", str(tiny_model_dir)]
            )
        )


# ----------------------------------------------------------------------------- detection


def test_every_fixture_record_is_detected_as_its_schema_and_sets_are_listed():
    for name, (schema, *_) in PUBLISHED.items():
        assert {schemas.detect(raw).name for raw in rows(name)} == {schema}, name
    assert "GAIR/LIMO" in schemas.BY_NAME["limo"].sets and "simplescaling/s1K-1.1" in schemas.BY_NAME["s1k-1.1"].sets
    assert len({s for schema in schemas.SCHEMAS for s in schema.sets}) == 11  # every set of issue 19's table


def test_forcing_a_schema_and_the_one_line_error_listing_every_schema():
    limo = rows("limo.jsonl")[0]
    assert schemas.detect(limo, "raw").name == "raw"
    with pytest.raises(ValueError, match=r"^schema s1k: field 'thinking_trajectories' missing$"):
        schemas.detect(limo, "s1k")
    with pytest.raises(ValueError, match=r"^schema am: field 'messages\[\]\.info' missing$"):
        schemas.detect({"messages": [{"role": "user", "content": "q"}]}, "am")
    with pytest.raises(ValueError) as error:
        schemas.detect({"query": "q", "reply": "r"})
    message = str(error.value)
    assert message.startswith("unknown record shape (fields: query, reply); known schemas: ") and "\n" not in message
    for schema in schemas.SCHEMAS:  # each schema with the fields it needs
        assert schema.describe() in message
    assert "openr1-math (problem, answer, generations, correctness_math_verify, is_reasoning_complete)" in message


def test_readers_edge_cases():
    options = schemas.Options()
    # a conversation of several user turns is counted, not an error; a blank reply is the `empty` filter's
    two = {"conversations": [{"from": "user", "value": "a"}, {"from": "gpt", "value": "b"}] * 2}
    assert schemas.read_chat(two, options)[0].skip == "multi_turn"
    assert schemas.read_chat({"messages": [{"role": "user", "content": "q"}]}, options)[0].response == ""
    with pytest.raises(ValueError, match="no user turn"):
        schemas.read_chat({"messages": [{"role": "assistant", "content": "a"}]}, options)
    # OpenThoughts3's domain "science" is no error: the domain is told from the solution
    assert schemas.read_chat(rows("openthoughts3.jsonl")[1], options)[0].domain is None
    # OpenR1 without generations: one empty reply, counted
    assert [r.response for r in schemas.read_openr1({"problem": "p", "generations": []}, options)] == [""]
    # AM tests this repo cannot run (call-based) leave the record unverifiable instead of stopping the run
    assert schemas.usable_tests('{"fn_name": "f", "inputs": [[1]], "outputs": [2]}') is None
    assert schemas.usable_tests("") is None and schemas.usable_tests([{"input": "1", "output": "2"}])[0]["input"] == "1"
    assert (
        schemas.gold_answer("So $x = \\boxed{\\frac{1}{2}}$.") == "\\frac{1}{2}" and schemas.gold_answer(" 7 ") == "7"
    )
    # Nemotron v1: the prompt rendered in Llama 3's template, split back into turns
    (reply,) = schemas.read_nemotron(rows("nemotron.jsonl")[1], options)
    assert (reply.system, reply.user, reply.domain) == ("detailed thinking on", reply.problem, "code")


# ----------------------------------------------------------------------------- the hub


def test_hub_loader_reads_each_sets_subsets_split_and_features(monkeypatch):
    import datasets

    calls = []

    def load_dataset(name, subset, split, streaming, **kwargs):
        calls.append((name, subset, split, streaming, sorted(kwargs)))
        if subset == "broken":
            raise ValueError("BuilderConfig 'broken' not found.\nAvailable: ['am_0.5M', 'am_0.9M']")
        return [{"subset": subset}]

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    am = list(schemas.load_hub(schemas.AM))
    assert am == [{"subset": "am_0.5M"}, {"subset": "am_0.9M"}]  # both halves of the 1.4M
    assert calls[-1] == (schemas.AM, "am_0.9M", "train", False, ["features"])
    features = str(schemas.am_features())  # a List of structs in datasets >= 4, a list before
    assert all(f"'{field}': Value('string')" in features for field in ("content", "reference_answer", "test_case"))
    list(schemas.load_hub("nvidia/Llama-Nemotron-Post-Training-Dataset", streaming=True))
    assert calls[-1] == ("nvidia/Llama-Nemotron-Post-Training-Dataset", "SFT", "math", True, [])
    list(schemas.load_hub("simplescaling/s1K-1.1", split="train"))
    assert calls[-1] == ("simplescaling/s1K-1.1", None, "train", False, [])
    with pytest.raises(DataError, match=r"^x/y subset broken split train: cannot load \(BuilderConfig 'broken' not fo"):
        list(schemas.load_hub("x/y", subset="broken"))
