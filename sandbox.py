"""Sandboxed execution of model-written Python programs on LiveCodeBench-style tests, one verdict per test.

Model-written code is treated as hostile. Each problem runs in a bubblewrap sandbox: no network, no view
of the host's files, its own pid namespace, a read-only system, a size-capped tmpfs as the only writable
place, an unprivileged uid and per-test rlimits. If `bwrap` is missing or unusable (install it with
`apt-get install -y bubblewrap`; some containers forbid namespaces), it falls back to rlimits, a process
group and, as root, a private uid, and warns once; that fallback is much weaker (see isolation_mode).

    python -c "import sandbox; print(sandbox.isolation_mode())"
    python -c "import sandbox; print(sandbox.run_tests('print(2*int(input()))',
                                        [{'input': '21', 'output': '42', 'testtype': 'stdin'}]))"
    python -m pytest tests/test_sandbox.py -q

Design: one sandbox per problem. Inside it this file runs as a small supervisor that forks a fresh child
per test, so every test gets fresh globals, its own wall-clock timeout, rlimits and verdict, while
Python start-up and imports (about 70 ms, measured) are paid once per problem instead of once per test.
Expected outputs never enter the sandbox: the host judges each program's output with code_grading.py's
LiveCodeBench rules (outputs_match, values_match), so a program cannot forge a pass by tampering with the
supervisor it shares the sandbox with; at worst it spoils its own verdicts. grade_code grades a whole
response: code_grading.extract_code finds the program, run_tests runs and judges it. Imports go
sandbox -> code_grading, on the host only, inside the functions that need it: in the sandbox this file
runs alone.
"""

import builtins
import functools
import json
import math
import os
import random
import re
import resource
import selectors
import signal
import sys
import time

# shutil, site, subprocess, tempfile, threading and warnings are imported where the host uses them:
# this file also starts every sandbox, and those imports would add 20 ms CPU to each start.

DEFAULT_TIMEOUT = 6.0  # seconds per test, as SkyThought's LiveCodeBench scorer
DEFAULT_MEMORY_MB = 4096  # address-space cap, as LiveCodeBench's reliability_guard
MAX_OUTPUT_BYTES = 8 << 20  # per test; LiveCodeBench outputs are under 1 KB, this only stops floods
MAX_PROCESSES = 32  # RLIMIT_NPROC: room for a few threads, none for a fork bomb
TMPFS_BYTES = 64 << 20  # the sandbox's writable /tmp lives in host RAM, so it is capped
SANDBOX_UID_BASE = 0x70000000  # above the uid ranges Linux distributions and systemd hand out
_HEADER_LIMIT = 1 << 16
_SELF = os.path.realpath(__file__)
_VERDICTS = {"ok", "wrong_answer", "runtime_error", "timeout", "memory", "output_limit", "skipped"}

# LiveCodeBench runs every solution after these imports, so solutions may use e.g. List, deque, gcd or
# deepcopy without importing them; `from builtins import *` undoes shadowing such as math.pow over pow.
_PRELUDE_MODULES = (
    "string re datetime collections heapq bisect copy math random statistics itertools functools operator io sys json"
).split()
PRELUDE = "".join(f"from {m} import *\n" for m in [*_PRELUDE_MODULES, "builtins", "typing"])
PRELUDE += f"import {', '.join(_PRELUDE_MODULES)}\nsys.setrecursionlimit(50000)\n"


def method_name(starter_code: str) -> str:
    """The method LiveCodeBench calls: the first `def NAME(self, ...)` of the starter's class Solution."""
    found = re.search(r"def\s+(\w+)\s*\(\s*self\b", starter_code)
    if not found:
        raise ValueError(f"starter_code has no `def NAME(self, ...)` method: {starter_code[:80]!r}")
    return found.group(1)


