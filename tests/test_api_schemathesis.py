"""Property-based tests of the whole API from its own OpenAPI document (schemathesis): every
operation, with a valid token, over real HTTP to a uvicorn on a free port, with data in the
store and the records. Valid and invalid requests alike must get no 5xx, and every answer must
match the documented status codes, media types and schemas.

Each operation runs three ways: generated requests that fit the schema; the same with real
ids in the path (so that successes are checked, not only 404s); and requests that break the
schema, which must be refused with a 4xx that is documented too.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
import requests
import schemathesis
import uvicorn
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.core.result import Ok
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from api.app import create_app
from core.clock import ManualClock
from core.db import RecordStore, WorkOrderDraft, records_url, upgrade
from core.records import DeadLetter, FaultEvent, Reading, StatusChange
from core.store import SqliteStore
from tests.support import sample_site
from tests.test_api_support import NOW, rules_standings

EXAMPLES = {GenerationMode.POSITIVE: 25, GenerationMode.NEGATIVE: 15}
REAL_IDS_EXAMPLES = 10
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
REAL_IDS = {
    "device_id": "autoclave-1",
    "work_order_id": 1,
    "alarm_id": 1,
    "metric_id": "autoclave-1.cycles-total",
    "task_id": "1",
}


@dataclass
class Served:
    url: str
    token: str
    observation_id: str


async def _seed(series: SqliteStore, records: RecordStore) -> str:
    readings = [
        Reading(
            "autoclave-1",
            "cycles_total",
            4400 + m,
            NOW - timedelta(minutes=m),
            raw=4400 + m,
            width=32,
        )
        for m in range(1, 120)
    ] + [Reading("fridge-1", "temperature_c", 4.5, NOW - timedelta(minutes=m)) for m in range(60)]
    await series.write(
        [
            *readings,
            FaultEvent("autoclave-1", "DOOR", NOW - timedelta(hours=2)),
            StatusChange("ups-1", False, NOW - timedelta(hours=1), "timeout"),
        ]
    )
    await series.write_dead_letters([DeadLetter("mqtt", "t/x", "{", "bad_json", "x", NOW)])
    order, _ = await records.open_work_order(
        WorkOrderDraft(kind="corrective", device_id="autoclave-1", title="Door seal"), "tom"
    )
    await records.update_work_order(order.id, actor="tom", state="in_progress")
    await records.raise_alarm("autoclave-1", "fault:DOOR", "major", "door open", NOW)
    await records.open_due("autoclave-1-service", "autoclave-1", 0, "meter", "x", None, 4500.0, NOW)
    return f"autoclave-1.cycles-total-{int((NOW - timedelta(minutes=1)).timestamp() * 1000)}"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """The app in uvicorn, on its own event loop in a thread, over stores it opened there."""
    directory = tmp_path_factory.mktemp("schemathesis")
    # IPPROTO_TCP named outright: asyncio sets TCP_NODELAY only on sockets whose protocol
    # says TCP, and without it every answer waits ~40 ms for the client's delayed ACK
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)  # connections wait in the backlog until uvicorn takes them
    port = listener.getsockname()[1]
    seeded = threading.Event()
    found: dict[str, Any] = {}
    stop: list[uvicorn.Server] = []

    async def serve() -> None:
        site = sample_site()
        clock = ManualClock(NOW)
        path = directory / "equipwatch.sqlite"
        async with SqliteStore(path) as series:
            await upgrade(records_url(path))
            async with RecordStore.open(records_url(path), clock=clock) as records:
                _, found["token"] = await records.create_token("fuzzer", "admin")
                found["observation"] = await _seed(series, records)
                app = create_app(
                    site=site,
                    series=series,
                    records=records,
                    clock=clock,
                    plan_standings=rules_standings(site, records, clock),
                )
                config = uvicorn.Config(app, log_level="warning", lifespan="off")
                server = uvicorn.Server(config)
                stop.append(server)
                seeded.set()
                await server.serve(sockets=[listener])

    def run() -> None:
        try:
            asyncio.run(serve())
        finally:
            seeded.set()

    thread = threading.Thread(target=run, name="api-under-test", daemon=True)
    thread.start()
    assert seeded.wait(timeout=60), "the API did not come up"
    assert stop, "the API failed while starting (see the log above)"
    try:
        yield Served(f"http://127.0.0.1:{port}", found["token"], found["observation"])
    finally:
        stop[0].should_exit = True
        thread.join(timeout=30)
        listener.close()


def _run(operation: Any, strategy: Any, examples: int, call: Any) -> list[str]:
    failures: list[str] = []

    @given(case=strategy)
    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    def check(case: Any) -> None:
        try:
            call(case)
        except (AssertionError, FailureGroup) as exc:
            failures.append(f"{operation.label}: {exc}")

    check()
    return failures


def test_every_operation_answers_as_documented_and_never_5xx(served: Served) -> None:
    schema = schemathesis.openapi.from_url(f"{served.url}/openapi.json")
    headers = {"Authorization": f"Bearer {served.token}"}
    session = requests.Session()
    statuses: dict[int, int] = {}

    def call(case: Any) -> None:
        response = case.call(base_url=served.url, headers=headers, session=session)
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
        case.validate_response(response, checks=CHECKS, headers=headers)

    failures: list[str] = []
    operations = []
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), (
            f"the document has an operation schemathesis cannot read: {result}"
        )
        operations.append(result.ok())
    assert len(operations) >= 30
    for operation in operations:
        for mode, examples in EXAMPLES.items():
            try:
                failures += _run(operation, operation.as_strategy(mode), examples, call)
            except Unsatisfiable:
                # nothing in the operation can be broken (no parameters, no body)
                assert mode is GenerationMode.NEGATIVE, operation.label
        names = {p.name for p in operation.path_parameters}
        if names:
            real = {name: REAL_IDS[name] for name in names if name in REAL_IDS}
            if "observation_id" in names:
                real["observation_id"] = served.observation_id
            strategy = operation.as_strategy(GenerationMode.POSITIVE, path_parameters=real)
            failures += _run(operation, strategy, REAL_IDS_EXAMPLES, call)
    assert failures == []
    assert not any(status >= 500 for status in statuses)
    # the fixed ids got through to real answers, not only refusals
    assert statuses.get(200, 0) > 100
    assert statuses.get(404, 0) > 0
    assert statuses.get(422, 0) > 0
