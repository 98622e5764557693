"""openai_client.py: one request against a local fake server (retries, errors, the reply's fields); least-in-flight
routing and failover over several OpenAI-compatible servers, alone and through evaluate.py --backend openai
--base-url A,B with one server killed mid-run (real HTTP servers on 127.0.0.1)."""

import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from conftest import send_json

import evaluate
import openai_client
from openai_client import RETRIES_TO_LEAVE, ServerPool


def test_requests_go_to_the_server_with_the_fewest_in_flight():
    pool = ServerPool(["a", "b", "c"], retries=0)
    release, started, seen = threading.Event(), [], []

    def slow(url):
        started.append(url)
        release.wait(10)
        return url

    threads = [threading.Thread(target=pool.call, args=(slow,)) for _ in range(5)]
    for thread in threads:
        thread.start()
        while len(started) < len(seen) + 1:  # one at a time, so the loads are known at each choice
            time.sleep(0.01)
        seen.append(started[-1])
    assert seen == ["a", "b", "c", "a", "b"]
    release.set()
    for thread in threads:
        thread.join()
    assert pool.in_flight == {"a": 0, "b": 0, "c": 0}


def test_a_failing_server_leaves_the_rotation_once_and_is_tried_again_later(capsys):
    pool = ServerPool(["good", "bad"], retries=5, cooldown_s=2.0)  # long enough that a loaded CI core cannot outlast it
    tried = []

    def request(url):
        tried.append(url)
        if url == "bad":
            raise openai_client.ChatCompletionError("bad: HTTP 503", retryable=True)
        return "ok"

    # Every request lands: "bad" fails RETRIES_TO_LEAVE times (in different requests), each retried on "good".
    pool.in_flight["good"] = 1  # "good" looks busy, so "bad" is chosen while it is in the rotation
    assert [pool.call(request) for _ in range(6)] == ["ok"] * 6
    assert tried.count("bad") == RETRIES_TO_LEAVE
    assert capsys.readouterr().err.count("server bad left the rotation (bad: HTTP 503)") == 1
    time.sleep(2.05)
    tried.clear()
    pool.call(request)
    assert tried == ["bad", "good"]  # tried again after the cooldown; one failure sends it away again
    with pytest.raises(openai_client.ChatCompletionError, match="HTTP 401"):  # not worth retrying anywhere
        pool.call(lambda url: (_ for _ in ()).throw(openai_client.ChatCompletionError("HTTP 401")))
    unreachable = ServerPool(["down"], retries=2, cooldown_s=0.01)
    refused = openai_client.ChatCompletionError("refused", retryable=True, unreachable=True)
    with pytest.raises(
        openai_client.ChatCompletionError, match="gave up after 3 attempts on the server; last: refused"
    ):
        unreachable.call(lambda url: (_ for _ in ()).throw(refused))


def test_retries_back_off_while_no_server_answers_and_fail_over_at_once_to_one_that_does(sleeps):
    busy = openai_client.ChatCompletionError("HTTP 503", retryable=True)
    tried = []

    def request(url):
        tried.append(url)
        if url in down:
            raise busy
        return url

    down, pool = {"a", "b"}, ServerPool(["a", "b"], retries=5)  # both restarting: backoff as against one server
    with pytest.raises(openai_client.ChatCompletionError, match="gave up after 6 attempts on 2 servers"):
        pool.call(request)
    assert tried == ["a", "b", "a", "b", "a", "b"] and sleeps == [2.0, 4.0, 8.0, 16.0]
    sleeps.clear()
    down, pool = {"a"}, ServerPool(["a", "b"], retries=5)
    assert [pool.call(request) for _ in range(3)] == ["b"] * 3 and sleeps == []  # "b" answers: no waiting


def test_a_request_that_raises_anything_gives_its_server_back():
    pool = ServerPool(["a", "b"], retries=3)
    with pytest.raises(ZeroDivisionError):
        pool.call(lambda url: 1 / 0)
    assert pool.in_flight == {"a": 0, "b": 0} and pool.failures == {"a": 0, "b": 0}


