"""The page's routes: plain Starlette routes that render HTML, with the same roles as the API.

Every page needs a session (else it redirects to /login); every form post needs the session's
CSRF token. Reads admit every role; acknowledging an alarm admits technician, manager and
admin; starting and completing a work order admit technician and admin; the manager view
admits manager and admin (the API's compliance report does the same)."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from api.auth import ADMIN, ALL_ROLES, MANAGER, TECHNICIAN, Role
from api.catalogue import Catalogue
from api.deps import SeriesReader
from api.health import device_health, load_standings, open_alarm_counts
from api.page.charts import Chart, line_chart
from api.page.sessions import PageSession, PageSessions
from api.routes.maintenance import maintenance_due, pm_compliance
from core.clock import Clock
from core.db import RecordStore
from core.db.records import MAX_PAGE, Principal
from core.errors import InvalidRecord, InvalidTransition, NotFound
from core.records import MetricKind
from core.store.models import LatestValue

__all__ = ["ACKNOWLEDGERS", "MANAGERS", "READERS", "WORKERS", "page_routes"]

READERS: tuple[Role, ...] = ALL_ROLES
ACKNOWLEDGERS: tuple[Role, ...] = (TECHNICIAN, MANAGER, ADMIN)
WORKERS: tuple[Role, ...] = (TECHNICIAN, ADMIN)
MANAGERS: tuple[Role, ...] = (MANAGER, ADMIN)

MAX_FORM_BYTES = 64 * 1024
SPARK_WINDOW = timedelta(hours=24)
CHART_WINDOW = timedelta(days=7)
OPEN_STATES = ("open", "in_progress", "on_hold")

_templates = Environment(
    loader=FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=select_autoescape(default=True, default_for_string=True),
    trim_blocks=True,
    lstrip_blocks=True,
)


def _when(moment: datetime | None) -> str:
    return "—" if moment is None else moment.strftime("%Y-%m-%d %H:%M")


def _number(value: float | None) -> str:
    return "—" if value is None else f"{value:,.6g}"


_templates.filters["when"] = _when
_templates.filters["number"] = _number


class PageError(Exception):
    """A request the page refuses, with the status and the reason shown to the user."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Context:
    """What a page handler works with."""

    request: Request
    session: PageSession
    catalogue: Catalogue
    series: SeriesReader
    records: RecordStore
    clock: Clock

    @property
    def principal(self) -> Principal:
        return self.session.principal

    def may(self, roles: tuple[Role, ...]) -> bool:
        return self.principal.role in roles

    def render(self, template: str, status: int = 200, **values: Any) -> HTMLResponse:
        return _render(
            template,
            status,
            session=self.session,
            principal=self.principal,
            may_acknowledge=self.may(ACKNOWLEDGERS),
            may_work=self.may(WORKERS),
            may_manage=self.may(MANAGERS),
            path=self.request.url.path,
            **values,
        )


def _render(template: str, status: int, **values: Any) -> HTMLResponse:
    return HTMLResponse(_templates.get_template(template).render(**values), status_code=status)


def _sessions(request: Request) -> PageSessions:
    sessions: PageSessions = request.app.state.page_sessions
    return sessions


async def _form(request: Request) -> dict[str, str]:
    """The posted form's fields (the first value of each)."""
    body = await request.body()
    if not body:
        return {}
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/x-www-form-urlencoded":
        raise PageError(415, "the form must be posted as application/x-www-form-urlencoded")
    if len(body) > MAX_FORM_BYTES:
        raise PageError(413, f"the form is larger than {MAX_FORM_BYTES:,} bytes")
    try:
        fields = parse_qs(body.decode(), keep_blank_values=True, strict_parsing=False)
    except UnicodeDecodeError as error:
        raise PageError(400, "the form is not UTF-8") from error
    return {name: values[0] for name, values in fields.items()}


def _login_redirect(request: Request) -> RedirectResponse:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"/login?next={quote(target, safe='')}", status_code=303)


