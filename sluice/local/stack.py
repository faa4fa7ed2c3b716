"""`sluice up` / `sluice down`: the local stack, or nothing when `KAFKA_BOOTSTRAP` names a cluster.

Up: start the broker (unless one is configured), create the topics, migrate ClickHouse.
Down: stop the broker that `up` started, by the pid it recorded.
"""

from __future__ import annotations

from dataclasses import dataclass

from sluice.config import Settings
from sluice.local.kafka import KafkaBroker, _alive, _read_pid


@dataclass(frozen=True)
class StackStatus:
    bootstrap: str
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


def running_local_broker(settings: Settings) -> int | None:
    """The pid of the local broker `up` started, if it is still running."""
    pid = _read_pid(local_broker(settings).pid_file)
    return pid if pid is not None and _alive(pid) else None


def start_kafka(settings: Settings) -> StackStatus:
    """Use `KAFKA_BOOTSTRAP` if set; else reuse the running local broker or start one."""
    if settings.kafka_bootstrap:
        return StackStatus(settings.kafka_bootstrap, False, None, None)
    broker = local_broker(settings)
    pid = running_local_broker(settings)
    if pid is not None:
        return StackStatus(broker.bootstrap, False, pid, None)
    ready = broker.start()
    return StackStatus(broker.bootstrap, True, broker.process.pid if broker.process else None, ready)


def stop_kafka(settings: Settings) -> int | None:
    """Stop the local broker if one is running; return its pid."""
    pid = running_local_broker(settings)
    local_broker(settings).stop()
    return pid
