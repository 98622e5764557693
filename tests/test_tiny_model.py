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


def test_ensure_demo_model_builds_once(tmp_path, monkeypatch):
    built = []
    monkeypatch.setattr(tiny_model, "make_tiny_model", lambda path: built.append(path) or Path(path))
    assert tiny_model.ensure_demo_model(str(tmp_path / "demo")) == str(tmp_path / "demo")
    assert built == [str(tmp_path / "demo")]
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / "config.json").write_text("{}")
    tiny_model.ensure_demo_model(str(tmp_path / "demo"))
    assert len(built) == 1  # already there: not rebuilt
