"""Pytest plugin: the Kafka-protocol broker the Kafka tests run against.

``OUTBOXKIT_TEST_KAFKA_BOOTSTRAP`` points the suite at an existing Kafka (checked for
reachability); otherwise one Tansu broker is started for the whole session on a free
loopback port and stopped at the end. A broker that cannot be reached or started fails the
tests that need it, naming the service and address; it never skips them.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import pytest

# kafka-python 3.0 reads its protocol schemas with importlib.resources.open_text, which warns
# (DeprecationWarning attributed to importlib, so the kafka.* filter in pyproject misses it)
# and the suite turns warnings into errors. Import it once here, before any test runs.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import kafka  # noqa: F401

from outboxkit.testing import services
from outboxkit.testing.services import free_port
from outboxkit.testing.tansu import TansuError, TansuServer

#: Loopback port of the session's Tansu, chosen in pytest_configure (None: external Kafka).
_tansu_port: int | None = None


def pytest_configure(config: pytest.Config) -> None:
    """Fix the broker's port now, so one warnings filter can name it for every test.

    kafka-python 3.0 orphans sockets to the broker when a client is closed while its
    network thread is still connecting; the garbage collector reaps them during some later
    test, and the suite turns that ResourceWarning into a failure there. Only unclosed
    sockets to the test broker's port are ignored: any other leak still fails.
    """
    global _tansu_port  # noqa: PLW0603 - one broker per test session
    external = services.external_kafka_bootstrap()
    if external is None:
        _tansu_port = free_port()
        ports = [_tansu_port]
    else:
        ports = [int(p.rsplit(":", 1)[1]) for p in external.split(",") if ":" in p]
    for port in ports:
        config.addinivalue_line(
            "filterwarnings",
            rf"ignore:unclosed <socket\.socket fd=\d+, family=\d+, type=1, proto=\d+, "
            rf"laddr=\([^)]*\), raddr=\('[^']*', {port}\)>:ResourceWarning",
        )


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """``host:port[,host:port]`` of a Kafka-protocol broker for this test session."""
    external = services.external_kafka_bootstrap()
    if external is not None:
        first = external.split(",")[0].strip()
        try:
            services.require_tcp(
                "Kafka",
                first,
                9092,
                f" ({services.KAFKA_BOOTSTRAP_ENV}={external}; unset it to use Tansu)",
            )
        except services.ServiceUnavailableError as exc:
            pytest.fail(str(exc), pytrace=False)
        yield external
        return
    server = TansuServer(port=_tansu_port)
    try:
        server.start()
    except TansuError as exc:
        pytest.fail(f"Kafka-protocol test broker could not be started: {exc}", pytrace=False)
    try:
        yield server.bootstrap
    finally:
        server.stop()
