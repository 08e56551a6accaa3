"""The worker's HTTP endpoint: ``/metrics`` for Prometheus, ``/livez`` and ``/readyz`` for probes.

A small server of our own rather than ``prometheus_client.start_http_server``: it serves a
registry the caller owns, adds the health endpoints beside the metrics, can be stopped
(``close()``), and reports the port it bound (``port=0`` picks a free one).

* ``GET /metrics`` -- the registry in the Prometheus text format;
* ``GET /livez`` / ``GET /readyz`` -- :meth:`outboxkit.Engine.health` as JSON, status 200
  when the verdict passes and 503 when not (``?max_backlog_age=S`` on ``/readyz`` adds the
  backlog check, ``?timeout=S`` bounds the database and broker checks, default 5 s, at most
  :data:`MAX_CHECK_TIMEOUT`). A parameter that is not one of these, not a finite number or
  out of range is answered 400 with a one-line reason. Without an engine they answer 404.
  A failed check says what is wrong, never the error's own text (a host, a user, a table):
  that goes to the log, at WARNING, when it changes.

**Exposure.** It binds ``127.0.0.1`` unless given another ``host`` (``0.0.0.0`` for a
probe from outside the pod or host). One thread reads requests, without blocking, from at
most :data:`MAX_CONNECTIONS` connections (the oldest unfinished one is dropped for a new
one) and drops a connection whose request has not arrived within
:data:`REQUEST_TIMEOUT`; only complete requests reach the :data:`WORKERS` threads that
answer them, so a slow or half-sent request holds no thread. Concurrent health requests
with the same parameters share one run of the checks.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import selectors
import socket
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from outboxkit.observability.health import (
    DEFAULT_TIMEOUT,
    LIVENESS,
    READINESS,
    Checkable,
    HealthReport,
)
from outboxkit.observability.logs import printable

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

logger = logging.getLogger(__name__)

#: The address served unless told: this host only.
DEFAULT_HOST = "127.0.0.1"
#: Seconds a client has to send its whole request, and a worker to write an answer.
REQUEST_TIMEOUT = 5.0
#: Threads answering complete requests.
WORKERS = 4
#: Connections whose request is still arriving; the oldest is dropped beyond this.
MAX_CONNECTIONS = 256
#: Complete requests waiting for a worker (a few bytes each); beyond this a request is
#: answered 503 at once.
MAX_QUEUED = 512
#: Largest request head read (a probe's is a few hundred bytes).
MAX_HEAD = 8192
#: Largest ``?timeout=`` of a health probe, in seconds.
MAX_CHECK_TIMEOUT = 60.0
#: The query parameters of ``/livez`` and ``/readyz``.
_HEALTH_PARAMETERS = ("max_backlog_age", "timeout")


class MetricsServer:
    """A running endpoint; :meth:`close` stops it. Its threads are daemons."""

    def __init__(self, host: str, port: int, handler: type[_Handler]) -> None:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        self._listener = socket.socket(family, kind, proto)
        try:
            self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._listener.bind(address)
            self._listener.listen(128)
        except OSError:
            self._listener.close()
            raise
        self._listener.setblocking(False)
        self._handler = handler
        self._workers = ThreadPoolExecutor(WORKERS, thread_name_prefix="outboxkit-metrics-worker")
        self._queued = threading.BoundedSemaphore(MAX_QUEUED)
        self._wake_r, self._wake_w = socket.socketpair()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="outboxkit-metrics-http")
        self._thread.daemon = True
        self._thread.start()

    @property
    def host(self) -> str:
        """The address bound (``0.0.0.0`` or ``::``: every interface)."""
        return str(self._listener.getsockname()[0])

    @property
    def port(self) -> int:
        return int(self._listener.getsockname()[1])

    @property
    def url(self) -> str:
        """Where a client on this host reaches it (the loopback address for a wildcard)."""
        host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(self.host, self.host)
        return f"http://[{host}]:{self.port}" if ":" in host else f"http://{host}:{self.port}"

    def close(self) -> None:
        """Stop serving and release the port. Idempotent."""
        if not self._closed.is_set():
            self._closed.set()
            self._wake_w.send(b"x")
            self._thread.join(5.0)
            self._workers.shutdown(wait=False, cancel_futures=True)
            for sock in (self._listener, self._wake_r, self._wake_w):
                sock.close()

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ------------------------------------------------------------------ the reading thread

    def _serve(self) -> None:
        """Accept connections and read their request heads without blocking; hand each
        complete head to a worker; drop connections too slow or too many."""
        selector = selectors.DefaultSelector()
        selector.register(self._listener, selectors.EVENT_READ, "accept")
        selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        arriving: dict[socket.socket, tuple[float, bytearray]] = {}  # oldest first
        try:
            while not self._closed.is_set():
                now = time.monotonic()
                first = next(iter(arriving.values()), None)
                wait = 1.0 if first is None else max(0.0, first[0] + REQUEST_TIMEOUT - now)
                for key, _ in selector.select(wait):
                    try:
                        if key.data == "accept":
                            self._accept(selector, arriving)
                        elif key.fileobj in arriving:  # not dropped earlier in this round
                            self._read(selector, arriving, key.fileobj)
                    except Exception:  # one connection's trouble must not end the endpoint
                        logger.exception("metrics endpoint: reading a request failed")
                        if key.fileobj in arriving:
                            _drop(selector, arriving, key.fileobj)
                expired = time.monotonic() - REQUEST_TIMEOUT
                for conn in [c for c, (since, _) in arriving.items() if since <= expired]:
                    _drop(selector, arriving, conn, b"408 Request Timeout")
        finally:
            for conn in list(arriving):
                _drop(selector, arriving, conn)
            selector.close()

    def _accept(self, selector: selectors.BaseSelector, arriving: dict[socket.socket, Any]) -> None:
        try:
            conn, _ = self._listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        if len(arriving) >= MAX_CONNECTIONS:
            _drop(selector, arriving, next(iter(arriving)))  # the oldest still arriving
        conn.setblocking(False)
        arriving[conn] = (time.monotonic(), bytearray())
        selector.register(conn, selectors.EVENT_READ, "read")

    def _read(
        self,
        selector: selectors.BaseSelector,
        arriving: dict[socket.socket, tuple[float, bytearray]],
        conn: socket.socket,
    ) -> None:
        try:
            chunk = conn.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            chunk = b""
        if not chunk:
            _drop(selector, arriving, conn)
            return
        head = arriving[conn][1]
        head += chunk
        if b"\r\n\r\n" not in head and b"\n\n" not in head:
            if len(head) > MAX_HEAD:
                _drop(selector, arriving, conn, b"431 Request Header Fields Too Large")
            return
        selector.unregister(conn)
        del arriving[conn]
        if not self._queued.acquire(blocking=False):
            _answer_now(conn, b"503 Service Unavailable")
            return
        future = self._workers.submit(self._answer, conn, bytes(head))
        future.add_done_callback(lambda _: self._queued.release())

    def _answer(self, conn: socket.socket, head: bytes) -> None:
        """On a worker: answer one complete request, then close the connection."""
        try:
            conn.setblocking(True)
            conn.settimeout(REQUEST_TIMEOUT)  # a client that does not read is let go
            self._handler(head, conn, conn.getpeername(), self)
        except OSError:
            pass
        except Exception:
            logger.exception("metrics endpoint: answering a request failed")
        finally:
            _close(conn)


def _drop(
    selector: selectors.BaseSelector,
    arriving: dict[socket.socket, Any],
    conn: socket.socket,
    status: bytes | None = None,
) -> None:
    selector.unregister(conn)
    del arriving[conn]
    if status is not None:
        _answer_now(conn, status)
    else:
        _close(conn)


def _answer_now(conn: socket.socket, status: bytes) -> None:
    """A short answer without blocking (best effort), then close."""
    reason = status.split(b" ", 1)[1]
    with contextlib.suppress(OSError):
        conn.send(
            b"HTTP/1.0 " + status + b"\r\nContent-Type: text/plain; charset=utf-8\r\n"
            b"Connection: close\r\n\r\n" + reason.lower() + b"\n"
        )
    _close(conn)


def _close(conn: socket.socket) -> None:
    with contextlib.suppress(OSError):  # a socket already broken
        conn.close()


class _Handler(BaseHTTPRequestHandler):
    """Answers one request whose head was read already (``head``)."""

    def __init__(self, head: bytes, *args: Any) -> None:
        self._head = head
        super().__init__(*args)

    def setup(self) -> None:
        super().setup()
        self.rfile.close()  # the socket's reader: the head was read already
        self.rfile = io.BytesIO(self._head)

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("metrics endpoint: " + format, *args)

    def send(self, status: int, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)


class _BadParameterError(ValueError):
    """A query parameter refused: its message is the one-line reason sent back."""


def health_parameters(query: str) -> tuple[float | None, float]:
    """``max_backlog_age`` and ``timeout`` of a health probe's ``query``, strictly:
    :class:`_BadParameterError` (a ``ValueError``) for an unknown or repeated parameter,
    a value that is not a finite number, a negative age, or a timeout not above 0 and at
    most :data:`MAX_CHECK_TIMEOUT` (``inf``, ``nan`` and ``0`` were taken once)."""
    try:
        values = parse_qs(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError:
        raise _BadParameterError("malformed query string") from None
    for name, given in values.items():
        if name not in _HEALTH_PARAMETERS:
            raise _BadParameterError(
                f"unknown parameter {printable(name)[:40]!r} (known: max_backlog_age, timeout)"
            )
        if len(given) > 1:
            raise _BadParameterError(f"{name} given {len(given)} times")
    max_age = _number(values, "max_backlog_age", low=0.0, high=math.inf, above=False)
    timeout = _number(values, "timeout", low=0.0, high=MAX_CHECK_TIMEOUT, above=True)
    return max_age, DEFAULT_TIMEOUT if timeout is None else timeout


def _number(
    values: dict[str, list[str]], name: str, *, low: float, high: float, above: bool
) -> float | None:
    if name not in values:
        return None
    text = values[name][0]
    try:
        number = float(text)
    except ValueError:
        number = math.nan
    fits = (number > low if above else number >= low) and number <= high
    if not math.isfinite(number) or not fits:
        limits = f"above {low:g}" if above else f"at least {low:g}"
        if math.isfinite(high):
            limits += f" and at most {high:g}"
        raise _BadParameterError(
            f"{name} must be a number of seconds {limits}, not {printable(text)[:40]!r}"
        )
    return number


class _SharedChecks:
    """One run of the health checks at a time per probe and parameters: concurrent requests
    wait for the run in progress and share its report (200 parallel probes made 200 runs,
    each holding a pooled connection, and a quarter of the probes timed out)."""

    def __init__(self, engine: Checkable) -> None:
        self._engine = engine
        self._lock = threading.Lock()
        self._running: dict[tuple[str, float | None, float], Future[HealthReport]] = {}
        #: The failing checks' errors last logged, so a failure is logged when it changes.
        self._logged: tuple[str, ...] = ()

    def report(self, probe: str, max_age: float | None, timeout: float) -> HealthReport:
        key = (probe, max_age if probe == READINESS else None, timeout)
        with self._lock:
            running = self._running.get(key)
            owner = running is None
            if running is None:
                running = self._running[key] = Future()
        if not owner:
            return running.result()
        try:
            report = self._engine.health(
                max_backlog_age=key[1], timeout=timeout, liveness_only=probe == LIVENESS
            )
            running.set_result(report)
        except BaseException as exc:
            running.set_exception(exc)
            raise
        finally:
            with self._lock:
                del self._running[key]
        self._log(report)
        return report

    def _log(self, report: HealthReport) -> None:
        errors = tuple(f"{c.name}: {c.reason} ({c.error})" for c in report.failures if c.error)
        with self._lock:
            changed, self._logged = errors != self._logged, errors
        if changed and errors:
            logger.warning("health checks failing: %s", "; ".join(errors))


def serve_metrics(
    registry: CollectorRegistry,
    port: int,
    *,
    host: str = DEFAULT_HOST,
    engine: Checkable | None = None,
) -> MetricsServer:
    """Serve ``registry`` (and ``engine``'s health) on ``host:port`` (this host only by
    default: ``host="0.0.0.0"`` for every interface)."""
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    checks = _SharedChecks(engine) if engine is not None else None

    class Handler(_Handler):
        def do_GET(self) -> None:
            url = urlsplit(self.path)
            if url.path == "/metrics":
                self.send(200, CONTENT_TYPE_LATEST, generate_latest(registry))
            elif url.path in ("/livez", "/readyz") and checks is not None:
                try:
                    max_age, timeout = health_parameters(url.query)
                except _BadParameterError as exc:
                    self.send(400, "text/plain; charset=utf-8", f"{exc}\n".encode())
                    return
                probe = LIVENESS if url.path == "/livez" else READINESS
                try:
                    report = checks.report(probe, max_age, timeout)
                except Exception:  # health() never raises; an engine-like object might
                    logger.exception("metrics endpoint: the health checks raised")
                    self.send(500, "text/plain; charset=utf-8", b"health checks failed\n")
                    return
                document = report.to_dict(errors=False)
                body = json.dumps(document, default=str, sort_keys=True, allow_nan=False)
                status = 200 if report.passes(probe) else 503
                self.send(status, "application/json", body.encode())
            else:
                self.send(404, "text/plain; charset=utf-8", b"not found\n")

    served = MetricsServer(host, port, Handler)
    everywhere = " (every interface)" if served.host in ("0.0.0.0", "::") else ""
    where = (served.host, served.port, everywhere, served.url)
    logger.info("metrics served on %s port %d%s: %s/metrics", *where)
    return served
