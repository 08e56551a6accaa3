"""The broker conformance suite: one set of tests every :class:`~outboxkit.broker.Broker` runs.

Subclass :class:`BrokerContract` in a test module (its name does not start with ``Test``, so
pytest only collects your subclass) and provide three fixtures::

    class TestMyBroker(BrokerContract):
        redelivery_timeout = 20.0          # capability flags and deadlines: class attributes

        @pytest.fixture
        def broker(self) -> Iterator[Broker]: ...          # connected; you close it

        @pytest.fixture
        def make_broker(self) -> Callable[[], Broker]: ... # NEW independent instance to the
                                                           # same server; the suite closes it

        @pytest.fixture
        def unreachable_broker(self) -> Iterator[Broker]: ...  # points at a closed port

A broker that can refuse a message for good overrides
:meth:`~outboxkit.testing.broker_contract.base.BrokerContractBase.refused_message` to build
one (one over its size limit, say); one that cannot sets ``refuses_messages_for_good =
False``.

``unique`` (a short unique suffix, from the project's ``conftest.py``) must also be available;
every topic and group name of the suite contains it, so a backend's teardown can delete what
a test created by matching it (e.g. Redis ``SCAN MATCH *<unique>*``).

The suite is split by concern, one mixin per module, each a :class:`BrokerContractBase`
(``base``: the capability flags, the deadlines, the helper fixtures and
:func:`receive_until`):

* :class:`BrokerPublishContract` (``publish``): what is published arrives intact, one result
  per message in order, a refusal for good holds back only its key, each key keeps its order.
* :class:`BrokerReceiveContract` (``receive``): a new group reads the backlog,
  ``ensure_topic`` is idempotent, acknowledged messages (``ack``, ``ack_many``) are done.
* :class:`BrokerGroupContract` (``groups``): members of a group split the work, every group
  gets everything, an unacknowledged delivery reaches another member.
* :class:`BrokerLifecycleContract` (``lifecycle``): ``close`` and ``ping``.
* :class:`BrokerOutageContract` (``outages``): an unreachable broker says so, in time.

:class:`BrokerContract` is all of them, and what every broker runs. While a backend is being
written, one part can run alone: subclass its mixin and provide the fixtures it names
(``make_broker`` for the groups and lifecycle parts, ``unreachable_broker`` for the outages).

The suite asserts behaviour on a real server, never on a stand-in. Capability flags change
what is asserted; a missing capability skips with a reason, a missing service never does.
Deadlines are class attributes because brokers differ in speed (a Kafka group join takes
seconds, a Redis ``XREADGROUP`` microseconds): raise them, never lower the bar.
"""

from __future__ import annotations

from outboxkit.testing.broker_contract.base import BrokerContractBase, receive_until
from outboxkit.testing.broker_contract.groups import BrokerGroupContract
from outboxkit.testing.broker_contract.lifecycle import BrokerLifecycleContract
from outboxkit.testing.broker_contract.outages import BrokerOutageContract
from outboxkit.testing.broker_contract.publish import BrokerPublishContract
from outboxkit.testing.broker_contract.receive import BrokerReceiveContract

__all__ = [
    "BrokerContract",
    "receive_until",
    "BrokerContractBase",
    "BrokerPublishContract",
    "BrokerReceiveContract",
    "BrokerGroupContract",
    "BrokerLifecycleContract",
    "BrokerOutageContract",
]


class BrokerContract(
    BrokerPublishContract,
    BrokerReceiveContract,
    BrokerGroupContract,
    BrokerLifecycleContract,
    BrokerOutageContract,
):
    """The universal broker test suite; subclass it with ``broker`` fixtures (see module doc)."""
