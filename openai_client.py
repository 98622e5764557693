"""The OpenAI-compatible client of evaluate.py --backend openai and perturb.py --llm-url: one request to one server
(chat_completion: /chat/completions, or /completions for a prompt continued as is), with retries; and several servers
as one (ServerPool, --base-url URL1,URL2,...): one `vllm serve` per node is the multi-machine layout of
lm-evaluation-harness and lighteval users (lm-eval #3362), without a load balancer in front.

Routing: each request goes to the server in the rotation with the fewest requests in flight (servers batch what they
hold, so the least loaded one answers soonest). Failover: a server that stops answering (connection refused at once;
RETRIES_TO_LEAVE retryable failures in a row: 5xx, 429, timeouts) leaves the rotation with one logged line, the
request is retried on the others, and the server is tried again after COOLDOWN_S (once back, one more logged line). A
retry goes at once to a server known to answer; while none is (all restarting), retries back off as against one server
(1 s, doubling), and while no server is in the rotation a request waits for the first to come back. A request gives up
after --max-retries failed attempts, wherever they ran.
"""

from __future__ import annotations

import http.client
import json
import os
import sys
import threading
import time
import urllib.error
import urllib.request
from typing import Callable, TypeVar

RETRYABLE_HTTP = {408, 409, 429, 500, 502, 503, 504}


class ChatCompletionError(RuntimeError):
    """The server refused the request, gave up after retries, or did not answer with a completion. retryable: worth
    sending again (408/409/429/5xx, network error, timeout); unreachable: nothing answered (connection refused)."""

    def __init__(self, message: str, retryable: bool = False, unreachable: bool = False):
        super().__init__(message)
        self.retryable, self.unreachable = retryable, unreachable


def chat_completion(
    base_url: str,
    model: str,
    messages: list[dict] | None,
    api_key: str | None = None,
    timeout: float = 600.0,
    retries: int = 3,
    prompt: str | None = None,
    **sampling,
) -> tuple[str, int | None, str | None]:
    """(reply text, completion tokens, finish_reason) from POST {base_url}/chat/completions (vLLM, SGLang, OpenAI...);
    tokens and finish_reason ("stop", "length", ...) are None when the server does not say. With `prompt` (and
    messages None): POST {base_url}/completions, the text continued as is (a rendered chat prompt, a thought so far).

    Retries 408/409/429/5xx and network errors with exponential backoff (1 s, doubling, at most a minute);
    any other HTTP error or a reply that is not a completion raises ChatCompletionError at once.
    `sampling` goes into the request body as is (max_tokens, temperature, top_p, seed).
    """
    endpoint = "/chat/completions" if prompt is None else "/completions"
    url = base_url.rstrip("/")
    url = url if url.endswith(endpoint) else url + endpoint
    api_key = api_key or os.environ.get("OPENAI_API_KEY") or "EMPTY"
    content = {"messages": messages} if prompt is None else {"prompt": prompt}
    body = json.dumps({"model": model, **content, **sampling}).encode()
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {api_key}"}
    error, unreachable = "", False
    for attempt in range(retries + 1):
        try:
            with urllib.request.urlopen(urllib.request.Request(url, body, headers), timeout=timeout) as reply:
                data = json.load(reply)
            choice = data["choices"][0]
            tokens = data.get("usage", {}).get("completion_tokens")
            text = choice["message"].get("content") if prompt is None else choice["text"]
            return text or "", tokens, choice.get("finish_reason")
        except urllib.error.HTTPError as e:
            if e.code not in RETRYABLE_HTTP:
                try:
                    body = " ".join(e.read()[:300].decode(errors="replace").split())  # an HTML error page on one line
                except (OSError, http.client.HTTPException):  # the server went away mid-page
                    body = "(no readable body)"
                raise ChatCompletionError(f"{url}: HTTP {e.code}: {body}") from None
            error, unreachable = f"HTTP {e.code}", False
        # OSError: refused, reset, timed out (URLError is one); HTTPException: a reply cut short (IncompleteRead, a
        # server killed mid-body) or garbled
        except (OSError, http.client.HTTPException) as e:
            error = str(e) or type(e).__name__
            unreachable = isinstance(getattr(e, "reason", e), ConnectionRefusedError)
        # ValueError: not JSON, or not UTF-8 (UnicodeDecodeError is no JSONDecodeError)
        except (KeyError, IndexError, TypeError, AttributeError, ValueError) as e:
            raise ChatCompletionError(f"{url}: not a completion reply ({type(e).__name__}: {e})") from None
        if attempt < retries:
            time.sleep(min(2.0**attempt, 60.0))
    raise ChatCompletionError(f"{url}: gave up after {retries + 1} attempts ({error})", True, unreachable)


