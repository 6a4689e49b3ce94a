"""A real OpenAI-compatible chat/completions server on 127.0.0.1, backed by a local causal LM.

It serves ``GET /v1/models`` and ``POST /v1/chat/completions`` (greedy or seeded sampling, with
``logprobs`` / ``top_logprobs``), as vLLM or llama.cpp's server would, from a Hugging Face folder.
Tests start it in a thread and can make it misbehave (:class:`Faults`); run it on its own to try
``compress distill --teacher-url`` on one machine::

    python -m tests.chat_server smollm2 --port 8080 --name SmolLM2-135M-Instruct
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any


@dataclass
class Faults:
    """Ways the server can misbehave, set by a test."""

    rate_limit_first: int = 0  # answer the first N chat requests with 429
    always_rate_limited: bool = False
    malformed_when: str | None = None  # prompt containing this: a body that is not JSON
    truncated_when: str | None = None  # prompt containing this: JSON cut in the middle
    empty_when: str | None = None  # prompt containing this: an empty answer
    no_logprobs: bool = False
    delay_s: float = 0.0  # per request, before answering
    seen: int = 0  # chat requests since these faults were set


class ChatServer:
    """Serve ``model_dir`` as ``name`` on 127.0.0.1 (a free port unless given)."""

    def __init__(self, model_dir: Path, *, name: str = "tiny-teacher", api_key: str | None = None,
                 port: int = 0) -> None:
        from compress.lm.endpoint_tokens import token_bytes
        from compress.lm.teacher import load_causal_lm

        self.name = name
        self.api_key = api_key
        self.faults = Faults()
        self.model, self.tokenizer = load_causal_lm(Path(model_dir))
        self.model.eval()
        self.send_bytes = True
        self.token_bytes = token_bytes(self.tokenizer)
        self.requests: Counter[str] = Counter()  # chat requests by the prompt's last user turn
        self.chat_requests = 0
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", port), self._handler())
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/v1"

    def start(self) -> ChatServer:
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        """Serve in this thread until interrupted."""
        try:
            self._server.serve_forever()
        except KeyboardInterrupt:
            self.stop()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> ChatServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- the model ---------------------------------------------------------------------------------
    def complete(self, messages: list[dict[str, str]], max_tokens: int, temperature: float, top_logprobs: int | None,
                 seed: int) -> dict[str, Any]:
        """One chat completion as the OpenAI protocol shapes it."""
        import torch

        text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        ids = self.tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
        eos = self.tokenizer.eos_token_id
        generator = torch.Generator().manual_seed(seed)
        tokens: list[dict[str, Any]] = []
        generated: list[int] = []
        finish = "length"
        with self._lock, torch.no_grad():  # one generation at a time: the model is shared
            out = self.model(input_ids=ids, use_cache=True)
            for _ in range(max_tokens):
                logprobs = torch.log_softmax(out.logits[0, -1].float(), dim=-1)
                if temperature > 0:
                    token = int(torch.multinomial((logprobs / temperature).softmax(-1), 1, generator=generator))
                else:
                    token = int(logprobs.argmax())
                if token == eos:
                    finish = "stop"
                    break
                entry: dict[str, Any] = {"token": self.tokenizer.decode([token]), "logprob": float(logprobs[token])}
                if self.send_bytes:  # as OpenAI's API and vLLM do: exact even for part of a character
                    entry["bytes"] = list(self.token_bytes[token] or b"")
                if top_logprobs:
                    values, indices = logprobs.topk(top_logprobs)
                    entry["top_logprobs"] = [
                        {"token": self.tokenizer.decode([int(i)]), "logprob": float(v),
                         **({"bytes": list(self.token_bytes[int(i)] or b"")} if self.send_bytes else {})}
                        for v, i in zip(values, indices)]
                tokens.append(entry)
                generated.append(token)
                out = self.model(input_ids=torch.tensor([[token]]), past_key_values=out.past_key_values,
                                 use_cache=True)
        content = self.tokenizer.decode(generated, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": content},
                                  "finish_reason": finish}
        if top_logprobs is not None:
            choice["logprobs"] = {"content": tokens}
        return {"id": "chatcmpl-local", "object": "chat.completion", "created": int(time.time()), "model": self.name,
                "choices": [choice], "usage": {"prompt_tokens": int(ids.shape[1]), "completion_tokens": len(tokens)}}

    # -- HTTP ------------------------------------------------------------------------------------
    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # quiet in tests
                pass

            def _send(self, status: int, payload: Any = None, *, raw: bytes | None = None,
                      headers: dict[str, str] | None = None) -> None:
                body = raw if raw is not None else json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(body)

            def _authorized(self) -> bool:
                if server.api_key and self.headers.get("Authorization") != f"Bearer {server.api_key}":
                    self._send(401, {"error": {"message": "Incorrect API key provided", "type": "invalid_api_key"}})
                    return False
                return True

            def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
                if not self._authorized():
                    return
                if self.path.rstrip("/") != "/v1/models":
                    self._send(404, {"error": {"message": f"no route {self.path}"}})
                    return
                self._send(200, {"object": "list", "data": [{"id": server.name, "object": "model"}]})

            def do_POST(self) -> None:  # noqa: N802
                if not self._authorized():
                    return
                if self.path.rstrip("/") != "/v1/chat/completions":
                    self._send(404, {"error": {"message": f"no route {self.path}"}})
                    return
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                if body.get("model") != server.name:
                    self._send(404, {"error": {"message": f"The model `{body.get('model')}` does not exist"}})
                    return
                messages = body["messages"]
                prompt = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
                faults = server.faults
                with server._lock:
                    server.chat_requests += 1
                    server.requests[prompt] += 1
                    faults.seen += 1
                    number = faults.seen
                if faults.delay_s:
                    time.sleep(faults.delay_s)
                if faults.always_rate_limited or number <= faults.rate_limit_first:
                    self._send(429, {"error": {"message": "Rate limit reached"}}, headers={"Retry-After": "0"})
                    return
                if faults.malformed_when and faults.malformed_when in prompt:
                    self._send(200, raw=b"<html>upstream error</html>")
                    return
                top = body.get("top_logprobs") if body.get("logprobs") and not faults.no_logprobs else None
                answer = server.complete(messages, int(body.get("max_tokens", 16)), float(body.get("temperature", 1.0)),
                                         int(top) if top is not None else None, int(body.get("seed") or 0))
                if faults.empty_when and faults.empty_when in prompt:
                    answer["choices"][0]["message"]["content"] = ""
                raw = json.dumps(answer).encode()
                if faults.truncated_when and faults.truncated_when in prompt:
                    raw = raw[: len(raw) // 2]
                self._send(200, raw=raw)

        return Handler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="a causal-LM folder or a registered name (smollm2)")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--name", default=None, help="the model name to serve (default: the folder's name)")
    parser.add_argument("--api-key", default=None, help="require this bearer token")
    args = parser.parse_args()
    from compress.lm.teacher import resolve_lm_teacher

    folder = resolve_lm_teacher(args.model)
    server = ChatServer(folder, name=args.name or Path(args.model).name, api_key=args.api_key, port=args.port)
    print(f"serving {server.name} from {folder} at {server.url}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
