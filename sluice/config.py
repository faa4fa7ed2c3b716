"""Configuration from the environment, read once at the edge (CLI, services, tests).

Every variable is optional. Running from a source checkout, the defaults keep the local
single-node stack's data in `.data/` and downloads in `.cache/` of the checkout; an
installed package uses per-user folders instead (XDG: `$XDG_STATE_HOME/sluice`, else
`~/.local/state/sluice`; `$XDG_CACHE_HOME/sluice`, else `~/.cache/sluice`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

PACKAGE_DIR = Path(__file__).resolve().parent


def checkout_root() -> Path | None:
    """The source checkout this package runs from, or None when it runs installed.

    A checkout is recognised by `pyproject.toml` and `.git` beside the `sluice` package
    (an editable install points back into its checkout; site-packages has neither).
    """
    root = PACKAGE_DIR.parent
    return root if (root / "pyproject.toml").is_file() and (root / ".git").exists() else None


def project_root() -> Path:
    """The folder that holds the `sluice` package: the checkout when running from one.

    Only a checkout has `deploy/`, `examples/`, `dashboards/` and `tests/` there; what an
    installed package needs at run time ships inside it (`SchemaSet.bundled()`,
    `sluice/local/data/`). Tests, benchmarks and the demo use this; services must not.
    """
    return PACKAGE_DIR.parent


def _xdg_dir(variable: str, fallback: str) -> Path:
    # The XDG base-directory rules: an unset, empty or relative value means the fallback.
    value = os.environ.get(variable, "")
    base = Path(value) if value and os.path.isabs(value) else Path.home() / fallback
    return base / "sluice"


def default_home() -> Path:
    """Default SLUICE_HOME: `.data/` of the checkout, else the per-user state folder."""
    root = checkout_root()
    return root / ".data" if root else _xdg_dir("XDG_STATE_HOME", ".local/state")


def default_cache() -> Path:
    """Default SLUICE_CACHE: `.cache/` of the checkout, else the per-user cache folder."""
    root = checkout_root()
    return root / ".cache" if root else _xdg_dir("XDG_CACHE_HOME", ".cache")


class Settings(BaseSettings):
    """Sluice settings. Environment variables are the field names in upper case."""

    model_config = SettingsConfigDict(env_prefix="", extra="ignore", frozen=True)

    kafka_bootstrap: str | None = Field(
        default=None,
        description="host:port of an existing Kafka cluster; when set, nothing is started locally.",
    )
    kafka_security_protocol: Literal["PLAINTEXT", "SASL_SSL"] = Field(
        default="PLAINTEXT",
        description="How clients reach KAFKA_BOOTSTRAP: PLAINTEXT, or SASL_SSL (TLS, and a SCRAM user's credentials).",
    )
    kafka_sasl_mechanism: Literal["SCRAM-SHA-512", "SCRAM-SHA-256"] = Field(
        default="SCRAM-SHA-512", description="The SCRAM mechanism of KAFKA_SASL_USERNAME, with SASL_SSL.",
    )
    kafka_sasl_username: str | None = Field(default=None, description="SCRAM user name, with SASL_SSL.")
    kafka_sasl_password: SecretStr | None = Field(default=None, description="SCRAM password, with SASL_SSL.")
    kafka_ssl_ca_location: Path | None = Field(
        default=None,
        description="PEM file of the CA that signed the brokers' certificates; unset = the system's trust store.",
    )
    clickhouse_url: str | None = Field(
        default=None,
        description="http(s)://user:pass@host:port/db of a ClickHouse server; unset = the embedded chDB engine.",
    )
    sluice_home: Path = Field(
        default_factory=default_home,
        description="Where the local stack keeps broker data, the embedded ClickHouse and pid files.",
    )
    sluice_cache: Path = Field(
        default_factory=default_cache,
        description="Where downloaded Kafka jars are cached between runs.",
    )
    sluice_kafka_port: int = Field(default=9092, description="Broker port of the local stack.")
    sluice_kafka_controller_port: int = Field(default=9093, description="KRaft controller port of the local stack.")
    sluice_clickhouse_ttl_days: int = Field(default=90, description="TTL of event rows in ClickHouse, in days.")
    sluice_topic_partitions: int = Field(default=6, description="Partitions of the keyed event topics.")
    sluice_replication_factor: int = Field(default=1, description="Replication factor of created topics.")
    sluice_sidecar_token: str | None = Field(
        default=None,
        description="When set, the sidecar's POST /v1/rewards needs `Authorization: Bearer <this>` (forged rewards "
                    "would steer a bandit).",
    )
    sluice_mlflow_tracking_uri: str | None = Field(
        default=None,
        description="http(s)://host:port of an MLflow tracking server: `sluice api` reads from it the model "
                    "versions its webhooks announce; the default --tracking-uri of `sluice models mlflow-sync`.",
    )
    sluice_mlflow_webhook_secret: SecretStr | None = Field(
        default=None,
        description="The secret MLflow signs its webhook deliveries with; when set (with "
                    "SLUICE_MLFLOW_TRACKING_URI), `sluice api` takes them at POST /v1/integrations/mlflow/webhook.",
    )

    @property
    def chdb_path(self) -> Path:
        return self.sluice_home / "clickhouse"
