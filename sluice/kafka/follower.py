"""Following a compacted topic: the latest value of every key, kept current in memory.

Sidecars and SDKs follow the weights and experiments topics; stream workers follow the
experiments topic. Every follower reads every partition (manual assignment, no consumer
group), from the beginning, so each process holds the whole table. `ready` is set once the
follower has caught up with the end offsets that stood when it started; `sync` waits until
it has read everything on the topic now, so a writer that checks a value before replacing
it checks the newest one, and then reads its own write.
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
        self._positions: dict[int, int] = {}  # partition -> offset after the last one read
        self._progress = threading.Condition()
        self._offsets_reader: Any = None  # a consumer that asks the broker for end offsets, made by sync
        self._offsets_lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name=f"follow-{topic}", daemon=True)

    def start(self) -> CompactedTopicFollower[V]:
        self._thread.start()
        return self

    def wait_ready(self, timeout_s: float) -> bool:
        """True once caught up with the topic as it stood at start; False on timeout."""
        if self._error is not None:
            raise KafkaAdapterError(f"following {self.topic} failed: {self._error}") from self._error
        return self.ready.wait(timeout_s)

    def sync(self, timeout_s: float = 10.0) -> None:
        """Wait until every committed record on the topic now (its end offsets, asked of
        the broker) has been read; raises `KafkaAdapterError` on timeout or when following
        failed."""
        from confluent_kafka import Consumer, TopicPartition

        with self._offsets_lock:
            if self._offsets_reader is None:
                self._offsets_reader = Consumer(consumer_config(self._bootstrap, f"follower-unused-{self.topic}",
                                                                    self._security))
            partitions = self._partitions(self._offsets_reader)
            ends = {p: watermarks(self._offsets_reader, TopicPartition(self.topic, p))[1] for p in partitions}
        deadline = time.monotonic() + timeout_s
        with self._progress:
            while any(self._positions.get(p, 0) < end for p, end in ends.items() if end > 0):
                if self._error is not None:
                    raise KafkaAdapterError(f"following {self.topic} failed: {self._error}") from self._error
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    behind = {p: (self._positions.get(p, 0), end) for p, end in ends.items()}
                    raise KafkaAdapterError(f"{self.topic} not read to its end within {timeout_s:.0f} s "
                                            f"(partition: (read up to, end) {behind})")
                self._progress.wait(remaining)

    def wait_until(self, condition: Callable[[dict[bytes, V]], bool], timeout_s: float = 10.0) -> bool:
        """Wait until `condition(latest)` holds (checked after each record read); False on
        timeout. A writer waits so for its own write: `sync` cannot, because the end offset
        a read-committed reader is given stays before a transaction until its commit
        markers are written, which happens after the commit returns."""
        deadline = time.monotonic() + timeout_s
        with self._progress:
            while not condition(self.latest):
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._error is not None:
                    return False
                self._progress.wait(remaining)
        return True

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)
        with self._offsets_lock:
            if self._offsets_reader is not None:
                self._offsets_reader.close()
                self._offsets_reader = None

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
                            self._read_up_to(p, msg.offset())
                            if p in ends and msg.offset() >= ends[p]:
                                del ends[p]
                        else:
                            log.warning("following %s: %s", self.topic, msg.error())
                    else:
                        self._apply(msg.key(), msg.value(), msg.offset())
                        self._read_up_to(p, msg.offset() + 1)
                        if p in ends and msg.offset() + 1 >= ends[p]:
                            del ends[p]
                    if not ends and not self.ready.is_set():
                        self.ready.set()
        except BaseException as exc:  # noqa: BLE001 - surfaced to the owner through wait_ready and sync
            self._error = exc
            log.exception("following %s stopped", self.topic)
            with self._progress:
                self._progress.notify_all()
        finally:
            consumer.close()

    def _read_up_to(self, partition: int, offset: int) -> None:
        with self._progress:
            if offset > self._positions.get(partition, 0):
                self._positions[partition] = offset
                self._progress.notify_all()

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
