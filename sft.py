"""The details of supervised fine-tuning that decide results, in the order data flows through them.

    records -> messages (to_messages) -> chat-template pieces: prompt, reply, end of turn, in one sequence or one per
    reply whose history the template rewrites (chat_pieces) -> token labels (tokenize_conversations) -> shift inside
    each sample (make_sample) -> drop or cut long samples -> each step's samples (step_sample_ids) -> first-fit
    packing (pack_step) -> one packed row (collate_packed) -> summed chunked cross-entropy (summed_loss), divided by
    the step's target tokens in the trainer.

Both trainers call these functions, and nothing else decides which tokens are learned or how they are weighted.
Every rule here is tested token by token in tests/test_sft.py.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from dataclasses import dataclass
from typing import Callable, Iterable, NamedTuple

import torch
import torch.nn.functional as F

from utils import DataError, iter_json_records, load_tokenizer

IGNORE_INDEX = -100  # label value PyTorch's cross-entropy skips
LOSS_CHUNK_TOKENS = 1024  # the trainers' --loss-chunk-tokens: 1.8 GiB of logits at vocab 152k (bench/RESULTS.md)


# ----------------------------------------------------------------------------- records -> messages

_SHAREGPT_ROLES = {"user": "user", "human": "user", "assistant": "assistant", "gpt": "assistant", "system": "system"}


def to_messages(record: dict) -> list[dict]:
    """Normalise one record of any supported shape to [{"role", "content"}, ...].

    Shapes: Sky-T1 ShareGPT {"system", "conversations": [{"from", "value"}]}, chat {"messages": [...]},
    and {"prompt", "response"[, "system"]}. Raises ValueError naming the offending field.
    """
    system = [{"role": "system", "content": record["system"]}] if record.get("system") else []
    if "messages" in record:
        raw = record["messages"]
        if not isinstance(raw, list):
            raise ValueError("field 'messages' must be a list")
        messages = []
        for i, m in enumerate(raw):
            if not isinstance(m, dict) or "role" not in m or "content" not in m:
                raise ValueError(f"field 'messages[{i}]' needs 'role' and 'content'")
            messages.append({"role": m["role"], "content": m["content"]})
    elif "conversations" in record:
        raw = record["conversations"]
        if not isinstance(raw, list):
            raise ValueError("field 'conversations' must be a list")
        messages = list(system)
        for i, turn in enumerate(raw):
            if not isinstance(turn, dict) or turn.get("from") not in _SHAREGPT_ROLES or "value" not in turn:
                raise ValueError(f"field 'conversations[{i}]' needs 'from' (user|assistant) and 'value'")
            messages.append({"role": _SHAREGPT_ROLES[turn["from"]], "content": turn["value"]})
    elif "prompt" in record and "response" in record:
        messages = system + [
            {"role": "user", "content": record["prompt"]},
            {"role": "assistant", "content": record["response"]},
        ]
    else:
        raise ValueError("unknown record shape: expected 'messages', 'conversations' or 'prompt'+'response'")
    for i, m in enumerate(messages):
        if m["role"] not in ("system", "user", "assistant", "tool"):
            raise ValueError(f"message {i}: unknown role {m['role']!r}")
        if not isinstance(m["content"], str):
            raise ValueError(f"message {i} ({m['role']}): 'content' must be a string")
    if not any(m["role"] == "assistant" and m["content"].strip() for m in messages):
        raise ValueError("no non-empty assistant turn")
    return messages


class Conversation(list):
    """A record's messages (a plain list of {"role", "content"}) that remembers where it came from, "file:line"."""

    source: str = ""


