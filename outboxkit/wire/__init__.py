"""What travels on the broker, and how it is written and read.

* :mod:`~outboxkit.wire.envelope`: the JSON shell stored in a row and the envelope sent to
  the broker (the Go system's formats, byte for byte), and their decoding;
* :mod:`~outboxkit.wire.fields`: the checks every value read from the broker passes, against
  the columns it will meet, before anything acts on it (the broker is a trust boundary);
* :mod:`~outboxkit.wire.receipt`: the receipt an inbox consumer sends its producer, and its
  strict decoding;
* :mod:`~outboxkit.wire.payloads`: payload codecs (application objects to JSON and back);
* :mod:`~outboxkit.wire.row_encoding`: the relay's fast path from a stored row to a broker
  message (the stored shell spliced into the envelope).
"""
