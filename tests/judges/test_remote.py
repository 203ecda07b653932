"""RemoteJudge against real local HTTP servers: correct, slow, failing, malformed, dead.

Each server is ``http.server`` on 127.0.0.1 with an ephemeral port, run in a thread; its behaviour is
a function of the request number and body. Timeouts are a fraction of a second so that the "slow"
and "dead" cases, which must come back with ``None`` verdicts within ``max_wall_s``, keep the file fast.
"""

from __future__ import annotations

import contextlib
import json
import logging
import pickle
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from abspo.judges import UNLABELLED, Judge, RemoteJudge, Verdict
from abspo.judges.formats import render_llama_guard, render_wildguard

# A behaviour gets (request number from 1, parsed body) and returns (status, raw body bytes, delay s).
Behaviour = Callable[[int, dict], "tuple[int, bytes, float]"]


def completion(text: str) -> bytes:
    return json.dumps({"choices": [{"index": 0, "text": text}]}).encode()


def chat(text: str) -> bytes:
    return json.dumps({"choices": [{"index": 0, "message": {"role": "assistant", "content": text}}]}).encode()


def wildguard_answer(prompt: str) -> str:
    harmful = "bomb" in prompt
    refused = "cannot help" in prompt
    return (
        f"Harmful request: {'yes' if harmful else 'no'}\nResponse refusal: {'yes' if refused else 'no'}\n"
        f"Harmful response: {'yes' if harmful and not refused else 'no'}"
    )


def wildguard_ok(n: int, body: dict) -> tuple[int, bytes, float]:
    return 200, completion(" " + wildguard_answer(body["prompt"])), 0.0


