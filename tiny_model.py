"""A tiny random Qwen2 and its locally trained tokenizer, for the tests, the demos and the benchmarks (no download).

    python tiny_model.py out/tiny                                           # 2 layers, hidden 64, vocab 4096
    python tiny_model.py out/tiny152k --vocab-size 152064 --hidden-size 256   # Qwen2.5's LM-head cost

The tokenizer is byte-level BPE with Qwen2's pre-tokenizer and special tokens, and it carries the real Qwen2.5 chat
template (data/qwen2.5_chat_template.jinja), so masking, stopping and generation run as they do on the real model.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Iterable

import torch

from utils import DATA_DIR, read_jsonl

TOKENIZER_CORPUS = [DATA_DIR / "sample" / "openmathinstruct2_sft.jsonl", DATA_DIR / "sky_t1_system_prompt.txt"]
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# Qwen2's pre-tokenizer split: single digits (so arithmetic is learnable), words, punctuation runs, newlines.
# What the trainers' --demo runs on: the tiny model (built once) and a bundled sample of real math solutions.
DEMO_MODEL_DIR = "out/tiny-model"
DEMO_DATA = str(DATA_DIR / "sample" / "openmathinstruct2_sft.jsonl")
QWEN2_SPLIT = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""  # noqa: E501


def train_tiny_tokenizer(vocab_size: int, extra_texts: Iterable[str] = ()):
    """Byte-level BPE with Qwen's pre-tokenizer, special tokens and chat template, trained on the bundled text."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    texts = list(extra_texts)
    for path in TOKENIZER_CORPUS:
        if path.suffix == ".jsonl":
            texts += [json.dumps(r, ensure_ascii=False) for r in read_jsonl(path)]
        else:
            texts.append(path.read_text(encoding="utf-8"))
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        chat_template=(DATA_DIR / "qwen2.5_chat_template.jinja").read_text(encoding="utf-8"),
        model_max_length=131072,
    )


def make_tiny_model(
    output_dir: str | os.PathLike,
    vocab_size: int = 4096,
    hidden_size: int = 64,
    layers: int = 2,
    seed: int = 0,
    tokenizer_vocab: int | None = None,
    extra_texts: Iterable[str] = (),
) -> Path:
    """Write a random Qwen2-architecture model plus a trained tokenizer that from_pretrained loads offline.

    The embedding may be larger than the tokenizer's vocabulary, as in real Qwen2.5 (152064 vs 151665), so
    memory tests can use the real vocabulary size without training a 152k-token tokenizer.
    """
    from transformers import Qwen2Config, Qwen2ForCausalLM

    output_dir = Path(output_dir)
    tokenizer = train_tiny_tokenizer(min(vocab_size, tokenizer_vocab or 4096), extra_texts)
    heads = max(2, hidden_size // 32)
    config = Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 3,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=max(1, heads // 2),
        max_position_embeddings=32768,
        rope_theta=1_000_000.0,
        tie_word_embeddings=False,
        bos_token_id=None,
        eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    model.generation_config.eos_token_id = [config.eos_token_id, tokenizer.convert_tokens_to_ids("<|endoftext|>")]
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    return output_dir


def ensure_demo_model(path: str = DEMO_MODEL_DIR) -> str:
    """The demo model folder, written on first use."""
    if not (Path(path) / "config.json").exists():
        make_tiny_model(path)
    return path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dir", help="output folder: config, weights and tokenizer, loadable with from_pretrained")
    p.add_argument("--vocab-size", type=int, default=4096, help="embedding rows; 152064: Qwen2.5's LM head cost")
    p.add_argument("--hidden-size", type=int, default=64, help="model width; small keeps CPU tests fast")
    p.add_argument("--layers", type=int, default=2, help="decoder layers")
    p.add_argument("--seed", type=int, default=0, help="weight init seed")
    return p.parse_args(argv)


def main(args: argparse.Namespace) -> Path:
    out = make_tiny_model(args.dir, args.vocab_size, args.hidden_size, args.layers, args.seed)
    print(f"wrote tiny Qwen2 model to {out}")
    return out


if __name__ == "__main__":
    main(parse_args())
