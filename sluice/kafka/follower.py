"""Following a compacted topic: the latest value of every key, kept current in memory.

Sidecars and SDKs follow the weights and experiments topics; stream workers follow the
experiments topic. Every follower reads every partition (manual assignment, no consumer
group), from the beginning, so each process holds the whole table. `ready` is set once the
follower has caught up with the end offsets that stood when it started.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from sluice.kafka.clients import consumer_config
from sluice.kafka.exceptions import KafkaAdapterError
from sluice.kafka.io import watermarks
from sluice.kafka.security import PLAINTEXT, KafkaSecurity

log = logging.getLogger(__name__)

V = TypeVar("V")


class CompactedTopicFollower(Generic[V]):
    """Keeps `latest[key] = decode(value)` for a compacted topic, in a background thread.

    A value that `decode` rejects (raises) is skipped and counted in `rejected`, with a
    warning naming the offset: one bad record must not stop a sidecar from serving. A
    tombstone (null value) removes the key.
    """

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        decode: Callable[[bytes], V],
        *,
        security: KafkaSecurity = PLAINTEXT,
        on_update: Callable[[bytes, V | None], None] | None = None,
        poll_timeout_s: float = 0.1,
    ) -> None:
        self.topic = topic
        self.latest: dict[bytes, V] = {}
        self.rejected = 0
        self.updates = 0
        self.ready = threading.Event()
        self._bootstrap = bootstrap
        self._security = security
        self._decode = decode
        self._on_update = on_update
        self._poll_timeout_s = poll_timeout_s
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=f"follow-{topic}", daemon=True)

    def start(self) -> CompactedTopicFollower[V]:
        self._thread.start()
        return self

    def wait_ready(self, timeout_s: float) -> bool:
        """True once caught up with the topic as it stood at start; False on timeout."""
        if self._error is not None:
            raise KafkaAdapterError(f"following {self.topic} failed: {self._error}") from self._error
        return self.ready.wait(timeout_s)

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)

    def _run(self) -> None:
        from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

        consumer = Consumer(consumer_config(self._bootstrap, f"follower-unused-{self.topic}", self._security,
                                            **{"log_level": 2, "enable.partition.eof": True}))
        try:
            partitions = self._partitions(consumer)
            ends: dict[int, int] = {}
            for p in partitions:
                low, high = watermarks(consumer, TopicPartition(self.topic, p))
                if high > low:
                    ends[p] = high
            consumer.assign([TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in partitions])
            if not ends:
                self.ready.set()
            while not self._stop.is_set():
                for msg in consumer.consume(num_messages=1000, timeout=self._poll_timeout_s):
                    p = msg.partition()
                    if msg.error() is not None:
                        # With transactions the end of a partition is a commit marker, which no
                        # message carries: the end shows as an EOF event at or past it.
                        if msg.error().code() == KafkaError._PARTITION_EOF:
                            if p in ends and msg.offset() >= ends[p]:
                                del ends[p]
                        else:
                            log.warning("following %s: %s", self.topic, msg.error())
                    else:
                        self._apply(msg.key(), msg.value(), msg.offset())
                        if p in ends and msg.offset() + 1 >= ends[p]:
                            del ends[p]
                    if not ends and not self.ready.is_set():
                        self.ready.set()
        except BaseException as exc:  # noqa: BLE001 - surfaced to the owner through wait_ready
            self._error = exc
            log.exception("following %s stopped", self.topic)
        finally:
            consumer.close()

    def _partitions(self, consumer: Any) -> list[int]:
        deadline = time.monotonic() + 30
        while True:
            md = consumer.list_topics(self.topic, timeout=10)
            t = md.topics.get(self.topic)
            if t is not None and t.error is None and t.partitions:
                return sorted(t.partitions)
            if time.monotonic() > deadline:
                raise KafkaAdapterError(f"topic {self.topic} does not exist")
            time.sleep(0.5)

    def _apply(self, key: bytes | None, value: bytes | None, offset: int) -> None:
        if key is None:
            self.rejected += 1
            log.warning("%s@%d has no key: skipped", self.topic, offset)
            return
        if value is None:
            self.latest.pop(key, None)
            decoded = None
        else:
            try:
                decoded = self._decode(value)
            except Exception as exc:  # noqa: BLE001 - a bad record is skipped, not fatal
                self.rejected += 1
                log.warning("%s@%d rejected: %s", self.topic, offset, exc)
                return
            self.latest[key] = decoded
        self.updates += 1
        if self._on_update is not None:
            self._on_update(key, decoded)
