"""The endpoint client against servers that misbehave on purpose: real sockets on 127.0.0.1.

The API key never reaches another origin, a key that would split headers is refused before any
request, a request has a total deadline, and nothing a server sends becomes a long error line.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from compress.lm.endpoint import ChatEndpoint, EndpointError
from export.base.errors import CompressError

KEY = "sk-test-0123456789"


class _Recording(ThreadingHTTPServer):
    """An HTTP server that records each request's path and headers and answers with ``reply``."""

    def __init__(self, reply: Callable[[BaseHTTPRequestHandler], None]) -> None:
        self.seen: list[tuple[str, dict[str, str]]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
                server.seen.append((self.path, dict(self.headers)))
                reply(self)

            def log_message(self, *_: object) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


@pytest.fixture()
def recording() -> Iterator[Callable[[Callable[[BaseHTTPRequestHandler], None]], _Recording]]:
    servers: list[_Recording] = []

    def start(reply: Callable[[BaseHTTPRequestHandler], None]) -> _Recording:
        servers.append(_Recording(reply))
        return servers[-1]

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def _json_reply(payload: object) -> Callable[[BaseHTTPRequestHandler], None]:
    body = json.dumps(payload).encode()

    def reply(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    return reply


def _redirect_to(url: str) -> Callable[[BaseHTTPRequestHandler], None]:
    def reply(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(307)
        handler.send_header("Location", url)
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    return reply


def test_the_api_key_never_follows_a_redirect_to_another_origin(recording, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_KEY", KEY)
    elsewhere = recording(_json_reply({"data": [{"id": "m"}]}))
    home = recording(_redirect_to(f"{elsewhere.url}/v1/models"))
    endpoint = ChatEndpoint(f"{home.url}/v1", "m", api_key_env="TEST_KEY")
    assert endpoint.served_models() == ["m"]
    assert home.seen[0][1].get("Authorization") == f"Bearer {KEY}"  # its own origin gets the key
    assert elsewhere.seen and all("Authorization" not in headers for _, headers in elsewhere.seen)
    assert all(KEY not in json.dumps(headers) for _, headers in elsewhere.seen)


def test_a_redirect_within_the_origin_keeps_the_key(recording, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_KEY", KEY)
    answers = _json_reply({"data": [{"id": "m"}]})
    holder: dict[str, _Recording] = {}

    def reply(handler: BaseHTTPRequestHandler) -> None:
        (_redirect_to(f"{holder['home'].url}/moved/models") if handler.path == "/v1/models" else answers)(handler)

    holder["home"] = home = recording(reply)
    assert ChatEndpoint(f"{home.url}/v1", "m", api_key_env="TEST_KEY").served_models() == ["m"]
    assert [headers.get("Authorization") for _, headers in home.seen] == [f"Bearer {KEY}"] * 2


@pytest.mark.parametrize("key", [f"{KEY}\r\nX-Injected: 1", f"{KEY}\n", "k\x7fey", "kéy"])
def test_a_key_that_cannot_be_a_header_is_refused_before_any_request(key: str, recording,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_KEY", key)
    server = recording(_json_reply({"data": [{"id": "m"}]}))
    with pytest.raises(CompressError, match=r"\$TEST_KEY holds control or non-ASCII characters") as caught:
        ChatEndpoint(f"{server.url}/v1", "m", api_key_env="TEST_KEY")
    assert KEY not in str(caught.value) and not server.seen


class _RawServer:
    """A TCP server on 127.0.0.1 whose every connection is handed to ``serve(connection)``."""

    def __init__(self, serve: Callable[[socket.socket], None]) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}/v1"
        self._serve = serve
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(connection,), daemon=True).start()

    def _handle(self, connection: socket.socket) -> None:
        with connection:
            connection.recv(65536)
            try:
                self._serve(connection)
            except OSError:
                pass

    def close(self) -> None:
        self._listener.close()


@pytest.fixture()
def raw_server() -> Iterator[Callable[[Callable[[socket.socket], None]], _RawServer]]:
    servers: list[_RawServer] = []

    def start(serve: Callable[[socket.socket], None]) -> _RawServer:
        servers.append(_RawServer(serve))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def _drip(connection: socket.socket) -> None:
    for byte in b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n" + b"x" * 100:
        connection.sendall(bytes([byte]))
        time.sleep(0.3)


def test_a_server_that_drips_a_byte_at_a_time_is_cut_off_at_the_deadline(raw_server) -> None:
    server = raw_server(_drip)
    endpoint = ChatEndpoint(server.url, "m", api_key_env=None, timeout_s=1.5)
    started = time.monotonic()
    with pytest.raises(EndpointError, match="no complete answer within 2 s"):
        endpoint.served_models()
    assert time.monotonic() - started < 5  # each byte came well within a per-read timeout


_HEADERS = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"


@pytest.mark.parametrize("answer, fragment", [
    (b"SSH-2.0-OpenSSH_9.6\r\n", "not valid HTTP"),
    ((_HEADERS + "Content-Length: 1000\r\n\r\n{\"data\": [").encode(), "not valid HTTP"),
    ((_HEADERS + "".join(f"X-Pad-{i}: {i}\r\n" for i in range(200)) + "Content-Length: 2\r\n\r\n{}").encode(),
     "not valid HTTP"),
], ids=["not-http", "short-body", "200-headers"])
def test_a_server_that_does_not_speak_http_is_one_short_line(answer: bytes, fragment: str, raw_server) -> None:
    server = raw_server(lambda connection: connection.sendall(answer))
    with pytest.raises(EndpointError, match=fragment) as caught:
        ChatEndpoint(server.url, "m", api_key_env=None).check()
    assert "\n" not in str(caught.value) and len(str(caught.value)) < 200


def test_a_huge_model_id_is_not_quoted_whole(recording) -> None:
    server = recording(_json_reply({"data": [{"id": "x" * 5_000_000}]}))
    with pytest.raises(EndpointError, match="does not serve model 'wanted'") as caught:
        ChatEndpoint(f"{server.url}/v1", "wanted", api_key_env=None).check()
    assert len(str(caught.value)) < 300


def test_a_response_over_the_cap_is_refused(recording, monkeypatch: pytest.MonkeyPatch) -> None:
    import compress.lm.endpoint as endpoint_module

    monkeypatch.setattr(endpoint_module, "MAX_RESPONSE_BYTES", 1 << 16)
    server = recording(_json_reply({"data": [{"id": "y" * 100_000}]}))
    with pytest.raises(EndpointError, match="the response is over"):
        ChatEndpoint(f"{server.url}/v1", "m", api_key_env=None).check()


@pytest.mark.parametrize("url, fragment", [
    ("http://[::1/v1", "not a valid URL"),
    ("http://127.0.0.1:99999/v1", "not a valid URL"),
    ("http://127.0.0.1:8000/v1\r\nHost: evil", "control characters"),
])
def test_urls_that_cannot_be_requested_are_refused(url: str, fragment: str) -> None:
    with pytest.raises(CompressError, match=fragment):
        ChatEndpoint(url, "m", api_key_env=None)