def grade_code(
    response: str, tests: list[dict], starter_code: str = "", timeout: float = DEFAULT_TIMEOUT, **run_options
) -> dict:
    """Extract the answer's code and run it on all tests; run_options go to run_tests."""
    from code_grading import extract_code  # host side only: inside the sandbox this file runs alone

    code = extract_code(response)
    if code is None:
        results = [{"passed": False, "verdict": "no_code", "detail": "no fenced python block"} for _ in tests]
    else:
        results = run_tests(code, tests, starter_code, timeout, **run_options)
    correct = bool(results) and all(r["passed"] for r in results)
    return {"extracted": code, "correct": correct, "verdicts": [r["verdict"] for r in results], "results": results}


def run_tests(
    code: str,
    tests: list[dict],
    starter_code: str = "",
    timeout: float = DEFAULT_TIMEOUT,
    memory_mb: int = DEFAULT_MEMORY_MB,
    stop_on_first_failure: bool = False,
    float_tol: float = 0.0,
    isolation: str = "auto",
) -> list[dict]:
    """Run code on each test in one sandbox; one {"passed", "verdict", "detail", "seconds"} per test.
    isolation: "auto" (bwrap when it works), "bwrap" (error if it does not) or "rlimits" (the fallback)."""
    import tempfile

    if not tests:
        return []
    for i, test in enumerate(tests):
        for field in ("input", "output", "testtype"):
            if not isinstance(test.get(field), str):
                raise ValueError(f"test {i}: field {field!r} missing or not a string")
    functional = tests[0]["testtype"] == "functional"
    if any((t["testtype"] == "functional") != functional for t in tests):
        raise ValueError("tests mix 'functional' and 'stdin' testtypes")
    expected = [_expected_value(i, t["output"]) if functional else t["output"] for i, t in enumerate(tests)]
    if isolation == "auto":
        isolation = isolation_mode()
    elif isolation == "bwrap" and _bwrap_error() is not None:
        raise RuntimeError(f"bubblewrap sandbox unavailable: {_bwrap_error()}")
    elif isolation not in ("bwrap", "rlimits"):
        raise ValueError(f"isolation must be 'auto', 'bwrap' or 'rlimits', not {isolation!r}")
    job = {
        "code": code,
        "fn_name": method_name(starter_code) if functional else None,
        "inputs": [t["input"] for t in tests],
        "timeout": timeout,
        "memory_bytes": memory_mb << 20,
        "max_output": MAX_OUTPUT_BYTES,
        "nproc": MAX_PROCESSES,
        "site_dirs": _site_dirs(),
        # As root, a uid of its own per run: RLIMIT_NPROC (which root ignores) then counts only this
        # run's processes, and kill(-1) from that uid sweeps exactly this run's leftovers.
        "uid": _private_uid() if os.geteuid() == 0 else None,
        "harden": isolation == "rlimits",
    }
    with tempfile.TemporaryDirectory(prefix="sandbox-", ignore_cleanup_errors=True) as tmp:
        results, why = _run_job(job, tmp, isolation, expected, float_tol, stop_on_first_failure)
    for _ in range(len(tests) - len(results)):
        if why == "deadline":
            results.append(_result("timeout", "problem-level deadline hit"))
        elif results and stop_on_first_failure and not results[-1]["passed"]:
            results.append(_result("skipped", "after an earlier failure"))
        else:
            results.append(_result("runtime_error", f"sandbox ended before this test: {why}"))
    return results


