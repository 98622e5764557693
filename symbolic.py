r"""Symbolic equivalence for grading.py: math-verify (sympy, and an exp rewrite of hyperbolic forms) in a helper process

    python -c 'import symbolic; print(symbolic.symbolic_equal(r"\sqrt{12}", r"2\sqrt{3}", timeout=5))'
    python -m pytest tests/test_grading.py -q -k "symbolic or helper or pathological"

math-verify's signal.alarm cannot interrupt a big-integer power running in C; a separate process can always be killed.
The helper stops a comparison itself at `timeout` and is killed HELPER_KILL_GRACE_S later if it does not; the next
comparison starts a fresh one. Each process (thread or daemonic pool worker alike) starts its own helper.
"""

import functools
import json
import os
import select
import signal
import subprocess
import sys
import threading

HELPER_STARTUP_S = 120  # importing sympy on a loaded CI machine can take many seconds
HELPER_KILL_GRACE_S = 1.0  # the helper stops itself at `timeout`; the kill is for code that ignores signals
HELPER_MEMORY_BYTES = 4 << 30  # a runaway 9^{9^{9}} should fail with MemoryError, not swap the machine


class _SymbolicTimeout(BaseException):  # not Exception: sympy's and math-verify's `except Exception` would swallow it
    pass


def serve() -> None:
    """Helper-process loop: one JSON [pred, gold, timeout] per stdin line, '1' or '0' per stdout line."""
    import logging
    import resource

    import sympy
    from math_verify import parse, verify

    hyperbolic = (sympy.sinh, sympy.cosh, sympy.tanh, sympy.coth, sympy.sech, sympy.csch)

    @functools.lru_cache(maxsize=4096)  # a gold is compared with every sample drawn for its problem
    def parse_latex(text):
        return parse(f"${text}$", parsing_timeout=None)

    def equal(pred, gold):
        gold_parsed, pred_parsed = parse_latex(gold), parse_latex(pred)
        if verify(gold_parsed, pred_parsed, timeout_seconds=None):
            return True
        a, b = (gold_parsed or [None])[0], (pred_parsed or [None])[0]
        if not (isinstance(a, sympy.Expr) and isinstance(b, sympy.Expr) and (a.has(*hyperbolic) or b.has(*hyperbolic))):
            return False
        return sympy.simplify((a - b).rewrite(sympy.exp)) == 0  # sinh(at)/a against (e^{at}-e^{-at})/(2a)

    logging.getLogger("math_verify").setLevel(logging.CRITICAL)  # it warns about the timeouts we disable
    resource.setrlimit(resource.RLIMIT_AS, (HELPER_MEMORY_BYTES, HELPER_MEMORY_BYTES))
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C belongs to the parent, which closes our stdin

    def on_alarm(signum, frame):
        raise _SymbolicTimeout

    signal.signal(signal.SIGALRM, on_alarm)
    replies = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # a stray print from sympy must not corrupt the one-line-per-request protocol
    print("ready", file=replies, flush=True)
    for line in sys.stdin:
        pred, gold, timeout = json.loads(line)
        verdict = False
        try:
            signal.setitimer(signal.ITIMER_REAL, timeout)
            verdict = equal(pred, gold)
        except (Exception, _SymbolicTimeout):
            pass
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        print("1" if verdict else "0", file=replies, flush=True)


class SymbolicHelper:
    """One math-verify helper process per parent process, shared by its threads under a lock."""

    def __init__(self):
        self.lock = threading.Lock()
        self.proc = None

    def _readline(self, timeout: float) -> str | None:
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        return self.proc.stdout.readline().strip() if ready else None

    def _stop(self) -> None:
        self.proc.kill()
        self.proc.wait()
        self.proc = None

    def _start(self) -> None:
        here = os.path.dirname(os.path.abspath(__file__))
        code = f"import sys; sys.path.insert(0, {here!r}); import symbolic; symbolic.serve()"
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        if self._readline(HELPER_STARTUP_S) != "ready":
            self._stop()
            raise RuntimeError(
                "symbolic.py: the math-verify helper process did not start "
                "(is math-verify installed? see its stderr above)"
            )

    def equal(self, pred: str, gold: str, timeout: float) -> bool:
        with self.lock:
            if self.proc is None or self.proc.poll() is not None:
                self._start()
            try:
                self.proc.stdin.write(json.dumps([pred, gold, timeout]) + "\n")
                self.proc.stdin.flush()
                reply = self._readline(timeout + HELPER_KILL_GRACE_S)
            except OSError:  # the helper died, e.g. killed by the OOM killer
                reply = None
            if reply not in ("0", "1"):
                self._stop()
            return reply == "1"


_helpers: dict[int, SymbolicHelper] = {}  # keyed by pid: a forked child must not share its parent's pipes


def symbolic_equal(pred: str, gold: str, timeout: float) -> bool:
    return _helpers.setdefault(os.getpid(), SymbolicHelper()).equal(pred, gold, timeout)
