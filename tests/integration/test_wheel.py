"""The wheel as production services use it: built from this checkout, installed (not
editable) into a fresh virtualenv, and run from a folder outside the checkout with a bare
environment. The installed package finds its contracts and the broker's pom inside itself,
keeps its data in per-user folders, `sluice up` works, and the SDK connects, assigns, and
logs the serve and a reward."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from sluice.config import project_root
from sluice.experiments import ExperimentRegistry
from sluice.kafka import TopicNames, entity_key, topic_specs
from sluice.kafka.io import read_to_end

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from sidecar_support import publish_table  # noqa: E402
from stream_support import bandit_spec  # noqa: E402

pytestmark = pytest.mark.integration
ROOT = project_root()

# What the installed package reads at run time, and where it keeps its data by default.
PROBE = """
import json, sluice
from sluice.avro import BUNDLED_SCHEMAS, SchemaSet
from sluice.config import Settings, checkout_root
from sluice.local.kafka import LOG4J_CONFIG, POM
from services.api.console import console_file
s = Settings()
print(json.dumps({"package": sluice.__file__, "schemas": str(BUNDLED_SCHEMAS), "names": SchemaSet.bundled().names,
                  "pom": str(POM), "pom_found": POM.is_file(), "log4j_found": LOG4J_CONFIG.is_file(),
                  "console_found": all(console_file(f)[0] for f in ("index.html", "console.js", "console.css")),
                  "checkout": checkout_root() and str(checkout_root()),
                  "home": str(s.sluice_home), "cache": str(s.sluice_cache)}))
"""

# A production service: assign (which logs the serve), log a reward, close.
SERVICE = """
import json, sys
from pathlib import Path
from sluice.client import SluiceClient
bootstrap, prefix, state_dir = sys.argv[1:]
client = SluiceClient.connect(bootstrap, prefix=prefix, state_dir=Path(state_dir), ready_timeout_s=30)
try:
    served = client.assign("exp", "user-42", "site-1")
    client.log_reward(served, 1.0)
finally:
    client.close()
print(json.dumps(served.to_json()))
"""


def run(args: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(args, capture_output=True, text=True, timeout=180, **kwargs)
    assert done.returncode == 0, f"{' '.join(args[:3])}... exit {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv with the wheel of this checkout and its locked dependencies.

    The lock is given as constraints, not requirements: the wheel's own metadata must name
    everything it needs. `make setup` fills uv's cache, so this takes seconds."""
    uv = Path(sys.executable).with_name("uv")
    if not uv.exists():
        pytest.fail(f"{uv} is missing: `make setup` installs uv into the virtualenv")
    work = tmp_path_factory.mktemp("wheel")
    # sdist first, then the wheel from the unpacked sdist: nothing stale from build/ gets
    # in, and the sdist is checked too.
    run([str(uv), "build", "--quiet", "--out-dir", str(work / "dist"), str(ROOT)])
    (wheel,) = (work / "dist").glob("sluice-*.whl")
    run([str(uv), "venv", "--quiet", "--python", sys.executable, str(work / "venv")])
    python = work / "venv" / "bin" / "python"
    run([str(uv), "pip", "install", "--quiet", "--python", str(python), str(wheel), "-c", str(ROOT / "requirements.lock")])
    return work / "venv"


@pytest.fixture
def outside(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A working folder outside the checkout, and a bare environment whose HOME is in it."""
    home = tmp_path / "home"
    home.mkdir()
    return tmp_path, {"PATH": os.defpath, "HOME": str(home), "LANG": "C.UTF-8"}


def test_installed_package_finds_its_files_and_keeps_data_per_user(venv: Path, outside) -> None:
    cwd, env = outside
    probe = json.loads(run([str(venv / "bin" / "python"), "-c", PROBE], cwd=cwd, env=env).stdout)
    site = venv.resolve()
    assert Path(probe["package"]).resolve().is_relative_to(site), "sluice was imported from the checkout, not the wheel"
    assert Path(probe["schemas"]).resolve().is_relative_to(site)
    assert {"io.sluice.ServeEvent", "io.sluice.RewardEvent", "io.sluice.WeightTable"} <= set(probe["names"])
    assert Path(probe["pom"]).resolve().is_relative_to(site) and probe["pom_found"] and probe["log4j_found"]
    assert probe["console_found"]  # the web console `sluice api` serves
    assert probe["checkout"] is None
    assert probe["home"] == env["HOME"] + "/.local/state/sluice"
    assert probe["cache"] == env["HOME"] + "/.cache/sluice"
    for args in (["--help"], ["up", "--help"], ["worker", "--help"], ["sink", "--help"], ["sidecar", "--help"]):
        assert "Usage: sluice" in run([str(venv / "bin" / "sluice"), *args], cwd=cwd, env=env).stdout


def test_installed_sdk_assigns_and_logs_serve_and_reward(venv: Path, outside, kafka_bootstrap: str, topic_prefix: str,
                                                         serde) -> None:
    cwd, env = outside
    # `sluice up` from the wheel: topics on the test broker, ClickHouse tables in the per-user folder.
    up = run([str(venv / "bin" / "sluice"), "up", "--prefix", topic_prefix], cwd=cwd,
             env={**env, "KAFKA_BOOTSTRAP": kafka_bootstrap})
    names = TopicNames(topic_prefix)
    assert f"topics: {len(topic_specs(names))} created, 0 unchanged" in up.stdout, up.stdout
    assert (Path(env["HOME"]) / ".local" / "state" / "sluice" / "clickhouse").is_dir()

    spec = bandit_spec("exp", ["a", "b"])
    with ExperimentRegistry(kafka_bootstrap, topic_prefix, serde) as registry:
        registry.apply(spec)
    publish_table(kafka_bootstrap, topic_prefix, serde, spec, "site-1", [5000, 5000], version=1)

    service = run([str(venv / "bin" / "python"), "-c", SERVICE, kafka_bootstrap, topic_prefix, str(cwd / "sdk-state")],
                  cwd=cwd, env=env)
    served = json.loads(service.stdout.strip().splitlines()[-1])
    assert served["source"] == "table" and served["arm"] in ("a", "b") and served["weights_version"] == 1

    key = entity_key("exp", "site-1")
    serves = [(m.key, serde.decode(m.value, "ServeEvent").record) for m in read_to_end(kafka_bootstrap, [names.serves])]
    rewards = [(m.key, serde.decode(m.value, "RewardEvent").record) for m in read_to_end(kafka_bootstrap, [names.rewards])]
    assert [(k, r["serve_id"], r["arm"], r["unit_id"]) for k, r in serves] == [(key, served["serve_id"], served["arm"], "user-42")]
    assert [(k, r["serve_id"], r["value"]) for k, r in rewards] == [(key, served["serve_id"], 1.0)]