def _run_job(job, tmp, isolation, expected, float_tol, stop_on_first_failure) -> tuple[list[dict], str]:
    """Start the supervisor in tmp, judge what it streams back; also say why it ended if it ended early."""
    import subprocess
    import threading

    os.chmod(tmp, 0o711)  # the private uid must reach its work dir, not list the job's directory
    workdir = os.path.join(tmp, "work")
    os.mkdir(workdir, 0o700)
    with open(os.path.join(tmp, "job.json"), "w", encoding="utf-8") as f:
        json.dump(job, f)
    if isolation == "bwrap":
        argv = _bwrap_argv(tmp) + [_python(), "-I", "-S", "/sandbox/supervisor.py", "/job/job.json"]
        cwd, home = None, "/tmp"
    else:
        argv, cwd, home = [_python(), "-I", "-S", _SELF, os.path.join(tmp, "job.json")], workdir, workdir
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": home}
    # BLAS thread pools would count against RLIMIT_NPROC and oversubscribe the cores
    env |= {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    with open(os.path.join(tmp, "stderr"), "w+b") as stderr:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=stderr,
            cwd=cwd,
            env=env,
            start_new_session=True,
        )
        expired = threading.Event()
        deadline = len(job["inputs"]) * (job["timeout"] + 1) + 10  # per-test timeouts are the supervisor's job
        watchdog = threading.Timer(deadline, lambda: (expired.set(), _kill_group(proc)))
        watchdog.start()
        results = []
        try:
            results = _collect(proc, expected, job["fn_name"] is not None, float_tol, stop_on_first_failure)
            if len(results) == len(expected):
                proc.wait(timeout=5)  # let the supervisor finish its own sweep of leftover processes
        except subprocess.TimeoutExpired:
            pass
        finally:
            watchdog.cancel()
            _kill_group(proc)
            proc.wait()
            proc.stdout.close()
        if job["uid"] is not None and isolation == "rlimits" and proc.returncode != 0:
            _sweep_uid(job["uid"])  # the supervisor did not get to its own sweep, and no pid namespace ends here
        stderr.seek(max(0, stderr.seek(0, os.SEEK_END) - 300))
        last_lines = stderr.read().decode("utf-8", "replace").strip().splitlines()
    return results, "deadline" if expired.is_set() else (last_lines[-1:] or [f"exit code {proc.returncode}"])[0][:150]


def _private_uid() -> int:
    return SANDBOX_UID_BASE + random.randrange(1 << 24)


def _result(verdict: str, detail: str, seconds: float = 0.0) -> dict:
    return {"passed": verdict == "ok", "verdict": verdict, "detail": detail[:200], "seconds": seconds}


def _expected_value(index: int, output: str):
    try:
        return json.loads(output)
    except ValueError as error:
        raise ValueError(f"test {index}: functional 'output' is not JSON ({error}): {output[:80]!r}") from None


def _collect(proc, expected, functional, float_tol, stop_on_first_failure) -> list[dict]:
    """Read the supervisor's framed results (a JSON header line, then nbytes of output) and judge them.
    Everything read is bounded, since the stream comes from inside the sandbox."""
    from code_grading import outputs_match, values_match  # host side only: inside the sandbox this file runs alone

    results = []
    for want in expected:
        header = proc.stdout.readline(_HEADER_LIMIT)
        try:
            info = json.loads(header)
            nbytes, verdict, seconds = int(info["nbytes"]), info["verdict"], float(info["seconds"])
        except (ValueError, KeyError, TypeError):
            break
        if verdict not in _VERDICTS or not 0 <= nbytes <= MAX_OUTPUT_BYTES:
            break
        payload = proc.stdout.read(nbytes).decode("utf-8", "replace")
        detail = str(info.get("detail", ""))
        if verdict == "ok":
            try:
                if functional:
                    passed = values_match(json.loads(payload), want, float_tol)
                else:
                    passed = outputs_match(payload, want, float_tol)
            except (ValueError, RecursionError):  # a forged or absurdly nested result
                passed = False
            verdict = "ok" if passed else "wrong_answer"
            detail = "" if passed else f"expected {str(want)[:60]!r}, got {payload[:60]!r}"
        results.append(_result(verdict, detail, seconds))
        if stop_on_first_failure and verdict != "ok":
            break
    return results


def _kill_group(proc) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # bwrap's --die-with-parent then takes the whole namespace down
    except (ProcessLookupError, PermissionError):
        pass


def _sweep_uid(uid: int) -> None:
    """Kill every process left under the run's private uid (setsid() escapes any process group)."""
    import subprocess

    script = f"import os; os.setgroups([]); os.setgid({uid}); os.setuid({uid}); os.kill(-1, 9)"
    subprocess.run([_python(), "-I", "-S", "-c", script], stderr=subprocess.DEVNULL, timeout=30, check=False)


def _python() -> str:
    return os.path.realpath(sys.executable)  # venv launchers are symlinks into the base install


