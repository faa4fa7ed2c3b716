"""Prometheus metrics of every Sluice process, named in one place.

Naming: `sluice_<component>_<what>_<unit>`; counters end in `_total`, durations are in
`_seconds`, sizes in `_bytes`. Label values come from small sets (reason codes, topic
kinds, outcome names, routes) or from the experiments a process serves (experiment,
entity, arm), never from unit or serve ids. Each component builds its metrics on a
registry it is given, so tests can use a fresh one and a process exposes only its own.

The alert rules in `deploy/prometheus/` and the health dashboard read these names; change
them together.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

# Latency buckets for request handling (sidecar) and publication freshness (worker).
REQUEST_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
FRESHNESS_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0)


@dataclass(frozen=True)
class StreamMetrics:
    """The stream worker (`sluice worker`): input, attribution, state and publication."""

    events: Counter
    rejected: Counter
    attribution: Counter
    state_keys: Gauge
    expired: Counter
    consumer_lag: Gauge
    published: Counter
    arm_weight: Gauge
    freshness: Histogram
    last_published: Gauge
    batch_size: Histogram
    srm_p_value: Gauge
    guardrail_actions: Counter
    partitions: Gauge
    recovery_seconds: Gauge
    spec_version: Gauge
    ticks: Counter
    largest_message: Gauge
    state_bytes: Gauge
    health_e_value: Gauge
    health_actions: Counter

    @classmethod
    def create(cls, registry: CollectorRegistry) -> StreamMetrics:
        return cls(
            partitions=Gauge("sluice_stream_assigned_partitions", "Input partitions (of the serves topic) this worker "
                             "owns now.", registry=registry),
            recovery_seconds=Gauge("sluice_stream_recovery_seconds", "Time the latest partition assignment took to "
                                   "bring the state up to date (local store plus changelog).", registry=registry),
            spec_version=Gauge("sluice_stream_spec_version", "Version of each experiment's spec the worker acts on.",
                               ["experiment"], registry=registry),
            ticks=Counter("sluice_stream_publication_ticks_total", "Publication rounds (every publish interval).",
                          registry=registry),
            largest_message=Gauge("sluice_stream_largest_message_bytes", "Largest message (key + value) written "
                                  "since start, by topic.", ["topic"], registry=registry),
            state_bytes=Gauge("sluice_stream_state_bytes", "Bytes of the worker's local state store on disk.",
                              registry=registry),
            health_e_value=Gauge("sluice_health_e_value", "Evidence of each health guardrail's e-detector per arm "
                                 "(a breach at 1/alpha; 1 = none).", ["experiment", "entity", "arm", "guardrail"],
                                 registry=registry),
            health_actions=Counter("sluice_health_actions_total", "Health guardrail breaches and reinstatements, by "
                                   "guardrail and what was done (alert, rollback, pause, reinstate).",
                                   ["experiment", "guardrail", "action"], registry=registry),
            srm_p_value=Gauge("sluice_srm_p_value", "Always-valid sample-ratio-mismatch p-value (1/e-value) of the "
                              "serves against the weights in force when they were served.", ["experiment", "entity"],
                              registry=registry),
            guardrail_actions=Counter("sluice_guardrail_actions_total", "Publications in which a guardrail changed the "
                                      "policy's weights, by rule (floor, cap, max_step, warmup, kill, pin).",
                                      ["experiment", "rule"], registry=registry),
            events=Counter("sluice_stream_events_total", "Input events applied to statistics, by topic kind (serves, rewards).",
                           ["topic"], registry=registry),
            rejected=Counter("sluice_stream_rejected_total", "Input events sent to the dead-letter topic, by reason.",
                             ["topic", "reason"], registry=registry),
            attribution=Counter("sluice_stream_attribution_total",
                                "Serves and rewards by outcome (attributed, duplicate, after_window, other_reward, "
                                "outside_experiment, duplicate_serve, too_late).", ["outcome"], registry=registry),
            state_keys=Gauge("sluice_stream_state_keys", "State held in memory: (experiment, entity) pairs.", ["table"],
                             registry=registry),
            expired=Counter("sluice_stream_expired_total", "State records deleted as they aged out (serve ids past "
                            "the duplicate horizon, rewarded serves past twice the attribution window).", ["table"],
                            registry=registry),
            consumer_lag=Gauge("sluice_stream_consumer_lag_messages", "Messages not yet read, per input topic kind "
                               "(summed over the partitions this worker owns).", ["topic"], registry=registry),
            published=Counter("sluice_weights_published_total", "Weight tables published, by experiment.",
                              ["experiment"], registry=registry),
            arm_weight=Gauge("sluice_weights_arm_weight", "Latest published weight of each arm.",
                             ["experiment", "entity", "arm"], registry=registry),
            freshness=Histogram("sluice_weights_freshness_seconds", "Time from the newest input event a table "
                                "includes reaching Kafka to the table's publication.", buckets=FRESHNESS_BUCKETS,
                                registry=registry),
            last_published=Gauge("sluice_weights_last_published_timestamp_seconds", "Unix time of the latest "
                                 "publication, per experiment.", ["experiment"], registry=registry),
            batch_size=Histogram("sluice_stream_batch_events", "Events per processed batch.",
                                 buckets=(1, 10, 100, 1_000, 5_000, 10_000, 50_000), registry=registry),
        )


@dataclass(frozen=True)
class SidecarMetrics:
    """The assignment sidecar (`sluice sidecar`): requests, latency and tables; serve
    delivery is exposed by `DeliveryCollector`."""

    requests: Counter
    duration: Histogram
    tables_loaded: Gauge

    @classmethod
    def create(cls, registry: CollectorRegistry) -> SidecarMetrics:
        return cls(
            requests=Counter("sluice_sidecar_requests_total", "Requests by route and HTTP status.",
                             ["route", "status"], registry=registry),
            duration=Histogram("sluice_sidecar_request_duration_seconds", "Time to answer a request, by route.",
                               ["route"], buckets=REQUEST_BUCKETS, registry=registry),
            tables_loaded=Gauge("sluice_sidecar_tables_loaded", "Weight tables held.", registry=registry),
        )


@dataclass(frozen=True)
class ApiMetrics:
    """The control API (`sluice api`): requests by route template and status (401 and 403
    counted like the rest, so refused credentials show), latency, and changes made."""

    requests: Counter
    duration: Histogram
    changes: Counter

    @classmethod
    def create(cls, registry: CollectorRegistry) -> ApiMetrics:
        return cls(
            requests=Counter("sluice_api_requests_total", "Requests by route and HTTP status.",
                             ["route", "status"], registry=registry),
            duration=Histogram("sluice_api_request_duration_seconds", "Time to answer a request, by route.",
                               ["route"], buckets=REQUEST_BUCKETS, registry=registry),
            changes=Counter("sluice_api_changes_total", "Change requests answered 2xx, by action (one that "
                            "left the spec as it was included).", ["action"], registry=registry),
        )


class DeliveryCollector:
    """Serve and reward delivery of an SDK or sidecar, read from `DurableDelivery.counts` at
    scrape time: logged, delivered, spilled, dropped (counters) and the spill backlog."""

    def __init__(self, delivery: Any) -> None:
        self._delivery = delivery

    def collect(self) -> Iterator[Any]:
        counts = self._delivery.counts
        for name, value, doc in (
            ("sluice_serves_logged", counts.logged, "Records (serves, rewards) logged for delivery."),
            ("sluice_serves_delivered", counts.delivered, "Records Kafka acknowledged."),
            ("sluice_serves_spilled", counts.spilled, "Records written to the local spill file while Kafka was unreachable."),
            ("sluice_serves_dropped", counts.dropped, "Records lost: spill file full, refused by Kafka, or not encodable."),
        ):
            yield CounterMetricFamily(name, doc, value=value)
        yield GaugeMetricFamily("sluice_serves_spill_bytes", "Bytes waiting in the spill file.",
                                value=self._delivery.spill_pending_bytes)
