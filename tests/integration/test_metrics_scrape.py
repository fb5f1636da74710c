"""/metrics is rendered off the router's event loop: a stream's inter-token latency is the same whether or not
/metrics is scraped every 100 ms while it runs (issue 17). Measured at the client, the two conditions interleaved,
compared by ratio with a generous noise bound, never against an absolute time."""

from __future__ import annotations

import threading
import time

import httpx
import numpy as np

MODEL = "smollm2-135m:onnx-int4"
STREAM = {"model": MODEL, "prompt": "1, 2, 3, 4, 5, 6,", "temperature": 0, "max_tokens": 200, "ignore_eos": True,
          "stream": True}
ROUNDS = 3
SCRAPE_INTERVAL_S = 0.1
NOISE_BOUND = 1.5  # p99 with scraping / p99 without; a render on the loop (tens of ms per scrape) goes well past it


def stream_gaps(url: str) -> list[float]:
    """Seconds between the stream's consecutive data events, after the first."""
    arrivals = []
    with httpx.Client(base_url=url, timeout=120) as http, http.stream("POST", "/v1/completions", json=STREAM) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                arrivals.append(time.monotonic())
    assert len(arrivals) > 20
    return list(np.diff(arrivals))


class Scraper:
    """GETs /metrics every SCRAPE_INTERVAL_S in a thread until stopped; counts the scrapes that answered 200."""

    def __init__(self, url: str) -> None:
        self.url, self.scrapes, self.stop = url, 0, threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as http:
            while not self.stop.wait(SCRAPE_INTERVAL_S):
                response = http.get("/metrics")
                assert "quantserve_requests_total" in response.text
                self.scrapes += response.status_code == 200

    def __enter__(self) -> Scraper:
        self.thread.start()
        return self

    def __exit__(self, *_) -> None:
        self.stop.set()
        self.thread.join(timeout=60)


def test_scraping_metrics_every_100_ms_leaves_a_streams_inter_token_latency_unchanged(serving_app):
    stream_gaps(serving_app)  # warm-up: the replica's first request, the router's first handle calls
    quiet, scraped, scrapes = [], [], 0
    for _ in range(ROUNDS):
        quiet += stream_gaps(serving_app)
        with Scraper(serving_app) as scraper:
            scraped += stream_gaps(serving_app)
        scrapes += scraper.scrapes
    p99_quiet, p99_scraped = np.percentile(quiet, 99), np.percentile(scraped, 99)
    print(f"p99 inter-token latency: {p99_quiet * 1e3:.1f} ms quiet, {p99_scraped * 1e3:.1f} ms with {scrapes} scrapes")
    # A scrape starts 100 ms after the previous one answered: at least five during each stream (here 27 in three
    # 120-token streams at a 22 ms inter-token latency, each render taking ~150 ms in its child process).
    assert scrapes >= 5 * ROUNDS
    assert p99_scraped <= NOISE_BOUND * p99_quiet
