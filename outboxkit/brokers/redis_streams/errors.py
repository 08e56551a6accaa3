"""redis-py errors translated to the :mod:`outboxkit.errors` tree, at the boundary.

A failed send is either "the broker is unwell" (:class:`BrokerUnavailableError`: the relay
releases the rows uncounted and backs off) or "this message is bad"
(:class:`MessageRejectedError`: one counted retry, ``dead`` in the end; "permanent" below
is :class:`PermanentRejectionError`: ``dead`` at once, as the same message can never pass).
The rule: unless Redis said something is wrong with *this* command as given, nothing is
known to be wrong with the message, and it is the broker that is unwell. Redis has no size
or content check of its own short of its 512 MB bulk limit (far beyond
``PublisherConfig.max_payload_bytes``), so the permanent refusals are a stream key of
another type and a field redis-py cannot carry.

=====================================================  ===========  ==========================
What redis-py raises, or the script's ``XADD`` returns  Class        Why
=====================================================  ===========  ==========================
``ConnectionError`` (refused, reset, ``AUTH`` failed,   unavailable  the server cannot be used;
``LOADING``, "max number of clients reached", pool                   the script is atomic, so
exhausted), ``TimeoutError``, ``InvalidResponse``                    all or nothing was written
``OOM`` (maxmemory with ``noeviction``)                 unavailable  full until consumers catch
                                                                     up or memory is freed
``READONLY`` (a replica, e.g. during a failover),       unavailable  writes go elsewhere or come
``MASTERDOWN``, ``NOREPLICAS``, ``MISCONF`` (snapshot                back when the server heals
failing), ``BUSY`` (a long script), ``TRYAGAIN``,
``CLUSTERDOWN``
``NOSCRIPT`` (script cache empty after a restart or     never seen   redis-py loads the script
``SCRIPT FLUSH``)                                                    and runs it again
``WRONGTYPE`` (the stream key holds another type)       permanent    this topic cannot take it
                                                                     until someone deletes the
                                                                     key; then requeue the dead
``NOPERM`` (an ACL forbids the key or command)          rejected     a retry cannot fix it; the
                                                                     row dies with the reason
                                                                     instead of stalling the
                                                                     relay forever
a message field redis-py cannot encode (``DataError``;  permanent    the message itself is bad
checked before sending, for that message only)
any other error reply (``ERR ...``)                     rejected     Redis refused the command
                                                                     as given
any other ``RedisError``                                unavailable  a client-side failure says
                                                                     nothing about the message
=====================================================  ===========  ==========================

redis-py strips the code from the replies it maps to a class (``ReadOnlyError("You can't
write ...")``), so exceptions are classified by class first, by reply code second.

Before all of that, :func:`setup_error` picks out what no retry can fix because the
*connection itself* is refused: a wrong password (``AuthenticationError``) or a database
number the server does not have (``redis://host:6379/99`` on a server with 16 databases:
redis-py's ``SELECT`` on connect fails with "DB index is out of range"). Those are a fatal
:class:`~outboxkit.errors.BrokerSetupError`, whichever command met them first: the
engine stops with one line instead of retrying (and, for a publish, instead of counting
the refusal against every event).
"""

from __future__ import annotations

import redis

from outboxkit.errors import (
    BrokerError,
    BrokerSetupError,
    BrokerUnavailableError,
    MessageRejectedError,
    PermanentRejectionError,
)

__all__ = [
    "PERMANENT_REPLIES",
    "UNAVAILABLE_REPLIES",
    "is_permanent_reply",
    "is_unavailable_reply",
    "rejection",
    "send_error",
    "setup_error",
    "unavailable",
]

#: Replies to the ``SELECT`` redis-py sends on connecting, for the URL's database number:
#: Redis 6+ says "DB index is out of range" (the server's ``databases`` setting, 16 by
#: default), older servers "invalid DB index".
_SELECT_REFUSED = ("DB index is out of range", "invalid DB index")

#: Error reply codes that say the server cannot work right now, not that the message is bad.
UNAVAILABLE_REPLIES = (
    "OOM",
    "LOADING",
    "BUSY",
    "READONLY",
    "MASTERDOWN",
    "TRYAGAIN",
    "CLUSTERDOWN",
    "NOREPLICAS",
    "MISCONF",
)

#: redis-py's classes for the replies above (they no longer carry the code in ``str()``).
_UNAVAILABLE_REPLY_CLASSES: tuple[type[redis.exceptions.ResponseError], ...] = (
    redis.exceptions.OutOfMemoryError,
    redis.exceptions.ReadOnlyError,
    redis.exceptions.ClusterDownError,  # and MasterDownError
    redis.exceptions.TryAgainError,
)


def unavailable(exc: Exception, what: str) -> BrokerUnavailableError:
    return BrokerUnavailableError(f"Redis unavailable while {what}: {exc}")


def is_unavailable_reply(text: str) -> bool:
    """Whether an error reply (``"OOM command not allowed ..."``) means the broker is unwell."""
    return text.startswith(UNAVAILABLE_REPLIES)


#: Error reply codes that refuse the message for good (see the table above).
PERMANENT_REPLIES = ("WRONGTYPE",)


def is_permanent_reply(text: str) -> bool:
    """Whether an error reply (``"WRONGTYPE Operation against a key ..."``) refuses the
    message for good."""
    return text.startswith(PERMANENT_REPLIES)


def rejection(reply: str, text: str) -> MessageRejectedError:
    """The error, saying ``text``, for an error ``reply`` that does not mean the broker is
    unwell: permanent or counted, by the reply's code."""
    if is_permanent_reply(reply):
        return PermanentRejectionError(text)
    return MessageRejectedError(text)


def send_error(exc: redis.exceptions.RedisError, what: str) -> BrokerError:
    """The error to report for every message of a batch whose send raised ``exc``."""
    if not isinstance(exc, redis.exceptions.ResponseError):
        # ConnectionError (and its LOADING, AUTH, pool subclasses), TimeoutError,
        # InvalidResponse, ...: nothing reached Redis, or all of the batch did.
        return unavailable(exc, what)
    code = getattr(exc, "status_code", None) or ""
    reply = f"{code} {exc}".strip() if code and not str(exc).startswith(code) else str(exc)
    if isinstance(exc, _UNAVAILABLE_REPLY_CLASSES) or is_unavailable_reply(reply):
        return BrokerUnavailableError(f"Redis refused {what}: {reply}")
    # Counted, never permanent: a refusal of the whole batch blames no message in it.
    return MessageRejectedError(f"Redis refused {what}: {reply}")


def setup_error(exc: redis.exceptions.RedisError, what: str) -> BrokerSetupError | None:
    """The fatal error for a connection Redis refuses for good, else ``None``.

    A refused password, or a database number the server does not have: waiting never
    fixes either, so the engine must stop (see the module docstring).
    """
    if isinstance(exc, redis.exceptions.AuthenticationError):
        return BrokerSetupError(f"Redis refused {what}: {type(exc).__name__}: {exc}")
    text = str(exc)
    if isinstance(exc, redis.exceptions.ResponseError) and any(t in text for t in _SELECT_REFUSED):
        return BrokerSetupError(
            f"Redis refused {what}: {text}: the database number in the Redis URL (the path, "
            "as in redis://host:6379/0) must be below the server's `databases` setting "
            "(16 by default)"
        )
    return None
