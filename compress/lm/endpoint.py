"""A teacher you can only query: an OpenAI-compatible ``/v1/chat/completions`` endpoint.

vLLM, llama.cpp's server, TGI, Ollama and hosted APIs all speak this protocol. The client asks
for one answer per prompt, with the log-probabilities of the answer's tokens and their top
alternatives when ``top_logprobs`` is set (servers that do not support it answer without them).

What goes wrong is sorted in two: a problem with the endpoint itself (unreachable, the key
refused, a model it does not serve, rate limits that never clear) ends the run with a one-line
:class:`EndpointError`; a problem with one answer (malformed or cut-off JSON, an empty answer)
raises :class:`BadAnswer`, which the caller counts, reports and does not cache. Rate limits and
server errors are retried with exponential backoff (or the server's ``Retry-After``).

The API key is read from an environment variable named by the user and sent as a bearer token
to the endpoint's own origin only: a redirect to another scheme, host or port is followed without
it. It is never stored, logged or put in an error message; a key holding control characters
(which would split the request's headers) is refused before any request. Each request has a total
deadline (not only a per-read timeout: a server that drips a byte every few seconds is cut off),
responses are capped in size, and what an error quotes from the server is cut short.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

from export.base.errors import CompressError

RETRIED_STATUS = (429, 500, 502, 503, 504)
MAX_RETRY_WAIT_S = 30.0
MAX_RESPONSE_BYTES = 16 << 20  # an answer of 64 tokens with 20 alternatives each is tens of kB
MAX_QUOTED_CHARS = 80  # of a server-chosen string (a model id, an error message) in our one-line errors


class EndpointError(CompressError):
    """The endpoint cannot be used at all; the run stops (answers already received stay cached)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status  # the HTTP status that ended the request, if one did


class BadAnswer(Exception):
    """One response that cannot be used; the prompt is skipped and counted, nothing is cached."""


@dataclass(frozen=True)
class TokenLogprob:
    """One answer token as the endpoint wrote it, its log-probability, the top alternatives and its bytes.

    ``raw`` (and the third item of each alternative) is the token's UTF-8 bytes when the endpoint
    sends them: a token that is part of a character reads as "\ufffd" but its bytes are exact.
    """

    token: str
    logprob: float
    top: tuple[tuple[str, float, tuple[int, ...] | None], ...]
    raw: tuple[int, ...] | None = None


@dataclass(frozen=True)
class EndpointAnswer:
    """The endpoint's answer to one prompt."""

    text: str
    finish_reason: str
    tokens: tuple[TokenLogprob, ...] | None  # None: the endpoint sent no log-probabilities


@dataclass(frozen=True)
class AnswerSettings:
    """What the endpoint is asked for; every field changes an answer, so all of them key the cache."""

    max_tokens: int = 64
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    top_logprobs: int = 20  # alternatives per token (OpenAI allows 0-20); 0: ask for none
    seed: int = 0


def clean_base_url(url: str) -> str:
    """The endpoint's base URL (``.../v1``), refusing credentials in it and anything but http(s)."""
    if _has_control_characters(url):
        raise CompressError("--teacher-url holds control characters (a line break?); give the URL alone")
    try:
        parsed = urllib.parse.urlsplit(url.strip())
        hostname, port = parsed.hostname, parsed.port  # port: ValueError when out of range or not a number
    except ValueError as exc:
        raise CompressError(f"--teacher-url {_quote(url)}: not a valid URL ({exc})") from None
    if parsed.scheme not in ("http", "https") or not hostname:
        raise CompressError(f"--teacher-url must be an http(s) URL such as http://127.0.0.1:8000/v1; got {_quote(url)}")
    if parsed.username or parsed.password:
        raise CompressError("--teacher-url must not hold credentials; put the API key in an environment variable "
                            "and name it with --api-key-env")
    del port
    path = parsed.path.rstrip("/")
    for suffix in ("/chat/completions", "/completions"):
        if path.endswith(suffix):
            path = path[: -len(suffix)]
    return urllib.parse.urlunsplit((parsed.scheme, parsed.netloc, path, "", ""))


def api_key(api_key_env: str | None) -> str | None:
    """The key in the variable ``api_key_env`` names (None when unset), refused when it cannot be a header."""
    key = os.environ.get(api_key_env) if api_key_env else None
    if key is not None and (_has_control_characters(key) or not key.isascii()):
        raise CompressError(f"${api_key_env} holds control or non-ASCII characters (a trailing newline?); an API "
                            "key is one line of printable characters")
    return key or None


def _has_control_characters(text: str) -> bool:
    return any(ord(ch) < 32 or ord(ch) == 127 for ch in text)


def _quote(text: str) -> str:
    """A server- or user-chosen string, cut to fit in a one-line error."""
    flat = " ".join(str(text).split())
    return repr(flat if len(flat) <= MAX_QUOTED_CHARS else flat[: MAX_QUOTED_CHARS - 3] + "...")


