"""Stage 4, consume: run the handler registered for each delivered event, record the result.

* :mod:`~outboxkit.consume.consumer`: the consume loop (receive, handle, record, acknowledge);
* :mod:`~outboxkit.consume.registry`: event type -> handler, and the typed handler shapes;
* :mod:`~outboxkit.consume.handler_shapes`: a handler's signature checked at registration,
  and how a handler that takes a ``Session`` is called;
* :mod:`~outboxkit.consume.handler_scope`: what a handler may not do to the transaction it
  runs in.
"""
