"""The decisive details of SFT (sft.py), each checked directly: record shapes and their errors, label masks from the
chat template, the shift inside each sample, over-long samples, step order, packing, collation and the loss."""

import json
import re

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import sft
import utils

IGNORE = sft.IGNORE_INDEX
SYSTEM = "You are a careful reasoner."
CONVERSATION = [
    {"role": "system", "content": SYSTEM},
    {"role": "user", "content": "What is 12*3?"},
    {"role": "assistant", "content": "<|begin_of_thought|>\n\n12*3 = 36.\n\n<|end_of_thought|>\n\n\\boxed{36}"},
]


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="sdpa", dtype=torch.float32).eval()


def sequences_of(tokenizer, messages, final_only=False):
    """The record's training sequences, (input_ids, labels) each."""
    tokenized = next(sft.tokenize_conversations(tokenizer, [messages]))
    assert tokenized.final_only == final_only
    return tokenized.sequences


def one_sequence(tokenizer, messages):
    [sequence] = sequences_of(tokenizer, messages)
    return sequence


def decoded_targets(tokenizer, messages):
    ids, labels = one_sequence(tokenizer, messages)
    return ids, labels, [(tokenizer.decode([i]), label != IGNORE) for i, label in zip(ids, labels)]


# ----------------------------------------------------------------------------- records -> messages


def test_to_messages_accepts_the_three_shapes_and_they_agree():
    sharegpt = {"system": "S", "conversations": [{"from": "user", "value": "Q"}, {"from": "assistant", "value": "A"}]}
    chat = {
        "messages": [
            {"role": "system", "content": "S"},
            {"role": "user", "content": "Q"},
            {"role": "assistant", "content": "A"},
        ]
    }
    pair = {"system": "S", "prompt": "Q", "response": "A"}
    assert sft.to_messages(sharegpt) == sft.to_messages(chat) == sft.to_messages(pair)
    human_gpt = {"conversations": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}]}
    assert [m["role"] for m in sft.to_messages(human_gpt)] == ["user", "assistant"]


@pytest.mark.parametrize(
    "line, problem",
    [
        ('{"prompt": "Q", "response": ""}', "no non-empty assistant turn"),
        ('{"messages": [{"role": "user", "content": "Q"}]}', "no non-empty assistant turn"),
        ('{"messages": [{"role": "assistant"}]}', "messages[0]"),
        ('{"messages": [{"role": "wizard", "content": "A"}]}', "unknown role 'wizard'"),
        ('{"conversations": [{"from": "robot", "value": "x"}]}', "conversations[0]"),
        ('{"prompt": "Q", "response": 3}', "'content' must be a string"),
        ('{"text": "Q"}', "unknown record shape"),
        ('{"prompt": "Q", "response": "A"', "invalid JSON"),
        ("[1, 2]", "expected a JSON object"),
    ],
)
def test_bad_record_error_names_file_line_and_problem(tmp_path, line, problem):
    path = tmp_path / "train.jsonl"
    good = '{"prompt": "Q", "response": "A"}\n'
    path.write_text(good + line + "\n" + good)
    with pytest.raises(utils.DataError) as err:
        sft.load_conversations([str(path)])
    assert str(err.value).startswith(f"{path}:2:") and problem in str(err.value)
    assert "\n" not in str(err.value)
    # --skip-bad counts the bad record and keeps reading: the record after it is not lost
    conversations, skipped = sft.load_conversations([str(path)], skip_bad=True)
    assert (len(conversations), skipped) == (2, 1)


def test_bad_bytes_are_a_data_error_or_skipped(tmp_path):
    path = tmp_path / "latin1.jsonl"
    good = b'{"prompt": "Q", "response": "A"}\n'
    path.write_bytes(good * 2 + '{"prompt": "caf\xe9", "response": "A"}\n'.encode("latin-1") + good)
    with pytest.raises(utils.DataError, match=rf"^{re.escape(str(path))}:3: not UTF-8 text"):
        sft.load_conversations([str(path)])
    conversations, skipped = sft.load_conversations([str(path)], skip_bad=True)
    assert (len(conversations), skipped) == (3, 1)