def _safe_next(target: str | None) -> str:
    """Only a path on this site: a login must never send the user elsewhere."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


Handler = Callable[[Context], Awaitable[Response]]
FormHandler = Callable[[Context, dict[str, str]], Awaitable[Response]]


def _context(request: Request, session: PageSession) -> Context:
    state = request.app.state
    return Context(request, session, state.catalogue, state.series, state.records, state.clock)


def _refusal(context: Context, roles: tuple[Role, ...]) -> HTMLResponse:
    reason = (
        f"{context.principal.name} has role {context.principal.role}; this needs one of: "
        f"{', '.join(roles)}"
    )
    return context.render("error.html", 403, title="Not allowed", reason=reason)


def _failure(context: Context, error: Exception) -> HTMLResponse:
    if isinstance(error, PageError):
        status, reason = error.status, error.reason
    elif isinstance(error, NotFound):
        status, reason = 404, str(error)
    elif isinstance(error, InvalidTransition):
        status, reason = 409, str(error)
    else:
        status, reason = 422, str(error)
    return context.render("error.html", status, title="Not done", reason=reason)


def page(roles: tuple[Role, ...]) -> Callable[[Handler], Callable[[Request], Awaitable[Response]]]:
    """A GET page for ``roles``: no session redirects to /login; another role is a 403."""

    def wrap(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            session = await _sessions(request).session_of(request)
            if session is None:
                return _login_redirect(request)
            context = _context(request, session)
            if not context.may(roles):
                return _refusal(context, roles)
            try:
                return await handler(context)
            except (PageError, NotFound) as error:
                return _failure(context, error)

        return endpoint

    return wrap


def action(
    roles: tuple[Role, ...],
) -> Callable[[FormHandler], Callable[[Request], Awaitable[Response]]]:
    """A form post for ``roles``: it needs a session and the session's CSRF token."""

    def wrap(handler: FormHandler) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            session = await _sessions(request).session_of(request)
            if session is None:
                return _login_redirect(request)
            context = _context(request, session)
            try:
                form = await _form(request)
            except PageError as error:
                return _failure(context, error)
            if not session.csrf_matches(form.get("csrf")):
                return context.render(
                    "error.html",
                    403,
                    title="Form expired",
                    reason="the form's CSRF token is missing or wrong; reload the page and retry",
                )
            if not context.may(roles):
                return _refusal(context, roles)
            try:
                return await handler(context, form)
            except (PageError, NotFound, InvalidRecord, InvalidTransition) as error:
                return _failure(context, error)

        return endpoint

    return wrap


def _path_id(context: Context, name: str) -> int:
    raw = str(context.request.path_params[name])
    if not raw.isdigit() or len(raw) > 18:
        raise PageError(404, f"{name}: {raw!r} is not an id")
    return int(raw)


# --- login ---------------------------------------------------------------------------------


async def login_form(request: Request) -> Response:
    target = _safe_next(request.query_params.get("next"))
    return _render("login.html", 200, next=target, error=None, principal=None, title="Sign in")


async def login(request: Request) -> Response:
    try:
        form = await _form(request)
    except PageError as error:
        return _render(
            "login.html",
            error.status,
            next="/",
            error=error.reason,
            principal=None,
            title="Sign in",
        )
    target = _safe_next(form.get("next"))
    token = form.get("token", "").strip()
    if not token:
        return _render(
            "login.html",
            400,
            next=target,
            error="enter your API token",
            principal=None,
            title="Sign in",
        )
    sessions = _sessions(request)
    session = await sessions.sign_in(request.app.state.records, token)
    if session is None:
        return _render(
            "login.html",
            401,
            next=target,
            error="that token is unknown or revoked (make one with: equipwatch token create)",
            principal=None,
            title="Sign in",
        )
    response = RedirectResponse(target, status_code=303)
    sessions.set_cookie(request, response, session)
    return response


async def logout(request: Request) -> Response:
    sessions = _sessions(request)
    session = await sessions.session_of(request)
    if session is not None:
        form = await _form(request)
        if not session.csrf_matches(form.get("csrf")):
            context = _context(request, session)
            return context.render(
                "error.html", 403, title="Form expired", reason="the form's CSRF token is wrong"
            )
        sessions.sign_out(session.id)
    response = RedirectResponse("/login", status_code=303)
    sessions.clear_cookie(request, response)
    return response


# --- reading -------------------------------------------------------------------------------


def _first_plotted(metrics: dict[str, MetricKind]) -> tuple[str, MetricKind] | None:
    for name, kind in metrics.items():
        if kind in (MetricKind.GAUGE, MetricKind.COUNTER):
            return name, kind
    return None


