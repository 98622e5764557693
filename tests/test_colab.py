"""colab.ipynb: committed with its outputs cleared, and runnable top to bottom on a CPU with TINY = True.

The run executes the notebook the way Colab does (a Jupyter kernel, nbclient), with one cell injected after the
parameters cell, as papermill injects parameters: TINY = True and an output folder under tmp_path. Every `!python`
cell then calls the repo's scripts on the tiny random model and the bundled sample, offline.
"""

import json
import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "colab.ipynb"


def parameters_cell_index(cells: list[dict]) -> int:
    tagged = [i for i, c in enumerate(cells) if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, f"{NOTEBOOK}: exactly one code cell must carry the 'parameters' tag, found {len(tagged)}"
    return tagged[0]


def test_notebook_is_committed_cleared():
    """No outputs and no execution counts: a diff shows only code, and no output of someone's run is shipped."""
    nb = json.loads(NOTEBOOK.read_text(encoding="utf-8"))
    dirty = [
        i
        for i, cell in enumerate(nb["cells"])
        if cell["cell_type"] == "code" and (cell.get("outputs") or cell.get("execution_count") is not None)
    ]
    assert not dirty, f"{NOTEBOOK}: cells {dirty} have outputs or execution counts (clear them before committing)"
    first_code = next(i for i, c in enumerate(nb["cells"]) if c["cell_type"] == "code")
    assert parameters_cell_index(nb["cells"]) == first_code, "the parameters cell must be the first code cell"
    assert "TINY = False" in "".join(nb["cells"][first_code]["source"]), "Colab runs the real thing by default"


def execute(cells: list, parameters: str, monkeypatch, bin_dir: str = "") -> list:
    """Run these cells in a Jupyter kernel in the repo root, with `parameters` injected after the parameters cell;
    raises CellExecutionError (the failing cell and its traceback) if one fails. Returns the executed cells."""
    nbformat = pytest.importorskip("nbformat", reason="pip install nbclient ipykernel (requirements.txt)")
    nbclient = pytest.importorskip("nbclient", reason="pip install nbclient ipykernel (requirements.txt)")
    pytest.importorskip("ipykernel", reason="pip install nbclient ipykernel (requirements.txt)")
    nb = nbformat.v4.new_notebook(cells=list(cells))
    nb.cells.insert(parameters_cell_index(nb.cells) + 1, nbformat.v4.new_code_cell(parameters))
    # `!python` in the kernel must be this interpreter; offline, so a step that tries to download fails at once
    path = [bin_dir, os.path.dirname(sys.executable), os.environ.get("PATH", "")]
    monkeypatch.setenv("PATH", os.pathsep.join(p for p in path if p))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    client = nbclient.NotebookClient(
        nb, timeout=240, kernel_name="python3", resources={"metadata": {"path": str(REPO)}}
    )
    client.execute()
    return nb.cells


def printed(cells: list) -> str:
    return "".join(o.get("text", "") for c in cells if c.cell_type == "code" for o in c.outputs)


def test_notebook_runs_on_cpu_with_tiny_model(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat", reason="pip install nbclient ipykernel (requirements.txt)")
    cells = execute(
        nbformat.read(NOTEBOOK, as_version=4).cells, f"TINY = True\nOUTPUT_DIR = {str(tmp_path)!r}", monkeypatch
    )

    run = tmp_path / "tiny-16"  # RUN_DIR: the model, then DATA_SIZE
    metrics = [json.loads(line) for line in (run / "lora" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2, 3, 4]
    assert all(m["loss"] > 0 for m in metrics)
    assert (run / "lora" / "final" / "adapter_model.safetensors").is_file()
    assert len((run / "train.jsonl").read_text().splitlines()) == 16
    for stage in ("eval-before", "eval-after"):
        results = json.loads((run / stage / "results.json").read_text())
        assert sorted(results) == ["aime24", "math500"]
        assert all(r["problems"] == 2 and 0 <= r["accuracy"] <= 1 for r in results.values())
    assert json.loads((run / "eval-after" / "config.json").read_text())["adapter"] == f"{run}/lora/final"
    assert (run / "summary.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "aime24: 0.0% -> 0.0%" in printed(cells)  # the last cell's before -> after lines (a random model)


def test_colab_t4_picks_the_small_model_and_plans_it(tmp_path, monkeypatch):
    """The Colab path up to the memory plan, on a faked T4 (nvidia-smi's answer): MODEL auto is the 1.5B, and the
    plan cell's `train_lora.py --dry-run --fit` plans it offline (for the GPU the trainer sees itself: none here)."""
    nbformat = pytest.importorskip("nbformat", reason="pip install nbclient ipykernel (requirements.txt)")
    fake = tmp_path / "bin" / "nvidia-smi"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\necho 'Tesla T4, 15360, 7.5'\n")
    fake.chmod(0o755)
    cells = nbformat.read(NOTEBOOK, as_version=4).cells
    wanted = ("TINY = False", "def detect_gpu", "--dry-run")  # parameters, setup, plan; no install, no download
    chosen = [c for c in cells if c.cell_type == "code" and any(w in c.source for w in wanted)]
    assert len(chosen) == 3
    out = printed(execute(chosen, f"OUTPUT_DIR = {str(tmp_path / 'out')!r}", monkeypatch, str(fake.parent)))
    assert "GPU Tesla T4 (15.0 GB, compute capability 7.5) | model Qwen/Qwen2.5-1.5B-Instruct" in out
    assert "fit: " in out and "memory plan: Qwen/Qwen2.5-1.5B-Instruct" in out