def load_conversations(paths: Iterable[str], skip_bad: bool = False) -> tuple[list[Conversation], int]:
    """Read and validate every record of every file before anything expensive starts.

    Returns (conversations, n_skipped). Without skip_bad the first bad record raises DataError naming it.
    """
    conversations, bad = [], []
    for path in paths:
        n_in_file, n_bad_before = 0, len(bad)
        # with skip_bad a bad line is counted and skipped, not the rest of its file; a missing file always stops
        for line, record in iter_json_records(path, on_error=bad.append if skip_bad else None):
            n_in_file += 1
            try:
                conversation = Conversation(to_messages(record))
            except ValueError as e:
                if not skip_bad:
                    raise DataError(f"{path}:{line}: {e}") from None
                bad.append(e)
                continue
            conversation.source = f"{path}:{line}"
            conversations.append(conversation)
        if n_in_file == 0 and len(bad) == n_bad_before:
            raise DataError(f"{path}: no records (empty file)")
    return conversations, len(bad)


# ----------------------------------------------------------------------------- messages -> tokens and labels

# Stands in for a reply while the template renders, so that nothing a template does to a reply (R1-Distill drops
# everything up to </think>, Llama 3 and Gemma trim it) can hide where the reply goes.
_REPLY = "⟦reply⟧"
_PROBE_PAD = " \n"


@dataclass(frozen=True)
class TemplateTraits:
    system_role: bool  # False: the template refuses a system turn (Gemma 2) or drops it from history (Mistral)
    trims: tuple[bool, bool]  # the template strips whitespace from the start / end of a reply (Llama 3, Gemma 2)


_traits: dict[tuple, TemplateTraits] = {}


def _template_kwargs(tokenizer) -> dict:
    """--chat-template-kwargs, which utils.load_tokenizer hands the tokenizer with its template: the template's own
    switches (Qwen3's enable_thinking), passed to every rendering."""
    return getattr(tokenizer, "chat_template_kwargs", None) or {}


def _render(tokenizer, messages: list[dict], add_generation_prompt: bool) -> str:
    try:
        return tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt, **_template_kwargs(tokenizer)
        )
    except Exception as e:  # template code raises whatever it likes: jinja's raise_exception, TypeError, KeyError...
        raise ValueError(f"rendering failed ({type(e).__name__}: {' '.join(str(e).split())})") from None


def template_traits(tokenizer) -> TemplateTraits:
    """What a template does to system turns and replies, found once per template by rendering two probes."""
    key = (str(tokenizer.chat_template), tokenizer.bos_token, tokenizer.eos_token)
    key += (json.dumps(_template_kwargs(tokenizer), sort_keys=True, default=str),)
    if key not in _traits:
        reply = _PROBE_PAD + _REPLY + _PROBE_PAD
        exchange = [{"role": "user", "content": "⟦user⟧"}, {"role": "assistant", "content": reply}]
        try:
            system_role = "⟦system⟧" in _render(
                tokenizer, [{"role": "system", "content": "⟦system⟧"}, *exchange], False
            )
        except ValueError:
            system_role = False
        text = _render(tokenizer, exchange, False)
        at = text.find(_REPLY)
        if at < 0:
            raise ValueError("the template does not render an assistant reply as written")
        trims = (not text[:at].endswith(_PROBE_PAD), not text[at:].startswith(_REPLY + _PROBE_PAD))
        _traits[key] = TemplateTraits(system_role, trims)
    return _traits[key]


def merge_system_turn(messages: list[dict]) -> list[dict]:
    """For templates without a system role: the system text opens the first user turn, separated by a blank line, as
    Gemma 3's and Mistral's own templates place it."""
    if len(messages) < 2 or messages[0]["role"] != "system" or messages[1]["role"] != "user":
        raise ValueError("the template has no system role and no user turn follows the system turn to carry it")
    user = {"role": "user", "content": messages[0]["content"] + "\n\n" + messages[1]["content"]}
    return [user, *messages[2:]]


def fit_to_template(tokenizer, messages: list[dict]) -> list[dict]:
    """The messages as this template can take them: a system turn merged into the first user turn if it must be."""
    if messages and messages[0]["role"] == "system" and not template_traits(tokenizer).system_role:
        return merge_system_turn(messages)
    return messages


