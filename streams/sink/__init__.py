"""The ClickHouse sink: every event and weight table from Kafka into MergeTree tables.

A plain confluent-kafka consumer reading in batches, not a Faust agent: the sink keeps no
state of its own, and Faust's per-message machinery (~200 µs a message here) would cap it
far below the 200k rows/s it must sustain.
"""
