"""The assignment sidecar: the SDK's answers over HTTP for services in any language.

A raw ASGI application (no framework: the request path is a dict lookup, a JSON parse and
the SDK call) served by uvicorn with httptools and uvloop; see `openapi.yaml` beside this
file for the API and `bench/bench_sidecar.py` for why this stack. Every request gets an
answer that never waits on Kafka; a malformed or unknown request gets a 4xx whose message
names the field, and anything else is a bug (500, logged).
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from prometheus_client import CollectorRegistry, generate_latest

from services.asgi import BadRequest, answer_lifespan, read_json_object
from sluice.client.sdk import AssignmentRequestError, SluiceClient, UnknownNameError
from sluice.metrics import DeliveryCollector, SidecarMetrics

log = logging.getLogger(__name__)
MAX_BATCH = 1_000
MAX_BODY_BYTES = 1 << 20

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


def _bearer_matches(headers: list[tuple[bytes, bytes]], token: str) -> bool:
    """Whether the request carries `Authorization: Bearer <token>`, compared in constant
    time so the answer's timing tells nothing about how much of a guess was right."""
    presented = next((v for k, v in headers if k.lower() == b"authorization"), b"")
    scheme, _, secret = presented.partition(b" ")
    return scheme.lower() == b"bearer" and hmac.compare_digest(secret.strip(), token.encode())


def _field(body: dict[str, Any], name: str, kind: type | tuple[type, ...], *, required: bool = True,
           where: str = "") -> Any:
    if name not in body or body[name] is None:
        if required:
            raise BadRequest(400, f"field '{where}{name}' is required")
        return None
    value = body[name]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    # JSON true/false are Python bools, which are ints too: accept them only where bool is asked for.
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        raise BadRequest(400, f"field '{where}{name}' must be {' or '.join(k.__name__ for k in kinds)}, "
                              f"not {type(value).__name__}")
    return value


def _status(exc: AssignmentRequestError) -> int:
    return 404 if isinstance(exc, UnknownNameError) else 400


def _context(body: dict[str, Any], where: str = "") -> dict[str, str] | None:
    ctx = _field(body, "context", dict, required=False, where=where)
    if ctx is not None and not all(isinstance(k, str) and isinstance(v, str) for k, v in ctx.items()):
        raise BadRequest(400, f"field '{where}context' must map strings to strings")
    return ctx


