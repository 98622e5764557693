"""Is this machine ready? torch, CUDA and the GPU, bf16, flash-attn, vLLM, bitsandbytes, transformers, peft and
accelerate: their versions, whether they work and fit together, and the fix for each problem.

    python doctor.py            # one line per check; exit status 1 if something installed is broken or mismatched
    python doctor.py --json     # the same checks as JSON, for a bug report

A CPU machine passes without the GPU-only packages (flash-attn, vLLM): every CPU script and the tests run without
them. Versions are checked against requirements.txt and against what each installed package declares it needs (vLLM
pins its torch and caps its transformers), the way `pip check` would, but only for the packages this repo uses.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import json
import platform
import shutil
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

REPO_DIR = Path(__file__).resolve().parent
# The packages whose versions must agree: the core (requirements.txt) and the GPU-only extras (requirements-gpu.txt).
CORE = ("torch", "transformers", "peft", "accelerate", "bitsandbytes", "tokenizers")
GPU_ONLY = ("flash-attn", "vllm")
INSTALL_GPU = "pip install -r requirements-gpu.txt, then pip install flash-attn --no-build-isolation (docs/gpu.md)"


@dataclass
class Check:
    name: str
    version: str  # installed version, or what was found ("CPU build", "not installed")
    status: str  # ok | note (works, or expected on this machine) | problem (broken or mismatched: exit status 1)
    detail: str = ""
    fix: str = ""


def installed_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def declared_requirements(name: str) -> list[str]:
    """What an installed package says it needs (its Requires-Dist lines); nothing if its metadata is gone."""
    try:
        return importlib.metadata.requires(name) or []
    except importlib.metadata.PackageNotFoundError:
        return []


def requirement_problems(versions: dict[str, str | None], requires: dict[str, list[str]], source: str) -> list[Check]:
    """Every requirement in `requires` (package -> its requirement lines) on a package of `versions` that the
    installed version does not satisfy. Lines behind an extra (vllm[tensorizer]) or another platform are skipped."""
    from packaging.requirements import InvalidRequirement, Requirement
    from packaging.version import Version

    problems = []
    for package, lines in requires.items():
        for line in lines:
            try:
                requirement = Requirement(line)
            except InvalidRequirement:
                continue
            name = requirement.name.lower().replace("_", "-")
            found = versions.get(name)
            if name not in versions or found is None:
                continue
            if requirement.marker and not requirement.marker.evaluate({"extra": ""}):
                continue
            if not requirement.specifier.contains(Version(found), prereleases=True):
                who = source if package == source else f"{package} {versions.get(package, '')}".strip()
                detail = f"{who} needs {name}{requirement.specifier}, found {found}"
                problems.append(Check(name, found, "problem", detail, f"fix: {fix_for(package, source)}"))
    return problems


def fix_for(package: str, source: str) -> str:
    if package == source == "requirements.txt":
        return "pip install -r requirements.txt"
    if package in GPU_ONLY:
        return f"reinstall the GPU stack as pinned: {INSTALL_GPU}"
    return f"pip install -r requirements.txt (or pip install -U {package})"


def requirement_lines(path: Path) -> list[str]:
    lines = []
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            lines.append(line)
    return lines


# ----------------------------------------------------------------------------- the checks


def check_torch() -> list[Check]:
    import torch

    cuda_build = torch.version.cuda
    checks = [Check("python", platform.python_version(), "ok", sys.executable)]
    build = f"CUDA {cuda_build} build" if cuda_build else "CPU build"
    has_nvidia = shutil.which("nvidia-smi") is not None
    if torch.cuda.is_available():
        checks.append(Check("torch", torch.__version__, "ok", f"{build}, {torch.cuda.device_count()} GPU(s) visible"))
    elif has_nvidia and not cuda_build:
        fix = "fix: pip install --force-reinstall torch==<the version in requirements-gpu.txt> (PyPI's are CUDA builds)"
        checks.append(Check("torch", torch.__version__, "problem", f"{build} on a machine with an NVIDIA GPU", fix))
    elif has_nvidia:
        fix = (
            "fix: nvidia-smi shows the driver's CUDA version; it must be at least the build's (or take an older torch)"
        )
        checks.append(Check("torch", torch.__version__, "problem", f"{build}, but it sees no GPU", fix))
    else:
        checks.append(Check("torch", torch.__version__, "note", f"{build}, no GPU here: CPU runs only (tests, demos)"))
    for i in range(torch.cuda.device_count() if torch.cuda.is_available() else 0):
        props = torch.cuda.get_device_properties(i)
        major, minor = torch.cuda.get_device_capability(i)
        memory = f"{props.total_memory / 2**30:.1f} GiB"
        checks.append(Check(f"gpu {i}", props.name, "ok", f"compute capability {major}.{minor}, {memory}"))
        if torch.cuda.is_bf16_supported(including_emulation=False):
            checks.append(Check(f"bf16 gpu {i}", "native", "ok", "training and merging run in bf16 (the paper's)"))
        else:
            detail = (
                "only emulated (before Ampere): training runs fp16 with loss scaling; some Qwen2 models overflow fp16"
            )
            checks.append(Check(f"bf16 gpu {i}", "emulated", "note", detail, "fix: an Ampere or newer GPU (A100, L4)"))
    return checks


def check_bitsandbytes() -> Check:
    """Quantise and dequantise a small tensor in NF4 on the device training would use: the native library works."""
    version = installed_version("bitsandbytes")
    if version is None:
        return Check(
            "bitsandbytes", "not installed", "problem", "QLoRA needs it", "fix: pip install -r requirements.txt"
        )
    try:
        import bitsandbytes.functional as bnb_functional
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
        x = torch.randn(64, 64, device=device, dtype=torch.float32)
        packed, state = bnb_functional.quantize_4bit(x, quant_type="nf4")
        error = (bnb_functional.dequantize_4bit(packed, state) - x).abs().mean().item()
        if not error < 0.2:
            raise RuntimeError(f"NF4 round trip error {error:.3f}")
    except Exception as e:  # a missing CUDA library, a wrong build: anything means QLoRA cannot run here
        fix = "fix: pip install --force-reinstall bitsandbytes (its wheels carry the CUDA kernels)"
        return Check("bitsandbytes", version, "problem", f"NF4 fails: {type(e).__name__}: {e}"[:300], fix)
    return Check("bitsandbytes", version, "ok", f"NF4 quantise/dequantise works on {device}")


def check_flash_attn(gpu: bool) -> Check:
    version = installed_version("flash-attn")
    if version is None:
        if gpu:
            detail = "not installed: attention falls back to SDPA, which packed batches make slower"
            return Check("flash-attn", "not installed", "note", detail, f"fix: {INSTALL_GPU}")
        return Check("flash-attn", "not installed", "note", "GPU only; not needed here")
    try:
        importlib.import_module("flash_attn").flash_attn_varlen_func  # noqa: B018 (the kernel packed batches use)
    except Exception as e:  # "undefined symbol": compiled against another torch
        fix = (
            "fix: pip install --force-reinstall --no-build-isolation --no-cache-dir flash-attn (builds for this torch)"
        )
        return Check("flash-attn", version, "problem", f"import fails: {type(e).__name__}: {e}"[:300], fix)
    if gpu:
        import torch

        if torch.cuda.get_device_capability(0)[0] < 8:
            return Check("flash-attn", version, "note", "this GPU is older than Ampere: --attn auto uses SDPA")
    return Check("flash-attn", version, "ok", "FlashAttention-2 varlen kernel imports")


def check_vllm() -> Check:
    version = installed_version("vllm")
    if version is None:
        detail = "not installed: evaluate.py --backend hf or openai work without it"
        return Check("vllm", "not installed", "note", detail, f"fix (GPU): {INSTALL_GPU}")
    return Check("vllm", version, "ok", "installed (its pins on torch and transformers are checked below)")


def run_checks() -> list[Check]:
    import torch
    from packaging.version import Version

    checks = check_torch()
    gpu = torch.cuda.is_available()
    versions = {name: installed_version(name) for name in CORE + GPU_ONLY}
    for name in ("transformers", "peft", "accelerate", "tokenizers"):
        if versions[name] is None:
            checks.append(Check(name, "not installed", "problem", "", "fix: pip install -r requirements.txt"))
        elif name == "transformers" and Version(versions[name]) < Version("5.23"):
            detail = (
                "--offload-activations needs >= 5.23, which vLLM 0.33 does not allow: use an env without vLLM for it"
            )
            checks.append(Check(name, versions[name], "note", detail))
        else:
            checks.append(Check(name, versions[name], "ok"))
    checks += [check_bitsandbytes(), check_flash_attn(gpu), check_vllm()]
    wanted = {"requirements.txt": requirement_lines(REPO_DIR / "requirements.txt")}
    checks += requirement_problems(versions, wanted, "requirements.txt")
    declared = {name: declared_requirements(name) for name, version in versions.items() if version}
    checks += requirement_problems(versions, declared, "installed packages")
    return checks


def format_checks(checks: list[Check]) -> str:
    lines = []
    for c in checks:
        mark = {"ok": "ok", "note": "--", "problem": "!!"}[c.status]
        lines.append(f"{mark} {c.name:<14} {c.version:<24} {c.detail}".rstrip())
        if c.fix:
            lines.append(f"   {'':<14} {'':<24} {c.fix}")
    problems = sum(c.status == "problem" for c in checks)
    lines.append(f"{problems} problem(s)" if problems else "no problems: ready for every script this machine can run")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", action="store_true", help="print the checks as JSON instead of lines")
    return p.parse_args(argv)


def main(args: argparse.Namespace) -> int:
    """Print the checks; the exit status: 1 if something installed is broken or mismatched, else 0."""
    checks = run_checks()
    print(json.dumps([asdict(c) for c in checks], indent=1) if args.json else format_checks(checks))
    return int(any(c.status == "problem" for c in checks))


if __name__ == "__main__":
    sys.exit(main(parse_args()))