def test_a_reply_sent_before_a_server_left_does_not_bring_it_back(capsys):
    pool = ServerPool(["a", "b"], retries=5, cooldown_s=2.0)  # the straggler must answer inside the cooldown
    release = threading.Event()
    straggler = threading.Thread(target=pool.call, args=(lambda url: release.wait(10) and url,))
    straggler.start()  # a slow request on "a", sent while it is fine
    while pool.in_flight["a"] == 0:
        time.sleep(0.01)
    down = {"a"}

    def request(url):
        if url in down:
            raise openai_client.ChatCompletionError(f"{url}: HTTP 503", retryable=True)
        return url

    pool.in_flight["b"] += 2  # "b" looks busy, so "a" gets each request first until it leaves
    assert [pool.call(request) for _ in range(RETRIES_TO_LEAVE)] == ["b"] * RETRIES_TO_LEAVE
    pool.in_flight["b"] -= 2
    assert capsys.readouterr().err.count("server a left the rotation") == 1
    release.set()
    straggler.join()
    assert capsys.readouterr().err == "" and pool.failures["a"] == RETRIES_TO_LEAVE  # still out: no "back" line
    time.sleep(2.05)
    down.clear()
    assert pool.call(request) == "a"  # after the cooldown a reply does bring it back
    assert capsys.readouterr().err.count("server a is back in the rotation") == 1


def test_a_dead_server_is_reported_once_not_at_every_probe(capsys):
    pool = ServerPool(["a", "b"], retries=5, cooldown_s=0.05)
    refused = openai_client.ChatCompletionError("a: connection refused", retryable=True, unreachable=True)
    down, tried = {"a"}, []

    def request(url):
        tried.append(url)
        if url in down:
            raise refused
        return url

    for _ in range(4):  # the first request sends "a" away, each later one probes it again after the cooldown
        assert pool.call(request) == "b"
        time.sleep(0.06)
    assert tried.count("a") == 4
    assert capsys.readouterr().err.count("server a left the rotation") == 1
    down.clear()
    assert pool.call(request) == "a" and capsys.readouterr().err.count("server a is back in the rotation") == 1


class AddingServer(BaseHTTPRequestHandler):
    """A chat server that answers 'a + b' correctly, slowly enough that a run overlaps the kill."""

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.requests.append(body["seed"])
        a, b = (int(x) for x in body["messages"][-1]["content"].split("}. ")[1].rstrip("?").split(" + "))
        time.sleep(0.05)
        reply = {"choices": [{"message": {"content": f"\\\\boxed{{{a + b}}}"}, "finish_reason": "stop"}]}
        send_json(self, reply | {"usage": {"completion_tokens": 3}})

    def log_message(self, *args):
        pass


def serve() -> ThreadingHTTPServer:
    server = ThreadingHTTPServer(("127.0.0.1", 0), AddingServer)
    server.requests = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_evaluate_over_two_servers_survives_losing_one(tmp_path, capsys):
    task = tmp_path / "sums.jsonl"
    task.write_text("".join(json.dumps({"id": i, "problem": f"{i} + {i}?", "answer": 2 * i}) + "\n" for i in range(12)))
    first, second = serve(), serve()
    urls = [f"http://127.0.0.1:{s.server_port}/v1" for s in (first, second)]
    args = ["--model", "m", "--backend", "openai", "--base-url", ",".join(urls), "--tasks", str(task), "--n", "2"]
    args += ["--temperature", "0.5", "--concurrency", "2", "--workers", "1", "--output-dir", str(tmp_path / "out")]

    def kill_second():
        deadline = time.monotonic() + 60
        while len(second.requests) < 4 and time.monotonic() < deadline:
            time.sleep(0.01)
        second.shutdown()
        second.server_close()  # connections are refused from here on

    killer = threading.Thread(target=kill_second)
    killer.start()
    try:
        results = evaluate.main(evaluate.parse_args(args))
    finally:
        killer.join(30)
        first.shutdown()
    samples = [json.loads(line) for line in (tmp_path / "out" / "samples.jsonl").read_text().splitlines()]
    assert sorted((s["id"], s["sample"]) for s in samples) == sorted((str(i), s) for i in range(12) for s in range(2))
    assert results["sums"]["accuracy"] == 1.0
    assert 4 <= len(second.requests) < 24 and len(first.requests) + len(second.requests) >= 24
    assert capsys.readouterr().err.count(f"server {urls[1]} left the rotation") == 1


# ----------------------------------------------------------------------------- OpenAI-compatible client


