"""The control API's route table: path templates, the scope each route needs, and matching
a request to one, or the reason none matches (404 for an unknown path, 405 with the
methods the path does support)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from sluice.tokens import Scope

H = TypeVar("H")


class RouteNotFound(Exception):
    """No route has this path."""


class MethodNotAllowed(Exception):
    """The path exists, not with this method; `allowed` are the methods it has."""

    def __init__(self, method: str, path: str, allowed: list[str]) -> None:
        super().__init__(f"{method} is not allowed on {path}; allowed: {', '.join(allowed)}")
        self.allowed = allowed


@dataclass(frozen=True)
class Route(Generic[H]):
    """`template` is a path whose `{name}` segments match any one non-empty segment;
    `scope` is what a token needs (None: no token, as for /healthz and /metrics)."""

    method: str
    template: str
    scope: Scope | None
    handler: H

    def parameters(self, path: str) -> dict[str, str] | None:
        """The template's named segments in `path`, or None when `path` does not fit it."""
        want, have = self.template.split("/"), path.split("/")
        if len(want) != len(have):
            return None
        found = {}
        for pattern, segment in zip(want, have):
            if pattern.startswith("{") and pattern.endswith("}"):
                if not segment:
                    return None
                found[pattern[1:-1]] = segment
            elif pattern != segment:
                return None
        return found


class Router(Generic[H]):
    def __init__(self, routes: Sequence[Route[H]]) -> None:
        self.routes = list(routes)

    def match(self, method: str, path: str) -> tuple[Route[H], dict[str, str]]:
        """The route for `method` and `path` and its path parameters; raises `RouteNotFound`
        or `MethodNotAllowed`."""
        fitting = [(r, p) for r in self.routes if (p := r.parameters(path)) is not None]
        if not fitting:
            raise RouteNotFound(path)
        for route, params in fitting:
            if route.method == method:
                return route, params
        raise MethodNotAllowed(method, path, sorted({r.method for r, _ in fitting}))

    def templates(self) -> dict[str, list[str]]:
        """Each template and its methods (for the OpenAPI document's test)."""
        out: dict[str, list[str]] = {}
        for r in self.routes:
            out.setdefault(r.template, []).append(r.method)
        return out