def _site_dirs() -> list[str]:
    import site

    # -S skips site.py (40 ms of .pth processing per start); numpy & co stay importable via these paths
    return [d for d in site.getsitepackages() if os.path.isdir(d)]


def _bwrap_argv(job_dir: str) -> list[str]:
    argv = ["bwrap", "--die-with-parent", "--new-session", "--unshare-net", "--unshare-pid", "--unshare-ipc"]
    argv += ["--unshare-uts", "--unshare-cgroup-try"]
    if os.geteuid() != 0:
        argv.append("--unshare-user")  # unprivileged bwrap can only mount inside a user namespace
    # As root no user namespace: inside one, a uid mapping to host root would be exempt from RLIMIT_NPROC.
    # The supervisor drops to its private uid itself, and the capabilities go with that.
    for path in ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64"):
        if os.path.islink(path):
            argv += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            argv += ["--ro-bind", path, path]
    bound = ["/usr"]
    for path in sorted({os.path.realpath(p) for p in [sys.base_prefix, sys.prefix, *_site_dirs()]}):
        if any(path == b or path.startswith(b + "/") for b in bound):
            continue
        # Parents like /root are 0700 on the host; created world-traversable here so the dropped uid can
        # reach the interpreter without seeing anything else that lives there.
        for parent in (path[:i] for i in range(1, len(path)) if path[i] == "/"):
            if not any(parent == b or parent.startswith(b + "/") for b in bound):
                argv += ["--perms", "0755", "--dir", parent]
        argv += ["--ro-bind", path, path]
        bound.append(path)
    argv += ["--proc", "/proc", "--dev", "/dev", "--perms", "1777", "--size", str(TMPFS_BYTES), "--tmpfs", "/tmp"]
    argv += ["--ro-bind", job_dir, "/job", "--ro-bind", _SELF, "/sandbox/supervisor.py", "--chdir", "/tmp"]
    return argv


@functools.lru_cache(maxsize=None)
def _bwrap_error() -> str | None:
    """Why bwrap cannot sandbox here (None if it can), found once by running Python inside it."""
    import shutil
    import subprocess
    import tempfile

    if shutil.which("bwrap") is None:
        return "bwrap is not installed (apt-get install -y bubblewrap)"
    with tempfile.TemporaryDirectory(prefix="sandbox-probe-") as tmp:
        try:
            command = _bwrap_argv(tmp) + [_python(), "-I", "-S", "-c", "print('ok')"]
            probe = subprocess.run(command, capture_output=True, timeout=30, env={"PATH": "/usr/bin:/bin"})
        except subprocess.TimeoutExpired:
            return "bwrap probe timed out"
    if probe.stdout.strip() != b"ok":
        return probe.stderr.decode("utf-8", "replace").strip()[-300:] or f"exit code {probe.returncode}"
    return None


@functools.lru_cache(maxsize=None)
def isolation_mode() -> str:
    """'bwrap' when bubblewrap works here, else 'rlimits' (warned about once). The rlimits fallback keeps
    timeouts, memory/output/process limits and the process-group kill. As root it adds a private uid
    (files guarded only by their permissions; an interpreter under a 0700 home then imports only what
    the supervisor preloaded) and an empty network namespace if the kernel allows one. Without root
    the program runs as the calling user: it can read and write that user's files, reach the network
    and signal that user's processes."""
    import warnings

    error = _bwrap_error()
    if error is None:
        return "bwrap"
    warnings.warn(
        f"sandbox: bubblewrap unusable ({error}); falling back to rlimits and process groups"
        f"{', a private uid and a network namespace' if os.geteuid() == 0 else ' as this user'}: "
        "much weaker isolation (see sandbox.isolation_mode)",
        stacklevel=2,
    )
    return "rlimits"


# ----------------------------------------------------------------------------------------------------
# Everything below runs inside the sandbox: `python -I -S sandbox.py JOB.json`, started by run_tests.


