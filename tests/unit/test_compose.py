"""deploy/compose.yaml: every part of the stack is there, what it mounts exists in the
repository, and `docker compose config` accepts it where a docker client exists."""

from __future__ import annotations

import shutil
import subprocess

import pytest
import yaml

from sluice.config import project_root

DEPLOY = project_root() / "deploy"


def test_the_stack_has_every_service_and_its_mounts_exist() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    assert {"kafka", "clickhouse", "grafana", "prometheus", "worker", "sink", "sidecar", "api"} <= set(services)
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).resolve().exists(), f"{name} mounts {source}, which is missing"
    assert (DEPLOY / "Dockerfile").exists()
    assert services["worker"]["command"][0] == "worker" and services["sidecar"]["command"][0] == "sidecar"
    prom = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.compose.yml").read_text())
    targets = {t for job in prom["scrape_configs"] for c in job["static_configs"] for t in c["targets"]}
    assert targets == {"worker:9465", "sidecar:8088", "api:8090"}


def test_the_sidecar_needs_a_reward_token_and_nothing_is_published_beyond_the_host() -> None:
    services = yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"]
    assert services["sidecar"]["environment"]["SLUICE_SIDECAR_TOKEN"].startswith("${SLUICE_SIDECAR_TOKEN:?")
    for name in ("sidecar", "api"):
        assert all(port.startswith("127.0.0.1:") for port in services[name]["ports"]), name


def test_docker_compose_accepts_it() -> None:
    if shutil.which("docker") is None:
        pytest.skip("no docker client here to run `docker compose config`")
    if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode != 0:
        pytest.skip("the docker client here has no compose plugin (`docker compose version` fails)")
    run = subprocess.run(["docker", "compose", "-f", str(DEPLOY / "compose.yaml"), "config", "--quiet"],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr


@pytest.mark.parametrize("service", ["worker", "sink", "sidecar", "api"])
def test_every_sluice_command_of_the_stack_parses(service: str) -> None:
    """The options a container is started with exist (parsed, not run): the stack's files
    follow the CLI when an option is renamed or removed."""
    from sluice.cli import main

    args = yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"][service]["command"]
    command = main.commands[args[0]]
    command.make_context(args[0], list(args[1:]))  # raises click.UsageError on an unknown option