def test_empty_file_missing_file_and_json_array(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(utils.DataError, match="empty.jsonl: no records"):
        sft.load_conversations([str(empty)])
    with pytest.raises(utils.DataError, match="missing.jsonl: file not found"):
        sft.load_conversations([str(tmp_path / "missing.jsonl")], skip_bad=True)  # a missing file is never skipped
    array = tmp_path / "data.json"
    records = [{"prompt": "Q", "response": "A"}, {"messages": [{"role": "assistant", "content": "B"}]}]
    array.write_text(json.dumps(records))
    assert len(sft.load_conversations([str(array)])[0]) == 2
    # several files: all of them are read, in order
    conversations, _ = sft.load_conversations([str(array), str(array)])
    assert len(conversations) == 4 and conversations[1] == conversations[3]


# ----------------------------------------------------------------------------- messages -> tokens and labels


def test_mask_covers_exactly_the_reply_and_its_end_of_turn_token(tokenizer):
    ids, labels, pieces = decoded_targets(tokenizer, CONVERSATION)
    in_loss = "".join(p for p, t in pieces if t)
    masked = "".join(p for p, t in pieces if not t)
    assert in_loss == CONVERSATION[2]["content"] + "<|im_end|>"
    prompt = (
        f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\nWhat is 12*3?<|im_end|>\n<|im_start|>assistant\n"
    )
    assert masked == prompt + "\n"  # the template's newline after <|im_end|> is never generated, so never learned
    # token by token: everything up to "assistant\n" is masked, then one contiguous target run ending at <|im_end|>
    first = next(i for i, (_, t) in enumerate(pieces) if t)
    last = max(i for i, (_, t) in enumerate(pieces) if t)
    assert "".join(p for p, _ in pieces[:first]).endswith("<|im_start|>assistant\n")
    assert all(t for _, t in pieces[first : last + 1])
    assert pieces[last][0] == "<|im_end|>" and ids[last] == tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert pieces[last + 1 :] == [("\n", False)]
    assert labels[first : last + 1] == ids[first : last + 1]


def test_mask_with_default_system_prompt_and_two_assistant_turns(tokenizer):
    messages = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "add 2 and 2"},
        {"role": "assistant", "content": "4"},
    ]
    _, _, pieces = decoded_targets(tokenizer, messages)
    assert "".join(p for p, t in pieces if t) == "hello<|im_end|>4<|im_end|>"
    text = "".join(p for p, _ in pieces)
    assert text.startswith("<|im_start|>system\nYou are Qwen, created by Alibaba Cloud.")  # the template's own default
    assert "add 2 and 2" in "".join(p for p, t in pieces if not t)  # the user turn between the replies is masked


def test_a_reply_starting_with_newlines_keeps_its_first_token():
    """Rendered whole, "assistant\n" + "\n\nX" tokenizes with a "\n\n\n" token that starts in the prompt, and a
    mask by character offsets drops it; the reply is tokenized on its own, as the model writes it after the prompt."""
    import tiny_model

    tokenizer = tiny_model.train_tiny_tokenizer(600, extra_texts=["so\n\n\nthen\n\nwe"] * 200)  # learns "\n\n\n"
    messages = [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "\n\nX"}]
    ids, labels, pieces = decoded_targets(tokenizer, messages)
    assert "".join(p for p, t in pieces if t) == "\n\nX<|im_end|>"
    prompt = sft.generation_prompt(tokenizer, messages[:1])
    separately = tokenizer(prompt, add_special_tokens=False)["input_ids"] + tokenizer("\n\nX")["input_ids"]
    assert ids[: len(separately)] == separately
    whole = tokenizer(prompt + "\n\nX", add_special_tokens=False)["input_ids"]
    assert tokenizer.convert_ids_to_tokens(whole)[-2] == "ĊĊĊ"  # the merge across the boundary that is avoided


def test_a_template_that_reorders_history_is_refused(tokenizer):
    class Reversed:  # renders turns newest first: the conversation before a reply is not where the reply goes
        chat_template, bos_token, eos_token = "reversed", None, tokenizer.eos_token

        def apply_chat_template(self, messages, tokenize, add_generation_prompt):
            return "".join(f"[{m['role']}]{m['content']}" for m in reversed(messages)) + "[gen]" * add_generation_prompt

    with pytest.raises(ValueError, match="message 1: the generation prompt .* is not how the template begins"):
        sft.chat_pieces(Reversed(), CONVERSATION[1:])


# ----------------------------------------------------------------------------- published chat templates

