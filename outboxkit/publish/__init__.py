"""Stage 1, publish: an event becomes an outbox row in the caller's own transaction.

* :mod:`~outboxkit.publish.publisher`: :class:`Publisher` and :class:`PublisherConfig`;
* :mod:`~outboxkit.publish.checks`: the argument checks that give misuse a clear error;
* :mod:`~outboxkit.publish.causality`: the correlation and causation ids a handler's own
  publishes inherit from the event it handles.
"""

from outboxkit.publish.publisher import Publisher, PublisherConfig

__all__ = ["Publisher", "PublisherConfig"]
