"""Configuration from the environment, read once at the edge (CLI, services, tests).

Every variable is optional; the defaults give the local single-node stack under `.data/`.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


def project_root() -> Path:
    """The checkout this package runs from (where `deploy/` and `schemas/` live)."""
    return Path(__file__).resolve().parent.parent


class Settings(BaseSettings):
    """Sluice settings. Environment variables are the field names in upper case."""

    model_config = SettingsConfigDict(env_prefix="", extra="ignore", frozen=True)

    kafka_bootstrap: str | None = Field(
        default=None,
        description="host:port of an existing Kafka cluster; when set, nothing is started locally.",
    )
    clickhouse_url: str | None = Field(
        default=None,
        description="http(s)://user:pass@host:port/db of a ClickHouse server; unset = the embedded chDB engine.",
    )
    sluice_home: Path = Field(
        default_factory=lambda: project_root() / ".data",
        description="Where the local stack keeps broker data, the embedded ClickHouse and pid files.",
    )
    sluice_cache: Path = Field(
        default_factory=lambda: project_root() / ".cache",
        description="Where downloaded Kafka jars are cached between runs.",
    )
    sluice_kafka_port: int = Field(default=9092, description="Broker port of the local stack.")
    sluice_kafka_controller_port: int = Field(default=9093, description="KRaft controller port of the local stack.")
    sluice_clickhouse_ttl_days: int = Field(default=90, description="TTL of event rows in ClickHouse, in days.")
    sluice_topic_partitions: int = Field(default=6, description="Partitions of the keyed event topics.")
    sluice_replication_factor: int = Field(default=1, description="Replication factor of created topics.")

    @property
    def chdb_path(self) -> Path:
        return self.sluice_home / "clickhouse"