# ----------------------------------------------------------------------------- several servers as one


RETRIES_TO_LEAVE = 3  # a lone 500 or timeout is a busy server; three in a row is a broken one
COOLDOWN_S = 30.0  # how long a server that left waits before it is tried again (vllm serve restarts in about that)

T = TypeVar("T")


class ServerPool:
    def __init__(self, urls: list[str], retries: int, cooldown_s: float = COOLDOWN_S):
        self.urls, self.retries, self.cooldown_s = urls, retries, cooldown_s
        self.in_flight = dict.fromkeys(urls, 0)
        self.failures = dict.fromkeys(urls, 0)  # retryable failures in a row
        self.back_at = dict.fromkeys(urls, 0.0)  # monotonic time a server that left is tried again
        self.lock = threading.Condition()

    def _acquire(self, avoid: str | None = None) -> str:
        """The least loaded server in the rotation, other than avoid (where the last attempt failed) if there is one."""
        with self.lock:
            while True:
                now = time.monotonic()
                ready = [url for url in self.urls if self.back_at[url] <= now]
                if ready:
                    url = min(ready, key=lambda u: (u == avoid, self.in_flight[u], self.urls.index(u)))
                    self.in_flight[url] += 1
                    return url
                self.lock.wait(min(self.back_at.values()) - now)

    def _release(self, url: str, error: ChatCompletionError | None, answered: bool) -> None:
        """The request on url is over: answered, failed with error, or neither (an exception of the caller's own)."""
        with self.lock:
            self.in_flight[url] -= 1
            now = time.monotonic()
            gone = self.failures[url] >= RETRIES_TO_LEAVE  # it has left the rotation (and not come back)
            # During a cooldown, outcomes are of requests sent before the server left: they say nothing new.
            if answered and self.back_at[url] <= now:
                if gone:
                    print(f"server {url} is back in the rotation", file=sys.stderr)
                self.failures[url] = 0
            elif error is not None and error.retryable and self.back_at[url] <= now:
                self.failures[url] += 1
                if error.unreachable or self.failures[url] >= RETRIES_TO_LEAVE:
                    self.failures[url] = max(self.failures[url], RETRIES_TO_LEAVE)
                    self.back_at[url] = now + self.cooldown_s  # a failed re-probe extends the cooldown silently
                    if not gone:
                        others = len(self.urls) - 1
                        where = f"its requests go to the other {others}" if others else "requests wait for it"
                        print(
                            f"server {url} left the rotation ({error}); {where}; tried again every "
                            f"{self.cooldown_s:.0f} s",
                            file=sys.stderr,
                        )
            self.lock.notify_all()

    def call(self, request: Callable[[str], T]) -> T:
        """request(base_url), sent to the least loaded server, retried elsewhere on a retryable failure; raises
        ChatCompletionError on a failure not worth retrying or after --max-retries retries."""
        attempts, url = 0, None
        while True:
            url, error, answered = self._acquire(avoid=url), None, False
            try:
                result, answered = request(url), True
            except ChatCompletionError as e:
                error = e
            finally:  # whatever request raised, the server's in-flight count is given back
                self._release(url, error, answered)
            if error is None:
                return result
            attempts += 1
            if not error.retryable:
                raise error
            if attempts > self.retries:
                servers = f"{len(self.urls)} servers" if len(self.urls) > 1 else "the server"
                raise ChatCompletionError(f"gave up after {attempts} attempts on {servers}; last: {error}") from None
            if self._backoff(url):
                time.sleep(min(2.0 ** (attempts - 1), 60.0))

    def _backoff(self, url: str) -> bool:
        """Whether a retry after a failure on url should wait: yes unless another server in the rotation answered its
        last request (or has not failed yet). With none in the rotation, _acquire waits for a cooldown instead."""
        with self.lock:
            now = time.monotonic()
            ready = [u for u in self.urls if self.back_at[u] <= now]
            return bool(ready) and not any(self.failures[u] == 0 for u in ready if u != url)
