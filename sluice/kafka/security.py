"""How Sluice's Kafka clients authenticate: nothing (PLAINTEXT), or SASL_SSL with SCRAM.

A cluster outside the loopback interface should not let anyone write serves or weight
tables, so every client (producers and consumers, admin, the worker, the sink, the SDK and
the sidecar) builds its librdkafka properties from one `KafkaSecurity`, read once from the
environment at the edge (`KafkaSecurity.from_settings`) and handed down with the bootstrap
address. Invalid combinations fail here, naming the environment variable, rather than as a
timeout deep inside librdkafka.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, get_args

from sluice.config import Settings
from sluice.kafka.exceptions import KafkaSecurityError

SecurityProtocol = Literal["PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["SCRAM-SHA-512", "SCRAM-SHA-256"]


@dataclass(frozen=True)
class KafkaSecurity:
    """The security settings of one cluster. `password` is left out of `repr`, so logging
    a configuration does not leak it. `ca_location` is a PEM file of the CA(s) that signed
    the brokers' certificates; unset, the system's trust store is used."""

    protocol: SecurityProtocol = "PLAINTEXT"
    mechanism: SaslMechanism = "SCRAM-SHA-512"
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ca_location: Path | None = None

    def __post_init__(self) -> None:
        if self.protocol not in get_args(SecurityProtocol):
            raise KafkaSecurityError(
                f"KAFKA_SECURITY_PROTOCOL must be one of {', '.join(get_args(SecurityProtocol))}, "
                f"but {self.protocol!r} is given")
        if self.mechanism not in get_args(SaslMechanism):
            raise KafkaSecurityError(
                f"KAFKA_SASL_MECHANISM must be one of {', '.join(get_args(SaslMechanism))}, "
                f"but {self.mechanism!r} is given")
        if self.protocol == "PLAINTEXT":
            given = [name for name, value in (("KAFKA_SASL_USERNAME", self.username),
                                              ("KAFKA_SASL_PASSWORD", self.password),
                                              ("KAFKA_SSL_CA_LOCATION", self.ca_location)) if value]
            if given:
                # Credentials meant for a secured cluster must not be ignored silently.
                raise KafkaSecurityError(
                    f"{' and '.join(given)} {'is' if len(given) == 1 else 'are'} set but KAFKA_SECURITY_PROTOCOL "
                    "is PLAINTEXT: set KAFKA_SECURITY_PROTOCOL=SASL_SSL to use them")
            return
        missing = [name for name, value in (("KAFKA_SASL_USERNAME", self.username),
                                            ("KAFKA_SASL_PASSWORD", self.password)) if not value]
        if missing:
            raise KafkaSecurityError(
                f"KAFKA_SECURITY_PROTOCOL=SASL_SSL needs {' and '.join(missing)} (the SCRAM user's credentials)")
        if self.ca_location is not None and not self.ca_location.is_file():
            raise KafkaSecurityError(
                f"KAFKA_SSL_CA_LOCATION={self.ca_location} is not a file: expected the PEM file of the CA "
                "that signed the brokers' certificates")

    @classmethod
    def from_settings(cls, settings: Settings) -> KafkaSecurity:
        """The security settings `KAFKA_SECURITY_PROTOCOL`, `KAFKA_SASL_*` and
        `KAFKA_SSL_CA_LOCATION` describe; raises `KafkaSecurityError` naming the variable
        when they do not fit together."""
        password = settings.kafka_sasl_password
        return cls(
            protocol=settings.kafka_security_protocol,
            mechanism=settings.kafka_sasl_mechanism,
            username=settings.kafka_sasl_username,
            password=password.get_secret_value() if password is not None else None,
            ca_location=settings.kafka_ssl_ca_location,
        )

    @classmethod
    def from_environment(cls) -> KafkaSecurity:
        """`from_settings` of the settings in the environment, for programs that embed the SDK."""
        return cls.from_settings(Settings())

    def client_properties(self) -> dict[str, str]:
        """The librdkafka properties of these settings, for any producer, consumer or admin client."""
        if self.protocol == "PLAINTEXT":
            return {"security.protocol": "plaintext"}
        properties = {
            "security.protocol": "sasl_ssl",
            "sasl.mechanism": self.mechanism,
            "sasl.username": str(self.username),
            "sasl.password": str(self.password),
        }
        if self.ca_location is not None:
            properties["ssl.ca.location"] = str(self.ca_location)
        return properties


PLAINTEXT = KafkaSecurity()