TEMPLATES = utils.REPO_DIR / "tests" / "data" / "templates"
# name: (template, special tokens of the real tokenizer that the template writes, the token that ends a reply)
PUBLISHED = {
    "qwen2.5": (utils.DATA_DIR / "qwen2.5_chat_template.jinja", {}, "<|im_end|>"),
    "deepseek-r1-distill-qwen": (
        TEMPLATES / "deepseek-r1-distill-qwen.jinja",
        {
            "bos_token": "<｜begin▁of▁sentence｜>",
            "eos_token": "<｜end▁of▁sentence｜>",
            "extra": ["<｜User｜>", "<｜Assistant｜>"],
        },
        "<｜end▁of▁sentence｜>",
    ),
    "llama-3.1-instruct": (
        TEMPLATES / "llama-3.1-instruct.jinja",
        {
            "bos_token": "<|begin_of_text|>",
            "eos_token": "<|eot_id|>",
            "extra": ["<|start_header_id|>", "<|end_header_id|>"],
        },
        "<|eot_id|>",
    ),
    "gemma-2-it": (  # eos is <eos>, but a turn ends with <end_of_turn>: generation_config stops at both
        TEMPLATES / "gemma-2-it.jinja",
        {"bos_token": "<bos>", "eos_token": "<eos>", "extra": ["<start_of_turn>", "<end_of_turn>"]},
        "<end_of_turn>",
    ),
    "mistral-nemo-instruct-2407": (
        TEMPLATES / "mistral-nemo-instruct-2407.jinja",
        {"bos_token": "<s>", "eos_token": "</s>", "extra": ["[INST]", "[/INST]"]},
        "</s>",
    ),
}
REPLY = "12 * 3 is 36.\n\nCheck: 36 / 3 = 12.\n\n\\boxed{36}"
THOUGHT_REPLY = "<think>\nFirst, 12 * 3 = 36.\nWait, check: 36 / 3 = 12.\n</think>\n\n\\boxed{36}"  # R1's layout
THOUGHT_REPLY_2 = "<think>\nThen 12 * 4 = 48.\nHmm, 48 / 4 = 12.\n</think>\n\n\\boxed{48}"


def published_tokenizer(tiny_model_dir, name):
    """The tiny tokenizer taught the real model's special tokens, carrying its published chat template."""
    path, special, _ = PUBLISHED[name]
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    if special:
        roles = {k: v for k, v in special.items() if k != "extra"}
        tokenizer.add_special_tokens({**roles, "extra_special_tokens": special["extra"]})
    tokenizer.chat_template = path.read_text(encoding="utf-8")
    return tokenizer


def learned_and_read(tokenizer, messages, sequence=None):
    ids, labels = sequence or one_sequence(tokenizer, messages)
    learned = tokenizer.decode([i for i, label in zip(ids, labels) if label != IGNORE])
    return learned, tokenizer.decode([i for i, label in zip(ids, labels) if label == IGNORE]), ids, labels


@pytest.mark.parametrize("name", PUBLISHED)
def test_published_templates_learn_exactly_each_reply_and_its_end_of_turn(tiny_model_dir, name):
    tokenizer = published_tokenizer(tiny_model_dir, name)
    end = PUBLISHED[name][2]
    messages = [*CONVERSATION[:2], {"role": "assistant", "content": REPLY}]
    learned, read, ids, labels = learned_and_read(tokenizer, messages)
    assert learned == REPLY + end
    prompt = sft.generation_prompt(tokenizer, messages[:2])  # what evaluation sends: the same text, the same tokens
    assert (
        ids[: len(tokenizer(prompt, add_special_tokens=False)["input_ids"])]
        == tokenizer(prompt, add_special_tokens=False)["input_ids"]
    )
    assert read.startswith(prompt) and SYSTEM in prompt  # the system prompt is never lost (Gemma, Mistral: merged)
    first = labels.index(next(label for label in labels if label != IGNORE))
    assert all(label != IGNORE for label in labels[first : first + len(tokenizer(REPLY)["input_ids"]) + 1])
    # two turns: both replies and both ends learned, the user turn between them not
    two = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    two += [{"role": "user", "content": "add 2 and 2"}, {"role": "assistant", "content": "4"}]
    sequences = sequences_of(tokenizer, two)
    # R1's history leaves out the "<think>\n" its generation prompt wrote before the first reply: a sequence per reply
    assert len(sequences) == (2 if name == "deepseek-r1-distill-qwen" else 1)
    learned_read = [learned_and_read(tokenizer, two, sequence)[:2] for sequence in sequences]
    assert "".join(learned for learned, _ in learned_read) == f"hello{end}4{end}"
    assert "add 2 and 2" in learned_read[-1][1]


