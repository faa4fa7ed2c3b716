"""A real MLflow tracking server for the MLflow bridge's tests.

MLflow is a service Sluice talks to over HTTP, like Kafka, not a dependency of Sluice: it
is installed into a virtualenv of its own under the cache folder
(`$SLUICE_CACHE/mlflow-venv-<version>`), with the project's `uv`, once. A stamp file is
written last, so a virtualenv that an interrupted run left half-made has no stamp and is
built again from scratch.

The server runs on a free loopback port with a SQLite store in a temporary folder, in a
process group of its own (its web server may start workers), and is stopped by its pid.
Webhooks are allowed to reach loopback over plain HTTP (MLflow refuses private addresses
and http:// by default, against SSRF), and MLflow's cache of who listens to which event is
kept for one second, so a webhook registered by a test hears the next event.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from sluice.config import Settings
from sluice.local.kafka import free_loopback_ports

from http_support import wait_until_answers  # tests/ is on sys.path wherever this module is imported

MLFLOW_VERSION = "3.17.2"
_STAMP = "sluice-install-complete"


def mlflow_venv(cache: Path | None = None, version: str = MLFLOW_VERSION) -> Path:
    """The virtualenv holding `mlflow==version`, made on first use (a few seconds with a warm
    uv cache). Returns the virtualenv's folder."""
    cache = cache or Settings().sluice_cache
    venv = cache / f"mlflow-venv-{version}"
    stamp = venv / _STAMP
    if stamp.is_file() and stamp.read_text().strip() == version and (venv / "bin" / "mlflow").is_file():
        return venv
    shutil.rmtree(venv, ignore_errors=True)  # half-made by an interrupted run: start again
    uv = Path(sys.executable).parent / "uv"
    uv_command = str(uv) if uv.is_file() else shutil.which("uv")
    if uv_command is None:
        raise RuntimeError(f"no uv beside {sys.executable} nor on PATH, to install mlflow=={version}")
    subprocess.run([uv_command, "venv", "--quiet", "--python", sys.executable, str(venv)], check=True, timeout=120)
    subprocess.run([uv_command, "pip", "install", "--quiet", "--python", str(venv / "bin" / "python"),
                    f"mlflow=={version}"], check=True, timeout=900)
    stamp.write_text(version + "\n")
    return venv


class MlflowServer:
    """`mlflow server` on a free loopback port, its store under `workdir`."""

    def __init__(self, venv: Path, workdir: Path) -> None:
        (self.port,) = free_loopback_ports(1)
        self.url = f"http://127.0.0.1:{self.port}"
        workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = workdir / "mlflow.log"
        self._log = open(self.log_path, "ab")
        env = {**os.environ, "MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS": "true", "MLFLOW_WEBHOOK_ALLOWED_SCHEMES": "http,https",
               "MLFLOW_WEBHOOK_CACHE_TTL": "1", "MLFLOW_WEBHOOK_REQUEST_MAX_RETRIES": "0"}
        self.proc = subprocess.Popen(
            [str(venv / "bin" / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{workdir / 'mlflow.db'}",
             "--default-artifact-root", str(workdir / "artifacts"), "--host", "127.0.0.1", "--port", str(self.port),
             "--workers", "1"],
            env=env, cwd=workdir, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        self._ready = False

    def wait_ready(self, timeout_s: float = 120) -> None:
        """Poll `/health` until it answers 200 (the first start migrates the SQLite store)."""
        wait_until_answers(self.url + "/health", self.proc, "mlflow server", self.log_path, timeout_s, poll_s=0.1)
        self._ready = True

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        """One REST call (`path` after /api/2.0/mlflow/), once the server is ready; the answer's JSON."""
        if not self._ready:
            self.wait_ready()
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(f"{self.url}/api/2.0/mlflow/{path}", data=data, method=method,
                                         headers={"content-type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=30) as resp:
                text = resp.read()
        except urllib.error.HTTPError as exc:
            raise AssertionError(f"{method} {path}: {exc.code} {exc.read().decode()}") from None
        return json.loads(text) if text.strip() else {}

    def logged_run(self, metrics: dict[str, float], tags: dict[str, str] | None = None) -> dict[str, Any]:
        """A finished run in the default experiment with `metrics` and `tags`: the run."""
        run = self.call("POST", "runs/create", {"experiment_id": "0", "start_time": int(time.time() * 1000) - 60_000,
                                               "tags": [{"key": k, "value": v} for k, v in (tags or {}).items()]})["run"]
        run_id = run["info"]["run_id"]
        now = int(time.time() * 1000)
        self.call("POST", "runs/log-batch", {"run_id": run_id, "metrics": [
            {"key": k, "value": v, "timestamp": now, "step": 0} for k, v in metrics.items()]})
        self.call("POST", "runs/update", {"run_id": run_id, "status": "FINISHED", "end_time": now})
        return self.call("GET", f"runs/get?run_id={run_id}")["run"]

    def stop(self) -> None:
        """SIGTERM the server's process group (it and its workers), SIGKILL what is left."""
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self._log.close()
