"""Where the test services are, and a loud failure when one cannot be reached.

The library reads no environment variables; this test helper does, so a developer can point
the suite at other servers. Defaults are the services of the project's machines.
"""

from __future__ import annotations

import os
import socket
from urllib.parse import urlsplit

#: Environment variables that override each service's address in the test suite.
POSTGRES_URL_ENV = "OUTBOXKIT_TEST_POSTGRES_URL"
MYSQL_URL_ENV = "OUTBOXKIT_TEST_MYSQL_URL"
REDIS_URL_ENV = "OUTBOXKIT_TEST_REDIS_URL"
KAFKA_BOOTSTRAP_ENV = "OUTBOXKIT_TEST_KAFKA_BOOTSTRAP"

DEFAULT_POSTGRES_URL = "postgresql+psycopg2://postgres@127.0.0.1:5432/test"
DEFAULT_MYSQL_URL = "mysql+pymysql://root@127.0.0.1:3306/test"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


class ServiceUnavailableError(RuntimeError):
    """A service the test run needs is not reachable. Never turned into a skip."""


def postgres_url() -> str:
    return os.environ.get(POSTGRES_URL_ENV, DEFAULT_POSTGRES_URL)


def mysql_url() -> str:
    return os.environ.get(MYSQL_URL_ENV, DEFAULT_MYSQL_URL)


def redis_url() -> str:
    return os.environ.get(REDIS_URL_ENV, DEFAULT_REDIS_URL)


def external_kafka_bootstrap() -> str | None:
    """An external Kafka to test against instead of a Tansu started by the tests."""
    return os.environ.get(KAFKA_BOOTSTRAP_ENV) or None


def require_tcp(service: str, url: str, default_port: int, hint: str = "") -> None:
    """Raise :class:`ServiceUnavailableError` naming ``service`` unless its port answers."""
    parts = urlsplit(url if "//" in url else f"tcp://{url}")
    host, port = parts.hostname or "127.0.0.1", parts.port or default_port
    try:
        with socket.create_connection((host, port), timeout=3):
            return
    except OSError as exc:
        raise ServiceUnavailableError(
            f"{service} is not reachable at {host}:{port} ({exc}). "
            f"The outboxkit test suite needs it running{hint}."
        ) from exc


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (for servers tests start)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port
