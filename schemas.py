"""How each published long-CoT data set is laid out: which fields hold the prompt, the thought, the solution and the
gold answer or tests, and how to load it from the Hugging Face hub. prepare_data.py reads every record through here.

A record's schema is detected from its field names, first match in this order (prepare_data.py --schema NAME forces
one; a record that matches none stops the run with one line listing them all):

    schema           fields it needs                                  published sets (hub name)
    s1k-1.1          question, solution,                              simplescaling/s1K-1.1
                     deepseek_thinking_trajectory|gemini_thinking_trajectory
    s1k              question, solution, thinking_trajectories,       simplescaling/s1K
                     attempt
    openr1-math      problem, answer, generations,                    open-r1/OpenR1-Math-220k
                     correctness_math_verify, is_reasoning_complete
    nemotron         input, output                                    nvidia/Llama-Nemotron-Post-Training-Dataset
    am               messages, an `info` object on a turn             a-m-team/AM-DeepSeek-R1-Distilled-1.4M
    sharegpt         conversations [{from, value}] (system)           NovaSky-AI/Sky-T1_data_17k,
                                                                      bespokelabs/Bespoke-Stratos-17k,
                                                                      open-thoughts/OpenThoughts-114k,
                                                                      open-thoughts/OpenThoughts3-1.2M,
                                                                      qihoo360/Light-R1-SFTData
    messages         messages [{role, content}]                       (chat files)
    prompt-response  prompt, response                                 (generation dumps)
    limo             question, solution, answer                       GAIR/LIMO
    raw              problem|question,                                (NuminaMath-style files)
                     response|generated_solution|solution

What each becomes (a Reply: the reply as published, its prompt, its gold):
  - s1k-1.1 / s1k: the thinking trajectory is the thought and the attempt the solution (R1 layout; `--teacher` picks
    s1K-1.1's pair, default deepseek: s1.1-32B was trained on the DeepSeek-R1 traces, per the s1K-1.1 card); s1K's
    list of trajectories is joined by newlines, as s1's data/tokenization.py joins it. Gold: the last \\boxed{} of
    `solution`, else `solution` itself (a bare answer for AIME-style rows).
  - openr1-math: `--generations first` the trace in `messages`, with its own prompt (what open-r1's SFT recipes
    train on); `correct` every generation with correctness_math_verify and is_reasoning_complete true, one record
    each with SkyThought's prompt for the bare problem (the others are counted wrong_generation); `all` every
    generation. Gold: `answer`.
  - nemotron: `input` (a list of turns; v1's prompt rendered in Llama 3's template is split back into turns) and
    `output`; `system_prompt` ("detailed thinking on") is the published system prompt, replaced by the target style's;
    reasoning "off" records have no thought and are counted reasoning_off. `category` math/code is the domain.
  - am: the chat turns; the reply's <answer> wrapper is handled by markup.py; the user turn's info.reference_answer is
    the gold answer and info.test_case the tests.
  - sharegpt / messages / prompt-response / limo / raw: top-level `answer|expected_answer|final_answer`,
    `tests|input_output`, `starter_code`, `domain` (math or code; any other value is told from the solution).
Replies without markup (LIMO) are split by markup.split_reasoning: all thought except a clear final block.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Callable, Iterator

import markup
import sft
from utils import DataError

TEACHERS = ("deepseek", "gemini")
DEFAULT_TEACHER = "deepseek"  # s1.1 (simplescaling/s1.1-32B) was trained on s1K-1.1's DeepSeek-R1 traces
GENERATIONS = ("first", "correct", "all")
LLAMA3_TURN = re.compile(r"<\|start_header_id\|>(\w+)<\|end_header_id\|>\n\n(.*?)(?:<\|eot_id\|>|$)", re.S)
LLAMA3_EOT = "<|eot_id|>"


@dataclass
class Reply:
    """One training candidate read from a published record."""

    response: str  # the assistant reply as published; prepare_data splits and re-marks it
    problem: str  # the problem without instruction boilerplate: what deduplication and decontamination compare
    user: str | None = None  # the published user turn; None: a bare problem, given SkyThought's training prompt
    system: str | None = None  # the published system prompt (--style keep keeps it)
    answer: object = None  # gold final answer (math)
    tests: list | None = None  # gold tests [{input, output, testtype}] (code)
    starter_code: str = ""
    domain: str | None = None  # "math" | "code" when the set says so; else told from the solution
    key: str = ""  # which of a record's replies ("#g2": OpenR1's third generation), appended to the record's id
    skip: str | None = None  # a filter that drops it whatever it says: multi_turn, reasoning_off, wrong_generation


@dataclass(frozen=True)
class Options:
    teacher: str | None = None  # s1K-1.1's pair: deepseek (None: DEFAULT_TEACHER) | gemini
    generations: str = "correct"  # OpenR1-Math: first | correct | all


# ----------------------------------------------------------------------------- fields


def first_field(record: dict, names: tuple[str, ...]):
    return next(((n, record[n]) for n in names if record.get(n) is not None), (None, None))


def text_field(record: dict, name: str) -> str:
    """A string field; a list of strings (s1K's thinking_trajectories) joined by newlines, as s1's own code joins it."""
    value = record.get(name)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return "\n".join(value)
    if not isinstance(value, str):
        raise ValueError(f"field {name!r}: expected a string, got {type(value).__name__}")
    return value


def normalise_tests(tests) -> list[dict]:
    """Accept [{input, output, testtype}], {input(s): [...], output(s): [...]} (CodeContests, APPS), or as JSON text."""
    if isinstance(tests, str):
        try:
            tests = json.loads(tests)
        except json.JSONDecodeError:
            raise ValueError("field 'tests': not valid JSON") from None
    if isinstance(tests, dict):
        if tests.get("fn_name"):
            raise ValueError("field 'tests': call-based (fn_name) tests are unsupported; give [{input, output}]")
        inputs, outputs = tests.get("input", tests.get("inputs")), tests.get("output", tests.get("outputs"))
        if not (isinstance(inputs, list) and isinstance(outputs, list) and len(inputs) == len(outputs)):
            raise ValueError("field 'tests': needs equally long 'input'/'inputs' and 'output'/'outputs' lists")
        tests = [{"input": i, "output": o} for i, o in zip(inputs, outputs)]
    if not isinstance(tests, list) or not all(
        isinstance(t, dict) and isinstance(t.get("input"), str) and isinstance(t.get("output"), str) for t in tests
    ):
        raise ValueError("field 'tests': expected a list of {input: str, output: str, testtype}")
    return [{"input": t["input"], "output": t["output"], "testtype": t.get("testtype", "stdin")} for t in tests]


def usable_tests(tests) -> list[dict] | None:
    """A published set's tests when this repo can run them, else None (the record is then unverifiable, not an
    error: the set is what it is)."""
    if tests in (None, "", [], {}):
        return None
    try:
        return normalise_tests(tests)
    except ValueError:
        return None


def known_domain(value) -> str | None:
    return value if value in ("math", "code") else None


def gold_answer(solution: str) -> str:
    """The gold answer in a published solution: its last \\boxed{}, else the whole text (AIME rows hold the bare
    answer)."""
    import grading  # only s1K needs it

    return grading.extract_boxed(solution) or solution.strip()


def with_gold(reply: Reply, raw: dict) -> Reply:
    """The gold answer, tests, starter code and domain of a record that keeps them in top-level fields."""
    tests_key, tests = first_field(raw, ("tests", "input_output"))
    reply.tests = normalise_tests(tests) if tests_key else None
    reply.answer = first_field(raw, ("answer", "expected_answer", "final_answer"))[1]
    reply.starter_code = raw.get("starter_code") or ""
    reply.domain = known_domain(raw.get("domain"))
    return reply


# ----------------------------------------------------------------------------- readers


def chat_reply(record: dict) -> Reply:
    """A chat-shaped record (sft.to_messages' shapes) as one Reply. A blank reply is left to the `empty` filter; more
    than one user turn is skipped as multi_turn (this pipeline trains single-turn long-CoT)."""
    try:
        messages = sft.to_messages(record)
    except ValueError as e:
        if str(e) == "no non-empty assistant turn":
            return Reply("", "")
        raise
    users = [m["content"] for m in messages if m["role"] == "user"]
    if not users:
        raise ValueError("no user turn")
    if len(users) > 1 or messages[-1]["role"] != "assistant":
        return Reply("", "", skip="multi_turn")
    system = next((m["content"] for m in messages if m["role"] == "system"), None)
    return Reply(messages[-1]["content"], markup.BOILERPLATE.sub("", users[0]).strip(), users[0], system)


def read_chat(raw: dict, options: Options) -> list[Reply]:
    return [with_gold(chat_reply(raw), raw)]


def read_raw(raw: dict, options: Options) -> list[Reply]:
    problem_key, problem = first_field(raw, ("problem", "question"))
    response_key, response = first_field(raw, ("response", "generated_solution", "solution"))
    for key, value in ((problem_key, problem), (response_key, response)):
        if not isinstance(value, str):
            raise ValueError(f"field {key!r}: expected a string, got {type(value).__name__}")
    return [with_gold(Reply(response, problem.strip(), system=raw.get("system")), raw)]


def s1k_reply(raw: dict, thought_key: str, attempt_key: str) -> Reply:
    thought, attempt = text_field(raw, thought_key).strip(), text_field(raw, attempt_key).strip()
    response = markup.format_response(thought, attempt, "r1")  # an empty half is no_thought / truncated downstream
    domain = "math" if raw.get("cot_type") == "math" else None
    return Reply(
        response, text_field(raw, "question").strip(), answer=gold_answer(text_field(raw, "solution")), domain=domain
    )


def read_s1k_11(raw: dict, options: Options) -> list[Reply]:
    teacher = options.teacher or DEFAULT_TEACHER
    return [s1k_reply(raw, f"{teacher}_thinking_trajectory", f"{teacher}_attempt")]


def read_s1k(raw: dict, options: Options) -> list[Reply]:
    if options.teacher == "deepseek":
        raise ValueError("--teacher deepseek: s1K holds only Gemini's traces; DeepSeek-R1's are in s1K-1.1")
    return [s1k_reply(raw, "thinking_trajectories", "attempt")]


def read_openr1(raw: dict, options: Options) -> list[Reply]:
    problem, answer = text_field(raw, "problem").strip(), raw.get("answer")
    if options.generations == "first" and raw.get("messages"):
        reply = chat_reply({"messages": raw["messages"]})
        reply.answer, reply.domain = answer, "math"
        return [reply]
    generations = raw.get("generations") or []
    if not isinstance(generations, list):
        raise ValueError("field 'generations': expected a list of strings")
    if options.generations == "first":
        generations = generations[:1]
    verified, complete = raw.get("correctness_math_verify") or [], raw.get("is_reasoning_complete") or []
    replies = []
    for i, generation in enumerate(generations):
        if not isinstance(generation, str):
            raise ValueError(f"field 'generations[{i}]': expected a string")
        right = i < min(len(verified), len(complete)) and verified[i] is True and complete[i] is True
        skip = "wrong_generation" if options.generations == "correct" and not right else None
        key = "" if options.generations == "first" else f"#g{i}"
        replies.append(Reply(generation, problem, answer=answer, domain="math", key=key, skip=skip))
    return replies or [Reply("", problem)]  # no generation at all: counted empty


def read_nemotron(raw: dict, options: Options) -> list[Reply]:
    turns = raw.get("input")
    if isinstance(turns, str):  # v1 published the prompt rendered in Llama 3's chat template
        turns = [{"role": role, "content": content} for role, content in LLAMA3_TURN.findall(turns)]
        if turns and turns[-1] == {"role": "assistant", "content": ""}:  # the generation prompt
            turns.pop()
    if not isinstance(turns, list):
        raise ValueError("field 'input': expected a list of {role, content} turns")
    output = text_field(raw, "output")
    output = output[: -len(LLAMA3_EOT)] if output.endswith(LLAMA3_EOT) else output
    reply = chat_reply({"messages": [*turns, {"role": "assistant", "content": output}]})
    reply.system = raw.get("system_prompt") or reply.system
    reply.domain = known_domain(raw.get("category"))
    if raw.get("reasoning") == "off" or reply.system == "detailed thinking off":
        reply.skip = reply.skip or "reasoning_off"
    return [reply]


def turn_info(raw: dict) -> dict | None:
    """The `info` object AM attaches to its turns: the user turn's (where the gold lives), else the first one."""
    infos = [(m.get("role"), m["info"]) for m in raw.get("messages") or [] if isinstance(m, dict) and m.get("info")]
    return next((info for role, info in infos if role == "user"), infos[0][1] if infos else None)


def read_am(raw: dict, options: Options) -> list[Reply]:
    reply = chat_reply(raw)
    info = turn_info(raw) or {}
    reference = info.get("reference_answer")
    reply.answer = reference if reference not in (None, "") else None
    reply.tests = usable_tests(info.get("test_case"))
    return [reply]


# ----------------------------------------------------------------------------- detection


@dataclass(frozen=True)
class Schema:
    name: str
    needs: tuple[tuple[str, ...], ...]  # per needed field, the names it may go by
    read: Callable[[dict, Options], list[Reply]]
    sets: tuple[str, ...] = ()  # hub names published in this layout
    needs_turn_info: bool = False  # AM: a `messages` turn carries an `info` object

    def missing(self, raw: dict) -> str | None:
        """The first needed field the record lacks ("a|b" when it may go by several names), or None."""
        for names in self.needs:
            if all(raw.get(n) is None for n in names):
                return "|".join(names)
        if self.needs_turn_info and turn_info(raw) is None:
            return "messages[].info"
        return None

    def describe(self) -> str:
        fields = ", ".join("|".join(names) for names in self.needs)
        return f"{self.name} ({fields}{', info on a turn' if self.needs_turn_info else ''})"


SKY_T1_LIKE = ("NovaSky-AI/Sky-T1_data_17k", "bespokelabs/Bespoke-Stratos-17k", "open-thoughts/OpenThoughts-114k")
SCHEMAS = (
    Schema(
        "s1k-1.1",
        (("question",), ("solution",), ("deepseek_thinking_trajectory", "gemini_thinking_trajectory")),
        read_s1k_11,
        ("simplescaling/s1K-1.1",),
    ),
    Schema(
        "s1k",
        (("question",), ("solution",), ("thinking_trajectories",), ("attempt",)),
        read_s1k,
        ("simplescaling/s1K",),
    ),
    Schema(
        "openr1-math",
        (("problem",), ("answer",), ("generations",), ("correctness_math_verify",), ("is_reasoning_complete",)),
        read_openr1,
        ("open-r1/OpenR1-Math-220k",),
    ),
    Schema("nemotron", (("input",), ("output",)), read_nemotron, ("nvidia/Llama-Nemotron-Post-Training-Dataset",)),
    Schema("am", (("messages",),), read_am, ("a-m-team/AM-DeepSeek-R1-Distilled-1.4M",), needs_turn_info=True),
    Schema(
        "sharegpt",
        (("conversations",),),
        read_chat,
        (*SKY_T1_LIKE, "open-thoughts/OpenThoughts3-1.2M", "qihoo360/Light-R1-SFTData"),
    ),
    Schema("messages", (("messages",),), read_chat),
    Schema("prompt-response", (("prompt",), ("response",)), read_chat),
    Schema("limo", (("question",), ("solution",), ("answer",)), read_raw, ("GAIR/LIMO",)),
    Schema("raw", (("problem", "question"), ("response", "generated_solution", "solution")), read_raw),
)
BY_NAME = {schema.name: schema for schema in SCHEMAS}


def detect(raw: dict, forced: str | None = None) -> Schema:
    """The schema of a record: the forced one (ValueError naming the first field it lacks), else the first whose
    fields it has (ValueError listing every schema and its fields when none)."""
    if forced:
        schema = BY_NAME[forced]
        missing = schema.missing(raw)
        if missing:
            raise ValueError(f"schema {forced}: field {missing!r} missing")
        return schema
    for schema in SCHEMAS:
        if schema.missing(raw) is None:
            return schema
    known = "; ".join(schema.describe() for schema in SCHEMAS)
    raise ValueError(f"unknown record shape (fields: {', '.join(sorted(raw)) or 'none'}); known schemas: {known}")


# ----------------------------------------------------------------------------- the hub

AM = "a-m-team/AM-DeepSeek-R1-Distilled-1.4M"
# What datasets.load_dataset needs beyond a name, for the sets that need more than their default subset and "train".
HUB_LAYOUT = {
    AM: {"subsets": ("am_0.5M", "am_0.9M")},  # the 1.4M are two subsets, read one after the other
    "nvidia/Llama-Nemotron-Post-Training-Dataset": {"subsets": ("SFT",), "split": "math"},
}


def am_features():
    """AM's schema spelled out: the hub's JSON loader cannot infer its nested `info` objects (their fields are null on
    some turns and strings on others), so the set has no viewer and a plain load_dataset fails."""
    from datasets import Features, Value

    fields = ("source", "reference_answer", "test_case", "think_content", "answer_content")
    info = {field: Value("string") for field in fields}
    return Features({"messages": [{"role": Value("string"), "content": Value("string"), "info": info}]})


def load_hub(name: str, subset: str | None = None, split: str | None = None, streaming: bool = False) -> Iterator[dict]:
    """The rows of a hub dataset: its subsets (--subset, else HUB_LAYOUT's, else the default) one after the other.
    Streaming reads rows as they download (prepare_data --limit), instead of caching the whole set first."""
    import datasets

    layout = HUB_LAYOUT.get(name, {})
    kwargs = {"split": split or layout.get("split", "train"), "streaming": streaming}
    if name == AM:
        kwargs["features"] = am_features()
    for config in (subset,) if subset else layout.get("subsets", (None,)):
        try:
            rows = datasets.load_dataset(name, config, **kwargs)
        except Exception as e:  # any loader failure (a wrong name, subset or split, no network) is one line
            where = f" subset {config}" if config else ""
            why = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise DataError(f"{name}{where} split {kwargs['split']}: cannot load ({why})") from None
        yield from rows