def _origin(url: str) -> tuple[str, str, int | None]:
    parsed = urllib.parse.urlsplit(url)
    default = {"http": 80, "https": 443}.get(parsed.scheme)
    return parsed.scheme, (parsed.hostname or "").lower(), parsed.port or default


class _SameOriginCredentials(urllib.request.HTTPRedirectHandler):
    """Follow redirects, but never carry the Authorization header to another origin."""

    def redirect_request(self, req: urllib.request.Request, fp: Any, code: int, msg: str, headers: Any,
                         newurl: str) -> urllib.request.Request | None:
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None and _origin(newurl) != _origin(req.full_url):
            for store in (new.headers, new.unredirected_hdrs):
                for name in [name for name in store if name.lower() == "authorization"]:
                    del store[name]
        return new


class _Deadline:
    """One request's total deadline: a timer shuts the sockets it opened when it passes."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.expired = False
        self._sockets: list[socket.socket] = []
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True
        self._timer.start()

    def watch(self, sock: socket.socket) -> None:
        self._sockets.append(sock)
        if self.expired:
            self._expire()

    def _expire(self) -> None:
        self.expired = True
        for sock in self._sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)  # a blocked read returns at once
            except OSError:
                pass

    def cancel(self) -> None:
        self._timer.cancel()


def _deadline_connection(base: type[http.client.HTTPConnection], deadline: _Deadline) -> type:
    class Connection(base):  # type: ignore[misc, valid-type]
        def connect(self) -> None:
            super().connect()
            deadline.watch(self.sock)

    return Connection


def _opener(deadline: _Deadline) -> urllib.request.OpenerDirector:
    """An opener whose connections the deadline can cut, and whose redirects keep the key at home."""

    class Http(urllib.request.HTTPHandler):
        def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
            return self.do_open(_deadline_connection(http.client.HTTPConnection, deadline), req)

    class Https(urllib.request.HTTPSHandler):
        def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
            return self.do_open(_deadline_connection(http.client.HTTPSConnection, deadline), req,
                                context=self._context)

    return urllib.request.build_opener(Http, Https, _SameOriginCredentials)


def _read_capped(response: http.client.HTTPResponse, where: str) -> bytes:
    chunks, total = [], 0
    while chunk := response.read(1 << 16):
        total += len(chunk)
        if total > MAX_RESPONSE_BYTES:
            raise EndpointError(f"{where}: the response is over {MAX_RESPONSE_BYTES >> 20} MiB; not an answer")
        chunks.append(chunk)
    if response.length:  # the connection closed before the body its Content-Length announced
        raise http.client.IncompleteRead(b"".join(chunks), response.length)
    return b"".join(chunks)


class ChatEndpoint:
    """A client for one model at one OpenAI-compatible endpoint, safe to share between threads."""

    def __init__(self, url: str, model: str, *, api_key_env: str | None = None, timeout_s: float = 120.0,
                 retries: int = 6, backoff_s: float = 1.0, rate_limit: float = 0.0) -> None:
        if not model:
            raise CompressError("--teacher-model is required with --teacher-url (the model name the server serves)")
        self.base_url = clean_base_url(url)
        self.model = model
        self.api_key_env = api_key_env
        api_key(api_key_env)  # a key that cannot be sent is refused now, before any request
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        self.min_interval_s = 1.0 / rate_limit if rate_limit > 0 else 0.0
        self._next_start = 0.0
        self._lock = threading.Lock()
        self.retried = 0  # requests sent again after a rate limit or a server error

    # -- requests --------------------------------------------------------------------------------
    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        key = api_key(self.api_key_env)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def _wait_for_slot(self) -> None:
        """Space request starts ``min_interval_s`` apart, across threads."""
        if not self.min_interval_s:
            return
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next_start)
            self._next_start = start + self.min_interval_s
        if start > now:
            time.sleep(start - now)

    def _request(self, method: str, path: str, body: dict[str, Any] | None = None, *,
                 retry_unreachable: bool = True) -> bytes:
        """The response body; retried on rate limits, server errors and (unless told) dropped connections."""
        data = json.dumps(body).encode("utf-8") if body is not None else None
        where = f"{self.base_url}{path}"
        retries = self.retries
        for attempt in range(retries + 1):
            self._wait_for_slot()
            request = urllib.request.Request(where, data=data, method=method, headers=self._headers())
            deadline = _Deadline(self.timeout_s)
            try:
                with _opener(deadline).open(request, timeout=self.timeout_s) as response:
                    return _read_capped(response, where)
            except urllib.error.HTTPError as exc:
                if exc.code in (401, 403):
                    # No server message here: some echo part of the key they refused.
                    key = f"${self.api_key_env}" if self.api_key_env else "no key"
                    raise EndpointError(f"{where}: {exc.code} {exc.reason}: the endpoint refused the API key "
                                        f"({key})") from None
                detail = _error_detail(exc)
                if exc.code == 404 and body is not None and "model" in detail.lower():
                    raise EndpointError(f"{where}: the server does not serve model {_quote(self.model)}{detail}") from None
                if exc.code not in RETRIED_STATUS:
                    raise EndpointError(f"{where}: {exc.code} {exc.reason}{detail}", exc.code) from None
                if attempt == retries:
                    what = "rate limited" if exc.code == 429 else f"{exc.code} {exc.reason}"
                    raise EndpointError(f"{where}: still {what} after {retries} retries; lower --concurrency "
                                        "or set --rate-limit (answers so far are cached)") from None
                wait = _retry_after(exc) if exc.code == 429 else None
            except (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError, OSError) as exc:
                reason = (f"no complete answer within {self.timeout_s:.0f} s" if deadline.expired
                          else _reason(exc))
                if attempt == retries or not retry_unreachable:
                    raise EndpointError(f"cannot reach {where}: {reason}") from None
                wait = None
            finally:
                deadline.cancel()
            self.retried += 1
            time.sleep(min(MAX_RETRY_WAIT_S, wait if wait is not None else self.backoff_s * 2 ** attempt))
        raise AssertionError("unreachable")  # the loop returns or raises

    def served_models(self) -> list[str] | None:
        """The model ids ``GET /models`` lists, or None when the server does not list them.

        Not retried when the server cannot be reached: a run should not start against an endpoint that is down.
        """
        try:
            body = self._request("GET", "/models", retry_unreachable=False)
        except EndpointError as exc:
            if exc.status in (404, 405):
                return None
            raise
        try:
            payload = json.loads(body)
            return [str(item["id"]) for item in payload["data"]]
        except (ValueError, KeyError, TypeError, RecursionError):
            return None

    def check(self) -> None:
        """Stop early (EndpointError) when the endpoint is unreachable, refuses the key or lacks the model."""
        models = self.served_models()
        if models is not None and self.model not in models:
            shown = ", ".join(_quote(model) for model in models[:5]) + (" ..." if len(models) > 5 else "")
            raise EndpointError(f"{self.base_url}: the server does not serve model {_quote(self.model)} "
                                f"(it serves: {shown or 'nothing'})")

    def answer(self, messages: list[dict[str, str]], settings: AnswerSettings) -> EndpointAnswer:
        """The endpoint's answer to one chat prompt (BadAnswer when the response is unusable)."""
        body: dict[str, Any] = {"model": self.model, "messages": messages, "max_tokens": settings.max_tokens,
                                "temperature": settings.temperature, "top_p": settings.top_p, "seed": settings.seed,
                                "n": 1, "stream": False}
        if settings.top_logprobs:
            body["logprobs"] = True
            body["top_logprobs"] = settings.top_logprobs
        return parse_answer(self._request("POST", "/chat/completions", body))


