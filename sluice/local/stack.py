"""`sluice up` / `sluice down`: the local stack, or nothing when `KAFKA_BOOTSTRAP` names a cluster.

Up: start the broker (unless one is configured), create the topics, migrate ClickHouse.
Down: stop the broker that `up` started, by the pid it recorded.
"""

from __future__ import annotations

from dataclasses import dataclass

from sluice.config import Settings
from sluice.kafka.security import KafkaSecurity
from sluice.local.kafka import KafkaBroker, LocalStackError, _alive, _read_pid


@dataclass(frozen=True)
class StackStatus:
    bootstrap: str
    security: KafkaSecurity
    started_broker: bool
    broker_pid: int | None
    ready_after_s: float | None


def local_broker(settings: Settings) -> KafkaBroker:
    return KafkaBroker(
        data_dir=settings.sluice_home / "kafka",
        cache_dir=settings.sluice_cache,
        port=settings.sluice_kafka_port,
        controller_port=settings.sluice_kafka_controller_port,
    )


def configured_security(settings: Settings) -> KafkaSecurity:
    """How clients authenticate to the Kafka these settings name: `KAFKA_SECURITY_PROTOCOL`
    and the `KAFKA_SASL_*` variables describe the cluster at `KAFKA_BOOTSTRAP`; the local
    broker takes PLAINTEXT only, so secured settings without `KAFKA_BOOTSTRAP` are an error."""
    security = KafkaSecurity.from_settings(settings)
    if security.protocol != "PLAINTEXT" and not settings.kafka_bootstrap:
        raise LocalStackError(f"KAFKA_SECURITY_PROTOCOL={security.protocol} needs KAFKA_BOOTSTRAP: "
                              "the local broker that `sluice up` starts listens in PLAINTEXT only")
    return security


def running_local_broker(settings: Settings) -> int | None:
    """The pid of the local broker `up` started, if it is still running."""
    pid = _read_pid(local_broker(settings).pid_file)
    return pid if pid is not None and _alive(pid) else None


def start_kafka(settings: Settings) -> StackStatus:
    """Use `KAFKA_BOOTSTRAP` if set; else reuse the running local broker or start one."""
    security = configured_security(settings)
    if settings.kafka_bootstrap:
        return StackStatus(settings.kafka_bootstrap, security, False, None, None)
    broker = local_broker(settings)
    pid = running_local_broker(settings)
    if pid is not None:
        return StackStatus(broker.bootstrap, security, False, pid, None)
    ready = broker.start()
    return StackStatus(broker.bootstrap, security, True, broker.process.pid if broker.process else None, ready)


def stop_kafka(settings: Settings) -> int | None:
    """Stop the local broker if one is running; return its pid."""
    pid = running_local_broker(settings)
    local_broker(settings).stop()
    return pid
