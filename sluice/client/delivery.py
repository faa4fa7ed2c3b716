"""Delivery of log records (serves, rewards) to Kafka that never blocks the caller and never
loses a record without saying so.

`log()` only appends to an in-memory queue: the record's bytes, or a value that the encoder
registered for its topic (`encode_with`) turns into them, so the caller's thread does not
pay for encoding (an SDK's `assign` logs a serve this way). A background thread encodes, in
queue order, and hands records to an idempotent, batching, `acks=all` producer. A record the broker could not take in time
(unreachable broker, timeout) goes to a bounded spill file on local disk; from then on new
records also go to the spill, so their order is kept, and once the broker answers again
the spill is replayed in order and emptied. Counts of queued, delivered, spilled and dropped
records are kept for metrics; a dropped record (spill full, a non-retriable error, or a value
its encoder refuses) is logged at ERROR level with the reason.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sluice.client.spill import SpillFile
from sluice.errors import SluiceError
from sluice.kafka.clients import producer_config
from sluice.kafka.security import PLAINTEXT, KafkaSecurity

log = logging.getLogger(__name__)

Encode = Callable[[Any], bytes]


@dataclass
class DeliveryCounts:
    """Running totals since start (monotonic, for Prometheus counters)."""

    logged: int = 0
    delivered: int = 0
    spilled: int = 0
    replayed: int = 0
    dropped: int = 0


class DurableDelivery:
    """See the module docstring. Thread-safe; one instance per process is plenty."""

    def __init__(
        self,
        bootstrap: str,
        spill_path: Path,
        *,
        security: KafkaSecurity = PLAINTEXT,
        max_spill_bytes: int = 256 * 1024 * 1024,
        delivery_timeout_s: float = 5.0,
        probe_interval_s: float = 0.5,
        replay_batch: int = 5_000,
        producer_overrides: dict[str, Any] | None = None,
    ) -> None:
        from confluent_kafka import Producer

        self.counts = DeliveryCounts()
        self._spill = SpillFile(spill_path, max_spill_bytes)
        self._queue: collections.deque[tuple[str, bytes | None, Any]] = collections.deque()
        self._encoders: dict[str, Encode] = {}
        # Bound once: a bound method made per record would be one more object for the
        # garbage collector to track until Kafka answers.
        self._delivered = self._on_delivery
        self._spilling = self._spill.pending_bytes() > 0  # a spill left by an earlier run replays first
        self._probe_interval_s = probe_interval_s
        self._replay_batch = replay_batch
        self._next_probe = 0.0
        self._producer = Producer(producer_config(
            bootstrap, security,
            **{"message.timeout.ms": int(delivery_timeout_s * 1000), "linger.ms": 10,
               "log_level": 2,  # "broker down" is what the spill is for, not an error to print
               **(producer_overrides or {})},
        ))
        self._stop = threading.Event()
        # Held by the delivery thread while records are between the queue and the producer
        # or spill, so `flush` never sees a record in neither place.
        self._moving = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="sluice-delivery", daemon=True)
        self._thread.start()

    # -- caller side ---------------------------------------------------------------
    def encode_with(self, topic: str, encode: Encode) -> None:
        """Values logged for `topic` that are not bytes become `encode(value)`, on the
        delivery thread. A value `encode` refuses (raises) is dropped, counted and logged
        with the reason."""
        self._encoders[topic] = encode

    def log(self, topic: str, key: bytes | None, value: Any) -> None:
        """Queue one record for delivery. Never blocks on Kafka or disk. `value` is the
        record's `bytes`, or a value for the encoder of `topic` (see `encode_with`), which
        must not change after this call."""
        self._queue.append((topic, key, value))
        self.counts.logged += 1

    @property
    def spill_pending_bytes(self) -> int:
        return self._spill.pending_bytes()

    def flush(self, timeout_s: float = 30.0) -> bool:
        """Wait until every logged record is delivered (spill included); False on timeout."""
        deadline = time.monotonic() + timeout_s
        while self._moving.acquire(timeout=max(0.0, deadline - time.monotonic())):
            try:
                if not self._queue and self._spill.pending_bytes() == 0 and len(self._producer) == 0:
                    return True
            finally:
                self._moving.release()
            if time.monotonic() >= deadline:
                break
            time.sleep(0.02)
        return False

    def close(self, timeout_s: float = 10.0) -> None:
        """Deliver what can be delivered within `timeout_s` (a second when the broker is
        known to be down); keep the rest in the spill file, where the next start finds it."""
        self.flush(1.0 if self._spilling else timeout_s)
        self._stop.set()
        self._thread.join()
        # The producer's records were logged before those still queued, so they go first:
        # delivered now if the broker answers, else purged, and _on_delivery spills them.
        # (librdkafka reports purged records of its two internal queues in two runs, not in
        # the order logged, so purging only what it cannot deliver keeps that case rare.)
        if not self._spilling:
            self._producer.flush(1.0)
        self._producer.purge(in_queue=True, in_flight=False)
        self._producer.flush(1.0)
        while self._queue:  # logged but never handed to the producer (nor encoded, maybe)
            topic, key, value = self._queue.popleft()
            if value.__class__ is not bytes:
                value = self._encoded(topic, value)
            if value is not None:
                self._to_spill(topic, key, value)
        self._spill.close()

    # -- delivery thread -----------------------------------------------------------
    def _on_delivery(self, err: Any, msg: Any) -> None:
        if err is None:
            self.counts.delivered += 1
            return
        if err.retriable() or err.code() in _BROKER_GONE:
            self._spilling = True
            self._to_spill(msg.topic(), msg.key(), msg.value())
        else:
            self.counts.dropped += 1
            log.error("dropped a record for %s: non-retriable delivery error %s", msg.topic(), err)

    def _to_spill(self, topic: str, key: bytes | None, value: bytes) -> None:
        if self._spill.append(topic, key, value):
            self.counts.spilled += 1
        else:
            self.counts.dropped += 1
            log.error("spill file %s is full (%d bytes): dropped a record for %s", self._spill.path, self._spill.max_bytes, topic)

    def _encoded(self, topic: str, value: Any) -> bytes | None:
        """The bytes of a value logged for `topic`, or None when its encoder fails (or there
        is none): the record is dropped, counted and logged."""
        try:
            encode = self._encoders.get(topic)
            if encode is None:
                raise SluiceError(f"a {type(value).__name__} was logged for {topic}, "
                                  f"which has no encoder (see encode_with)")
            return encode(value)
        except Exception as exc:  # noqa: BLE001 - one bad record must not stop the others
            self.counts.dropped += 1
            # An encoder's own error names the field; anything else is a bug worth a traceback.
            log.error("dropped a record for %s: it cannot be encoded: %s", topic, exc,
                      exc_info=not isinstance(exc, SluiceError))
            return None

    def _run(self) -> None:
        while not self._stop.is_set():
            moved = 0
            if self._queue:
                with self._moving:
                    # Stopping (close's time is up): what is still queued goes to the spill there.
                    while self._queue and moved < 10_000 and not self._stop.is_set():
                        topic, key, value = self._queue.popleft()
                        moved += 1
                        if value.__class__ is not bytes:
                            value = self._encoded(topic, value)
                            if value is None:
                                continue
                        if self._spilling:
                            self._to_spill(topic, key, value)
                        else:
                            self._produce(topic, key, value)
            self._producer.poll(0.01 if moved else 0.05)
            if self._spilling and time.monotonic() >= self._next_probe:
                self._next_probe = time.monotonic() + self._probe_interval_s
                self._replay()

    def _produce(self, topic: str, key: bytes | None, value: bytes) -> None:
        while True:
            try:
                self._producer.produce(topic, value=value, key=key, on_delivery=self._delivered)
                return
            except BufferError:  # librdkafka's own queue is full: serve callbacks, then retry
                self._producer.poll(0.05)

    def _broker_answers(self) -> bool:
        try:
            return bool(self._producer.list_topics(timeout=1.0).brokers)
        except Exception:  # noqa: BLE001 - any failure means "not yet"
            return False

    def _replay(self) -> None:
        """Re-send spilled records in order while the broker answers; leave spill mode when empty."""
        if len(self._producer) or not self._broker_answers():
            return
        while not self._stop.is_set():
            batch = list(self._spill.pending(self._replay_batch))
            if not batch:
                self._spilling = False
                return
            failures: list[Any] = []

            def on_replayed(err: Any, _msg: Any) -> None:
                if err is not None:
                    failures.append(err)

            for r in batch:
                while True:
                    try:
                        self._producer.produce(r.topic, value=r.value, key=r.key, on_delivery=on_replayed)
                        break
                    except BufferError:
                        self._producer.poll(0.05)
            self._producer.flush(30.0)
            if failures:
                # Keep the batch: it is sent again on the next probe (at least once).
                log.warning("replaying the spill failed (%s); will retry", failures[0])
                return
            self._spill.mark_delivered(batch[-1].end_offset)
            self.counts.replayed += len(batch)
            self.counts.delivered += len(batch)


def _broker_gone_codes() -> frozenset[int]:
    from confluent_kafka import KafkaError

    return frozenset({KafkaError._MSG_TIMED_OUT, KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN, KafkaError._TIMED_OUT,
                      KafkaError._PURGE_QUEUE})


_BROKER_GONE = _broker_gone_codes()
