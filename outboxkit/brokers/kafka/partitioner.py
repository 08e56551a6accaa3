"""Key-to-partition mapping compatible with the Go relay (kafka-go's ``Hash`` balancer)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

_FNV32_OFFSET = 0x811C9DC5
_FNV32_PRIME = 0x01000193


def fnv1a_32(data: bytes) -> int:
    """The 32-bit FNV-1a hash (Go's ``hash/fnv.New32a``)."""
    value = _FNV32_OFFSET
    for byte in data:
        value = ((value ^ byte) * _FNV32_PRIME) & 0xFFFFFFFF
    return value


def go_fnv1a_partitioner(
    key: bytes | None, all_partitions: Sequence[int], available: Sequence[int]
) -> int:
    """kafka-go's ``Hash`` balancer (also Sarama's): ``|int32(fnv1a(key)) % n|``.

    The Go relay publishes with it, so choosing it keeps each key on the partition the Go
    relay would pick. A ``None`` key (never produced by the relay) goes to an available
    partition, like kafka-go's round robin fallback.
    """
    partitions = sorted(all_partitions)
    if key is None:
        pool = sorted(available) or partitions
        return pool[0]
    signed = fnv1a_32(key)
    if signed >= 0x80000000:
        signed -= 0x100000000
    index = abs(int(math.fmod(signed, len(partitions))))  # Go's % truncates toward zero
    return partitions[index]


def go_fnv1a_partitioner_object() -> Any:
    """:func:`go_fnv1a_partitioner` as a kafka-python ``Partitioner`` (imported lazily)."""
    from kafka.partitioner import Partitioner

    class GoFnv1aPartitioner(Partitioner):  # type: ignore[misc]
        def partition(  # noqa: PLR0917 - kafka-python's signature
            self,
            topic: str,
            key: Any,
            serialized_key: bytes | None,
            value: Any,
            serialized_value: bytes | None,
            cluster: Any,
        ) -> int:
            return go_fnv1a_partitioner(
                serialized_key,
                list(cluster.partitions_for_topic(topic)),
                list(cluster.available_partitions_for_topic(topic)),
            )

    return GoFnv1aPartitioner()
