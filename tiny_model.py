"""A tiny random Qwen2 and its locally trained tokenizer, for the tests and the benchmarks (no download), and the
pretrained tiny student of the demos.

    python tiny_model.py out/tiny                                           # 2 layers, hidden 64, vocab 4096
    python tiny_model.py out/tiny152k --vocab-size 152064 --hidden-size 256   # Qwen2.5's LM-head cost
    python tiny_model.py --pretrain data/tiny-student                       # the shipped student (~10 min, 2 cores)

The student is the miniature's "instruct model" (demo.py): the same architecture, trained from scratch with
train_full.py on what synthetic.py's task needs (every fact, checking a fact when asked, short solutions of easy
problems, a plain step-by-step computation when asked), so that long-CoT SFT starts, as in the paper, from a model that
knows things and reasons when asked, but not at length on its own.

The tokenizer is byte-level BPE with Qwen2's pre-tokenizer and special tokens, and it carries the real Qwen2.5 chat
template (data/qwen2.5_chat_template.jinja), so masking, stopping and generation run as they do on the real model.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path
from typing import Iterable

import torch

from utils import DATA_DIR, read_jsonl, save_dir_atomically, write_jsonl

TOKENIZER_CORPUS = [DATA_DIR / "sample" / "openmathinstruct2_sft.jsonl", DATA_DIR / "sky_t1_system_prompt.txt"]
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
STUDENT_DIR = str(DATA_DIR / "tiny-student")  # the shipped student, what demo.py and the trainers' --demo train
# The student: its shape and how it was pretrained (its task: synthetic.py). Its long-CoT SFT: data/demo_sft.json.
STUDENT_SHAPE = {"vocab_size": 512, "hidden_size": 128, "layers": 3}
STUDENT_PRETRAINING = {"short_problems": 6000, "steps": 1200, "samples_per_step": 32, "lr": 3e-3}
# Qwen2's pre-tokenizer split: single digits (so arithmetic is learnable), words, punctuation runs, newlines.
QWEN2_SPLIT = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""  # noqa: E501


def train_tiny_tokenizer(vocab_size: int, extra_texts: Iterable[str] = (), bundled_text: bool = True):
    """Byte-level BPE with Qwen's pre-tokenizer, special tokens and chat template, trained on extra_texts and, unless
    told not to, the bundled text."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    texts = list(extra_texts)
    for path in TOKENIZER_CORPUS if bundled_text else ():
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
    bundled_text: bool = True,
) -> Path:
    """Write a random Qwen2-architecture model plus a trained tokenizer that from_pretrained loads offline.

    The embedding may be larger than the tokenizer's vocabulary, as in real Qwen2.5 (152064 vs 151665), so
    memory tests can use the real vocabulary size without training a 152k-token tokenizer.
    """
    from transformers import Qwen2Config, Qwen2ForCausalLM

    output_dir = Path(output_dir)
    tokenizer = train_tiny_tokenizer(min(vocab_size, tokenizer_vocab or 4096), extra_texts, bundled_text)
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


def pretraining_steps(scale: float) -> int:
    """The optimizer steps of a student pretrained scale x as long as the shipped one."""
    return max(1, round(STUDENT_PRETRAINING["steps"] * scale))