async def _chart(
    context: Context,
    device_id: str,
    metric: str,
    kind: MetricKind,
    end: datetime,
    span: timedelta,
    steps: int,
    size: tuple[int, int],
) -> Chart | None:
    start = end - span
    buckets = await context.series.history(
        device_id,
        metric,
        start=start,
        end=end,
        step_seconds=max(60, int(span.total_seconds() // steps)),
        # a counter's level is its last value in a step; a gauge's is its mean
        aggregate="last" if kind is MetricKind.COUNTER else "mean",
    )
    return line_chart(buckets, start, end, width=size[0], height=size[1])


@page(READERS)
async def fleet(context: Context) -> Response:
    query = context.request.query_params
    kind, status, risk = query.get("kind") or "", query.get("status") or "", query.get("risk") or ""
    catalogue = context.catalogue
    now = context.clock.now()
    statuses = await context.series.statuses()
    latest: dict[str, list[LatestValue]] = defaultdict(list)
    for value in await context.series.latest():
        latest[value.device_id].append(value)
    alarms = await open_alarm_counts(context.records)
    standings = await load_standings(context.request, context.records)
    rows = []
    for device in catalogue.devices.values():
        if (kind and device.kind != kind) or (risk and device.risk_class != risk):
            continue
        health = device_health(
            catalogue,
            device,
            statuses.get(device.id),
            latest[device.id],
            alarms[device.id],
            standings,
            now,
        )
        if status and health.status != status:
            continue
        plotted = _first_plotted(catalogue.metrics_of[device.id])
        spark = None
        if plotted is not None:
            spark = await _chart(
                context, device.id, plotted[0], plotted[1], now, SPARK_WINDOW, 48, (120, 28)
            )
        rows.append(
            {
                "device": device,
                "health": health,
                "metric": None if plotted is None else plotted[0],
                "spark": spark,
            }
        )
    return context.render(
        "fleet.html",
        title="Fleet",
        rows=rows,
        kinds=sorted({device.kind for device in catalogue.devices.values()}),
        filters={"kind": kind, "status": status, "risk": risk},
    )


@page(READERS)
async def device_page(context: Context) -> Response:
    device = context.catalogue.device(str(context.request.path_params["device_id"]))
    now = context.clock.now()
    charts = []
    for metric, kind in context.catalogue.metrics_of[device.id].items():
        if kind not in (MetricKind.GAUGE, MetricKind.COUNTER):
            continue
        chart = await _chart(context, device.id, metric, kind, now, CHART_WINDOW, 84, (560, 120))
        charts.append(
            {
                "metric": metric,
                "kind": kind.value,
                "unit": context.catalogue.units_of[device.id].get(metric) or "",
                "chart": chart,
            }
        )
    faults = await context.series.faults(device.id, start=now - CHART_WINDOW, end=now)
    standings = await load_standings(context.request, context.records)
    plans = [
        {"info": info, "standing": standings.get(info.id)}
        for info in context.catalogue.plans_of[device.id]
    ]
    orders = (await context.records.work_orders(device_id=device.id, limit=MAX_PAGE)).items
    alarms = (await context.records.alarms(active=True, device_id=device.id, limit=MAX_PAGE)).items
    return context.render(
        "device.html",
        title=device.id,
        device=device,
        charts=charts,
        faults=faults[-50:],
        plans=plans,
        orders=orders,
        alarms=alarms,
        window_days=CHART_WINDOW.days,
    )


@page(READERS)
async def maintenance(context: Context) -> Response:
    items = []
    cursor: str | None = None
    while True:
        due = await maintenance_due(
            context.request,
            context.principal,
            context.catalogue,
            context.records,
            context.clock,
            within=30,
            status=None,
            device_id=None,
            cursor=cursor,
            limit=100,
        )
        items += due.items
        cursor = due.next_cursor
        if cursor is None:
            break
    return context.render("maintenance.html", title="Maintenance due", items=items)


@page(READERS)
async def alarms_page(context: Context) -> Response:
    alarms = (await context.records.alarms(active=True, limit=MAX_PAGE)).items
    return context.render("alarms.html", title="Alarms", alarms=alarms)


@page(READERS)
async def work_orders_page(context: Context) -> Response:
    orders = []
    for state in OPEN_STATES:
        orders += (await context.records.work_orders(state=state, limit=MAX_PAGE)).items
    orders.sort(key=lambda order: order.id)
    counters = {
        order.id: [
            metric
            for metric, kind in context.catalogue.metrics_of.get(order.device_id, {}).items()
            if kind is MetricKind.COUNTER
        ]
        for order in orders
    }
    return context.render("work_orders.html", title="Work orders", orders=orders, counters=counters)


@page(MANAGERS)
async def manager(context: Context) -> Response:
    report = await pm_compliance(
        context.principal, context.catalogue, context.records, context.clock, None, None
    )
    others = [group for name, group in report.by_risk_class.items() if name != "high"]
    other_due = sum(group.due for group in others)
    other_on_time = sum(group.on_time for group in others)
    other_percent = round(100.0 * other_on_time / other_due, 1) if other_due else None
    standings = await load_standings(context.request, context.records)
    latest = {(value.device_id, value.metric): value for value in await context.series.latest()}
    supplies = []
    for info in context.catalogue.plans.values():
        if info.type != "supplies":
            continue
        standing = standings.get(info.id)
        level = latest.get((info.device.id, info.metric or ""))
        below = getattr(info.plan, "below", None)
        low = level is not None and below is not None and level.value < below
        if low or (standing is not None and standing.status != "ok"):
            supplies.append({"info": info, "level": level, "below": below, "standing": standing})
    return context.render(
        "manager.html",
        title="Manager",
        report=report,
        other={"due": other_due, "on_time": other_on_time, "percent": other_percent},
        supplies=supplies,
    )


# --- changing ------------------------------------------------------------------------------


@action(ACKNOWLEDGERS)
async def acknowledge(context: Context, _: dict[str, str]) -> Response:
    alarm_id = _path_id(context, "alarm_id")
    await context.records.acknowledge_alarm(alarm_id, context.principal.name, context.clock.now())
    return RedirectResponse("/alarms", status_code=303)


@action(WORKERS)
async def start_work_order(context: Context, _: dict[str, str]) -> Response:
    order_id = _path_id(context, "work_order_id")
    await context.records.update_work_order(
        order_id, actor=context.principal.name, state="in_progress"
    )
    return RedirectResponse("/work-orders", status_code=303)


def _counters(context: Context, device_id: str, form: dict[str, str]) -> dict[str, float]:
    known = context.catalogue.metrics_of.get(device_id, {})
    counters: dict[str, float] = {}
    for name, raw in form.items():
        if not name.startswith("counter:") or not raw.strip():
            continue
        metric = name.removeprefix("counter:")
        if known.get(metric) is not MetricKind.COUNTER:
            raise PageError(422, f"counters.{metric}: not a counter of device {device_id!r}")
        try:
            value = float(raw.replace(",", ""))
        except ValueError as error:
            raise PageError(422, f"counters.{metric}: {raw!r} is not a number") from error
        if not math.isfinite(value) or value < 0:
            raise PageError(422, f"counters.{metric}: {raw!r} must be a finite number ≥ 0")
        counters[metric] = value
    return counters


@action(WORKERS)
async def complete_work_order(context: Context, form: dict[str, str]) -> Response:
    order_id = _path_id(context, "work_order_id")
    order = await context.records.work_order(order_id)
    if order is None:
        raise NotFound(f"no work order {order_id}")
    remedy = form.get("remedy_code", "").strip()
    if not remedy:
        raise PageError(422, "remedy_code: say what was done (a remedy code)")
    notes = form.get("notes", "").strip()
    await context.records.complete_work_order(
        order_id,
        actor=context.principal.name,
        completed_at=context.clock.now(),
        counters=_counters(context, order.device_id, form),
        remedy_code=remedy,
        notes=notes or None,
    )
    return RedirectResponse("/work-orders", status_code=303)


def page_routes() -> list[Route]:
    return [
        Route("/login", login_form, methods=["GET"], name="page_login_form"),
        Route("/login", login, methods=["POST"], name="page_login"),
        Route("/logout", logout, methods=["POST"], name="page_logout"),
        Route("/", fleet, methods=["GET"], name="page_fleet"),
        Route("/devices/{device_id}", device_page, methods=["GET"], name="page_device"),
        Route("/maintenance", maintenance, methods=["GET"], name="page_maintenance"),
        Route("/alarms", alarms_page, methods=["GET"], name="page_alarms"),
        Route(
            "/alarms/{alarm_id}/acknowledge",
            acknowledge,
            methods=["POST"],
            name="page_acknowledge",
        ),
        Route("/work-orders", work_orders_page, methods=["GET"], name="page_work_orders"),
        Route(
            "/work-orders/{work_order_id}/start",
            start_work_order,
            methods=["POST"],
            name="page_start_work_order",
        ),
        Route(
            "/work-orders/{work_order_id}/complete",
            complete_work_order,
            methods=["POST"],
            name="page_complete_work_order",
        ),
        Route("/manager", manager, methods=["GET"], name="page_manager"),
    ]