def test_r1_distill_trains_the_whole_thought_its_template_drops_from_history(tiny_model_dir):
    tokenizer = published_tokenizer(tiny_model_dir, "deepseek-r1-distill-qwen")
    end = PUBLISHED["deepseek-r1-distill-qwen"][2]
    messages = [{"role": "user", "content": "What is 12*3?"}, {"role": "assistant", "content": THOUGHT_REPLY}]
    rendered = tokenizer.apply_chat_template(messages, tokenize=False)
    assert "Wait, check" not in rendered  # the template itself keeps only what follows </think>
    learned, read, _, _ = learned_and_read(tokenizer, messages)
    # the generation prompt ends "<think>\n", so the reply is the thought after it, whole, then the answer
    assert read.endswith("<｜Assistant｜><think>\n") and learned == THOUGHT_REPLY.removeprefix("<think>\n") + end
    # R1's raw outputs have no opening <think> (the prompt wrote it): they continue the prompt as they are
    raw = [messages[0], {"role": "assistant", "content": THOUGHT_REPLY.removeprefix("<think>\n")}]
    assert learned_and_read(tokenizer, raw)[0] == learned
    # two turns: each reply trained with its whole thought, after the history as the template shows it at inference
    # (the first reply's thought dropped), so the record is two sequences
    again = [*messages, {"role": "user", "content": "And 12*4?"}, {"role": "assistant", "content": THOUGHT_REPLY_2}]
    first, second = sequences_of(tokenizer, again)
    assert learned_and_read(tokenizer, again, first)[:2] == (learned, read)
    learned_2, read_2, ids, labels = learned_and_read(tokenizer, again, second)
    assert learned_2 == THOUGHT_REPLY_2.removeprefix("<think>\n") + end
    prompt = sft.generation_prompt(tokenizer, again[:3])
    assert prompt.endswith(
        "<｜Assistant｜>\n\n\\boxed{36}<｜end▁of▁sentence｜><｜User｜>And 12*4?<｜Assistant｜><think>\n"
    )
    assert read_2 == prompt and "Wait, check" not in read_2  # the earlier thought is neither read nor learned here
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    assert ids[: len(prompt_ids)] == prompt_ids and set(labels[: len(prompt_ids)]) == {IGNORE}
    assert labels[len(prompt_ids) :] == ids[len(prompt_ids) :]


