"""A deliberately slow OpenAI-style endpoint on 127.0.0.1: it lists one model and streams chat completions one token
at a time with fixed delays, so a test knows what each request costs the server. Each request is served in its own
thread (the server itself never queues): any queueing a test sees is the load generator's."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MODEL = "slow-model"


@dataclass(frozen=True)
class Pace:
    first_token_s: float = 0.05  # from the request to its first token
    token_gap_s: float = 0.02  # between later tokens

    def service_s(self, tokens: int) -> float:
        return self.first_token_s + (tokens - 1) * self.token_gap_s


class _Handler(BaseHTTPRequestHandler):
    pace = Pace()
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # quiet: the test reads results, not access logs
        pass

    def do_GET(self) -> None:
        self._json(200, {"object": "list", "data": [{"id": MODEL, "object": "model"}]})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        tokens = max(1, int(body.get("max_completion_tokens") or body.get("max_tokens") or 16))
        if not body.get("stream"):
            time.sleep(self.pace.service_s(tokens))
            self._json(200, {"choices": [{"index": 0, "message": {"role": "assistant", "content": "x" * tokens},
                                          "finish_reason": "length"}],
                             "usage": {"prompt_tokens": 5, "completion_tokens": tokens, "total_tokens": 5 + tokens}})
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("x-quantserve-variant", "slow")
        self.send_header("Transfer-Encoding", "chunked")  # as uvicorn streams: each event reaches the client at once
        self.end_headers()
        self._stream(tokens)

    def _stream(self, tokens: int) -> None:
        time.sleep(self.pace.first_token_s)
        for index in range(tokens):
            if index:
                time.sleep(self.pace.token_gap_s)
            finish = "length" if index == tokens - 1 else None
            self._event({"choices": [{"index": 0, "delta": {"content": "tok "}, "finish_reason": finish}]})
        self._event({"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": tokens,
                                              "total_tokens": 5 + tokens}})
        self._chunk(b"data: [DONE]\n\n")
        self._chunk(b"")  # the last chunk: the response is complete

    def _event(self, payload: dict) -> None:
        self._chunk(f"data: {json.dumps(payload)}\n\n".encode())

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _json(self, status: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        """A client that hangs up (the load generator exiting) is not the server's error: stay quiet."""


@contextmanager
def slow_server(pace: Pace = Pace()) -> Iterator[str]:
    """Serve on an ephemeral loopback port; yields the base URL; always shuts down."""
    handler = type("PacedHandler", (_Handler,), {"pace": pace})
    server = _QuietServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