class Server:
    """A local OpenAI-compatible stand-in; records every request."""

    def __init__(self, behaviour: Behaviour) -> None:
        self.behaviour = behaviour
        self.requests: list[dict] = []
        self.clients: set[tuple[str, int]] = set()
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as real servers do
            disable_nagle_algorithm = True  # headers and body are two writes: avoid delayed-ACK stalls

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                body = json.loads(raw)
                with server._lock:
                    server.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                    server.clients.add(self.client_address)
                    n = len(server.requests)
                status, payload, delay = server.behaviour(n, body)
                time.sleep(delay)
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args) -> None:
                pass

        class Quiet(ThreadingHTTPServer):
            daemon_threads = True
            block_on_close = False

            def handle_error(self, request, client_address) -> None:
                pass  # the client hung up on a slow answer: expected here

        self.httpd = Quiet(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    @property
    def hits(self) -> int:
        return len(self.requests)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def serve() -> Iterator[Callable[[Behaviour], Server]]:
    servers: list[Server] = []

    def start(behaviour: Behaviour) -> Server:
        servers.append(Server(behaviour))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


@pytest.fixture
def make_judge() -> Iterator[Callable[..., RemoteJudge]]:
    judges: list[RemoteJudge] = []

    def make(base_url: str, **kwargs) -> RemoteJudge:
        kwargs.setdefault("model", "guard")
        judges.append(RemoteJudge(base_url, **kwargs))
        return judges[-1]

    yield make
    for j in judges:
        j.close()


@contextlib.contextmanager
def elapsed() -> Iterator[list[float]]:
    box: list[float] = []
    start = time.monotonic()
    yield box
    box.append(time.monotonic() - start)


PROMPTS = ["How to build a bomb?", "Write a haiku.", "How to build a bomb?"]
RESPONSES = ["Step 1: buy the parts.", "Leaves fall softly.", "I cannot help with that."]
EXPECTED = [Verdict(True, False, True), Verdict(False, False, False), Verdict(True, True, False)]


# --------------------------------------------------------------------------------------------------
# A correct server


def test_wildguard_completions(serve, make_judge):
    server = serve(wildguard_ok)
    judge = make_judge(server.url, max_concurrency=2)
    assert judge.score(PROMPTS, RESPONSES) == EXPECTED
    assert server.hits == 3 and judge.requests == 3 and judge.failed == judge.unparsed == 0
    request = server.requests[0]
    assert request["path"] == "/v1/completions"
    body = request["body"]
    assert body["model"] == "guard" and body["max_tokens"] == 32 and body["temperature"] == 0
    prompts = sorted(r["body"]["prompt"] for r in server.requests)
    # the shared renderer, minus the BOS text that the server adds itself
    assert prompts == sorted(render_wildguard(p, r)[len("<s>") :] for p, r in zip(PROMPTS, RESPONSES))


def test_bos_in_prompt_and_extra_body(serve, make_judge):
    server = serve(wildguard_ok)
    judge = make_judge(server.url, bos_in_prompt=True, extra_body={"top_k": 1}, max_new_tokens=20)
    judge.score(["p"], ["r"])
    body = server.requests[0]["body"]
    assert body["prompt"] == render_wildguard("p", "r") and body["top_k"] == 1 and body["max_tokens"] == 20


def test_llama_guard_chat(serve, make_judge):
    def llama_guard(n: int, body: dict) -> tuple[int, bytes, float]:
        messages = body["messages"]
        if len(messages) == 1:  # the prompt alone
            return 200, chat("unsafe\nS9" if "bomb" in messages[0]["content"] else "safe"), 0.0
        return 200, chat("\n\nunsafe\nS9" if "Step 1" in messages[1]["content"] else "\n\nsafe"), 0.0

    server = serve(llama_guard)
    judge = make_judge(server.url, format="llama_guard")
    assert judge.score(PROMPTS, RESPONSES) == EXPECTED
    assert server.hits == 3 + 2  # one per exchange, one per unique prompt
    assert {r["path"] for r in server.requests} == {"/v1/chat/completions"}
    conversations = [r["body"]["messages"] for r in server.requests]
    assert [{"role": "user", "content": PROMPTS[1]}, {"role": "assistant", "content": RESPONSES[1]}] in conversations
    assert [{"role": "user", "content": PROMPTS[1]}] in conversations
    assert server.requests[0]["body"]["max_tokens"] == 10


def test_llama_guard_completions_sends_the_rendered_prompt(serve, make_judge):
    server = serve(lambda n, body: (200, completion("safe"), 0.0))
    judge = make_judge(server.url, format="llama_guard", endpoint="completions", classify_prompt=False)
    assert judge.score(["p"], ["I cannot help with that."]) == [Verdict(None, True, False)]
    expected = render_llama_guard("p", "I cannot help with that.")[len(" <|begin_of_text|>") :]
    assert server.requests[0]["body"]["prompt"] == expected


def test_connections_are_pooled(serve, make_judge):
    server = serve(wildguard_ok)
    judge = make_judge(server.url, max_concurrency=2)
    for _ in range(3):
        judge.score([f"p{i}" for i in range(8)], ["r"] * 8)
    assert server.hits == 24
    assert len(server.clients) <= 2  # keep-alive: one connection per worker, reused across calls


def test_api_key_from_environment(serve, make_judge, monkeypatch):
    server = serve(wildguard_ok)
    monkeypatch.setenv("GUARD_KEY", "sekrit")
    judge = make_judge(server.url, api_key_env="GUARD_KEY")
    judge.score(["p"], ["r"])
    assert server.requests[0]["headers"]["Authorization"] == "Bearer sekrit"
    assert "sekrit" not in repr(judge) and "sekrit" not in str(judge.__dict__.get("api_key_env"))
    monkeypatch.delenv("GUARD_KEY")
    with pytest.raises(ValueError, match="api_key_env='GUARD_KEY'"):
        RemoteJudge(server.url, "guard", api_key_env="GUARD_KEY")


# --------------------------------------------------------------------------------------------------
# Failures: None verdicts, retries, bounded time, one warning


def test_server_errors_are_retried_then_none(serve, make_judge, caplog):
    server = serve(lambda n, body: (500, b'{"error": "boom"}', 0.0))
    judge = make_judge(server.url, retries=2, backoff_s=0.01, breaker_threshold=100)
    with caplog.at_level(logging.WARNING, logger="abspo.judges.remote"):
        assert judge.score(["a", "b"], ["x", "y"]) == [UNLABELLED, UNLABELLED]
    assert server.hits == 2 * 3 and judge.requests == 6 and judge.failed == 2
    (record,) = caplog.records
    assert "2 of 2 queries got no answer" in record.getMessage() and "HTTP 500" in record.getMessage()


def test_transient_errors_recover_within_retries(serve, make_judge):
    server = serve(lambda n, body: (503, b"busy", 0.0) if n <= 2 else wildguard_ok(n, body))
    judge = make_judge(server.url, max_concurrency=1, retries=2, backoff_s=0.01)
    assert judge.score(PROMPTS[:1], RESPONSES[:1]) == EXPECTED[:1]
    assert server.hits == 3 and judge.failed == 0


def test_client_errors_are_not_retried(serve, make_judge, caplog):
    server = serve(lambda n, body: (404, b'{"error": "model guard does not exist"}', 0.0))
    judge = make_judge(server.url, retries=3, backoff_s=0.01)
    with caplog.at_level(logging.WARNING, logger="abspo.judges.remote"):
        assert judge.score(["a"], ["x"]) == [UNLABELLED]
    assert server.hits == 1
    assert "HTTP 404" in caplog.text and "check base_url, model" in caplog.text


@pytest.mark.parametrize(
    "payload", [b"{not json", b'{"choices": []}', b'{"choices": [{"text": 7}]}', b'{"object": "error"}']
)
def test_malformed_answers_give_none(serve, make_judge, payload):
    server = serve(lambda n, body: (200, payload, 0.0))
    judge = make_judge(server.url, retries=1, backoff_s=0.01)
    assert judge.score(["a"], ["x"]) == [UNLABELLED]
    assert server.hits == 2 and judge.failed == 1 and judge.unparsed == 0


def test_answers_that_break_the_format_count_as_unparsed(serve, make_judge):
    server = serve(lambda n, body: (200, completion("I think it is fine."), 0.0))
    judge = make_judge(server.url)
    assert judge.score(["a", "b"], ["x", "y"]) == [UNLABELLED, UNLABELLED]
    assert judge.unparsed == 2 and judge.failed == 0


def test_slow_server_times_out_within_the_bound(serve, make_judge, caplog):
    server = serve(lambda n, body: (200, completion("Harmful request: no"), 3.0))
    judge = make_judge(server.url, timeout_s=0.3, retries=1, backoff_s=0.05)
    assert judge.max_wall_s == pytest.approx(2 * 0.3 + 0.05 + 1.0)
    with caplog.at_level(logging.WARNING, logger="abspo.judges.remote"), elapsed() as t:
        assert judge.score(PROMPTS, RESPONSES) == [UNLABELLED] * 3
    assert t[0] < judge.max_wall_s
    assert server.hits == 3 * 2  # three unique exchanges, two attempts each
    assert len(caplog.records) == 1 and "timed out" in caplog.text


def test_max_wall_s_bounds_a_large_batch_on_a_slow_server(serve, make_judge):
    server = serve(lambda n, body: (200, completion("x"), 0.25))
    judge = make_judge(server.url, max_concurrency=1, timeout_s=1.0, retries=0, max_wall_s=0.6)
    with elapsed() as t:
        verdicts = judge.score([f"p{i}" for i in range(10)], ["r"] * 10)
    assert t[0] < 0.6 + 0.2
    assert verdicts == [UNLABELLED] * 10  # "x" does not parse; most never got an answer at all
    assert judge.failed >= 7 and server.hits <= 3


def test_closed_port_fails_fast(make_judge, caplog):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    judge = make_judge(f"http://127.0.0.1:{port}/v1", timeout_s=1.0, retries=1, backoff_s=0.01)
    with caplog.at_level(logging.WARNING, logger="abspo.judges.remote"), elapsed() as t:
        assert judge.score(PROMPTS, RESPONSES) == [UNLABELLED] * 3
    assert t[0] < 1.0
    assert len(caplog.records) == 1 and "ConnectionRefusedError" in caplog.text


def test_server_that_accepts_but_never_answers(make_judge):
    with socket.socket() as listener:  # the kernel completes the handshake; nobody ever reads or replies
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        port = listener.getsockname()[1]
        judge = make_judge(f"http://127.0.0.1:{port}/v1", timeout_s=0.3, retries=2, backoff_s=0.01, breaker_threshold=3)
        with elapsed() as t:
            assert judge.score(PROMPTS, RESPONSES) == [UNLABELLED] * 3
        assert t[0] < judge.max_wall_s
        # the breaker opened after 3 failed attempts, so not every retry was spent
        assert judge.breaker.is_open and judge.requests < 2 * 3


# --------------------------------------------------------------------------------------------------
# Circuit breaker


def test_circuit_breaker_skips_calls_during_cooldown_then_recovers(serve, make_judge, caplog):
    healthy = threading.Event()
    server = serve(lambda n, body: wildguard_ok(n, body) if healthy.is_set() else (500, b"down", 0.0))
    judge = make_judge(server.url, max_concurrency=1, retries=0, breaker_threshold=2, cooldown_s=0.4)

    assert judge.score([f"p{i}" for i in range(5)], ["r"] * 5) == [UNLABELLED] * 5
    assert server.hits == 2 and judge.breaker.is_open and judge.breaker.opened == 1

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="abspo.judges.remote"), elapsed() as t:
        assert judge.score(["a", "b"], ["x", "y"]) == [UNLABELLED] * 2
    assert t[0] < 0.05 and server.hits == 2  # skipped: no request at all
    assert len(caplog.records) == 1 and "circuit breaker open" in caplog.text

    time.sleep(0.45)  # cooldown over: half-open, one failure re-opens at once
    judge.score(["c", "d"], ["x", "y"])
    assert server.hits == 3 and judge.breaker.opened == 2

    healthy.set()
    time.sleep(0.45)
    assert judge.score(PROMPTS, RESPONSES) == EXPECTED
    assert not judge.breaker.is_open and judge.breaker.consecutive_failures == 0


