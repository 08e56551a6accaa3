"""Stage 2, relay: due outbox rows of a service go to its topic.

:class:`Relay` claims a batch under a fencing lease, encodes it
(:mod:`outboxkit.wire.row_encoding`), sends it as one broker batch and marks each row by the
broker's answer. The engine runs one per relay thread; :meth:`Relay.run_once` is one step.
"""

from outboxkit.relay.relay import Relay, RelayConfig, RelayStep

__all__ = ["Relay", "RelayConfig", "RelayStep"]
