"""The control API: experiments and their results over HTTP for holders of a token
(`sluice api`).

A raw ASGI application on uvicorn, like the assignment sidecar: a route table, a JSON
parse, a call to the control plane (`services.api.control`), an answer; `openapi.yaml`
beside this file is the contract; the web console's files are served under /console/
(`services.api.console`). Every route but /healthz, /metrics, the console's and the MLflow
webhook (which MLflow signs, `sluice.mlflow.webhook`) needs `Authorization: Bearer
<token>`: a missing, malformed, unknown or revoked token gets 401, a token without the
route's scope 403, and neither reads the body or changes anything. A
malformed request gets a 4xx whose `error` names the field; anything else is a bug (500,
logged).

Optimistic concurrency: every answer that carries a spec carries its version as
`ETag: "<spec_version>"`. A PUT must send the version it read back as `If-Match`
(428 without); the other changes may. A version that is no longer the published one gets
409 with `current_version`.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import Any
from urllib.parse import parse_qs

import orjson
from prometheus_client import CollectorRegistry, generate_latest

from services.api import console
from services.api.control import Actor, ControlPlane, VersionConflict
from services.api.events import events_answer, events_request
from services.api.params import moment_ms
from services.api.routes import MethodNotAllowed, Route, RouteNotFound, Router
from services.asgi import BadRequest, answer_lifespan, json_object, read_body
from sluice.analytics.results import NoResultsError, entity_history, entity_results, weights_as_of
from sluice.clickhouse import ClickHouseError
from sluice.core.spec import ExperimentSpec, SpecError, spec_from_json
from sluice.errors import SluiceError
from sluice.experiments import ExperimentNotFoundError
from sluice.kafka.exceptions import KafkaAdapterError
from sluice.metrics import ApiMetrics
from sluice.mlflow import MlflowWebhookReceiver, WebhookRejected
from sluice.tokens import AuthenticationError, authenticate, grants

log = logging.getLogger(__name__)
# A spec is a few kB; the experiments topic takes at most 1 MB a message.
MAX_BODY_BYTES = 256 * 1024
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
_ETAG = re.compile(r'^(?:W/)?"?([0-9]{1,18})"?$')
_JSON = b"application/json"

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


@dataclass(frozen=True)
class Request:
    params: dict[str, str]
    headers: dict[str, str]
    body: dict[str, Any] | None
    actor: Actor | None
    query: dict[str, list[str]] = field(default_factory=dict)
    raw_body: bytes = b""

    def query_value(self, name: str, *, required: bool = False) -> str | None:
        """The one value of query parameter `name`; 400 if it is repeated, or missing when required."""
        values = self.query.get(name)
        if not values:
            if required:
                raise BadRequest(400, f"query parameter '{name}' is required")
            return None
        if len(values) > 1:
            raise BadRequest(400, f"query parameter '{name}' is given {len(values)} times; give it once")
        return values[0]


@dataclass
class Answer:
    """What a route answers. A `body` given as chunks is streamed (no content-length), each
    chunk read off the event loop as the one before is sent."""

    status: int
    body: bytes | Iterator[bytes]
    content_type: bytes = _JSON
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)


def _spec_answer(spec: ExperimentSpec, status: int = 200) -> Answer:
    headers = [(b"etag", f'"{spec.spec_version}"'.encode())]
    if status == 201:
        headers.append((b"location", f"/v1/experiments/{spec.id}".encode()))
    return Answer(status, orjson.dumps(spec.model_dump(mode="json")), headers=headers)


def _if_match(headers: dict[str, str]) -> int | None:
    """The spec_version the client read, from `If-Match` (as the ETag gave it: "3"); None
    when the request does not say."""
    value = headers.get("if-match")
    if value is None:
        return None
    found = _ETAG.match(value.strip())
    if found is None:
        raise BadRequest(400, f'header If-Match must be one spec_version as the ETag gives it ("3"), not {value!r}')
    return int(found.group(1))


async def _disconnected(receive: Receive) -> None:
    """Return once the client has gone (a request's body, if any, is read by then)."""
    while (await receive())["type"] != "http.disconnect":
        pass


def _only_fields(body: dict[str, Any] | None, known: tuple[str, ...]) -> dict[str, Any]:
    body = body or {}
    unknown = sorted(set(body) - set(known))
    if unknown:
        raise BadRequest(400, f"field '{unknown[0]}' is not known here; known: {', '.join(known) or 'none'}")
    return body


def _optional_entity(body: dict[str, Any] | None) -> str | None:
    entity = _only_fields(body, ("entity",)).get("entity")
    if entity is not None and (not isinstance(entity, str) or not entity):
        raise BadRequest(400, f"field 'entity' must be a non-empty string or absent, not {entity!r}")
    return entity


class ApiApp:
    """ASGI app over a `ControlPlane`; the results routes read `clickhouse` (None: they
    answer 503, results are off)."""

    def __init__(self, control: ControlPlane, registry: CollectorRegistry | None = None, *,
                 clickhouse: Any = None, database: str = "sluice",
                 mlflow_webhook: MlflowWebhookReceiver | None = None) -> None:
        self.control = control
        self.mlflow_webhook = mlflow_webhook
        self.clickhouse = clickhouse
        self.database = database
        self.registry = registry or CollectorRegistry()
        self.metrics = ApiMetrics.create(self.registry)
        exp = "/v1/experiments/{experiment_id}"
        self.router: Router[Callable[[Request], Answer]] = Router([
            Route("GET", "/healthz", None, self.healthz),
            Route("GET", "/metrics", None, self.metrics_text),
            Route("GET", "/v1/experiments", "read", self.list_experiments),
            Route("POST", "/v1/experiments", "write", self.create),
            Route("GET", exp, "read", self.get),
            Route("PUT", exp, "write", self.update),
            Route("POST", f"{exp}/pause", "write", partial(self.set_status, "paused", "pause")),
            Route("POST", f"{exp}/resume", "write", partial(self.set_status, "running", "resume")),
            Route("POST", f"{exp}/stop", "write", partial(self.set_status, "stopped", "stop")),
            Route("POST", f"{exp}/arms/{{arm}}/reinstate", "write", self.reinstate),
            Route("POST", f"{exp}/arms/{{arm}}/retire", "write", self.retire),
            Route("GET", f"{exp}/results", "read", self.results),
            Route("GET", f"{exp}/as-of", "read", self.as_of),
            Route("GET", f"{exp}/history", "read", self.history),
            Route("GET", f"{exp}/events", "read", self.events),
            Route("GET", "/v1/models", "read", self.list_models),
            Route("GET", "/v1/whoami", "read", self.whoami),
            # Authenticated by MLflow's HMAC signature, not a token (MLflow sends no bearer).
            Route("POST", "/v1/integrations/mlflow/webhook", None, self.receive_mlflow_webhook),
            Route("GET", "/", None, self.to_console),
            Route("GET", "/console", None, self.to_console),
            Route("GET", "/console/", None, self.console_file),
            Route("GET", "/console/{file}", None, self.console_file),
        ])

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await answer_lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        started = time.perf_counter()
        method, path = scope["method"], scope["path"]
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        given_id = headers.get("x-request-id", "")
        request_id = given_id if _REQUEST_ID.match(given_id) else uuid.uuid4().hex
        template = "other"
        try:
            route, params = self._match(method, path)
            template = route.template
            actor = self._authorize(route, headers, request_id)
            raw = await read_body(receive, MAX_BODY_BYTES, declared_length=headers.get("content-length", "")) \
                if method in ("POST", "PUT") else b""
            body = json_object(raw, allow_empty=True)
            query = parse_qs(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
            request = Request(params, headers, body, actor, query, raw)
            # Changes wait on Kafka and results on ClickHouse: off the event loop, so other
            # requests keep being answered meanwhile.
            if inspect.iscoroutinefunction(route.handler):
                answer = await route.handler(request)
            else:
                answer = route.handler(request) if route.scope is None else await asyncio.to_thread(route.handler,
                                                                                                      request)
        except BadRequest as exc:
            answer = Answer(exc.status, orjson.dumps({"error": str(exc), **exc.extra}), headers=exc.headers)
        except Exception:  # noqa: BLE001 - a bug: logged, answered, and the process keeps serving
            log.exception("%s %s failed (request %s)", method, path, request_id)
            answer = Answer(500, orjson.dumps({"error": f"internal error (request {request_id})"}))
        if isinstance(answer.body, bytes):
            await send({"type": "http.response.start", "status": answer.status,
                        "headers": [(b"content-type", answer.content_type),
                                    (b"content-length", str(len(answer.body)).encode()),
                                    (b"x-request-id", request_id.encode()), *answer.headers]})
            await send({"type": "http.response.body", "body": answer.body})
        else:
            await self._stream(receive, send, answer, answer.body, request_id, f"{method} {path}")
        self.metrics.requests.labels(template, str(answer.status)).inc()
        self.metrics.duration.labels(template).observe(time.perf_counter() - started)

    @staticmethod
    async def _stream(receive: Receive, send: Send, answer: Answer, chunks: Iterator[bytes], request_id: str,
                      what: str) -> None:
        """Send `chunks` as they are read, until they end or the client goes away. When
        reading fails midway the status is sent by then, so the body is left unended (the
        server drops the connection) and the client sees a broken transfer, not a short file."""
        gone = asyncio.create_task(_disconnected(receive))
        await send({"type": "http.response.start", "status": answer.status,
                    "headers": [(b"content-type", answer.content_type), (b"x-request-id", request_id.encode()),
                                *answer.headers]})
        try:
            while not gone.done() and (chunk := await asyncio.to_thread(next, chunks, None)) is not None:
                if chunk:
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except Exception:  # noqa: BLE001 - logged; the answer is cut short on purpose
            log.exception("%s failed while streaming (request %s)", what, request_id)
            return
        finally:
            gone.cancel()
            with contextlib.suppress(ValueError):  # still running in its thread, if this task was cancelled
                getattr(chunks, "close", lambda: None)()
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    def _match(self, method: str, path: str) -> tuple[Route[Callable[[Request], Answer]], dict[str, str]]:
        try:
            return self.router.match(method, path)
        except RouteNotFound:
            raise BadRequest(404, f"{path} is not a route; see openapi.yaml") from None
        except MethodNotAllowed as exc:
            error = BadRequest(405, str(exc))
            error.headers.append((b"allow", ", ".join(exc.allowed).encode()))
            raise error from None

    def _authorize(self, route: Route[Any], headers: dict[str, str], request_id: str) -> Actor | None:
        """The token's holder, if its token is valid and has the route's scope; else 401 or 403."""
        if route.scope is None:
            return None
        scheme, _, secret = headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not secret.strip():
            raise self._unauthorized("header Authorization: Bearer <token> is required (create one with "
                                     "`sluice tokens create`)")
        try:
            token = authenticate(self.control.tokens(), secret.strip())
        except AuthenticationError as exc:
            raise self._unauthorized(str(exc)) from None
        if not grants(token.scope, route.scope):
            raise BadRequest(403, f"token {token.token_id} has scope {token.scope}; this route needs {route.scope}")
        return Actor(token, request_id)

    @staticmethod
    def _unauthorized(message: str) -> BadRequest:
        error = BadRequest(401, message)
        error.headers.append((b"www-authenticate", b'Bearer realm="sluice"'))
        return error

    # -- routes -----------------------------------------------------------------------
    def healthz(self, request: Request) -> Answer:
        return Answer(200, b'{"status":"ok"}')

    def metrics_text(self, request: Request) -> Answer:
        return Answer(200, generate_latest(self.registry), b"text/plain; version=0.0.4")

    def list_experiments(self, request: Request) -> Answer:
        specs = [s.model_dump(mode="json") for s in self.control.experiments()]
        return Answer(200, orjson.dumps({"experiments": specs}))

    def get(self, request: Request) -> Answer:
        return self._guarded(lambda: self.control.experiment(request.params["experiment_id"]))

    def list_models(self, request: Request) -> Answer:
        """The model registry's versions, of one entity and model type when asked."""
        found = self.control.models(request.query_value("entity"), request.query_value("model_type"))
        return Answer(200, orjson.dumps({"models": [v.public() for v in found]}))

    def whoami(self, request: Request) -> Answer:
        """The token's id, name and scope, and whether it may change experiments (the console
        enables its buttons by it; the change routes decide all the same)."""
        token = self._actor(request).token
        return Answer(200, orjson.dumps({"token_id": token.token_id, "name": token.name, "scope": token.scope,
                                         "may_change": grants(token.scope, "write")}))

    def to_console(self, request: Request) -> Answer:
        """A browser that asks for the API's root (or /console) is sent to the console."""
        return Answer(302, b"", b"text/plain", [(b"location", b"/console/")])

    def console_file(self, request: Request) -> Answer:
        """One of the console's files; /console/ is its page."""
        try:
            body, content_type = console.console_file(request.params.get("file", "index.html"))
        except console.ConsoleFileNotFound as exc:
            raise BadRequest(404, str(exc)) from None
        return Answer(200, body, content_type, list(console.HEADERS))

    async def receive_mlflow_webhook(self, request: Request) -> Answer:
        """An MLflow Model Registry webhook delivery: checked against its signature, then the
        model it names is synced (`sluice.mlflow`) off the event loop."""
        if self.mlflow_webhook is None:
            raise BadRequest(404, "MLflow webhooks are off on this API: start it with SLUICE_MLFLOW_WEBHOOK_SECRET "
                                  "and SLUICE_MLFLOW_TRACKING_URI set")
        try:
            delivery_id = self.mlflow_webhook.verify(request.headers, request.raw_body)
        except WebhookRejected as exc:
            raise BadRequest(401, str(exc)) from None
        try:
            result = await asyncio.to_thread(self.mlflow_webhook.handle, delivery_id, request.body or {})
        except SluiceError as exc:  # MLflow or Kafka unavailable: 503, and MLflow delivers again
            log.warning("MLflow webhook %s not handled: %s", delivery_id, exc)
            raise BadRequest(503, f"delivery {delivery_id} not handled, nothing registered: {exc}") from None
        return Answer(200, orjson.dumps(result))

    def create(self, request: Request) -> Answer:
        if request.body is None:
            raise BadRequest(400, "body is required: the experiment spec as a JSON object")
        spec = self._spec(request.body)
        return self._guarded(lambda: self.control.create(spec, self._actor(request)), "create", status=201)

    def update(self, request: Request) -> Answer:
        experiment_id = request.params["experiment_id"]
        read_version = _if_match(request.headers)
        if read_version is None:
            raise BadRequest(428, 'header If-Match is required: the spec_version you read, as its ETag gave it ("3")')
        body = request.body
        if body is None:
            raise BadRequest(400, "body is required: the whole new experiment spec as a JSON object")
        if body.get("id", experiment_id) != experiment_id:
            raise BadRequest(400, f"field 'id' is {body['id']!r} but the path names {experiment_id!r}; an "
                                  "experiment's id cannot change")
        given = body.get("spec_version", read_version)
        if type(given) is not int or given != read_version:  # noqa: E721 - 3.0 and True are not versions
            raise BadRequest(400, f"field 'spec_version' is {given!r} but If-Match says {read_version}: send "
                                  "the spec as you read it, or leave spec_version out")
        spec = self._spec({**body, "id": experiment_id, "spec_version": read_version})
        return self._guarded(lambda: self.control.update(spec, read_version, self._actor(request)), "update")

    def set_status(self, status: str, action: str, request: Request) -> Answer:
        _only_fields(request.body, ())
        read_version = _if_match(request.headers)
        return self._guarded(lambda: self.control.set_status(request.params["experiment_id"], status, action,
                                                             self._actor(request), read_version), action)

    def reinstate(self, request: Request) -> Answer:
        entity = _optional_entity(request.body)
        read_version = _if_match(request.headers)
        return self._guarded(lambda: self.control.reinstate(request.params["experiment_id"], request.params["arm"],
                                                            entity, self._actor(request), read_version), "reinstate")

    def retire(self, request: Request) -> Answer:
        entity = _optional_entity(request.body)
        read_version = _if_match(request.headers)
        return self._guarded(lambda: self.control.retire(request.params["experiment_id"], request.params["arm"],
                                                         entity, self._actor(request), read_version), "retire")

    def results(self, request: Request) -> Answer:
        spec = self._results_experiment(request)
        entity = request.query_value("entity") or ""
        return self._read_results(lambda: entity_results(self.clickhouse, self.database, spec, entity))

    def as_of(self, request: Request) -> Answer:
        spec = self._results_experiment(request)
        entity = request.query_value("entity") or ""
        at_ms = moment_ms("at", request.query_value("at", required=True) or "")
        return self._read_results(lambda: weights_as_of(self.clickhouse, self.database, spec, entity, at_ms))

    def history(self, request: Request) -> Answer:
        """An entity's tables over time with P(best), and the regret of its traffic (the console's plots)."""
        spec = self._results_experiment(request)
        entity = request.query_value("entity") or ""
        return self._read_results(lambda: entity_history(self.clickhouse, self.database, spec, entity))

    def events(self, request: Request) -> Answer:
        """A page of the experiment's serves, rewards or evaluation dataset, as CSV or parquet,
        streamed (services/api/events.py)."""
        spec = self._results_experiment(request)
        wanted = events_request(spec.id, request.query, request.query_value)
        try:
            page = events_answer(self.clickhouse, self.database, wanted, request.query)
        except ClickHouseError as exc:
            log.warning("events not read: %s", exc)
            raise BadRequest(503, str(exc)) from None
        return Answer(200, page.chunks, page.content_type, page.headers)

    # -- helpers ----------------------------------------------------------------------
    def _results_experiment(self, request: Request) -> ExperimentSpec:
        """The experiment a results route is about, once results are on."""
        if self.clickhouse is None:
            raise BadRequest(503, "results are off: this API was started with --no-results")
        try:
            return self.control.experiment(request.params["experiment_id"])
        except ExperimentNotFoundError as exc:
            raise BadRequest(404, str(exc)) from None

    @staticmethod
    def _read_results(read: Callable[[], dict[str, Any]]) -> Answer:
        try:
            return Answer(200, orjson.dumps(read(), option=orjson.OPT_SERIALIZE_NUMPY))
        except NoResultsError as exc:
            raise BadRequest(404, str(exc)) from None
        except ClickHouseError as exc:
            log.warning("results not read: %s", exc)
            raise BadRequest(503, str(exc)) from None

    @staticmethod
    def _actor(request: Request) -> Actor:
        if request.actor is None:  # the route table gives every change a scope
            raise AssertionError("a change reached its handler without a token")
        return request.actor

    @staticmethod
    def _spec(body: dict[str, Any]) -> ExperimentSpec:
        """The body validated by the model and rules `sluice experiments apply` uses, with no
        type coercion: JSON has types, so a number sent as a string is an error, as the
        contract's schema says."""
        try:
            return spec_from_json(orjson.dumps(body))
        except SpecError as exc:
            raise BadRequest(400, str(exc), problems=list(exc.problems)) from None

    def _guarded(self, call: Callable[[], ExperimentSpec], action: str | None = None, *, status: int = 200) -> Answer:
        """Call the control plane; its refusals become 4xx (503 when Kafka is unavailable)."""
        try:
            before = time.monotonic()
            spec = call()
        except ExperimentNotFoundError as exc:
            raise BadRequest(404, str(exc)) from None
        except VersionConflict as exc:
            raise BadRequest(409, str(exc), current_version=exc.current_version) from None
        except SpecError as exc:  # a change the spec's rules refuse (retiring the default arm)
            raise BadRequest(409, str(exc), problems=list(exc.problems)) from None
        except KafkaAdapterError as exc:
            log.warning("change not published (%.1f s): %s", time.monotonic() - before, exc)
            raise BadRequest(503, f"the change could not be published, nothing changed: {exc}") from None
        if action is not None:
            self.metrics.changes.labels(action).inc()
        return _spec_answer(spec, status)
