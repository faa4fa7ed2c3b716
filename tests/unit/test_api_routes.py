"""The control API's routing and its contract: paths match templates segment by segment, an
unknown path is 404 and a known one with another method 405 listing the allowed ones, every
route is in openapi.yaml with the scope it needs, and the document's spec schemas are those
of the model that validates specs; the console serves only its own files."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from services.api.app import ApiApp
from services.api.console import ConsoleFileNotFound, console_file
from services.api.openapi_schemas import OPENAPI, render
from services.api.routes import MethodNotAllowed, Route, RouteNotFound, Router

ROUTER = Router([
    Route("GET", "/v1/experiments", "read", "list"),
    Route("POST", "/v1/experiments", "write", "create"),
    Route("GET", "/v1/experiments/{experiment_id}", "read", "get"),
    Route("PUT", "/v1/experiments/{experiment_id}", "write", "update"),
    Route("POST", "/v1/experiments/{experiment_id}/arms/{arm}/retire", "write", "retire"),
])


@pytest.mark.parametrize(("method", "path", "handler", "params"), [
    ("GET", "/v1/experiments", "list", {}),
    ("PUT", "/v1/experiments/exp-1", "update", {"experiment_id": "exp-1"}),
    ("POST", "/v1/experiments/exp-1/arms/b/retire", "retire", {"experiment_id": "exp-1", "arm": "b"}),
])
def test_a_path_selects_its_route_and_names_its_segments(method: str, path: str, handler: str,
                                                         params: dict[str, str]) -> None:
    route, found = ROUTER.match(method, path)
    assert (route.handler, found) == (handler, params)


@pytest.mark.parametrize("path", ["/v1/experiment", "/v1/experiments/", "/v1/experiments/a/b", "/v1/experiments//arms/b/retire",
                                  "/"])
def test_a_path_no_template_fits_is_not_found(path: str) -> None:
    with pytest.raises(RouteNotFound):
        ROUTER.match("GET", path)


@pytest.mark.parametrize(("method", "path", "allowed"), [
    ("DELETE", "/v1/experiments/exp-1", ["GET", "PUT"]),
    ("PUT", "/v1/experiments", ["GET", "POST"]),
    ("GET", "/v1/experiments/exp-1/arms/b/retire", ["POST"]),
])
def test_a_method_a_path_lacks_lists_the_methods_it_has(method: str, path: str, allowed: list[str]) -> None:
    with pytest.raises(MethodNotAllowed) as caught:
        ROUTER.match(method, path)
    assert caught.value.allowed == allowed


def _document() -> dict[str, Any]:
    return yaml.safe_load(OPENAPI.read_text())


def test_every_route_is_in_the_contract_with_the_methods_the_server_has() -> None:
    app = ApiApp(control=None)  # type: ignore[arg-type]  # routing only: no request is served
    served = {t: sorted(m.lower() for m in methods) for t, methods in app.router.templates().items()}
    documented = {path: sorted(k for k in item if k in ("get", "put", "post", "delete", "patch"))
                  for path, item in _document()["paths"].items()}
    assert served == documented


def test_the_contract_says_which_routes_need_no_token() -> None:
    app = ApiApp(control=None)  # type: ignore[arg-type]
    document = _document()
    for route in app.router.routes:
        operation = document["paths"][route.template][route.method.lower()]
        public = operation.get("security", document["security"]) == []
        assert public == (route.scope is None), route.template
        if route.scope is not None:
            assert "401" in operation["responses"] and "403" in operation["responses"], route.template


def test_the_spec_schemas_of_the_contract_are_those_the_server_validates_with() -> None:
    text = OPENAPI.read_text()
    assert render(text) == text, "openapi.yaml is out of date: run python -m services.api.openapi_schemas"


@pytest.mark.parametrize("name", ["index.html", "console.js", "console.css"])
def test_the_console_serves_its_own_files(name: str) -> None:
    body, content_type = console_file(name)
    assert body and content_type.split(b";")[0] in (b"text/html", b"text/javascript", b"text/css")


@pytest.mark.parametrize("name", ["..", ".hidden.js", "../app.py", "app.py", "nope.js", "", "INDEX.HTML"])
def test_the_console_serves_nothing_else(name: str) -> None:
    with pytest.raises(ConsoleFileNotFound, match="not a file of the console"):
        console_file(name)
