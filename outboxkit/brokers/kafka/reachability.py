"""One TCP connect per bootstrap server before a kafka-python client is built.

kafka-python's bootstrap keeps retrying a refused connection until ``bootstrap_timeout_ms``
(10 s by default), logging every attempt at WARNING and ERROR, and only then fails with
"Unable to bootstrap". A worker whose Kafka is down (or whose URL names the wrong port)
thus said nothing of its own for 10 s, buried under the client's lines. When *every*
bootstrap address refuses the connection or does not resolve, nothing can succeed, so the
client is not built at all: the caller gets a :class:`BrokerUnavailableError` at once that
names each address and what it answered, and the engine logs its outage line with it.

Only definite answers count. A connect that times out (a slow network, a firewall that
drops packets) says nothing for sure, and neither does an address reached through a proxy
(``proxy_url``): then kafka-python bootstraps as before, with its own timeout.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping
from typing import Any

from outboxkit.errors import BootstrapRefusedError

__all__ = ["PROBE_TIMEOUT_SECONDS", "BootstrapRefusedError", "check_bootstrap", "parse_servers"]

#: Longest wait for one bootstrap address to accept a TCP connection.
PROBE_TIMEOUT_SECONDS = 1.0
#: kafka-python's port when a bootstrap server names none.
DEFAULT_PORT = 9092
#: Client settings that route connections elsewhere: a direct connect proves nothing.
_PROXY_SETTINGS = ("proxy_url", "socks5_proxy")


def parse_servers(servers: str) -> list[tuple[str, int]]:
    """``"a:9092,[::1]:9093,b"`` -> ``[("a", 9092), ("::1", 9093), ("b", 9092)]``."""
    addresses = []
    for item in servers.split(","):
        text = item.strip()
        if not text:
            continue
        host, port = text, DEFAULT_PORT
        if text.startswith("["):  # [IPv6]:port
            host, _, rest = text[1:].partition("]")
            if rest.startswith(":") and rest[1:].isdigit():
                port = int(rest[1:])
        elif text.count(":") == 1:
            name, _, number = text.partition(":")
            if number.isdigit() or not number:
                host, port = name, int(number or DEFAULT_PORT)
        addresses.append((host, port))
    return addresses


def _refusal(host: str, port: int, timeout: float) -> str | None:
    """What ``host:port`` answered when it refused for sure; ``None`` when it accepted a
    connection or the answer was not definite (a timeout)."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except TimeoutError:
        return None
    except socket.gaierror as exc:
        return f"cannot resolve {host!r} ({exc.strerror or exc})"
    except OSError as exc:
        return (exc.strerror or str(exc)).lower()


def check_bootstrap(
    servers: str,
    settings: Mapping[str, Any],
    what: str,
    *,
    timeout: float = PROBE_TIMEOUT_SECONDS,
) -> None:
    """Raise :class:`BootstrapRefusedError` when every bootstrap server of ``servers``
    refuses a TCP connection for sure (see the module docstring); return otherwise."""
    if any(settings.get(name) for name in _PROXY_SETTINGS):
        return
    addresses = parse_servers(servers)
    refusals = []
    for host, port in addresses:
        refusal = _refusal(host, port, timeout)
        if refusal is None:
            return
        refusals.append(f"{host}:{port}: {refusal}")
    if refusals:
        raise BootstrapRefusedError(
            f"cannot connect a Kafka {what} to {servers}: no bootstrap server accepts "
            f"connections ({'; '.join(refusals)})"
        )
