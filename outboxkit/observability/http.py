"""The worker's HTTP endpoint: ``/metrics`` for Prometheus, ``/livez`` and ``/readyz`` for probes.

A small threaded server of our own rather than ``prometheus_client.start_http_server``: it
serves a registry the caller owns, adds the health endpoints beside the metrics, can be
stopped (``close()``), and reports the port it bound (``port=0`` picks a free one).

* ``GET /metrics`` -- the registry in the Prometheus text format;
* ``GET /livez`` / ``GET /readyz`` -- :meth:`outboxkit.Engine.health` as JSON, status 200
  when the verdict passes and 503 when not (``?max_backlog_age=S`` on ``/readyz`` adds the
  backlog check, ``?timeout=S`` bounds the database and broker checks, default 5 s).
  Without an engine they answer 404.
"""

from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from outboxkit.observability.health import DEFAULT_TIMEOUT, LIVENESS, READINESS, Checkable

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

logger = logging.getLogger(__name__)


class MetricsServer:
    """A running endpoint; :meth:`close` stops it. The serving thread is a daemon."""

    def __init__(self, server: ThreadingHTTPServer, thread: threading.Thread) -> None:
        self._server = server
        self._thread = thread

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        host = str(self._server.server_address[0])
        if host in ("0.0.0.0", "::"):
            host = "127.0.0.1"
        return f"http://{host}:{self.port}"

    def close(self) -> None:
        """Stop serving and release the port. Idempotent."""
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join(5.0)
        self._server.server_close()

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def serve_metrics(
    registry: CollectorRegistry,
    port: int,
    *,
    host: str = "0.0.0.0",
    engine: Checkable | None = None,
) -> MetricsServer:
    """Serve ``registry`` (and ``engine``'s health) on ``host:port`` from a daemon thread."""
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            url = urlsplit(self.path)
            if url.path == "/metrics":
                self._send(200, CONTENT_TYPE_LATEST, generate_latest(registry))
            elif url.path in ("/livez", "/readyz") and engine is not None:
                probe = LIVENESS if url.path == "/livez" else READINESS
                query = parse_qs(url.query)
                max_age = _float(query.get("max_backlog_age"))
                timeout = _float(query.get("timeout")) or DEFAULT_TIMEOUT
                report = engine.health(
                    max_backlog_age=max_age if probe == READINESS else None,
                    timeout=timeout,
                    liveness_only=probe == LIVENESS,
                )
                body = json.dumps(report.to_dict(), default=str, sort_keys=True).encode()
                self._send(200 if report.passes(probe) else 503, "application/json", body)
            else:
                self._send(404, "text/plain; charset=utf-8", b"not found\n")

        def _send(self, status: int, content_type: str, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            logger.debug("metrics endpoint: " + format, *args)

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    thread = threading.Thread(
        target=server.serve_forever, name="outboxkit-metrics-http", daemon=True
    )
    thread.start()
    served = MetricsServer(server, thread)
    logger.info("metrics served on %s/metrics", served.url)
    return served


def _float(values: list[str] | None) -> float | None:
    if not values:
        return None
    try:
        return float(values[0])
    except ValueError:
        return None
