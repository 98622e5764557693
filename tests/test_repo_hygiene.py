"""What a user's clone holds is all the repo needs: no file names the shared folder beside this repository or an
absolute path of the machine that wrote it (a clone has neither), and recorded benchmark results name files relative to
the repository. .ci/ is exempt: it sets up the project's own CI machines. Nor does it hold text under a licence the
repository cannot ship (the Minerva sample's problems)."""

import json
import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# the sibling folder "shared" reached from the repository (spelt in parts, so that this file does not name it itself),
# and the home and work folders of a machine
SIBLING = "/".join(["..", "shared"])
MACHINE_PATH = re.compile(re.escape(SIBLING) + r"\b|(?<![\w.~-])/(?:work|root|home|Users|mnt|scratch)/")
# a path that stands for itself, not for this machine: file -> (what it matches, why it is there)
ALLOWED = {
    "tests/test_sandbox.py": ("/root/.bashrc", "the sandbox test checks that generated code cannot read it"),
}
SELF = "tests/test_repo_hygiene.py"  # its own examples of what the check catches
NOT_SHIPPED = {".git", "out", "runs", ".venv", "__pycache__", ".pytest_cache", ".hypothesis"}


def repo_files() -> list[str]:
    """Tracked files and new ones git does not ignore (so a file is checked before its first commit); without git (an
    unpacked archive), every file outside the folders git ignores."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
            cwd=REPO,
            capture_output=True,
            check=True,
        ).stdout.decode()
        return sorted(name for name in listed.split("\0") if name and (REPO / name).is_file())
    except (OSError, subprocess.CalledProcessError):
        return sorted(
            str(p.relative_to(REPO))
            for p in REPO.rglob("*")
            if p.is_file() and not NOT_SHIPPED & set(p.relative_to(REPO).parts)
        )


def test_no_file_points_outside_the_repository():
    files = [name for name in repo_files() if not name.startswith(".ci/")]
    assert "README.md" in files and SELF in files  # the listing itself works
    files.remove(SELF)
    found = []
    for name in files:
        text = (REPO / name).read_bytes().decode("utf-8", errors="replace")
        for number, line in enumerate(text.splitlines(), 1):
            for match in MACHINE_PATH.finditer(line):
                allowed = ALLOWED.get(name)
                if not (allowed and line[match.start() :].startswith(allowed[0])):
                    found.append(f"{name}:{number}: {line.strip()[:160]}")
    assert not found, "paths outside the repository:\n" + "\n".join(found)


def test_the_check_catches_what_it_is_for():
    for bad in (f"see {SIBLING}/paper/README.md", "real = /work/shared/x.jsonl", "(/root/data)", '"/home/me/run"'):
        assert MACHINE_PATH.search(bad), bad
    for fine in ("docs/paper.md", "a shared folder", "out/work/x", "~/home/x", "http://node1:8000/v1", "/tmp/grid"):
        assert not MACHINE_PATH.search(fine), fine


def test_benchmark_results_record_repository_paths():
    def strings(value):
        if isinstance(value, dict):
            for item in value.values():
                yield from strings(item)
        elif isinstance(value, list):
            for item in value:
                yield from strings(item)
        elif isinstance(value, str):
            yield value

    results = sorted((REPO / "bench" / "results").glob("*.json"))
    assert results
    absolute = [
        f"{path.name}: {value}"
        for path in results
        for value in strings(json.loads(path.read_text()))
        if value.startswith("/") or value.startswith(("../", "~"))
    ]
    assert not absolute, "bench/results records paths of the machine that ran it:\n" + "\n".join(absolute)


def test_bundled_minerva_sample_holds_no_problem_text():
    """The minerva_math problems are MIT OpenCourseWare material under CC BY-NC-SA: the bundled sample keeps the model
    responses and names each problem by the SHA-1 of its text instead (data/sample/README.md)."""
    lines = (REPO / "data" / "sample" / "sky_t1_minerva_math.jsonl").read_text(encoding="utf-8").splitlines()
    problems = [json.loads(line)["problem"] for line in lines]
    reference = re.compile(
        r"minerva_math problem [0-9a-f]{12} \(MIT OpenCourseWare; its text is CC BY-NC-SA 4\.0 and not bundled\)"
    )
    assert len(problems) == 43 and all(reference.fullmatch(p) for p in problems)
    assert len(set(problems)) == 40  # 3 problems answered by both models, one reference each