def generation_prompt(tokenizer, messages: list[dict]) -> str:
    """What the model reads before it writes the next reply: the text every trained reply follows (chat_pieces),
    and what evaluation must send for a model to answer as it was trained."""
    return _render(tokenizer, fit_to_template(tokenizer, messages), True)


def _squash(text: str) -> str:
    return "".join(text.split())


def turn_pieces(tokenizer, messages: list[dict], i: int) -> tuple[str, str, str]:
    """(prompt, reply, end) of the assistant reply messages[i], laid out as the model meets it at inference: the
    prompt is the generation prompt of messages[:i], the earlier replies in it as the template shows them in history.

    The reply is what the template renders for it as the conversation's last message (Qwen3 re-lays its <think>
    block, Llama 3 trims it), unless that rendering loses part of it (R1-Distill keeps only what follows </think>):
    then it is the record's text as written, found where a stand-in for it lands; a generation prompt that opens the
    reply itself (R1's "<think>\n") is taken off a reply that starts with it. The end is what the template writes
    after the reply. Raises ValueError for a reply the template cannot lay out.
    """
    traits = template_traits(tokenizer)
    prompt = _render(tokenizer, messages[:i], True)
    turn = _render(tokenizer, [*messages[:i], dict(messages[i], content=_REPLY)], False)
    at = turn.find(_REPLY)
    if at < 0:
        raise ValueError(f"message {i}: the template does not render this assistant reply")
    end = turn[at + len(_REPLY) :]
    content = messages[i]["content"]
    rendered = _render(tokenizer, messages[: i + 1], False)
    if rendered.startswith(prompt) and rendered.endswith(end) and len(rendered) >= len(prompt) + len(end):
        as_rendered = rendered[len(prompt) : len(rendered) - len(end)]
        if _squash(content) in _squash(as_rendered):
            return prompt, as_rendered, end
    content = content.lstrip() if traits.trims[0] else content
    content = content.rstrip() if traits.trims[1] else content
    if (turn[:at] + content).startswith(prompt):  # the reply follows the generation prompt, or opens with its tail
        return prompt, (turn[:at] + content)[len(prompt) :], end
    if prompt.startswith(turn[:at]):  # the prompt opens the reply (R1's "<think>\n"), this reply does not
        return prompt, content, end
    raise ValueError(
        f"message {i}: the generation prompt (ending {prompt[-30:]!r}) is not how the template begins the "
        f"reply (ending {turn[:at][-30:]!r})"
    )


def chat_pieces(tokenizer, messages: list[dict]) -> tuple[list[list[tuple[str, str]]], bool]:
    """The conversation as the chat template lays it out: training sequences, each in pieces tokenized one by one,

        ("prompt", text)  what the model reads before a reply: the generation prompt, never learned
        ("reply", text)   the reply as the model writes it after that prompt: learned
        ("end", text)     what the template writes after the reply: its first special token (<|im_end|>, <|eot_id|>,
                          <end_of_turn>, </s>) is learned, so the model learns to stop; the rest is not

    and whether only the final reply is trained (below). Each reply is trained exactly as the model meets it at
    inference (turn_pieces): after the conversation up to it, as the template renders that conversation. A template
    that shows earlier replies in history as they were trained (ChatML, Llama 3) keeps a multi-turn record one
    sequence; one that rewrites them (Qwen3 and R1-Distill drop the thought of earlier replies) makes it one sequence
    per reply whose history differs: [Q1 T1 A1] [Q1 A1 Q2 T2 A2], each with its own masked prompt and the whole
    thought of its reply, as the Qwen team advises for Qwen3 (github.com/QwenLM/Qwen3/discussions/1398). A thought
    is never trained without the context it was written in, and the prompts repeated are the short visible turns.
    If an earlier reply cannot be laid out at all, only the final reply is trained, the earlier ones read in its
    prompt (masked), and the flag says so (counted in the data report). Replies are tokenized apart from the prompt,
    so no reply token merges with the template text before it (as LLaMA-Factory does). Messages after the last
    reply are not trained and are dropped. Raises ValueError for a template that cannot lay out the final reply.
    """
    messages = fit_to_template(tokenizer, messages)
    replies = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    turns, final_only = [], False
    for i in replies:
        try:
            turns.append(turn_pieces(tokenizer, messages, i))
        except ValueError:
            if i == replies[-1]:
                raise
            final_only = True
    sequences, done = [], None
    for prompt, reply, end in turns[-1:] if final_only else turns:
        if done is not None and prompt.startswith(done):  # the history shows the earlier replies as they were trained
            sequences[-1] += [("prompt", prompt[len(done) :]), ("reply", reply), ("end", end)]
        else:
            sequences.append([("prompt", prompt), ("reply", reply), ("end", end)])
        done = prompt + reply + end
    return sequences, final_only