class FakeServer:
    """A chat-completions endpoint on 127.0.0.1 answering from a script: one (status, body) per request; a bytes body
    is the whole HTTP reply (status unused)."""

    def __init__(self, replies):
        self.replies, self.requests = list(replies), []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                server.requests.append({"path": self.path, "headers": dict(self.headers), "body": json.loads(body)})
                status, reply = server.replies.pop(0)
                if isinstance(reply, bytes):  # a hand-made HTTP reply, as is: cut short, not UTF-8
                    self.wfile.write(reply)
                else:
                    send_json(self, reply, status)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.01,), daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


COMPLETION = {
    "choices": [{"message": {"role": "assistant", "content": "\\boxed{4}"}, "finish_reason": "stop"}],
    "usage": {"completion_tokens": 7},
}
MESSAGES = [{"role": "user", "content": "2 + 2?"}]


@pytest.fixture
def sleeps(monkeypatch):
    """The backoff delays the client asked for, without waiting them out."""
    delays = []
    monkeypatch.setattr(openai_client.time, "sleep", delays.append)
    return delays


def test_chat_completion_retries_a_500_then_returns_the_reply(sleeps):
    with FakeServer([(500, "overloaded"), (200, COMPLETION)]) as server:
        reply = openai_client.chat_completion(
            server.url, "m", MESSAGES, api_key="k", max_tokens=16, temperature=0.0, seed=1
        )
    assert reply == ("\\boxed{4}", 7, "stop")
    assert len(server.requests) == 2 and sleeps == [1.0]
    request = server.requests[0]
    assert request["path"] == "/v1/chat/completions" and request["headers"]["Authorization"] == "Bearer k"
    assert request["body"] == {"model": "m", "messages": MESSAGES, "max_tokens": 16, "temperature": 0.0, "seed": 1}


def test_chat_completion_does_not_retry_a_400(sleeps):
    with FakeServer([(400, '{"error": "max_tokens too large"}'), (200, COMPLETION)]) as server:
        with pytest.raises(
            openai_client.ChatCompletionError, match=re.escape('HTTP 400: {"error": "max_tokens too large"}')
        ):
            openai_client.chat_completion(server.url + "/chat/completions", "m", MESSAGES, api_key="k")
    assert len(server.requests) == 1 and sleeps == []


def test_chat_completion_gives_up_after_its_retries_and_rejects_non_completions(sleeps):
    with FakeServer([(503, "busy")] * 3) as server:
        with pytest.raises(openai_client.ChatCompletionError, match=r"gave up after 3 attempts \(HTTP 503\)"):
            openai_client.chat_completion(server.url, "m", MESSAGES, retries=2)
    assert len(server.requests) == 3 and sleeps == [1.0, 2.0]
    with FakeServer([(200, {"object": "error"})]) as server:
        with pytest.raises(openai_client.ChatCompletionError, match="not a completion reply"):
            openai_client.chat_completion(server.url, "m", MESSAGES)
    with FakeServer([(200, {"choices": [{"message": {"content": None}}]})]) as server:
        assert openai_client.chat_completion(server.url, "m", MESSAGES) == (
            "",
            None,
            None,
        )  # no usage block: token count unknown


def test_chat_completion_retries_a_reply_cut_short_and_rejects_one_that_is_not_utf8(sleeps):
    cut = b'HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{"choices": [{"mess'  # the server died mid-body
    with FakeServer([(200, cut), (200, COMPLETION)]) as server:
        assert openai_client.chat_completion(server.url, "m", MESSAGES) == ("\\boxed{4}", 7, "stop")
    assert len(server.requests) == 2 and sleeps == [1.0]
    with FakeServer([(200, cut)] * 2) as server:
        with pytest.raises(openai_client.ChatCompletionError, match="gave up after 2 attempts") as error:
            openai_client.chat_completion(server.url, "m", MESSAGES, retries=1)
    assert error.value.retryable
    latin1 = b'HTTP/1.1 200 OK\r\nContent-Length: 16\r\n\r\n{"choices": "\xe9"}'
    with FakeServer([(200, latin1)]) as server:
        with pytest.raises(openai_client.ChatCompletionError, match="not a completion reply.*UnicodeDecodeError"):
            openai_client.chat_completion(server.url, "m", MESSAGES)
