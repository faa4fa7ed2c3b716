"""`sluice dashboards push` against a real Grafana, where GRAFANA_URL names one."""

from __future__ import annotations

import json
import os

import pytest
from click.testing import CliRunner

from sluice.cli import main
from sluice.config import project_root

pytestmark = pytest.mark.integration


def test_without_grafana_url_the_command_says_what_to_set(monkeypatch) -> None:
    monkeypatch.delenv("GRAFANA_URL", raising=False)
    result = CliRunner().invoke(main, ["dashboards", "push"])
    assert result.exit_code == 1 and "set GRAFANA_URL" in result.output


@pytest.mark.skipif(not os.environ.get("GRAFANA_URL"), reason="no Grafana server here: set GRAFANA_URL (and GRAFANA_TOKEN) to run")
def test_push_provisions_data_sources_and_dashboards() -> None:
    from grafana_client import GrafanaApi

    result = CliRunner().invoke(main, ["dashboards", "push"])
    assert result.exit_code == 0, result.output
    api = GrafanaApi.from_url(os.environ["GRAFANA_URL"], credential=os.environ.get("GRAFANA_TOKEN")
                              or (os.environ["GRAFANA_USER"], os.environ["GRAFANA_PASSWORD"]))
    for path in (project_root() / "dashboards").glob("*.json"):
        uid = json.loads(path.read_text())["uid"]
        assert api.dashboard.get_dashboard(uid)["dashboard"]["uid"] == uid
    assert api.datasource.get_datasource_by_uid("sluice-clickhouse")["uid"] == "sluice-clickhouse"