def _supervise(job_path: str) -> None:
    """Run each test input in a fresh fork and stream one framed result per test to stdout."""
    with open(job_path, encoding="utf-8") as f:
        job = json.load(f)
    sys.path.extend(job["site_dirs"])
    exec(PRELUDE, {})  # import once here; every fork then starts warm
    builtins.exit = builtins.quit = sys.exit  # normally defined by site.py, which -S skips
    if job["harden"]:  # bwrap already did both of these
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(38, 1, 0, 0, 0)  # PR_SET_NO_NEW_PRIVS: setuid binaries cannot regain privileges
        if job["uid"] is not None:
            libc.unshare(0x40000000)  # CLONE_NEWNET: an empty network namespace, when the kernel allows it
    uid = job["uid"]
    if uid is not None:  # as root: give the work dir to the private uid, then become it for good
        os.chown(os.getcwd(), uid, uid)
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
    try:
        for text in job["inputs"]:
            info, payload = _run_one(job, text)
            info["nbytes"] = len(payload)
            sys.stdout.buffer.write(json.dumps(info).encode() + b"\n" + payload)
            sys.stdout.buffer.flush()
    finally:
        if uid is not None:
            try:
                os.kill(-1, signal.SIGKILL)  # everything else this uid still runs; kill(-1) spares the caller
            except ProcessLookupError:
                pass


def _run_one(job: dict, text: str) -> tuple[dict, bytes]:
    in_fd = os.memfd_create("stdin")  # a real fd 0, so sys.stdin.buffer, os.read(0) and open(0) all work
    _write_all(in_fd, text.encode())
    os.lseek(in_fd, 0, os.SEEK_SET)
    out_r, out_w = os.pipe()
    report_r, report_w = os.pipe()
    start = time.monotonic()
    pid = os.fork()
    if pid == 0:
        os.close(out_r)
        os.close(report_r)
        _child(job, text, in_fd, out_w, report_w)
    try:
        os.setpgid(pid, pid)  # also done by the child; whichever runs first wins the race against killpg
    except OSError:  # the child got there first, or already left for a session of its own
        pass
    for fd in (in_fd, out_w, report_w):
        os.close(fd)
    buffers = {out_r: bytearray(), report_r: bytearray()}
    try:
        status = _watch(pid, buffers, start + job["timeout"], job["max_output"])
    finally:
        # the child, even if it left its group, and the group with anything it forked
        for kill, target in ((os.kill, pid), (os.killpg, pid)):
            try:
                kill(target, signal.SIGKILL)
            except ProcessLookupError:
                pass
        _, wait_status = os.waitpid(pid, 0)
        os.close(out_r)
        os.close(report_r)
    seconds = round(time.monotonic() - start, 4)
    if status != "exited":
        return {"verdict": status, "detail": f"{status} after {seconds:.2f}s", "seconds": seconds}, b""
    try:
        report = json.loads(buffers[report_r])
    except ValueError:
        report = None
    if isinstance(report, dict) and report.get("verdict") in ("ok", "runtime_error", "memory"):
        verdict, detail = report["verdict"], str(report.get("detail", ""))[:200]
    elif os.WIFSIGNALED(wait_status):
        sig = os.WTERMSIG(wait_status)
        verdict, detail = ("timeout" if sig == signal.SIGXCPU else "runtime_error"), f"killed by signal {sig}"
    else:  # a stdin program may legitimately end with os._exit(0) after writing its answer
        code = os.waitstatus_to_exitcode(wait_status)
        if code == 0 and job["fn_name"] is None:
            verdict, detail = "ok", ""
        else:
            verdict, detail = "runtime_error", f"exited with code {code}"
    if verdict != "ok":
        return {"verdict": verdict, "detail": detail, "seconds": seconds}, b""
    payload = bytes(buffers[out_r]) if job["fn_name"] is None else str(report.get("result")).encode()
    return {"verdict": "ok", "detail": "", "seconds": seconds}, payload


