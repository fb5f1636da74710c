"""Serve one pod's quantserve metrics on /metrics: the sum over the processes that wrote to PROMETHEUS_MULTIPROC_DIR.

Every quantserve process of a Ray pod (the router, each replica, vLLM) writes its metrics to that folder
(prometheus_client's multiprocess mode; the folder is an emptyDir of the pod). This exporter runs beside Ray in every
pod, so the router's request metrics are scraped once, from the pod the router runs on, and each replica's from its
own pod, however many pods there are. It marks dead the processes that left live gauges behind (a crashed replica),
which is why the pod shares its process namespace.

    python metrics_exporter.py --port 9400 [--host 0.0.0.0]
"""

from __future__ import annotations

import argparse
import os
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer

from serving.metrics import CONTENT_TYPE, MULTIPROC_ENV, render_metrics


class MetricsHandler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        if self.path.split("?", 1)[0] != "/metrics":
            self.send_error(404, "only /metrics is served here")
            return
        body = render_metrics()
        self.send_response(200)
        self.send_header("Content-Type", CONTENT_TYPE)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_) -> None:
        """Quiet: a scrape every few seconds would fill the log."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=9400)
    parser.add_argument("--host", default="0.0.0.0")
    args = parser.parse_args(argv)
    folder = os.environ.get(MULTIPROC_ENV)
    if not folder or not os.path.isdir(folder):
        print(f"metrics_exporter: {MULTIPROC_ENV} must name an existing folder (got {folder!r})", file=sys.stderr)
        return 2
    server = HTTPServer((args.host, args.port), MetricsHandler)
    print(f"metrics_exporter: serving {folder} on {args.host}:{args.port}/metrics", flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
