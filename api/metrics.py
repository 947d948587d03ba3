"""The API's own counters: requests by route template and status, and their latency.

Kept in a registry of each app's own (never prometheus_client's global one, which would
refuse a second app in one process, as the tests make many) and appended to the rest of the
process's exposition on ``/metrics``.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["ApiMetrics", "MetricsMiddleware", "route_templates"]

UNMATCHED = "<unmatched>"
"""The route label of a request no route matched, so that random paths cannot grow the
number of series."""

# seconds: the device list is meant to answer in well under 20 ms, history under 50 ms
_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class ApiMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "equipwatch_api_requests",
            "HTTP requests answered by the API, by method, route template and status",
            ("method", "route", "status"),
            registry=self.registry,
        )
        self.latency = Histogram(
            "equipwatch_api_request_duration_seconds",
            "Time from a request's arrival to the end of its answer, by method and route",
            ("method", "route"),
            buckets=_BUCKETS,
            registry=self.registry,
        )

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


def route_templates(routes: Iterable[tuple[str, BaseRoute]]) -> dict[Any, str]:
    """Each endpoint function's full path template, from (full path, route) pairs. The route
    a request reports may be the one its router declared, whose path lacks the prefix it was
    included under; the endpoint is the same either way."""
    return {getattr(route, "endpoint", None): path for path, route in routes}


class MetricsMiddleware:
    """Counts every HTTP request by the route that served it (its template, e.g.
    ``/api/v1/devices/{device_id}``, never the concrete path)."""

    def __init__(self, app: ASGIApp, metrics: ApiMetrics, templates: dict[Any, str]) -> None:
        self.app = app
        self.metrics = metrics
        self.templates = templates

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the server answers when the app fails before it starts one

        async def send_counting(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_counting)
        finally:
            route = scope.get("route")
            template = self.templates.get(getattr(route, "endpoint", None)) or (
                getattr(route, "path", None) or UNMATCHED
            )
            method = scope["method"]
            self.metrics.requests.labels(method, template, str(status)).inc()
            self.metrics.latency.labels(method, template).observe(time.perf_counter() - started)
