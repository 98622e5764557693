"""tiny_model.py: the random Qwen2 and its tokenizer load offline, carry Qwen2.5's chat template and stop tokens."""

import subprocess
import sys
from pathlib import Path

from transformers import AutoModelForCausalLM, AutoTokenizer

import tiny_model
import utils

REPO = Path(__file__).resolve().parents[1]


def test_cli_writes_a_model_of_the_asked_shape(tmp_path):
    out = tmp_path / "m"
    cmd = [sys.executable, str(REPO / "tiny_model.py"), str(out), "--vocab-size", "5000", "--hidden-size", "32"]
    result = subprocess.run(cmd + ["--layers", "1"], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"wrote tiny Qwen2 model to {out}" in result.stdout
    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    assert (model.config.vocab_size, model.config.hidden_size, model.config.num_hidden_layers) == (5000, 32, 1)
    assert len(tok) <= 4096  # the tokenizer stays small; the embedding may be larger, as in real Qwen2.5
    assert tok.eos_token == "<|im_end|>" and "<|im_start|>" in tok.get_vocab()
    prompt = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>assistant\n")


def test_tiny_model_speaks_qwen_chat(tiny_model_dir):
    tok = utils.load_tokenizer(str(tiny_model_dir))
    template = (utils.DATA_DIR / "qwen2.5_chat_template.jinja").read_text(encoding="utf-8")
    assert tok.chat_template == template
    assert tok.pad_token == "<|endoftext|>" and tok.pad_token_id != tok.eos_token_id
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    stops = model.generation_config.eos_token_id
    assert set(stops) == {tok.convert_tokens_to_ids("<|im_end|>"), tok.convert_tokens_to_ids("<|endoftext|>")}
    assert tok.decode(tok("What is 12 + 30?")["input_ids"]) == "What is 12 + 30?"  # byte-level BPE round-trips
    assert tok.tokenize("12345") == ["1", "2", "3", "4", "5"]  # Qwen2's single-digit split


def test_ensure_student_pretrains_only_when_missing(tmp_path, monkeypatch):
    built = []
    monkeypatch.setattr(tiny_model, "pretrain_student", lambda path: built.append(path) or Path(path))
    assert tiny_model.ensure_student(str(tmp_path / "student")) == str(tmp_path / "student")
    assert built == [str(tmp_path / "student")]
    (tmp_path / "student").mkdir()
    (tmp_path / "student" / "config.json").write_text("{}")
    tiny_model.ensure_student(str(tmp_path / "student"))
    assert len(built) == 1  # already there: not pretrained again


def test_pretrain_student_cli_writes_a_loadable_student_with_its_recipe(tmp_path, monkeypatch):
    """The real code path at toy size: pretraining data, tokenizer, train_full.py, the folder and MADE_BY.md."""
    monkeypatch.setitem(tiny_model.STUDENT_PRETRAINING, "steps", 2)
    monkeypatch.setitem(tiny_model.STUDENT_PRETRAINING, "short_problems", 20)
    tiny_model.main(tiny_model.parse_args([str(tmp_path / "s"), "--pretrain"]))
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "s")
    assert model.config.hidden_size == tiny_model.STUDENT_SHAPE["hidden_size"]
    assert "tiny_model.py --pretrain" in (tmp_path / "s" / "MADE_BY.md").read_text()
    tok = AutoTokenizer.from_pretrained(tmp_path / "s")
    assert len(tok.tokenize("Let me check that step")) <= 5  # the tokenizer learned the teacher's words


def greedy(model, tok, prompt: str, max_new_tokens: int = 40) -> str:
    ids = tok.apply_chat_template(
        [{"role": "user", "content": prompt}], add_generation_prompt=True, return_tensors="pt"
    )
    ids = ids["input_ids"] if hasattr(ids, "keys") else ids
    out = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False)
    return tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True)


def test_the_shipped_student_knows_the_facts_and_writes_short_chains_without_reflection():
    """What the miniature assumes of its student (demo.py): it knows the task's arithmetic facts and answers with a
    short chain, no long CoT, before any SFT."""
    import random

    import synthetic

    model = AutoModelForCausalLM.from_pretrained(tiny_model.STUDENT_DIR).eval()
    tok = AutoTokenizer.from_pretrained(tiny_model.STUDENT_DIR)
    # The facts a chain uses: its right operand is always a digit (facts like 19 - 16 are pretrained, never needed).
    task_facts = [(a, op, b) for a, op, b in synthetic.facts(synthetic.MAX_VALUE) if 1 <= b <= 9]
    facts = random.Random(0).sample(task_facts, 40)
    right = sum(greedy(model, tok, f"Evaluate {a} {op} {b}.").startswith(f"{a} {op} {b} = {synthetic.OPS[op](a, b)}.")
                for a, op, b in facts)  # fmt: skip
    assert right >= 35, f"{right}/40 facts"
    answer = greedy(model, tok, synthetic.task_records(1)[0]["problem"], 80)
    assert "\\boxed{" in answer and "<|begin_of_thought|>" not in answer and "Wait" not in answer
