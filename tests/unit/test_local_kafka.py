"""The local broker's prerequisites are named when they are missing, and a SASL_SSL listener
that could not work is refused before the broker is formatted."""

from __future__ import annotations

from pathlib import Path

import pytest

from sluice.local.kafka import KafkaBroker, LocalStackError, SaslSslListener, fetch_kafka_jars


def test_missing_java_is_named_with_what_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty PATH: neither java nor mvn
    broker = KafkaBroker(data_dir=tmp_path / "data", cache_dir=tmp_path / "cache")
    with pytest.raises(LocalStackError, match=r"java not found on PATH.*Java 17\+.*apt-get install openjdk-17"):
        broker.start()


def test_missing_maven_is_named_with_what_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(LocalStackError, match=r"mvn not found on PATH.*apt-get install maven"):
        fetch_kafka_jars(tmp_path / "empty-cache")


def test_an_old_java_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_java = tmp_path / "java"
    fake_java.write_text('#!/bin/sh\necho \'openjdk version "11.0.2" 2019-01-15\' >&2\n')
    fake_java.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    broker = KafkaBroker(data_dir=tmp_path / "data", cache_dir=tmp_path / "cache")
    with pytest.raises(LocalStackError, match="version 11; Kafka 4.x needs Java 17"):
        broker.start()


def test_a_sasl_ssl_listener_without_its_keystore_is_refused(tmp_path: Path) -> None:
    with pytest.raises(LocalStackError, match=r"keystore \S*broker.pem is not a file"):
        SaslSslListener(9094, tmp_path / "broker.pem", {"alice": "secret"})


@pytest.mark.parametrize("users", [{}, {"alice": ""}, {"alice": "pass,word"}, {"al ice": "secret"}])
def test_scram_users_the_storage_tool_cannot_take_are_refused(tmp_path: Path, users: dict[str, str]) -> None:
    keystore = tmp_path / "broker.pem"
    keystore.write_text("")
    with pytest.raises(LocalStackError, match="SCRAM user"):
        SaslSslListener(9094, keystore, users)