def special_token_ids(tokenizer) -> set[int]:
    """Ids of every special token (end of turn, role markers, bos/eos), which a reply's end is found by."""
    added = tokenizer.added_tokens_decoder.items()
    return set(tokenizer.all_special_ids) | {i for i, token in added if token.special}


def _labelled(pieces: list[tuple[str, str]], piece_ids: list[list[int]], special: set[int]) -> tuple[list, list]:
    ids, labels = [], []
    for (kind, _), tokens in zip(pieces, piece_ids):
        learned = 0
        if kind == "reply":
            learned = len(tokens)
        elif kind == "end":
            learned = next((j + 1 for j, t in enumerate(tokens) if t in special), 0)
            if not learned:
                raise ValueError("no special token ends the reply, so the model would never learn to stop")
        ids += tokens
        labels += tokens[:learned] + [IGNORE_INDEX] * (len(tokens) - learned)
    return ids, labels


class Tokenized(NamedTuple):
    sequences: list[tuple[list[int], list[int]]]  # (input_ids, labels) of each training sequence of a record
    final_only: bool  # only the final reply is trained: the earlier ones could not be laid out (chat_pieces)


def tokenize_conversations(
    tokenizer,
    conversations: list[list[dict]],
    batch_size: int = 256,
    on_error: Callable[[DataError], None] | None = None,
    template_name: str = "of the tokenizer",
) -> Iterable[Tokenized]:
    """Yield each conversation's Tokenized sequences; labels are IGNORE_INDEX except on reply tokens and the special
    token that ends each reply (chat_pieces). Pieces are tokenized in batches: the fast tokenizer spreads a batch
    over the cores. A conversation the template cannot lay out raises DataError "file:line: chat template NAME:
    problem", or with on_error is handed to it and skipped.
    """
    special = special_token_ids(tokenizer)
    for start in range(0, len(conversations), batch_size):
        batch = conversations[start : start + batch_size]
        laid_out = []
        for n, conversation in enumerate(batch, start + 1):
            source = getattr(conversation, "source", "") or f"conversation {n}"
            try:
                laid_out.append((source, *chat_pieces(tokenizer, conversation)))
            except ValueError as e:
                laid_out.append((source, e, False))
        texts = [text for _, seqs, _ in laid_out if isinstance(seqs, list) for seq in seqs for _, text in seq]
        tokenized = iter(tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else [])
        for source, sequences, final_only in laid_out:
            try:
                if isinstance(sequences, ValueError):
                    raise sequences
                piece_ids = [[next(tokenized) for _ in seq] for seq in sequences]
                yield Tokenized([_labelled(seq, ids, special) for seq, ids in zip(sequences, piece_ids)], final_only)
            except ValueError as e:
                error = DataError(f"{source}: chat template {template_name}: {e}")
                if on_error is None:
                    raise error from None
                on_error(error)


@dataclass
class Sample:
    """One tokenized training sequence; targets[t] is the token the model must predict after input_ids[t]."""

    input_ids: list[int]
    targets: list[int]

    @property
    def n_targets(self) -> int:
        return sum(t != IGNORE_INDEX for t in self.targets)


def make_sample(input_ids: list[int], labels: list[int]) -> Sample:
    # Shift inside each sample, before packing, so the last token of one sample never learns to predict
    # the first token of the next one.
    return Sample(list(input_ids), list(labels[1:]) + [IGNORE_INDEX])


