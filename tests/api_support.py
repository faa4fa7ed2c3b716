"""Helpers for the control API's tests: `sluice api` on a free port, tokens through the CLI,
requests with headers, and answers checked against openapi.yaml."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from sluice.local.kafka import free_loopback_ports, stop_pid

from http_support import exchange, wait_until_answers  # tests/ is on sys.path wherever this module is imported

ROOT = Path(__file__).resolve().parents[1]
OPENAPI = yaml.safe_load((ROOT / "services" / "api" / "openapi.yaml").read_text())


def check_answer(method: str, template: str, status: int, body: Any) -> None:
    """Validate an answer's JSON body against what openapi.yaml says `method template`
    answers with `status` (which it must list)."""
    responses = OPENAPI["paths"][template][method.lower()]["responses"]
    assert str(status) in responses, f"{method} {template} answered {status}, which openapi.yaml does not list"
    response = responses[str(status)]
    if "$ref" in response:
        response = OPENAPI["components"]["responses"][response["$ref"].rsplit("/", 1)[-1]]
    schema = response["content"]["application/json"]["schema"]
    jsonschema.validate(body, {**schema, "components": OPENAPI["components"]})


def sluice_cli(bootstrap: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sluice.cli", *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "KAFKA_BOOTSTRAP": bootstrap}, cwd=ROOT)


def create_token(bootstrap: str, prefix: str, name: str, scope: str) -> dict[str, Any]:
    """`sluice tokens create --json`: the token's public fields and its secret."""
    run = sluice_cli(bootstrap, "tokens", "create", "--name", name, "--scope", scope, "--prefix", prefix, "--json")
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)


class ApiServer:
    """`sluice api` as a child process on a free loopback port, stopped by pid."""

    def __init__(self, bootstrap: str, prefix: str, home: Path, *args: str) -> None:
        """`home`: its SLUICE_HOME (the embedded ClickHouse of `--results` lives there);
        `args`: more options of `sluice api`. It runs on the embedded engine, as the sink
        inside it is what these tests exercise."""
        (self.port,) = free_loopback_ports(1)
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = home / "api.log"
        self._log = open(self.log_path, "ab")
        env = {k: v for k, v in os.environ.items() if k != "CLICKHOUSE_URL"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sluice.cli", "api", "--prefix", prefix, "--port", str(self.port), *args],
            env={**env, "KAFKA_BOOTSTRAP": bootstrap, "SLUICE_HOME": str(home)}, cwd=ROOT, stdout=self._log,
            stderr=subprocess.STDOUT)

    def wait_ready(self, timeout_s: float = 60) -> None:
        wait_until_answers(self.url + "/healthz", self.proc, "api", self.log_path, timeout_s)

    def request(self, method: str, path: str, body: Any = None, *, token: str | None = None, raw: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, Any, dict[str, str]]:
        """(status, JSON body or text, headers with lower-case names)."""
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        sent = {"content-type": "application/json", **(headers or {})}
        if token is not None:
            sent["authorization"] = f"Bearer {token}"
        status, text, answer_headers = exchange(self.url + path, method, data, sent)
        try:
            return status, json.loads(text), answer_headers
        except ValueError:
            return status, text.decode(), answer_headers

    def stop(self) -> None:
        stop_pid(self.proc.pid, timeout_s=20, process=self.proc)
        self._log.close()


def contract_validator(schema: dict[str, Any]) -> jsonschema.protocols.Validator:
    """A validator of `schema` (a piece of openapi.yaml) as the server reads the contract:
    an integer is written without a fraction (JSON Schema would take 3.0)."""
    integers = jsonschema.Draft202012Validator.TYPE_CHECKER.redefine(
        "integer", lambda _, value: isinstance(value, int) and not isinstance(value, bool))
    kind = jsonschema.validators.extend(jsonschema.Draft202012Validator, type_checker=integers)
    return kind({**schema, "components": OPENAPI["components"]})