def qwen3_tokenizer(tiny_model_dir, **template_kwargs):
    """Qwen3's published template on the tiny tokenizer, which has Qwen's <|im_start|> and <|im_end|> already; Qwen3's
    <think> and </think> are added tokens that are not special, as in its tokenizer."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer.add_tokens(["<think>", "</think>"])
    tokenizer.chat_template = (TEMPLATES / "qwen3.jinja").read_text(encoding="utf-8")
    tokenizer.chat_template_kwargs = template_kwargs
    return tokenizer


def test_qwen3_trains_each_thinking_turn_after_the_history_it_sees_at_inference(tiny_model_dir):
    tokenizer = qwen3_tokenizer(tiny_model_dir)
    two = [CONVERSATION[1], {"role": "assistant", "content": THOUGHT_REPLY}]
    two += [{"role": "user", "content": "And 12*4?"}, {"role": "assistant", "content": THOUGHT_REPLY_2}]
    assert "Wait, check" not in tokenizer.apply_chat_template(two, tokenize=False)  # history drops thought 1
    first, second = sequences_of(tokenizer, two)
    for n, (sequence, reply) in enumerate([(first, THOUGHT_REPLY), (second, THOUGHT_REPLY_2)], 1):
        learned, read, ids, labels = learned_and_read(tokenizer, two, sequence)
        prompt = sft.generation_prompt(tokenizer, two[: 2 * n - 1])  # what the model reads before reply n
        assert prompt.endswith("<|im_start|>assistant\n") and read == prompt + "\n"
        assert learned == reply + "<|im_end|>"  # the whole thought, as the template lays out the last reply
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        assert ids[: len(prompt_ids)] == prompt_ids and set(labels[: len(prompt_ids)]) == {IGNORE}  # no prompt token
        assert labels[len(prompt_ids) : -1] == ids[len(prompt_ids) : -1] and labels[-1] == IGNORE  # then all of it
        assert tokenizer.decode(ids[len(prompt_ids)]) == "<think>" and tokenizer.decode(ids[-2]) == "<|im_end|>"
    # reply 2 reads reply 1 as the template shows history: its answer without its thought
    assert "\\boxed{36}<|im_end|>" in tokenizer.decode(second[0]) and "Wait, check" not in tokenizer.decode(second[0])
    # a thought written without the line breaks is trained as the template lays it out
    tight = [CONVERSATION[1], {"role": "assistant", "content": "<think>12 * 3 = 36.</think>\\boxed{36}"}]
    assert learned_and_read(tokenizer, tight)[0] == "<think>\n12 * 3 = 36.\n</think>\n\n\\boxed{36}<|im_end|>"
    # a reply without a thought gets the empty one the template writes for it
    plain = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    assert learned_and_read(tokenizer, plain)[0] == "<think>\n\n</think>\n\nhello<|im_end|>"


def test_the_data_report_counts_records_split_by_turn(tiny_model_dir, tmp_path):
    data = tmp_path / "train.jsonl"
    two = [CONVERSATION[1], {"role": "assistant", "content": THOUGHT_REPLY}]
    two += [{"role": "user", "content": "And 12*4?"}, {"role": "assistant", "content": THOUGHT_REPLY_2}]
    utils.write_jsonl(data, [{"messages": two}, {"prompt": "Q", "response": "A"}])
    template = str(TEMPLATES / "qwen3.jinja")
    loaded = sft.load_training_data([str(data)], str(tiny_model_dir), 512, False, False, chat_template=template)
    assert len(loaded.samples) == 3 and "-> 3 samples" in loaded.report
    assert (
        "2 records (0 bad skipped) -> 3 sequences (1 records split into one sequence per reply whose" in loaded.report
    )


def test_chat_template_kwargs_reach_the_template(tiny_model_dir):
    """'{"enable_thinking": false}': Qwen3's generation prompt closes an empty thought, and a reply follows it."""
    thinking, quiet = qwen3_tokenizer(tiny_model_dir), qwen3_tokenizer(tiny_model_dir, enable_thinking=False)
    plain = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    assert sft.generation_prompt(quiet, plain[:1]).endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert sft.generation_prompt(thinking, plain[:1]).endswith("<|im_start|>assistant\n")
    learned, read, _, _ = learned_and_read(quiet, plain)
    assert learned == "hello<|im_end|>" and read.endswith("<think>\n\n</think>\n\n\n")