def build_samples(
    tokenizer,
    conversations,
    max_length: int,
    truncate: bool,
    on_error: Callable[[DataError], None] | None = None,
    template_name: str = "of the tokenizer",
) -> tuple[list[Sample], dict]:
    """Tokenize, then drop (default) or truncate sequences over max_length, each on its own. Never silent: returns
    counts, of records or of sequences (a template that rewrites earlier turns makes one sequence per reply)."""
    from tqdm import tqdm

    stats = {
        "total": len(conversations),  # records
        "split_by_turn": 0,  # records laid out as several sequences, one per reply
        "final_reply_only": 0,  # records trained on their final reply only
        "sequences": 0,  # sequences the records make, before the length limit
        "too_long_dropped": 0,  # sequences over max_length dropped
        "truncated": 0,  # sequences cut at max_length (truncate)
        "no_target_after_truncation": 0,  # cut sequences left without a target token, dropped
    }
    samples = []
    tokenized = tokenize_conversations(tokenizer, conversations, on_error=on_error, template_name=template_name)
    for sequences, final_only in tqdm(tokenized, total=len(conversations), desc="tokenize", leave=False):
        stats["split_by_turn"] += len(sequences) > 1
        stats["final_reply_only"] += final_only
        stats["sequences"] += len(sequences)
        for ids, labels in sequences:
            if len(ids) > max_length:
                if not truncate:
                    stats["too_long_dropped"] += 1
                    continue
                ids, labels = ids[:max_length], labels[:max_length]
                stats["truncated"] += 1
            sample = make_sample(ids, labels)
            if sample.n_targets == 0:
                stats["no_target_after_truncation"] += 1
                continue
            samples.append(sample)
    stats["kept"] = len(samples)  # sequences trained on: the samples
    return samples, stats


@dataclass
class TrainingData:
    tokenizer: object
    samples: list[Sample]
    lengths: list[int]  # tokens per sample: what packing fills micro-batches with
    n_targets: list[int]  # loss tokens per sample: what a step's loss is divided by
    report: str  # one line: what was read, dropped and kept
    fingerprint: str  # lengths and targets hashed: a resumed run refuses a checkpoint made on other data


def load_training_data(
    paths: list[str],
    model: str,
    max_length: int,
    truncate: bool,
    skip_bad: bool,
    chat_template: str = "model",
    chat_template_kwargs: dict | None = None,
) -> TrainingData:
    """Everything both trainers do before the model loads: validate every record, lay each out with the chat template
    (the model's own, "chatml" or a Jinja file, rendered with chat_template_kwargs: utils.load_tokenizer), tokenize,
    drop or cut long samples.

    Bad data exits with its one-line `file:line: problem`; with skip_bad it is counted instead.
    """
    template_errors = []
    try:
        conversations, n_bad = load_conversations(paths, skip_bad)
        tokenizer = load_tokenizer(model, chat_template, chat_template_kwargs)
        template_name = f"of {model}" if chat_template == "model" else chat_template
        on_error = template_errors.append if skip_bad else None
        samples, stats = build_samples(tokenizer, conversations, max_length, truncate, on_error, template_name)
    except DataError as e:
        raise SystemExit(f"data error: {e}") from None
    n_bad += len(template_errors)
    if not samples:
        too_long = stats["too_long_dropped"]
        unfit = (
            f", {len(template_errors)} unfit for the chat template, first {template_errors[0]}"
            if template_errors
            else ""
        )
        raise SystemExit(
            f"no trainable samples left (read {stats['total']} records, {too_long} sequences over {max_length} tokens"
            f"{unfit})"
        )
    lengths = [len(s.input_ids) for s in samples]
    n_targets = [s.n_targets for s in samples]
    report = f"data: {stats['total']} records ({n_bad} bad skipped) -> {stats['sequences']} sequences"
    if stats["split_by_turn"]:
        report += f" ({stats['split_by_turn']} records split into one sequence per reply whose history differs)"
    if stats["final_reply_only"]:
        report += (
            f" ({stats['final_reply_only']} records trained on their final reply only: the chat template cannot lay "
            "out their earlier replies)"
        )
    report += (
        f"; {stats['too_long_dropped']} sequences over {max_length} tokens dropped, {stats['truncated']} truncated, "
        f"{stats['no_target_after_truncation']} without targets dropped -> {len(samples)} samples, {sum(lengths):,} "
        f"tokens ({sum(n_targets):,} in the loss), longest {max(lengths)}"
    )
    if not template_traits(tokenizer).system_role and any(c[0]["role"] == "system" for c in conversations):
        report += " (the chat template has no system role: system turns open the first user turn)"
    fingerprint = hashlib.sha256(json.dumps([lengths, n_targets]).encode()).hexdigest()[:16]
    return TrainingData(tokenizer, samples, lengths, n_targets, report, fingerprint)