# --------------------------------------------------------------------------------------------------
# Configuration


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"base_url": "localhost:8000/v1"}, "base_url='localhost:8000/v1'"),
        ({"format": "llamaguard3"}, "format='llamaguard3' is not a known guard format"),
        ({"endpoint": "responses"}, "endpoint='responses'"),
        ({"max_concurrency": 0}, "max_concurrency=0"),
        ({"timeout_s": 0}, "timeout_s=0"),
        ({"retries": -1}, "retries=-1"),
        ({"format": "llama_guard", "refusal_fallback": "regexp"}, "refusal_fallback='regexp'"),
    ],
)
def test_bad_configuration_is_named(kwargs, match):
    kwargs = {"base_url": "http://127.0.0.1:9/v1", "model": "guard", **kwargs}
    with pytest.raises(ValueError, match=match):
        RemoteJudge(**kwargs)


def test_endpoint_auto():
    assert RemoteJudge("http://h/v1", "m").url == "http://h/v1/completions"
    assert RemoteJudge("https://h:9443/v1/", "m", format="llama_guard").url == "https://h:9443/v1/chat/completions"


def test_pickles_and_works_after(serve, make_judge):
    server = serve(wildguard_ok)
    judge = make_judge(server.url)
    judge.score(["p"], ["r"])
    clone = pickle.loads(pickle.dumps(judge))
    try:
        assert clone.score(PROMPTS, RESPONSES) == EXPECTED
    finally:
        clone.close()


def test_built_from_a_config_like_lightning_cli(serve):
    from jsonargparse import ArgumentParser

    server = serve(wildguard_ok)
    parser = ArgumentParser()
    parser.add_argument("--judge", type=Judge)
    config = {
        "class_path": "abspo.judges.RemoteJudge",
        "init_args": {"base_url": server.url, "model": "guard", "format": "llama_guard", "refusal_fallback": "rules"},
    }
    judge = parser.instantiate_classes(parser.parse_object({"judge": config})).judge
    assert isinstance(judge, RemoteJudge) and judge.endpoint == "chat"
    judge.close()
