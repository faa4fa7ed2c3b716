"""Assignments for the simulator, from the HTTP sidecar as a service in any language would
ask for them."""

from __future__ import annotations

import http.client
from urllib.parse import urlparse

import orjson

from services.simulator import Served


class SidecarAssignments:
    """Assignments from the HTTP sidecar (`POST /v1/assign/batch`), which logs the serves
    itself; one keep-alive connection."""

    def __init__(self, url: str, *, batch: int = 500) -> None:
        parsed = urlparse(url)
        self._conn = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=30)
        self._batch = batch

    def assign(self, experiment: str, entity: str, unit_ids: list[str], timestamps_ms: list[int],
               contexts: list[dict[str, str]] | None = None) -> list[Served]:
        out: list[Served] = []
        for i in range(0, len(unit_ids), self._batch):
            requests = [{"experiment": experiment, "entity": entity, "unit_id": u, "timestamp_ms": t}
                        for u, t in zip(unit_ids[i:i + self._batch], timestamps_ms[i:i + self._batch])]
            if contexts is not None:
                for request, context in zip(requests, contexts[i:i + self._batch]):
                    request["context"] = context
            self._conn.request("POST", "/v1/assign/batch", orjson.dumps({"requests": requests}),
                               {"content-type": "application/json"})
            resp = self._conn.getresponse()
            body = orjson.loads(resp.read())
            if resp.status != 200:
                raise RuntimeError(f"sidecar answered {resp.status}: {body.get('error', body)}")
            out += [Served(a["serve_id"], a["arm"], a["in_experiment"]) for a in body["assignments"]]
        return out

    def close(self) -> None:
        self._conn.close()
