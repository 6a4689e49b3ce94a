"""A teacher you can only query: an OpenAI-compatible ``/v1/chat/completions`` endpoint.

vLLM, llama.cpp's server, TGI, Ollama and hosted APIs all speak this protocol. The client asks
for one answer per prompt, with the log-probabilities of the answer's tokens and their top
alternatives when ``top_logprobs`` is set (servers that do not support it answer without them).

What goes wrong is sorted in two: a problem with the endpoint itself (unreachable, the key
refused, a model it does not serve, rate limits that never clear) ends the run with a one-line
:class:`EndpointError`; a problem with one answer (malformed or cut-off JSON, an empty answer)
raises :class:`BadAnswer`, which the caller counts, reports and does not cache. Rate limits and
server errors are retried with exponential backoff (or the server's ``Retry-After``).

The API key is read from an environment variable named by the user and sent as a bearer token;
it is never stored, logged or put in an error message.
"""

from __future__ import annotations

import json
import os
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
    parsed = urllib.parse.urlsplit(url.strip())
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise CompressError(f"--teacher-url must be an http(s) URL such as http://127.0.0.1:8000/v1; got {url!r}")
    if parsed.username or parsed.password:
        raise CompressError("--teacher-url must not hold credentials; put the API key in an environment variable "
                            "and name it with --api-key-env")
    path = parsed.path.rstrip("/")
    for suffix in ("/chat/completions", "/completions"):
        if path.endswith(suffix):
            path = path[: -len(suffix)]
    return urllib.parse.urlunsplit((parsed.scheme, parsed.netloc, path, "", ""))


class ChatEndpoint:
    """A client for one model at one OpenAI-compatible endpoint, safe to share between threads."""

    def __init__(self, url: str, model: str, *, api_key_env: str | None = None, timeout_s: float = 120.0,
                 retries: int = 6, backoff_s: float = 1.0, rate_limit: float = 0.0) -> None:
        if not model:
            raise CompressError("--teacher-model is required with --teacher-url (the model name the server serves)")
        self.base_url = clean_base_url(url)
        self.model = model
        self.api_key_env = api_key_env
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
        if self.api_key_env:
            key = os.environ.get(self.api_key_env)
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
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                    return response.read()
            except urllib.error.HTTPError as exc:
                if exc.code in (401, 403):
                    # No server message here: some echo part of the key they refused.
                    key = f"${self.api_key_env}" if self.api_key_env else "no key"
                    raise EndpointError(f"{where}: {exc.code} {exc.reason}: the endpoint refused the API key "
                                        f"({key})") from None
                detail = _error_detail(exc)
                if exc.code == 404 and body is not None and "model" in detail.lower():
                    raise EndpointError(f"{where}: the server does not serve model {self.model!r}{detail}") from None
                if exc.code not in RETRIED_STATUS:
                    raise EndpointError(f"{where}: {exc.code} {exc.reason}{detail}", exc.code) from None
                if attempt == retries:
                    what = "rate limited" if exc.code == 429 else f"{exc.code} {exc.reason}"
                    raise EndpointError(f"{where}: still {what} after {retries} retries; lower --concurrency "
                                        "or set --rate-limit (answers so far are cached)") from None
                wait = _retry_after(exc) if exc.code == 429 else None
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as exc:
                reason = getattr(exc, "reason", exc)
                if attempt == retries or not retry_unreachable:
                    raise EndpointError(f"cannot reach {where}: {reason}") from None
                wait = None
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
        except (ValueError, KeyError, TypeError):
            return None

    def check(self) -> None:
        """Stop early (EndpointError) when the endpoint is unreachable, refuses the key or lacks the model."""
        models = self.served_models()
        if models is not None and self.model not in models:
            shown = ", ".join(models[:5]) + (" ..." if len(models) > 5 else "")
            raise EndpointError(f"{self.base_url}: the server does not serve model {self.model!r} "
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
    except (ValueError, KeyError, IndexError, TypeError):
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
        payload = json.loads(exc.read() or b"{}")
        message = payload.get("error", {}).get("message") if isinstance(payload.get("error"), dict) else None
        message = message or payload.get("message") or payload.get("detail")
    except (ValueError, AttributeError, OSError):
        message = None
    return f" ({' '.join(str(message).split())[:160]})" if message else ""


def _retry_after(exc: urllib.error.HTTPError) -> float | None:
    value = exc.headers.get("Retry-After") if exc.headers else None
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None