class SidecarApp:
    """ASGI app over a `SluiceClient`. With `reward_token`, logging a reward needs it as a
    bearer token (401 without): rewards move a bandit's weights, assignments do not."""

    def __init__(self, client: SluiceClient, registry: CollectorRegistry | None = None, *,
                 reward_token: str | None = None) -> None:
        self.client = client
        self.reward_token = reward_token
        self.registry = registry or CollectorRegistry()
        self.metrics = SidecarMetrics.create(self.registry)
        if client.delivery is not None:
            self.registry.register(DeliveryCollector(client.delivery))
        self.routes: dict[tuple[str, str], Callable[[Any], Any]] = {
            ("POST", "/v1/assign"): self.assign,
            ("POST", "/v1/assign/batch"): self.assign_batch,
            ("POST", "/v1/rewards"): self.reward,
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await answer_lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        started = time.perf_counter()
        method, path = scope["method"], scope["path"]
        route = path
        try:
            if method == "GET" and path in ("/healthz", "/readyz", "/metrics"):
                status, body, ctype = self._get(path)
            else:
                handler = self.routes.get((method, path))
                if handler is None and method == "POST" and path.startswith("/v1/parameters/"):
                    route = "/v1/parameters/{name}"
                    name = path.removeprefix("/v1/parameters/")
                    handler = lambda req: self.parameter(name, req)  # noqa: E731
                if handler is None:
                    known = any(p == path for _, p in self.routes) or path.startswith("/v1/parameters/")
                    raise BadRequest(405 if known else 404,
                                     f"{method} {path} is not a route" + ("" if known else "; see openapi.yaml"))
                if handler == self.reward and self.reward_token is not None and \
                        not _bearer_matches(scope["headers"], self.reward_token):
                    raise BadRequest(401, "header Authorization: Bearer <the sidecar's reward token> is required "
                                          "(SLUICE_SIDECAR_TOKEN of the sidecar)")
                status, body, ctype = 200, orjson.dumps(handler(await read_json_object(receive, MAX_BODY_BYTES))), b"application/json"
        except BadRequest as exc:
            status, body, ctype = exc.status, orjson.dumps({"error": str(exc)}), b"application/json"
            route = route if (method, route) in self.routes or route.startswith("/v1/") else "other"
        except Exception:  # noqa: BLE001 - a bug: logged, answered, and the process keeps serving
            log.exception("%s %s failed", method, path)
            status, body, ctype = 500, b'{"error":"internal error"}', b"application/json"
        headers = [(b"content-type", ctype), (b"content-length", str(len(body)).encode())]
        if status == 401:
            headers.append((b"www-authenticate", b'Bearer realm="sluice-sidecar"'))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        self.metrics.requests.labels(route, str(status)).inc()
        self.metrics.duration.labels(route).observe(time.perf_counter() - started)

    def _get(self, path: str) -> tuple[int, bytes, bytes]:
        if path == "/healthz":
            return 200, b'{"status":"ok"}', b"application/json"
        if path == "/readyz":
            ready = self.client.ready
            body = {"ready": ready, "live": self.client.live, "experiments": len(self.client.specs),
                    "tables": len(self.client.tables)}
            return (200 if ready else 503), orjson.dumps(body), b"application/json"
        self.metrics.tables_loaded.set(len(self.client.tables))
        return 200, generate_latest(self.registry), b"text/plain; version=0.0.4"

    # -- routes ---------------------------------------------------------------------------------

    def _assign_one(self, req: dict[str, Any], where: str = "") -> dict[str, Any]:
        experiment = _field(req, "experiment", str, where=where)
        unit_id = _field(req, "unit_id", str, where=where)
        entity = _field(req, "entity", str, required=False, where=where)
        timestamp = _field(req, "timestamp_ms", int, required=False, where=where)
        try:
            return self.client.assign(experiment, unit_id, entity, _context(req, where),
                                      timestamp_ms=timestamp).to_json()
        except AssignmentRequestError as exc:
            raise BadRequest(_status(exc), f"{where}{exc}") from None

    def assign(self, req: dict[str, Any]) -> dict[str, Any]:
        return self._assign_one(req)

    def assign_batch(self, req: dict[str, Any]) -> dict[str, Any]:
        items = _field(req, "requests", list)
        if len(items) > MAX_BATCH:
            raise BadRequest(413, f"field 'requests' holds {len(items)} items; at most {MAX_BATCH} per batch")
        for i, item in enumerate(items):
            if not isinstance(item, dict):
                raise BadRequest(400, f"field 'requests[{i}]' must be an object")
        return {"assignments": [self._assign_one(item, f"requests[{i}].") for i, item in enumerate(items)]}

    def parameter(self, name: str, req: dict[str, Any]) -> dict[str, Any]:
        unit_id = _field(req, "unit_id", str)
        entity = _field(req, "entity", str, required=False)
        experiment = _field(req, "experiment", str, required=False)
        try:
            value = self.client.get(name, unit_id, entity, _context(req), experiment=experiment,
                                    timestamp_ms=_field(req, "timestamp_ms", int, required=False))
        except AssignmentRequestError as exc:
            raise BadRequest(_status(exc), str(exc)) from None
        return {"name": name, "value": value.value, "assignment": value.assignment.to_json()}

    def reward(self, req: dict[str, Any]) -> dict[str, Any]:
        value = _field(req, "value", (int, float))
        try:
            event_id = self.client.log_reward(
                _field(req, "serve_id", str), float(value), experiment=_field(req, "experiment", str),
                entity=_field(req, "entity", str, required=False), name=_field(req, "name", str, required=False),
                timestamp_ms=_field(req, "timestamp_ms", int, required=False),
                latency_ms=_field(req, "latency_ms", (int, float), required=False),
                error=_field(req, "error", bool, required=False))
        except AssignmentRequestError as exc:
            raise BadRequest(_status(exc), str(exc)) from None
        return {"event_id": event_id}