# ----------------------------------------------------------------------------- steps, packing and collation


def epoch_order(n_samples: int, seed: int, epoch: int) -> list[int]:
    """The sample order of one epoch; a pure function of (seed, epoch), so a resumed run replays it exactly."""
    order = list(range(n_samples))
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    return order


def step_sample_ids(n_samples: int, samples_per_step: int, seed: int, step: int) -> list[int]:
    """The samples of one optimizer step: consecutive slices of each epoch's order (the last one may be short)."""
    steps_per_epoch = math.ceil(n_samples / samples_per_step)
    epoch, i = divmod(step, steps_per_epoch)
    return epoch_order(n_samples, seed, epoch)[i * samples_per_step : (i + 1) * samples_per_step]


def pack_step(sample_ids: list[int], lengths: list[int], micro_batch_tokens: int) -> list[list[int]]:
    """Split one optimizer step's samples into micro-batches of at most micro_batch_tokens tokens.

    First-fit decreasing: longest first, each into the first micro-batch with room. Deterministic.
    """
    bins: list[list[int]] = []
    room: list[int] = []
    for i in sorted(sample_ids, key=lambda i: (-lengths[i], i)):
        for b, free in enumerate(room):
            if lengths[i] <= free:
                bins[b].append(i)
                room[b] -= lengths[i]
                break
        else:
            bins.append([i])
            room.append(micro_batch_tokens - lengths[i])
    return bins


def pad_step(sample_ids: list[int], lengths: list[int], micro_batch_tokens: int) -> list[list[int]]:
    """The padded baseline: rows of similar length, as many as fit when every row is padded to the longest."""
    bins, current = [], []
    for i in sorted(sample_ids, key=lambda i: (-lengths[i], i)):
        if current and (len(current) + 1) * lengths[current[0]] > micro_batch_tokens:
            bins.append(current)
            current = []
        current.append(i)
    return bins + ([current] if current else [])


def collate_packed(samples: list[Sample]) -> dict[str, torch.Tensor]:
    """One row holding all samples back to back; position_ids restart at 0 so attention stays inside each sample.

    No attention mask is passed: from position_ids alone transformers builds a block-diagonal mask (SDPA, eager)
    or calls FlashAttention-2's varlen kernel.
    """
    return {
        "input_ids": torch.tensor([[t for s in samples for t in s.input_ids]]),
        "position_ids": torch.tensor([[p for s in samples for p in range(len(s.input_ids))]]),
        "targets": torch.tensor([[t for s in samples for t in s.targets]]),
    }


def collate_padded(samples: list[Sample], pad_id: int) -> dict[str, torch.Tensor]:
    """One row per sample, right-padded; the attention mask hides the padding."""
    width = max(len(s.input_ids) for s in samples)

    def pad(seq: list[int], value: int) -> list[int]:
        return seq + [value] * (width - len(seq))

    return {
        "input_ids": torch.tensor([pad(s.input_ids, pad_id) for s in samples]),
        "attention_mask": torch.tensor([pad([1] * len(s.input_ids), 0) for s in samples]),
        "targets": torch.tensor([pad(s.targets, IGNORE_INDEX) for s in samples]),
    }