def test_earlier_replies_the_template_cannot_lay_out_leave_the_final_reply_alone(tiny_model_dir, tmp_path):
    """A template that begins an earlier reply otherwise than its generation prompt: only the final reply is trained,
    the earlier ones read (masked) in its prompt, and the data report counts the record."""
    odd = tmp_path / "odd.jinja"  # ChatML, but the first reply opens with another role name than the prompt writes
    odd.write_text(
        "{% for m in messages %}<|im_start|>{{ 'first' if loop.index0 == 1 else m['role'] }}\n{{ m['content'] }}"
        "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    tokenizer = utils.load_tokenizer(str(tiny_model_dir), str(odd))
    two = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    two += [{"role": "user", "content": "add 2 and 2"}, {"role": "assistant", "content": "4"}]
    with pytest.raises(ValueError, match="message 1: the generation prompt .* is not how the template begins"):
        sft.turn_pieces(tokenizer, two, 1)
    [sequence] = sequences_of(tokenizer, two, final_only=True)
    learned, read, _, _ = learned_and_read(tokenizer, two, sequence)
    assert learned == "4<|im_end|>" and "<|im_start|>first\nhello<|im_end|>" in read
    with pytest.raises(ValueError, match="message 1: the generation prompt"):  # no later reply to fall back on
        sft.chat_pieces(tokenizer, two[:2])
    data = tmp_path / "train.jsonl"
    utils.write_jsonl(data, [{"messages": two}, {"prompt": "Q", "response": "A"}])
    loaded = sft.load_training_data([str(data)], str(tiny_model_dir), 256, False, True, chat_template=str(odd))
    assert "1 records trained on their final reply only" in loaded.report and len(loaded.samples) == 1


def test_templates_that_trim_or_refuse_system_turns(tiny_model_dir):
    llama = published_tokenizer(tiny_model_dir, "llama-3.1-instruct")
    assert sft.template_traits(llama) == sft.TemplateTraits(system_role=True, trims=(True, True))
    padded = [CONVERSATION[1], {"role": "assistant", "content": "\n  " + REPLY + "\n"}]
    assert learned_and_read(llama, padded)[0] == REPLY + "<|eot_id|>"  # as the template would render it
    gemma = published_tokenizer(tiny_model_dir, "gemma-2-it")
    assert not sft.template_traits(gemma).system_role
    with pytest.raises(Exception, match="System role not supported"):
        gemma.apply_chat_template(CONVERSATION, tokenize=False)  # what the template does with a system turn
    assert sft.generation_prompt(gemma, CONVERSATION[:2]).startswith(f"<bos><start_of_turn>user\n{SYSTEM}\n\nWhat")
    mistral = published_tokenizer(tiny_model_dir, "mistral-nemo-instruct-2407")
    assert SYSTEM not in mistral.apply_chat_template(CONVERSATION, tokenize=False)  # dropped from a trained turn
    assert not sft.template_traits(mistral).system_role
    with pytest.raises(ValueError, match="no user turn follows the system turn"):
        sft.chat_pieces(gemma, [CONVERSATION[0], CONVERSATION[2]])


def test_bad_template_or_record_is_one_line_naming_template_and_record(tiny_model_dir, tmp_path):
    gemma_dir = tmp_path / "gemma-tokenizer"
    published_tokenizer(tiny_model_dir, "gemma-2-it").save_pretrained(gemma_dir)
    template = str(PUBLISHED["gemma-2-it"][0])
    data = tmp_path / "train.jsonl"
    twice = {"messages": [{"role": "user", "content": "Q"}, {"role": "user", "content": "Q"}, CONVERSATION[2]]}
    utils.write_jsonl(data, [{"prompt": "Q", "response": "A"}, twice, {"prompt": "Q2", "response": "B"}])
    with pytest.raises(SystemExit) as err:
        sft.load_training_data([str(data)], str(gemma_dir), 256, False, False, chat_template=template)
    message = str(err.value)
    assert message.startswith(f"data error: {data}:2: chat template {template}: rendering failed (TemplateError: ")
    assert "Conversation roles must alternate" in message and "\n" not in message
    skipped = sft.load_training_data([str(data)], str(gemma_dir), 256, False, True, chat_template=template)
    assert len(skipped.samples) == 2 and "1 bad skipped" in skipped.report
    # a template whose replies end in no special token: the model would never learn to stop
    plain = tmp_path / "plain.jinja"
    plain.write_text("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}")
    with pytest.raises(SystemExit, match=rf"^data error: {data}:1: chat template {plain}: no special token ends"):
        sft.load_training_data([str(data)], str(tiny_model_dir), 256, False, False, chat_template=str(plain))
    with pytest.raises(SystemExit, match=r"no trainable samples left .* 3 unfit for the chat template, first .*:1:"):
        sft.load_training_data([str(data)], str(tiny_model_dir), 256, False, True, chat_template=str(plain))


def test_targets_are_shifted_inside_each_sample():
    sample = sft.make_sample([5, 6, 7, 8], [IGNORE, IGNORE, 7, 8])
    assert sample.targets == [IGNORE, 7, 8, IGNORE] and sample.n_targets == 2
    packed = sft.collate_packed([sample, sft.make_sample([9, 10], [9, 10])])
    assert packed["input_ids"].tolist() == [[5, 6, 7, 8, 9, 10]]
    assert packed["targets"].tolist() == [[IGNORE, 7, 8, IGNORE, 10, IGNORE]]  # 8 never learns to predict 9
    assert packed["position_ids"].tolist() == [[0, 1, 2, 3, 0, 1]]
    padded = sft.collate_padded([sample, sft.make_sample([9, 10], [9, 10])], pad_id=0)
    assert padded["input_ids"].tolist() == [[5, 6, 7, 8], [9, 10, 0, 0]]
    assert padded["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    assert padded["targets"].tolist() == [[IGNORE, 7, 8, IGNORE], [10, IGNORE, IGNORE, IGNORE]]


def test_over_long_samples_are_dropped_or_truncated_and_counted(tokenizer):
    short = [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]
    long = [{"role": "user", "content": "x"}, {"role": "assistant", "content": "word " * 200}]
    prompt_only = [{"role": "user", "content": "word " * 200}, {"role": "assistant", "content": "y"}]
    n_short = len(one_sequence(tokenizer, short)[0])
    samples, stats = sft.build_samples(tokenizer, [short, long], max_length=n_short + 20, truncate=False)
    assert (len(samples), stats["too_long_dropped"], stats["truncated"]) == (1, 1, 0)
    samples, stats = sft.build_samples(tokenizer, [short, long, prompt_only], max_length=n_short + 20, truncate=True)
    assert (len(samples), stats["truncated"], stats["no_target_after_truncation"], stats["kept"]) == (2, 2, 1, 2)
    assert len(samples[1].input_ids) == n_short + 20 and samples[1].targets[-1] == IGNORE


def test_load_training_data_reports_and_fingerprints(tiny_model_dir, train_file):
    data = sft.load_training_data([str(train_file)], str(tiny_model_dir), 256, False, False)
    assert len(data.samples) == 12 and data.lengths == [len(s.input_ids) for s in data.samples]
    assert data.n_targets == [s.n_targets for s in data.samples] and 0 < min(data.n_targets)
    assert (
        data.report.startswith("data: 12 records (0 bad skipped) -> 12 sequences;") and "-> 12 samples" in data.report
    )
    assert data.tokenizer.eos_token == "<|im_end|>"
    again = sft.load_training_data([str(train_file)], str(tiny_model_dir), 256, False, False)
    assert again.fingerprint == data.fingerprint  # deterministic: a resumed run recognises its data
    cut = sft.load_training_data([str(train_file)], str(tiny_model_dir), 90, True, False)
    assert cut.fingerprint != data.fingerprint and max(cut.lengths) == 90
    with pytest.raises(SystemExit, match=r"no trainable samples left \(read 12 records, 12 sequences over 40 tokens\)"):
        sft.load_training_data([str(train_file)], str(tiny_model_dir), 40, False, False)


def test_load_training_data_turns_bad_data_into_one_line_exit(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "Q", "response": "A"}\n{"prompt": "Q"}\n')
    with pytest.raises(SystemExit, match=rf"^data error: {bad}:2: unknown record shape"):
        sft.load_training_data([str(bad)], "/nonexistent/never-loaded", 256, False, False)  # before the tokenizer loads


# ----------------------------------------------------------------------------- steps and packing


def test_epoch_order_is_a_pure_function_of_seed_and_epoch():
    steps = [sft.step_sample_ids(10, 4, seed=1, step=s) for s in range(3)]
    assert [len(s) for s in steps] == [4, 4, 2]
    assert sorted(i for s in steps for i in s) == list(range(10))  # one epoch = every sample once, last step partial
    assert steps == [sft.step_sample_ids(10, 4, seed=1, step=s) for s in range(3)]
    next_epoch = [sft.step_sample_ids(10, 4, seed=1, step=s) for s in range(3, 6)]
    assert sorted(i for s in next_epoch for i in s) == list(range(10)) and next_epoch != steps  # reshuffled
    assert sft.epoch_order(10, 1, 0) != sft.epoch_order(10, 2, 0)


def test_packing_covers_every_sample_once_within_budget():
    lengths = [100, 900, 350, 350, 20, 640, 500, 1000]
    ids = list(range(len(lengths)))
    for pack in (sft.pack_step, sft.pad_step):
        bins = pack(ids, lengths, 1000)
        assert sorted(i for b in bins for i in b) == ids
        for b in bins:
            cost = sum(lengths[i] for i in b) if pack is sft.pack_step else len(b) * max(lengths[i] for i in b)
            assert cost <= 1000
        assert pack(list(reversed(ids)), lengths, 1000) == bins  # deterministic, whatever the order given
    assert len(sft.pack_step(ids, lengths, 1000)) == 4  # 3860 tokens: first-fit decreasing needs 4 bins
    assert sft.pack_step(ids, lengths, 1000)[0] == [7]  # longest first


# ----------------------------------------------------------------------------- loss


def random_samples(n, vocab, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        length = int(torch.randint(8, 40, (1,), generator=g))
        ids = torch.randint(3, vocab, (length,), generator=g).tolist()
        labels = [IGNORE] * (length // 3) + ids[length // 3 :]
        out.append(sft.make_sample(ids, labels))
    return out


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_per_token_losses_equal_each_sample_alone(tiny_model_dir, attn):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation=attn, dtype=torch.float32).eval()
    samples = random_samples(3, 4000)

    def token_losses(batch):
        logits = model(input_ids=batch["input_ids"], position_ids=batch.get("position_ids"), use_cache=False).logits
        return torch.nn.functional.cross_entropy(logits[0], batch["targets"][0], reduction="none", ignore_index=IGNORE)

    with torch.no_grad():
        packed = token_losses(sft.collate_packed(samples))
        alone = torch.cat([token_losses(sft.collate_packed([s])) for s in samples])
    torch.testing.assert_close(packed, alone, atol=1e-5, rtol=1e-5)
    # and the check has teeth: without position_ids restarting, the samples would see each other
    with torch.no_grad():
        leaky = sft.collate_packed(samples)
        leaky["position_ids"] = torch.arange(leaky["input_ids"].shape[1])[None]
        assert not torch.allclose(token_losses(leaky), alone, atol=1e-3)


def test_chunked_loss_equals_full_logits_loss_and_gradients():
    torch.manual_seed(0)
    hidden = torch.randn(2, 37, 16, requires_grad=True)
    weight = torch.randn(301, 16, requires_grad=True)
    targets = torch.randint(0, 301, (2, 37))
    targets[0, :5] = IGNORE
    full = sft.full_logits_lm_loss(hidden, weight, targets)
    grads_full = torch.autograd.grad(full, (hidden, weight))
    chunked = sft.chunked_lm_loss(hidden, weight, targets, chunk_tokens=7)
    grads_chunked = torch.autograd.grad(chunked, (hidden, weight))
    torch.testing.assert_close(chunked, full)
    for a, b in zip(grads_chunked, grads_full):
        torch.testing.assert_close(a, b)


def test_summed_loss_is_the_models_own_cross_entropy_summed_over_targets(model):
    """The trainers' one loss: decoder + LM head at target positions only, summed (the step divides)."""
    samples = random_samples(4, 4000, seed=1)
    batch = sft.collate_packed(samples)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits
        reference = torch.nn.functional.cross_entropy(logits[0], batch["targets"][0], reduction="sum")
        chunked = sft.summed_loss(model, batch, loss_chunk_tokens=16)
        full = sft.summed_loss(model, batch, loss_chunk_tokens=0)
        padded = sft.summed_loss(model, sft.collate_padded(samples, pad_id=0), loss_chunk_tokens=16)
    torch.testing.assert_close(chunked, reference, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(full, reference, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(padded, reference, rtol=1e-5, atol=1e-4)  # padding is masked out, not learned
    assert reference / sum(s.n_targets for s in samples) > 5  # a random model: ~log(vocab) per token, so not vacuous


def test_the_loss_applies_the_models_final_logit_softcapping_as_its_own_forward_does():
    """Gemma 2 caps its logits (cap * tanh(logits / cap)); summed_loss, chunked or not, equals its own loss."""
    from transformers import Gemma2Config, Gemma2ForCausalLM

    torch.manual_seed(0)
    config = Gemma2Config(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, head_dim=16, final_logit_softcapping=5.0, attn_implementation="eager",
    )  # fmt: skip
    lm = Gemma2ForCausalLM(config).eval()
    with torch.no_grad():
        lm.lm_head.weight.mul_(30)  # logits of tens, which a cap of 5 changes
    ids = torch.randint(0, 64, (1, 12))
    reference = lm(input_ids=ids, labels=ids).loss * 11  # its mean over the 11 shifted targets
    batch = {"input_ids": ids, "targets": torch.cat([ids[:, 1:], torch.tensor([[sft.IGNORE_INDEX]])], dim=1)}
    for chunk in (0, 5):
        assert sft.summed_loss(lm, batch, chunk).item() == pytest.approx(reference.item(), rel=1e-5)
    lm.config.final_logit_softcapping = None  # a cap that large logits feel: without it the loss differs
    assert sft.summed_loss(lm, batch, 5).item() != pytest.approx(reference.item(), rel=1e-3)
