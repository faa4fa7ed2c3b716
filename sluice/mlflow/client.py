"""MLflow's REST API, the few calls the bridge needs, over the standard library.

Sluice does not depend on the `mlflow` package: the tracking server is a service it talks
to over HTTP, as it talks to Kafka. Authentication is MLflow's own client convention:
`MLFLOW_TRACKING_TOKEN` (a bearer token), else `MLFLOW_TRACKING_USERNAME` and
`MLFLOW_TRACKING_PASSWORD` (basic).
"""

from __future__ import annotations

import base64
import json
import os
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from typing import Any

from sluice.mlflow.exceptions import MlflowError, MlflowNotFound

PAGE_SIZE = 1000


class MlflowClient:
    """Read-only calls to the Model Registry and tracking API of `tracking_uri`
    (http(s)://host:port[/prefix])."""

    def __init__(self, tracking_uri: str, *, headers: Mapping[str, str] | None = None, timeout_s: float = 30.0) -> None:
        parsed = urllib.parse.urlparse(tracking_uri)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise MlflowError(f"tracking URI {tracking_uri!r} must be http(s)://host:port of an MLflow server")
        self.tracking_uri = tracking_uri.rstrip("/")
        self._headers = dict(headers or {})
        self._timeout_s = timeout_s

    @classmethod
    def from_environment(cls, tracking_uri: str) -> MlflowClient:
        """A client authenticated as MLflow's own clients are, from the environment."""
        token = os.environ.get("MLFLOW_TRACKING_TOKEN")
        user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
        if token:
            return cls(tracking_uri, headers={"authorization": f"Bearer {token}"})
        if user and password:
            basic = base64.b64encode(f"{user}:{password}".encode()).decode()
            return cls(tracking_uri, headers={"authorization": f"Basic {basic}"})
        return cls(tracking_uri)

    def registered_models(self) -> Iterator[dict[str, Any]]:
        """Every registered model (name, tags, aliases as [{alias, version}])."""
        yield from self._pages("registered-models/search", "registered_models", {})

    def registered_model(self, name: str) -> dict[str, Any]:
        return self._get("registered-models/get", {"name": name})["registered_model"]

    def model_versions(self, name: str) -> Iterator[dict[str, Any]]:
        """Every version of registered model `name` (version, source, run_id, status, tags,
        creation_timestamp; no aliases: those are on the registered model)."""
        quoted = name.replace("\\", "\\\\").replace("'", "\\'")
        yield from self._pages("model-versions/search", "model_versions", {"filter": f"name='{quoted}'"})

    def model_version(self, name: str, version: str) -> dict[str, Any]:
        return self._get("model-versions/get", {"name": name, "version": version})["model_version"]

    def run(self, run_id: str) -> dict[str, Any]:
        """A run: `info` (start_time, end_time, artifact_uri), `data` (metrics, params, tags)
        and `inputs` (dataset_inputs with digest and profile)."""
        return self._get("runs/get", {"run_id": run_id})["run"]

    def _pages(self, path: str, key: str, query: dict[str, str]) -> Iterator[dict[str, Any]]:
        token = None
        while True:
            page = self._get(path, {**query, "max_results": str(PAGE_SIZE), **({"page_token": token} if token else {})})
            yield from page.get(key, [])
            token = page.get("next_page_token")
            if not token:
                return

    def _get(self, path: str, query: dict[str, str]) -> dict[str, Any]:
        url = f"{self.tracking_uri}/api/2.0/mlflow/{path}?{urllib.parse.urlencode(query)}"
        request = urllib.request.Request(url, headers={"accept": "application/json", **self._headers})
        try:
            with urllib.request.urlopen(request, timeout=self._timeout_s) as response:
                body = response.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read()[:2000].decode(errors="replace")
            kind = MlflowNotFound if exc.code == 404 else MlflowError
            raise kind(f"GET {path} on {self.tracking_uri}: HTTP {exc.code}: {detail}") from exc
        except (OSError, ValueError) as exc:
            raise MlflowError(f"GET {path} on {self.tracking_uri}: {exc}") from exc
        try:
            answer = json.loads(body) if body.strip() else {}
        except ValueError as exc:
            raise MlflowError(f"GET {path} on {self.tracking_uri}: the answer is not JSON: {exc}") from exc
        if not isinstance(answer, dict):
            raise MlflowError(f"GET {path} on {self.tracking_uri}: the answer is not a JSON object")
        return answer