# ----------------------------------------------------------------------------- loss


def _logits(hidden: torch.Tensor, weight: torch.Tensor, softcap: float | None) -> torch.Tensor:
    """fp32 logits; softcap: the model's final_logit_softcapping (Gemma 2: cap * tanh(logits / cap)), as its own
    forward applies it."""
    logits = F.linear(hidden, weight).float()
    return softcap * torch.tanh(logits / softcap) if softcap else logits


def _chunk_ce_sum(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, softcap: float | None):
    return F.cross_entropy(_logits(hidden, weight, softcap), targets, reduction="sum")


def chunked_lm_loss(
    hidden: torch.Tensor,
    lm_head_weight: torch.Tensor,
    targets: torch.Tensor,
    chunk_tokens: int = LOSS_CHUNK_TOKENS,
    softcap: float | None = None,
) -> torch.Tensor:
    """Sum of next-token cross-entropies without materialising full-vocabulary logits for the sequence.

    Only target positions get logits at all (prompt tokens are masked anyway), and those in chunks whose
    logits are recomputed in backward instead of stored: the peak is about three chunk x vocab fp32 buffers
    (logits, log-softmax, their gradient), measured 7.1 GiB at chunk 4096 and 1.8 GiB at chunk 1024 for vocab
    152064, where the full-logits loss of a 16k sequence needs ~28 GiB (bench/RESULTS.md).
    """
    hidden = hidden.reshape(-1, hidden.shape[-1])
    targets = targets.reshape(-1).to(hidden.device)
    keep = targets != IGNORE_INDEX
    hidden, targets = hidden[keep], targets[keep]
    # zero, but a function of hidden and the LM head: a sequence-parallel shard without targets still runs its
    # backward, which carries the other shards' gradients through its all-to-alls, and FSDP reduces a (zero)
    # gradient of the head on every rank (sequence_parallel.py)
    total = F.linear(hidden[:0], lm_head_weight).sum(dtype=torch.float32)
    for start in range(0, targets.numel(), chunk_tokens):
        chunk = slice(start, start + chunk_tokens)
        total = total + torch.utils.checkpoint.checkpoint(
            _chunk_ce_sum, hidden[chunk], lm_head_weight, targets[chunk], softcap, use_reentrant=False
        )
    return total


def full_logits_lm_loss(
    hidden: torch.Tensor, lm_head_weight: torch.Tensor, targets: torch.Tensor, softcap: float | None = None
) -> torch.Tensor:
    """The naive loss (full fp32 logits for every position), kept as the baseline the benchmarks compare against."""
    logits = _logits(hidden, lm_head_weight, softcap)
    logits, targets = logits.reshape(-1, logits.shape[-1]), targets.reshape(-1).to(logits.device)
    return F.cross_entropy(logits, targets, reduction="sum", ignore_index=IGNORE_INDEX)


def summed_loss(lm, batch: dict[str, torch.Tensor], loss_chunk_tokens: int) -> torch.Tensor:
    """Summed cross-entropy of one micro-batch over its target tokens; the trainer divides by the whole step's count.

    lm is a transformers causal LM (a PEFT model's base model too: LoRA layers sit inside it). The decoder runs on
    its own so that logits are made only at target positions (chunked_lm_loss), never for the whole sequence.
    """
    inputs = {k: v for k, v in batch.items() if k != "targets"}
    # use_cache=False matters: with a cache, transformers ignores packed position_ids and samples attend to each other.
    hidden = lm.get_decoder()(**inputs, use_cache=False).last_hidden_state
    head = lm.get_output_embeddings().weight
    softcap = getattr(lm.config, "final_logit_softcapping", None)
    if loss_chunk_tokens:
        return chunked_lm_loss(hidden, head, batch["targets"], loss_chunk_tokens, softcap)
    return full_logits_lm_loss(hidden, head, batch["targets"], softcap)
