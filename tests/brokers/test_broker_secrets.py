"""Passwords given in a broker URL or a client setting are never printed (issue #18, row 5):
not by an error about the URL, not by a Kafka client that took the credentials for a host
name, not by the repr of any broker configuration."""

from __future__ import annotations

import pytest

from outboxkit.brokers.confluent.config import ConfluentKafkaConfig
from outboxkit.brokers.kafka import KafkaConfig
from outboxkit.brokers.redis_streams import RedisStreamsConfig
from outboxkit.brokers.urls import broker_from_url
from outboxkit.errors import ConfigurationError

SECRET = "s3cret-pw"


def test_an_unknown_scheme_is_refused_with_the_password_masked() -> None:
    with pytest.raises(ConfigurationError) as raised:
        broker_from_url(f"amqp://app:{SECRET}@mq:5672/")
    assert SECRET not in str(raised.value)
    assert "amqp://app:***@mq:5672/" in str(raised.value)


@pytest.mark.parametrize("scheme", ["kafka", "confluent"])
def test_credentials_in_a_kafka_url_are_refused_not_taken_for_a_host(scheme: str) -> None:
    # Given userinfo, which a kafka:// URL cannot pass to the client: kafka-python took
    # "app:<password>@host" for a host name and printed it in every connection error
    with pytest.raises(ConfigurationError) as raised:
        broker_from_url(f"{scheme}://app:{SECRET}@127.0.0.1:9/")
    assert SECRET not in str(raised.value)
    assert f"{scheme}://app:***@127.0.0.1:9/" in str(raised.value)
    assert "SASL" in str(raised.value)


def test_the_redis_config_repr_masks_the_url_password() -> None:
    config = RedisStreamsConfig(url=f"redis://app:{SECRET}@cache:6379/0")
    assert SECRET not in repr(config)
    assert "redis://app:***@cache:6379/0" in repr(config)


def test_the_kafka_config_repr_masks_sasl_and_ssl_passwords() -> None:
    config = KafkaConfig.from_client_config(
        {
            "bootstrap_servers": "k1:9093",
            "security_protocol": "SASL_SSL",
            "sasl_mechanism": "PLAIN",
            "sasl_plain_username": "app",
            "sasl_plain_password": SECRET,
            "ssl_password": SECRET,
        }
    )
    shown = repr(config)
    assert SECRET not in shown
    assert "'sasl_plain_password': '***'" in shown and "'sasl_plain_username': 'app'" in shown
    assert config.security["sasl_plain_password"] == SECRET  # still given to the client


def test_the_confluent_config_repr_masks_secrets() -> None:
    config = ConfluentKafkaConfig(
        bootstrap_servers="k1:9093",
        common_options={"sasl.username": "app", "sasl.password": SECRET},
        producer_options={"ssl.key.password": SECRET, "ssl.key.pem": SECRET},
        consumer_options={"sasl.oauthbearer.client.secret": SECRET},
    )
    shown = repr(config)
    assert SECRET not in shown
    assert "'sasl.username': 'app'" in shown
