"""Sluice: streaming experimentation (A/B tests and multi-armed bandits per entity).

`sluice.core` is the pure domain (no I/O, no clock); the other subpackages are thin
adapters around Kafka, Avro, ClickHouse and the local stack.
"""

__version__ = "0.1.0"
