"""A guard model behind an OpenAI-compatible HTTP server (vLLM, SGLang, TGI, llama.cpp, ...).

Why a remote judge: a 7-8B guard model next to the policy costs GPU memory and step time; served by
vLLM on another GPU it labels a rollout batch in parallel with continuous batching. The price is a
network dependency inside the training loop, so this judge is built to fail *soft and fast*:

* every failure (refused connection, timeout, HTTP error, malformed JSON) becomes a ``None`` verdict,
  which the trainer drops and counts -- never an exception into training, never a hang;
* each HTTP attempt has a socket timeout (``timeout_s``); failed attempts are retried ``retries``
  times with exponential backoff (``backoff_s * 2**k``, jittered), except for client errors
  (4xx other than 408/429) that a retry cannot fix;
* a circuit breaker counts consecutive failed attempts across requests and calls; after
  ``breaker_threshold`` of them it skips all calls for ``cooldown_s`` seconds and returns ``None``
  verdicts at once, so a dead server costs about one timeout per cooldown, not one per exchange;
* one ``score`` call never takes longer than ``max_wall_s`` (default
  ``(retries + 1) * timeout_s + backoff_s * (2**retries - 1) + 1`` seconds, plus the time of a
  ``refusal_fallback`` judge, if one is configured); whatever has not answered by then is ``None``;
* each call logs at most one warning, summarising what failed and why.

Requests run on a thread pool of ``max_concurrency`` workers, each keeping one persistent
``http.client`` connection (keep-alive), so there is connection pooling without a new dependency.
The prompt rendering and answer parsing are the ones the in-process judges use
(:mod:`abspo.judges.formats`); see ``docs/judges-guard-models.md`` for serving recipes.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import random
import ssl
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

from abspo.judges.base import Judge, Verdict
from abspo.judges.formats import Query, RefusalFallback, make_format

log = logging.getLogger(__name__)

ENDPOINTS = ("auto", "completions", "chat")
_RETRYABLE_STATUS = {408, 429}


class CircuitBreaker:
    """Opens after ``threshold`` consecutive failures; stays open for ``cooldown_s`` seconds.

    After the cooldown, calls go through again ("half-open"); one more failure re-opens it at once,
    one success closes it. Thread-safe.
    """

    def __init__(self, threshold: int, cooldown_s: float) -> None:
        self.threshold = threshold
        self.cooldown_s = cooldown_s
        self.consecutive_failures = 0
        self.opened = 0
        """How many times the breaker has opened."""
        self._open_until = 0.0
        self._lock = threading.Lock()

    def allow(self) -> bool:
        return time.monotonic() >= self._open_until

    @property
    def is_open(self) -> bool:
        return not self.allow()

    def record(self, ok: bool) -> None:
        with self._lock:
            if ok:
                self.consecutive_failures = 0
                return
            self.consecutive_failures += 1
            if self.consecutive_failures >= self.threshold and self.allow():
                self._open_until = time.monotonic() + self.cooldown_s
                self.opened += 1

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_lock"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()


class _Failure(Exception):
    def __init__(self, message: str, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable


@dataclass(frozen=True)
class _Outcome:
    text: str | None
    status: Literal["ok", "failed", "skipped", "late"]
    error: str | None = None


class RemoteJudge(Judge):
    """Label exchanges with a guard model served behind an OpenAI-compatible API.

    Args:
        base_url: Server root including the API prefix, e.g. ``http://localhost:8000/v1``.
        model: Model name the server serves (vLLM: the ``--served-model-name`` or the model path).
        format: ``"wildguard"`` or ``"llama_guard"``: which guard model is behind the server.
        endpoint: ``"completions"`` sends the rendered prompt to ``/completions``; ``"chat"`` sends the
            conversation to ``/chat/completions`` and the server's chat template renders it.
            ``"auto"``: completions for WildGuard (its tokenizer has no chat template), chat for Llama
            Guard (its chat template is the published prompt format).
        api_key_env: Name of an environment variable holding the API key (sent as a Bearer token).
            The key itself is not an argument, so it never lands in saved configs.
        max_concurrency: Parallel requests (threads, each with one keep-alive connection).
        timeout_s: Socket timeout of one HTTP attempt.
        retries: Extra attempts per request after a failed one.
        backoff_s: Wait before the first retry; doubled for each further retry.
        breaker_threshold: Consecutive failed attempts that open the circuit breaker.
        cooldown_s: How long an open breaker skips calls.
        max_wall_s: Upper bound on one ``score`` call; default from the values above.
        max_new_tokens: Generation budget per answer; default: the format's (32 / 10).
        bos_in_prompt: Keep the BOS token text at the start of completions prompts. Leave False for
            servers that add BOS themselves (vLLM, TGI, llama.cpp), or BOS would appear twice.
        classify_prompt: Llama Guard only: also classify the prompt alone (fills ``prompt_harmful``).
        refusal_fallback: Llama Guard only: source of the ``refusal`` label (see ``LlamaGuardJudge``).
        extra_body: Extra JSON fields for every request (e.g. ``{"top_k": 1}``).

    Counters for logging (cumulative): ``requests`` (HTTP attempts), ``failed`` (queries left without
    an answer, including those skipped by the breaker), ``unparsed`` (answers that broke the format).
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        format: str = "wildguard",
        endpoint: Literal["auto", "completions", "chat"] = "auto",
        api_key_env: str | None = None,
        max_concurrency: int = 8,
        timeout_s: float = 30.0,
        retries: int = 2,
        backoff_s: float = 0.5,
        breaker_threshold: int = 5,
        cooldown_s: float = 30.0,
        max_wall_s: float | None = None,
        max_new_tokens: int | None = None,
        bos_in_prompt: bool = False,
        classify_prompt: bool = True,
        refusal_fallback: RefusalFallback = "rules",
        extra_body: dict[str, Any] | None = None,
    ) -> None:
        errors = []
        url = urlsplit(base_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            errors.append(f"base_url={base_url!r} must be an http(s) URL such as 'http://localhost:8000/v1'")
        if endpoint not in ENDPOINTS:
            errors.append(f"endpoint={endpoint!r} must be one of {list(ENDPOINTS)}")
        for name, value, low in (
            ("max_concurrency", max_concurrency, 1),
            ("retries", retries, 0),
            ("breaker_threshold", breaker_threshold, 1),
        ):
            if value < low:
                errors.append(f"{name}={value} must be >= {low}")
        for name, value in (("timeout_s", timeout_s), ("max_wall_s", max_wall_s), ("max_new_tokens", max_new_tokens)):
            if value is not None and value <= 0:
                errors.append(f"{name}={value} must be > 0")
        for name, value in (("backoff_s", backoff_s), ("cooldown_s", cooldown_s)):
            if value < 0:
                errors.append(f"{name}={value} must be >= 0")
        api_key = None
        if api_key_env is not None:
            api_key = os.environ.get(api_key_env)
            if not api_key:
                errors.append(f"api_key_env={api_key_env!r}: that environment variable is not set or empty")
        try:
            self.format = make_format(format, classify_prompt=classify_prompt, refusal_fallback=refusal_fallback)
        except (ValueError, TypeError) as err:
            errors.append(str(err))
        if errors:
            raise ValueError("RemoteJudge configuration: " + "; ".join(errors))

        self.base_url = base_url.rstrip("/")
        self.model = model
        if endpoint == "auto":
            endpoint = "chat" if self.format.name == "llama_guard" else "completions"
        self.endpoint = endpoint
        self.max_concurrency = max_concurrency
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        self.max_wall_s = max_wall_s or (retries + 1) * timeout_s + backoff_s * (2**retries - 1) + 1.0
        self.max_new_tokens = max_new_tokens or self.format.default_max_new_tokens
        self.bos_in_prompt = bos_in_prompt
        self.extra_body = dict(extra_body or {})
        self.breaker = CircuitBreaker(breaker_threshold, cooldown_s)
        self.requests = 0
        self.failed = 0
        self.unparsed = 0

        self._https = url.scheme == "https"
        self._host = url.hostname or ""
        self._port = url.port or (443 if self._https else 80)
        self.url = self.base_url + ("/chat/completions" if self.endpoint == "chat" else "/completions")
        self._path = urlsplit(self.url).path
        self._headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._init_runtime()

    # ---------------------------------------------------------------------------------------------
    # Runtime state (threads, sockets): not copied when pickled, rebuilt on demand.

    def _init_runtime(self) -> None:
        self._pool: ThreadPoolExecutor | None = None
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: list[http.client.HTTPConnection] = []

    def __getstate__(self) -> dict[str, Any]:
        skip = {"_pool", "_local", "_lock", "_connections"}
        return {k: v for k, v in self.__dict__.items() if k not in skip}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._init_runtime()

    def __repr__(self) -> str:
        return f"RemoteJudge(base_url={self.base_url!r}, model={self.model!r}, format={self.format.name!r})"

    def close(self) -> None:
        """Stop the worker threads and close the connections (the judge reopens them if used again)."""
        with self._lock:
            pool, self._pool = self._pool, None
            connections, self._connections = self._connections, []
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
        for conn in connections:
            conn.close()

    # ---------------------------------------------------------------------------------------------
    # Judging

    def judge_batch(
        self, prompts: list[str], responses: list[str], seed_harmful: list[bool | None]
    ) -> list[Verdict]:
        """Label exchanges via the server; ``seed_harmful`` is not used. Never raises on server failure."""
        queries = self.format.queries(prompts, responses)
        outcomes = self._ask_all(queries)
        verdicts, unparsed = self.format.verdicts(prompts, responses, [o.text for o in outcomes])
        self.unparsed += unparsed
        return verdicts

    def _ask_all(self, queries: list[Query]) -> list[_Outcome]:
        if not queries:
            return []
        deadline = time.monotonic() + self.max_wall_s
        if self.breaker.is_open:
            outcomes = [_Outcome(None, "skipped", "circuit breaker open")] * len(queries)
        else:
            stop = threading.Event()
            pool = self._executor()
            futures = [pool.submit(self._ask, self._body(q), stop, deadline) for q in queries]
            wait(futures, timeout=max(0.0, deadline - time.monotonic()))
            stop.set()  # running requests give up at their next retry; queued ones do not start
            outcomes = [self._collect(f) for f in futures]
        self._report(outcomes)
        return outcomes

    @staticmethod
    def _collect(future: Future) -> _Outcome:
        if not future.done():
            future.cancel()
            return _Outcome(None, "late", "max_wall_s reached before an answer")
        if future.cancelled():
            return _Outcome(None, "late", "max_wall_s reached before the request started")
        error = future.exception()
        if error is not None:  # a bug, not a server problem; still no exception into training
            return _Outcome(None, "failed", f"{type(error).__name__}: {error}")
        return future.result()

    def _report(self, outcomes: list[_Outcome]) -> None:
        bad = [o for o in outcomes if o.status != "ok"]
        self.failed += len(bad)
        if not bad:
            return
        kinds = {s: sum(o.status == s for o in bad) for s in ("failed", "skipped", "late")}
        detail = ", ".join(f"{n} {s}" for s, n in kinds.items() if n)
        last_error = next((o.error for o in reversed(bad) if o.status != "skipped"), bad[-1].error)
        breaker = (
            f"; circuit breaker open, calls skipped for up to {self.breaker.cooldown_s:g} s"
            if self.breaker.is_open
            else ""
        )
        log.warning(
            "RemoteJudge %s: %d of %d queries got no answer (%s; last error: %s)%s; their labels are None "
            "and the trainer drops those exchanges",
            self.url,
            len(bad),
            len(outcomes),
            detail,
            last_error,
            breaker,
        )

    def _body(self, query: Query) -> bytes:
        body: dict[str, Any] = {"model": self.model, "max_tokens": self.max_new_tokens, "temperature": 0.0}
        if self.endpoint == "chat":
            body["messages"] = [{"role": role, "content": content} for role, content in query.messages]
        else:
            body["prompt"] = query.text if self.bos_in_prompt else query.text_without_bos
        body.update(self.extra_body)
        return json.dumps(body).encode()

    def _ask(self, body: bytes, stop: threading.Event, deadline: float) -> _Outcome:
        """One query with retries; runs on a worker thread and never raises."""
        last_error = "max_wall_s reached before the request started"
        for attempt in range(self.retries + 1):
            if stop.is_set():
                return _Outcome(None, "late", last_error)
            if not self.breaker.allow():
                return _Outcome(None, "skipped", f"circuit breaker open (last error: {last_error})")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return _Outcome(None, "late", last_error)
            with self._lock:
                self.requests += 1
            try:
                text = self._post(body, timeout=min(self.timeout_s, remaining))
            except _Failure as failure:
                self.breaker.record(False)
                last_error = str(failure)
                if not failure.retryable:
                    break
                if attempt < self.retries:
                    pause = self.backoff_s * 2**attempt * random.uniform(0.5, 1.0)
                    if stop.wait(pause):
                        return _Outcome(None, "late", last_error)
                continue
            except Exception as error:  # noqa: BLE001 - a worker must not die silently
                self.breaker.record(False)
                return _Outcome(None, "failed", f"{type(error).__name__}: {error}")
            self.breaker.record(True)
            return _Outcome(text, "ok")
        return _Outcome(None, "failed", last_error)

    # ---------------------------------------------------------------------------------------------
    # HTTP

    def _executor(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.max_concurrency, thread_name_prefix="remote-judge")
            return self._pool

    def _connection(self) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            if self._https:
                conn = http.client.HTTPSConnection(
                    self._host, self._port, timeout=self.timeout_s, context=ssl.create_default_context()
                )
            else:
                conn = http.client.HTTPConnection(self._host, self._port, timeout=self.timeout_s)
            self._local.conn = conn
            with self._lock:
                self._connections.append(conn)
        return conn

    def _post(self, body: bytes, timeout: float) -> str:
        conn = self._connection()
        reused = conn.sock is not None
        conn.timeout = timeout
        if conn.sock is not None:
            conn.sock.settimeout(timeout)
        try:
            conn.request("POST", self._path, body=body, headers=self._headers)
            response = conn.getresponse()
            raw = response.read()
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as err:
            conn.close()
            if reused:  # the server closed an idle keep-alive connection: one fresh try, not a failure
                return self._post(body, timeout)
            raise _Failure(f"{type(err).__name__}: {err}") from err
        except (OSError, http.client.HTTPException) as err:
            conn.close()
            message = "timed out" if isinstance(err, TimeoutError) else f"{type(err).__name__}: {err}"
            raise _Failure(f"{message} ({self._host}:{self._port})") from err
        if response.status != 200:
            snippet = raw[:200].decode(errors="replace")
            retryable = response.status >= 500 or response.status in _RETRYABLE_STATUS
            hint = "" if retryable else " (check base_url, model and api_key_env)"
            raise _Failure(f"HTTP {response.status}: {snippet}{hint}", retryable=retryable)
        try:
            choice = json.loads(raw)["choices"][0]
            text = choice["message"]["content"] if self.endpoint == "chat" else choice["text"]
        except (ValueError, KeyError, IndexError, TypeError) as err:
            raise _Failure(f"malformed response ({type(err).__name__}): {raw[:200]!r}") from err
        if not isinstance(text, str):
            raise _Failure(f"malformed response: answer text is {type(text).__name__}, not str")
        return text
