"""The assignment sidecar: the SDK's answers over HTTP for services in any language.

A raw ASGI application (no framework: the request path is a dict lookup, a JSON parse and
the SDK call) served by uvicorn with httptools and uvloop; see `openapi.yaml` beside this
file for the API and `bench/bench_sidecar.py` for why this stack. Every request gets an
answer that never waits on Kafka; a malformed or unknown request gets a 4xx whose message
names the field (a method a path does not have: 405 with `Allow`), and anything else is a
bug (500, logged). What each field takes is checked here, once, as `openapi.yaml` states it.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson
from prometheus_client import CollectorRegistry, generate_latest

from services.asgi import BadRequest, answer_lifespan, read_json_object
from sluice.client.sdk import AssignmentRequestError, Served, SluiceClient, UnknownNameError
from sluice.metrics import DeliveryCollector, SidecarMetrics

log = logging.getLogger(__name__)
MAX_BATCH = 1_000
MAX_BODY_BYTES = 1 << 20
# A serve token writes the serve time in at most 12 hex digits (sluice/core/serve_token.py).
MAX_TIMESTAMP_MS = 16**12 - 1
PARAMETERS = "/v1/parameters/"
PARAMETER_ROUTE = PARAMETERS + "{name}"
GET_ROUTES = ("/healthz", "/readyz", "/metrics")

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
    """Field `name` of `body`, of type `kind`; None when absent or null and not `required`."""
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


def _name(body: dict[str, Any], name: str, *, required: bool = True, where: str = "") -> str | None:
    """A field that names something (an experiment, a unit): a non-empty string."""
    value = _field(body, name, str, required=required, where=where)
    if value == "":
        raise BadRequest(400, f"field '{where}{name}' must not be empty")
    return value


def _timestamp_ms(body: dict[str, Any], where: str = "") -> int | None:
    """The optional event time: epoch milliseconds a serve token can carry."""
    value = _field(body, "timestamp_ms", int, required=False, where=where)
    if value is not None and not 0 <= value <= MAX_TIMESTAMP_MS:
        raise BadRequest(400, f"field '{where}timestamp_ms' must be epoch milliseconds from 0 to {MAX_TIMESTAMP_MS}, "
                              f"not {value}")
    return value


def _status(exc: AssignmentRequestError) -> int:
    return 404 if isinstance(exc, UnknownNameError) else 400


def _context(body: dict[str, Any], where: str = "") -> dict[str, str] | None:
    ctx = _field(body, "context", dict, required=False, where=where)
    if ctx is not None and not all(isinstance(k, str) and isinstance(v, str) for k, v in ctx.items()):
        raise BadRequest(400, f"field '{where}context' must map strings to strings")
    return ctx


@dataclass(frozen=True)
class _AssignRequest:
    """One assignment asked for, its fields checked."""

    experiment: str
    unit_id: str
    entity: str | None
    context: dict[str, str] | None
    timestamp_ms: int | None


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
        # Every POST route by its path template; the GET routes are GET_ROUTES.
        self.routes: dict[str, Callable[[str, dict[str, Any]], Any]] = {
            "/v1/assign": lambda path, req: self.assign(req),
            "/v1/assign/batch": lambda path, req: self.assign_batch(req),
            "/v1/rewards": lambda path, req: self.reward(req),
            PARAMETER_ROUTE: lambda path, req: self.parameter(path.removeprefix(PARAMETERS), req),
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await answer_lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        started = time.perf_counter()
        method, path = scope["method"], scope["path"]
        route = self._route(path)
        extra: list[tuple[bytes, bytes]] = []
        try:
            if route is None:
                raise BadRequest(404, f"{method} {path} is not a route; see openapi.yaml")
            allowed = "GET" if route in GET_ROUTES else "POST"
            if method != allowed:
                extra.append((b"allow", allowed.encode()))
                raise BadRequest(405, f"{method} is not allowed on {path}; allowed: {allowed}")
            if method == "GET":
                status, body, ctype = self._get(path)
            else:
                if route == "/v1/rewards" and self.reward_token is not None and \
                        not _bearer_matches(scope["headers"], self.reward_token):
                    extra.append((b"www-authenticate", b'Bearer realm="sluice-sidecar"'))
                    raise BadRequest(401, "header Authorization: Bearer <the sidecar's reward token> is required "
                                          "(SLUICE_SIDECAR_TOKEN of the sidecar)")
                answer = self.routes[route](path, await read_json_object(receive, MAX_BODY_BYTES))
                status, body, ctype = 200, orjson.dumps(answer), b"application/json"
        except BadRequest as exc:
            status, body, ctype = exc.status, orjson.dumps({"error": str(exc)}), b"application/json"
        except Exception:  # noqa: BLE001 - a bug: logged, answered, and the process keeps serving
            log.exception("%s %s failed", method, path)
            status, body, ctype = 500, b'{"error":"internal error"}', b"application/json"
        route = route or "other"
        headers = [(b"content-type", ctype), (b"content-length", str(len(body)).encode()), *extra]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        self.metrics.requests.labels(route, str(status)).inc()
        self.metrics.duration.labels(route).observe(time.perf_counter() - started)

    def _route(self, path: str) -> str | None:
        """The route template `path` is of, or None (404). A parameter's name may hold '/'."""
        if path in self.routes or path in GET_ROUTES:
            return path
        if path.startswith(PARAMETERS) and len(path) > len(PARAMETERS):
            return PARAMETER_ROUTE
        return None

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

    @staticmethod
    def _assign_request(req: dict[str, Any], where: str = "") -> _AssignRequest:
        return _AssignRequest(_name(req, "experiment", where=where), _name(req, "unit_id", where=where),
                              _field(req, "entity", str, required=False, where=where), _context(req, where),
                              _timestamp_ms(req, where))

    def _assign(self, r: _AssignRequest, where: str = "", *, log: bool = True) -> Served:
        try:
            return self.client.assign(r.experiment, r.unit_id, r.entity, r.context, timestamp_ms=r.timestamp_ms,
                                      log=log)
        except AssignmentRequestError as exc:
            raise BadRequest(_status(exc), f"{where}{exc}") from None

    def assign(self, req: dict[str, Any]) -> dict[str, Any]:
        return self._assign(self._assign_request(req)).to_json()

    def assign_batch(self, req: dict[str, Any]) -> dict[str, Any]:
        """Every request's assignment, or none: all are checked and assigned before any
        serve is logged, so a refused batch logs nothing."""
        items = _field(req, "requests", list)
        if len(items) > MAX_BATCH:
            raise BadRequest(413, f"field 'requests' holds {len(items)} items; at most {MAX_BATCH} per batch")
        for i, item in enumerate(items):
            if not isinstance(item, dict):
                raise BadRequest(400, f"field 'requests[{i}]' must be an object")
        wanted = [self._assign_request(item, f"requests[{i}].") for i, item in enumerate(items)]
        served = [self._assign(r, f"requests[{i}].", log=False) for i, r in enumerate(wanted)]
        for r, s in zip(wanted, served):
            self.client.log_exposure(s, r.context)
        return {"assignments": [s.to_json() for s in served]}

    def parameter(self, name: str, req: dict[str, Any]) -> dict[str, Any]:
        unit_id = _name(req, "unit_id")
        entity = _field(req, "entity", str, required=False)
        experiment = _name(req, "experiment", required=False)
        try:
            value = self.client.get(name, unit_id, entity, _context(req), experiment=experiment,
                                    timestamp_ms=_timestamp_ms(req))
        except AssignmentRequestError as exc:
            raise BadRequest(_status(exc), str(exc)) from None
        return {"name": name, "value": value.value, "assignment": value.assignment.to_json()}

    def reward(self, req: dict[str, Any]) -> dict[str, Any]:
        value = _field(req, "value", (int, float))
        latency_ms = _field(req, "latency_ms", (int, float), required=False)
        if latency_ms is not None and latency_ms < 0:
            raise BadRequest(400, f"field 'latency_ms' must be at least 0, not {latency_ms}")
        try:
            event_id = self.client.log_reward(
                _field(req, "serve_id", str), float(value), experiment=_name(req, "experiment"),
                entity=_field(req, "entity", str, required=False), name=_field(req, "name", str, required=False),
                timestamp_ms=_timestamp_ms(req), latency_ms=latency_ms, error=_field(req, "error", bool, required=False))
        except AssignmentRequestError as exc:
            raise BadRequest(_status(exc), str(exc)) from None
        return {"event_id": event_id}