def _watch(pid: int, buffers: dict, deadline: float, max_output: int) -> str:
    """Collect the child's output and report until it exits: 'exited', 'timeout' or 'output_limit'."""
    pidfd = os.pidfd_open(pid)  # becomes readable when the child exits, even if its own children hold the pipes
    with selectors.DefaultSelector() as selector:
        for fd in buffers:
            os.set_blocking(fd, False)
            selector.register(fd, selectors.EVENT_READ)
        selector.register(pidfd, selectors.EVENT_READ)
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    return "timeout"
                events = selector.select(left)
                exited = any(key.fd == pidfd for key, _ in events)
                ready = buffers if exited else [key.fd for key, _ in events]
                for fd in ready:
                    if not _read_available(fd, buffers[fd], max_output) and fd in selector.get_map():
                        selector.unregister(fd)
                if any(len(buf) > max_output for buf in buffers.values()):
                    return "output_limit"
                if exited:
                    return "exited"
        finally:
            os.close(pidfd)


def _read_available(fd: int, buf: bytearray, limit: int) -> bool:
    """Append what fd holds right now, at most about limit bytes; False once its writers are gone."""
    while len(buf) <= limit:
        try:
            chunk = os.read(fd, 1 << 16)
        except BlockingIOError:
            return True
        if not chunk:
            return False
        buf += chunk
    return True


def _child(job: dict, text: str, in_fd: int, out_w: int, report_w: int) -> None:
    """Set limits, wire stdio, run the solution once, write a one-line report; never returns."""
    exit_code = 70  # no report and a nonzero code: the supervisor says runtime_error
    try:
        os.setpgid(0, 0)
        cpu = math.ceil(job["timeout"]) + 1  # backstop for the wall clock: a busy loop gets SIGXCPU
        for limit, value in (
            (resource.RLIMIT_AS, job["memory_bytes"]),
            (resource.RLIMIT_CORE, 0),
            (resource.RLIMIT_FSIZE, job["max_output"]),
            (resource.RLIMIT_NPROC, job["nproc"]),
            (resource.RLIMIT_NOFILE, 256),
        ):
            resource.setrlimit(limit, (value, value))
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
        devnull = os.open(os.devnull, os.O_WRONLY)
        for fd, target in ((in_fd, 0), (out_w, 1), (devnull, 2)):
            os.dup2(fd, target)
            os.close(fd)
        sys.stdin = open(0, encoding="utf-8", errors="replace", closefd=False)
        sys.stdout = open(1, "w", encoding="utf-8", closefd=False)
        sys.stderr = open(2, "w", encoding="utf-8", closefd=False)
        report = _execute(job, text)
        try:
            sys.stdout.flush()
        except BaseException:  # the program may have closed or replaced stdout; its loss
            pass
        _write_all(report_w, json.dumps(report).encode())
        exit_code = 0
    finally:
        os._exit(exit_code)


def _execute(job: dict, text: str) -> dict:
    fn_name = job["fn_name"]
    try:
        args = [json.loads(line) for line in text.split("\n") if line.strip()] if fn_name else None
        namespace = {"__name__": "__main__", "__builtins__": builtins}
        exec(PRELUDE, namespace)
        exec(compile(job["code"], "solution.py", "exec"), namespace)
        if fn_name is None:
            return {"verdict": "ok"}
        # as LiveCodeBench: a Solution method when the code defines the class, else a top-level function
        method = getattr(namespace["Solution"](), fn_name) if "class Solution" in job["code"] else namespace[fn_name]
        result = method(*args)
        # numpy values answer tolist(); anything else unserialisable becomes a string that cannot match
        encoded = json.dumps(result, default=lambda o: o.tolist() if hasattr(o, "tolist") else f"<{type(o).__name__}>")
        return {"verdict": "ok", "result": encoded}
    except SystemExit:  # LiveCodeBench lets a stdin program exit() after printing its answer
        return {"verdict": "ok"} if fn_name is None else {"verdict": "runtime_error", "detail": "SystemExit"}
    except MemoryError:
        return {"verdict": "memory", "detail": "MemoryError"}
    except BaseException as error:
        try:
            detail = f"{type(error).__name__}: {error}"[:200]
        except BaseException:  # a hostile __str__
            detail = type(error).__name__
        return {"verdict": "runtime_error", "detail": detail}


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


if __name__ == "__main__":
    _supervise(sys.argv[1])
