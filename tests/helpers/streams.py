"""Reading a completion stream in a test thread, as a client sees it."""

from __future__ import annotations

import json
import threading

import httpx


def read_stream(url: str, body: dict, events: list, started: threading.Event) -> None:
    """A completion stream's status, then its data events (JSON objects, or the [DONE] string), until it ends;
    `started` is set at the first data event."""
    with httpx.Client(base_url=url, timeout=120) as http, http.stream("POST", "/v1/completions", json=body) as r:
        events.append(r.status_code)
        for line in r.iter_lines():
            if line.startswith("data: "):
                data = line.removeprefix("data: ")
                events.append(data if data == "[DONE]" else json.loads(data))
                started.set()
