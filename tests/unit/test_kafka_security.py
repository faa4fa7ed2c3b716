"""Kafka security settings from the environment: SASL_SSL with SCRAM and a CA file become the
librdkafka properties every client gets; settings that do not fit together are refused
naming the variable, before any client tries to connect."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from sluice.cli import main
from sluice.config import Settings
from sluice.kafka.clients import admin_config, consumer_config, producer_config
from sluice.kafka.exceptions import KafkaSecurityError
from sluice.kafka.security import PLAINTEXT, KafkaSecurity

VARIABLES = ("KAFKA_BOOTSTRAP", "KAFKA_SECURITY_PROTOCOL", "KAFKA_SASL_MECHANISM", "KAFKA_SASL_USERNAME",
             "KAFKA_SASL_PASSWORD", "KAFKA_SSL_CA_LOCATION")


@pytest.fixture(autouse=True)
def no_kafka_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def ca_file(tmp_path: Path) -> Path:
    path = tmp_path / "ca.pem"
    path.write_text("-----BEGIN CERTIFICATE-----\n")  # only its existence is checked here
    return path


def secured(monkeypatch: pytest.MonkeyPatch, ca_file: Path | None) -> None:
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("KAFKA_SASL_USERNAME", "sluice-worker")
    monkeypatch.setenv("KAFKA_SASL_PASSWORD", "s3cret")
    if ca_file is not None:
        monkeypatch.setenv("KAFKA_SSL_CA_LOCATION", str(ca_file))


def test_sasl_ssl_settings_reach_producers_consumers_and_admin_clients(monkeypatch: pytest.MonkeyPatch,
                                                                        ca_file: Path) -> None:
    secured(monkeypatch, ca_file)
    security = KafkaSecurity.from_environment()
    expected = {"security.protocol": "sasl_ssl", "sasl.mechanism": "SCRAM-SHA-512", "sasl.username": "sluice-worker",
                "sasl.password": "s3cret", "ssl.ca.location": str(ca_file)}
    for config in (producer_config("k:9096", security), consumer_config("k:9096", "g", security),
                   admin_config("k:9096", security)):
        assert {k: config[k] for k in expected} == expected


def test_without_a_ca_file_the_system_trust_store_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    secured(monkeypatch, None)
    monkeypatch.setenv("KAFKA_SASL_MECHANISM", "SCRAM-SHA-256")
    properties = KafkaSecurity.from_environment().client_properties()
    assert "ssl.ca.location" not in properties
    assert properties["sasl.mechanism"] == "SCRAM-SHA-256"


def test_nothing_set_means_plaintext() -> None:
    assert KafkaSecurity.from_settings(Settings()) == PLAINTEXT
    assert PLAINTEXT.client_properties() == {"security.protocol": "plaintext"}


@pytest.mark.parametrize("missing", ["KAFKA_SASL_USERNAME", "KAFKA_SASL_PASSWORD"])
def test_sasl_ssl_without_credentials_is_refused_naming_the_variable(monkeypatch: pytest.MonkeyPatch, ca_file: Path,
                                                                    missing: str) -> None:
    secured(monkeypatch, ca_file)
    monkeypatch.delenv(missing)
    with pytest.raises(KafkaSecurityError, match=f"KAFKA_SECURITY_PROTOCOL=SASL_SSL needs {missing}"):
        KafkaSecurity.from_environment()


def test_a_ca_file_that_does_not_exist_is_refused_naming_the_variable_and_path(monkeypatch: pytest.MonkeyPatch,
                                                                               tmp_path: Path) -> None:
    secured(monkeypatch, tmp_path / "missing-ca.pem")
    with pytest.raises(KafkaSecurityError, match=r"KAFKA_SSL_CA_LOCATION=\S*missing-ca.pem is not a file"):
        KafkaSecurity.from_environment()


def test_credentials_without_sasl_ssl_are_refused_not_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_SASL_USERNAME", "sluice-worker")
    with pytest.raises(KafkaSecurityError, match="KAFKA_SASL_USERNAME is set but KAFKA_SECURITY_PROTOCOL is PLAINTEXT"):
        KafkaSecurity.from_environment()


def test_the_password_stays_out_of_repr() -> None:
    security = KafkaSecurity("SASL_SSL", username="sluice-worker", password="s3cret")
    assert "s3cret" not in repr(security)


def test_the_cli_names_the_bad_variable_in_one_line(tmp_path: Path) -> None:
    env = {"KAFKA_BOOTSTRAP": "127.0.0.1:1", "KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_USERNAME": "w",
           "SLUICE_HOME": str(tmp_path)}
    result = CliRunner().invoke(main, ["topics", "create"], env=env)
    assert result.exit_code == 1
    assert result.output.strip() == "Error: KAFKA_SECURITY_PROTOCOL=SASL_SSL needs KAFKA_SASL_PASSWORD (the SCRAM user's credentials)"


def test_sasl_ssl_for_the_local_plaintext_broker_is_refused(tmp_path: Path) -> None:
    env = {"KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_USERNAME": "w", "KAFKA_SASL_PASSWORD": "p",
           "SLUICE_HOME": str(tmp_path)}
    result = CliRunner().invoke(main, ["worker"], env=env)
    assert result.exit_code == 1
    assert "KAFKA_SECURITY_PROTOCOL=SASL_SSL needs KAFKA_BOOTSTRAP" in result.output