def parse_answer(raw: bytes) -> EndpointAnswer:
    """An :class:`EndpointAnswer` from a chat/completions response body (BadAnswer when malformed or empty)."""
    try:
        payload = json.loads(raw)
        choice = payload["choices"][0]
        text = choice["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError, RecursionError):
        raise BadAnswer("malformed response") from None
    if not isinstance(text, str) or not text.strip():
        raise BadAnswer("empty answer")
    finish = str(choice.get("finish_reason") or "")
    content = (choice.get("logprobs") or {}).get("content") if isinstance(choice.get("logprobs"), dict) else None
    tokens = None
    if content:
        try:
            tokens = tuple(TokenLogprob(str(item["token"]), float(item["logprob"]),
                                        tuple((str(top["token"]), float(top["logprob"]), _bytes(top))
                                              for top in item.get("top_logprobs") or ()), _bytes(item))
                           for item in content)
        except (KeyError, TypeError, ValueError):
            raise BadAnswer("malformed logprobs") from None
    return EndpointAnswer(text=text, finish_reason=finish, tokens=tokens)


def _bytes(item: dict[str, Any]) -> tuple[int, ...] | None:
    raw = item.get("bytes")
    if raw is None:
        return None
    if not isinstance(raw, list) or not all(isinstance(b, int) and 0 <= b < 256 for b in raw):
        raise BadAnswer("malformed logprobs")
    return tuple(raw)


def _error_detail(exc: urllib.error.HTTPError) -> str:
    """The server's own error message, shortened to one line (never the request, which holds no key anyway)."""
    try:
        payload = json.loads(exc.read(MAX_RESPONSE_BYTES) or b"{}")
        message = payload.get("error", {}).get("message") if isinstance(payload.get("error"), dict) else None
        message = message or payload.get("message") or payload.get("detail")
    except (ValueError, AttributeError, OSError, RecursionError, http.client.HTTPException):
        message = None
    return f" ({_quote(str(message))[1:-1]})" if message else ""


def _reason(exc: BaseException) -> str:
    """Why a request failed, in a few words (a server that does not speak HTTP, a dropped connection ...)."""
    if isinstance(exc, http.client.HTTPException):
        return f"the server's answer is not valid HTTP ({type(exc).__name__})"
    reason = getattr(exc, "reason", exc)
    return " ".join(str(reason).split())[:MAX_QUOTED_CHARS] or type(exc).__name__


def _retry_after(exc: urllib.error.HTTPError) -> float | None:
    value = exc.headers.get("Retry-After") if exc.headers else None
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None
