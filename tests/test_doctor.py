"""doctor.py: a CPU machine passes and is told what is missing; a broken or mismatched install fails with its fix."""

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

import doctor

REPO = Path(__file__).resolve().parents[1]
VLLM_0_33 = ["torch==2.14.0", "transformers<5.21.0,>=5.16.1", "flashinfer-python==0.7.2.post1", "numpy"]


def test_cli_on_this_machine():
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(REPO / "doctor.py"), "--json"], capture_output=True, text=True, env=env)
    checks = {c["name"]: c for c in json.loads(done.stdout)}
    assert checks["torch"]["version"] == torch.__version__
    assert {"python", "transformers", "peft", "accelerate", "bitsandbytes", "flash-attn", "vllm"} <= set(checks)
    assert checks["bitsandbytes"]["status"] == "ok"  # NF4 really ran
    if not torch.cuda.is_available():  # CI: the GPU-only packages are missing, as expected, and that passes
        assert done.returncode == 0, done.stdout
        assert checks["torch"]["status"] == "note" and "CPU build" in checks["torch"]["detail"]
        assert checks["vllm"]["version"] == "not installed" and "requirements-gpu.txt" in checks["vllm"]["fix"]
    assert done.returncode == any(c["status"] == "problem" for c in checks.values())


def test_version_mismatches_name_who_needs_what_and_the_fix():
    versions = {"torch": "2.13.0+cpu", "transformers": "5.24.0", "vllm": "0.33.0", "flash-attn": None}
    problems = doctor.requirement_problems(versions, {"vllm": VLLM_0_33}, "installed packages")
    assert [p.detail for p in problems] == [
        "vllm 0.33.0 needs torch==2.14.0, found 2.13.0+cpu",
        "vllm 0.33.0 needs transformers<5.21.0,>=5.16.1, found 5.24.0",
    ]
    assert all(p.status == "problem" and "requirements-gpu.txt" in p.fix for p in problems)
    pinned = {"torch": "2.14.0+cu128", "transformers": "5.20.2", "vllm": "0.33.0"}  # what requirements-gpu.txt installs
    assert doctor.requirement_problems(pinned, {"vllm": VLLM_0_33}, "installed packages") == []
    extras = {"vllm": ["torch==1.0; extra == 'audio'", "transformers<5; python_version < '3'"]}
    assert doctor.requirement_problems(versions, extras, "installed packages") == []  # not for this install
    ours = {"requirements.txt": doctor.requirement_lines(REPO / "requirements.txt")}
    (old,) = doctor.requirement_problems({"transformers": "4.57.0"}, ours, "requirements.txt")
    assert (
        old.detail.startswith("requirements.txt needs transformers")
        and old.fix == "fix: pip install -r requirements.txt"
    )


def test_the_gpu_pins_agree_with_each_other_and_with_requirements_txt():
    """requirements-gpu.txt pins vLLM with the torch and transformers it declares, inside requirements.txt's ranges."""
    pins = dict(line.split("==") for line in doctor.requirement_lines(REPO / "requirements-gpu.txt") if "==" in line)
    assert {"vllm", "torch", "transformers"} <= set(pins)
    versions = {name: version for name, version in pins.items()}
    assert doctor.requirement_problems(versions, {"vllm": VLLM_0_33}, "installed packages") == []
    ours = {"requirements.txt": doctor.requirement_lines(REPO / "requirements.txt")}
    assert doctor.requirement_problems(versions, ours, "requirements.txt") == []
    assert pins["vllm"] == "0.33.0"  # VLLM_0_33 above is its published Requires-Dist


def test_a_broken_install_exits_non_zero_with_its_fix(monkeypatch, capsys):
    real_version, real_import = doctor.installed_version, importlib.import_module

    def version(name):
        return "2.8.3" if name == "flash-attn" else real_version(name)

    def import_module(name, *args, **kwargs):
        if name == "flash_attn":
            raise ImportError("flash_attn_2_cuda.so: undefined symbol: _ZN3c104cuda9SetDeviceEi")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(doctor, "installed_version", version)
    monkeypatch.setattr(importlib, "import_module", import_module)
    assert doctor.main(doctor.parse_args([])) == 1
    out = capsys.readouterr().out
    (line,) = [line for line in out.splitlines() if line.startswith("!! flash-attn")]
    assert "import fails: ImportError" in line and "undefined symbol" in line
    assert "--no-build-isolation" in out and out.rstrip().endswith("1 problem(s)")