def pretrain_student(output_dir: str | os.PathLike, seed: int = 0, scale: float = 1.0) -> Path:
    """Train the tiny student from scratch with train_full.py on synthetic.py's pretraining records; write it to
    output_dir (config, fp32 weights, tokenizer) with the command and the training summary in MADE_BY.md. scale
    multiplies the pretraining steps (same corpus, more passes): demo.py --prior-sweep's weaker and stronger priors."""
    import synthetic  # here, not at the top: both import this module
    import train_full

    output_dir, cfg = Path(output_dir), STUDENT_PRETRAINING | {"steps": pretraining_steps(scale)}
    corpus = synthetic.pretraining_records(cfg["short_problems"], seed)
    # The tokenizer also sees the teacher's words, as a real student's vocabulary covers its teacher's.
    teacher = synthetic.generate(500, seed, "train", prompt_style="none")
    texts = [m["content"] for r in corpus + teacher for m in r["messages"]]
    # A work folder beside the student, kept until it is saved: a pretraining that is stopped (the 4x student takes
    # ~40 min) resumes from its last checkpoint when run again.
    work = Path(f"{output_dir}.work")
    if not (work / "init" / "tokenizer.json").exists():  # written last
        make_tiny_model(work / "init", **STUDENT_SHAPE, seed=seed, tokenizer_vocab=STUDENT_SHAPE["vocab_size"],
                        extra_texts=texts, bundled_text=False)  # fmt: skip
    write_jsonl(work / "corpus.jsonl", corpus)
    argv = ["--data", str(work / "corpus.jsonl"), "--model", str(work / "init"), "--output-dir", str(work / "run")]
    argv += ["--lr", str(cfg["lr"]), "--max-steps", str(cfg["steps"]), "--seed", str(seed), "--resume", "auto"]
    argv += ["--samples-per-step", str(cfg["samples_per_step"]), "--max-length", "512"]
    argv += ["--micro-batch-tokens", "1024", "--no-gradient-checkpointing", "--save-every", "200"]
    summary = train_full.main(train_full.parse_args(argv + ["--keep-checkpoints", "1", "--save-dtype", "fp32"]))
    note = (
        "# The tiny student\n\nMade by `python tiny_model.py --pretrain DIR --seed "
        f"{seed} --pretrain-scale {scale:g}` (tiny_model.pretrain_student): shape {STUDENT_SHAPE}, values "
        f"0..{synthetic.MAX_VALUE}, pretraining {cfg}.\n{len(corpus)} records (synthetic.pretraining_records); "
        "train loss "
        f"{summary['first_loss']:.3f} -> {summary['last_loss']:.3f} in {summary['steps']} steps.\n"
    )
    (work / "run" / "final" / "MADE_BY.md").write_text(note, encoding="utf-8")
    save_dir_atomically(output_dir, lambda tmp: shutil.copytree(work / "run" / "final", tmp, dirs_exist_ok=True))
    shutil.rmtree(work)
    return output_dir


def ensure_student(path: str = STUDENT_DIR) -> str:
    """The student folder; pretrained here (minutes) if it is missing, e.g. deleted from a clone."""
    if not (Path(path) / "config.json").exists():
        print(f"{path}: no student there; pretraining one (tiny_model.py --pretrain, ~10 minutes on 2 cores)")
        pretrain_student(path)
    return path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dir", help="output folder: config, weights and tokenizer, loadable with from_pretrained")
    p.add_argument("--pretrain", action="store_true", help="the pretrained student (STUDENT_SHAPE), not random weights")
    p.add_argument(
        "--pretrain-scale", type=float, default=1.0, help="with --pretrain: x the shipped student's pretraining steps"
    )
    p.add_argument("--vocab-size", type=int, default=4096, help="embedding rows; 152064: Qwen2.5's LM head cost")
    p.add_argument("--hidden-size", type=int, default=64, help="model width; small keeps CPU tests fast")
    p.add_argument("--layers", type=int, default=2, help="decoder layers")
    p.add_argument("--seed", type=int, default=0, help="weight init (and, with --pretrain, data and order) seed")
    return p.parse_args(argv)


def main(args: argparse.Namespace) -> Path:
    if args.pretrain:
        out = pretrain_student(args.dir, args.seed, args.pretrain_scale)
        print(f"wrote the pretrained tiny student to {out}")
        return out
    out = make_tiny_model(args.dir, args.vocab_size, args.hidden_size, args.layers, args.seed)
    print(f"wrote tiny Qwen2 model to {out}")
    return out


if __name__ == "__main__":
    main(parse_args())
