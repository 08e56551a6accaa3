"""outboxkit: the transactional outbox for synchronous Python.

Write business rows and an event in one SQLAlchemy transaction; a relay moves the event to
Kafka or Redis Streams; a consumer runs the handler registered for its type, exactly once in
effect.
"""

from outboxkit.broker import Broker, BrokerMessage, Delivery, SendResult, Subscription
from outboxkit.consume.config import ConsumerConfig
from outboxkit.consume.registry import (
    HandlerRegistry,
    SessionHandler,
    SideEffectHandler,
    TransactionalHandler,
)
from outboxkit.engine import Engine, EngineConfig, EngineStats
from outboxkit.errors import (
    BrokerError,
    BrokerSetupError,
    BrokerUnavailableError,
    ConfigurationError,
    DatabaseSetupError,
    DecodeError,
    FatalError,
    HandlerTransactionError,
    InvalidEventError,
    MessageRejectedError,
    OutboxError,
    PayloadConflictError,
    PayloadDecodeError,
    PermanentError,
    PermanentRejectionError,
    RepositoryError,
    RoutingError,
    UnknownEventTypeError,
)
from outboxkit.messages import Event, OutboxMessage, Outcome, PublishRequest, Status
from outboxkit.observability.health import HealthCheck, HealthReport
from outboxkit.observability.observers import Observer
from outboxkit.publish.publisher import Publisher, PublisherConfig
from outboxkit.relay.relay import RelayConfig
from outboxkit.retry import RetryPolicy
from outboxkit.routing import Route, Routing, ServiceCatalog
from outboxkit.store import Repository
from outboxkit.wire.envelope import Envelope
from outboxkit.wire.payloads import JsonPayloadCodec, PayloadCodec, PayloadCodecs

__version__ = "0.1.0"

__all__ = [
    # running
    "Engine",
    "EngineConfig",
    "EngineStats",
    "RelayConfig",
    "ConsumerConfig",
    "HandlerRegistry",
    "Event",
    # typed handlers and payloads
    "TransactionalHandler",
    "SessionHandler",
    "SideEffectHandler",
    "PayloadCodec",
    "JsonPayloadCodec",
    "PayloadCodecs",
    # publishing
    "Publisher",
    "PublisherConfig",
    "PublishRequest",
    "Status",
    "Outcome",
    "OutboxMessage",
    "Envelope",
    # routing
    "Route",
    "Routing",
    "ServiceCatalog",
    # interfaces
    "Repository",
    "Broker",
    "BrokerMessage",
    "Delivery",
    "SendResult",
    "Subscription",
    "RetryPolicy",
    # observing (metrics exporters: outboxkit.observability.prometheus, extra "prometheus")
    "Observer",
    "HealthReport",
    "HealthCheck",
    # errors
    "OutboxError",
    "ConfigurationError",
    "RoutingError",
    "UnknownEventTypeError",
    "InvalidEventError",
    "RepositoryError",
    "BrokerError",
    "BrokerUnavailableError",
    "MessageRejectedError",
    "PermanentRejectionError",
    "DecodeError",
    "PayloadDecodeError",
    "PayloadConflictError",
    "PermanentError",
    "HandlerTransactionError",
    "FatalError",
    "DatabaseSetupError",
    "BrokerSetupError",
    "__version__",
]
