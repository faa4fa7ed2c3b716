"""Helpers shared by the CLI modules: settings, and turning our errors into one-line messages."""

from __future__ import annotations

import functools
import signal
from collections.abc import Callable
from typing import Any, TypeVar

import click

from sluice.config import Settings
from sluice.errors import SluiceError
from sluice.kafka.security import KafkaSecurity

F = TypeVar("F", bound=Callable[..., Any])


def settings() -> Settings:
    return Settings()


def kafka_or_fail(s: Settings) -> tuple[str, KafkaSecurity]:
    """The Kafka to talk to and how to authenticate to it: `KAFKA_BOOTSTRAP` with the
    `KAFKA_SECURITY_PROTOCOL` / `KAFKA_SASL_*` settings, or the local broker `sluice up` started."""
    from sluice.local.stack import configured_security, local_broker, running_local_broker

    security = configured_security(s)
    if s.kafka_bootstrap:
        return s.kafka_bootstrap, security
    if running_local_broker(s) is None:
        raise click.ClickException("no Kafka: set KAFKA_BOOTSTRAP or start the local stack with `sluice up` (make up)")
    return local_broker(s).bootstrap, security


def sluice_errors(fn: F) -> F:
    """Report a `SluiceError` as `Error: …` and exit 1, without a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except SluiceError as exc:
            raise click.ClickException(str(exc)) from exc

    return wrapper  # type: ignore[return-value]


def sigterm_unwinds() -> None:
    """Make SIGTERM raise KeyboardInterrupt, so `finally` blocks stop what a command started."""

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, handler)
