"""The ``equipwatch`` command."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Sequence
from contextlib import AsyncExitStack
from importlib import resources
from pathlib import Path
from typing import TextIO
from zoneinfo import ZoneInfo

from core.clock import AcceleratedClock, SystemClock
from core.config import MqttSettings, MqttSource, load_config, parse_duration
from core.db import RecordStore, head_revision, prepare, records_url, records_url_for, upgrade
from core.db.engine import describe
from core.db.migrate import inspect_database
from core.db.records import API_ROLES
from core.errors import ConfigError, RecordError, SchemaMismatch, StoreError
from core.store import SqliteStore
from equipwatch.broker import embedded_broker
from equipwatch.export import export_csv, parse_moment
from equipwatch.runtime import Role, Service, Shard, bind_api_socket, run_until
from equipwatch.storage import open_storage
from simulators.fleet import (
    SimulatedFleet,
    default_start,
    fleet_of,
    generate_site,
    load_fleet,
    localize_modbus_endpoints,
    site_yaml,
)
from simulators.scenario import ScenarioRunner, load_scenario

__all__ = ["main", "records_ready"]

log = logging.getLogger("equipwatch")


def sample_config_path() -> Path:
    return Path(str(resources.files("equipwatch") / "sample" / "site.yaml"))


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    for noisy in ("pymodbus", "amqtt", "transitions", "uvicorn.error"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _stop_event() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop


async def _demo(args: argparse.Namespace) -> int:
    site = load_config(args.config)
    site, moved = localize_modbus_endpoints(site)
    stop = _stop_event()
    async with AsyncExitStack() as stack:
        mqtt_url: str = args.mqtt_url or await stack.enter_async_context(embedded_broker())
        zone = ZoneInfo(site.site.timezone)
        sim_start = site.simulation.start or default_start(zone, SystemClock().now())
        speed = args.speed or site.simulation.speed
        sim_clock = AcceleratedClock(sim_start, speed)
        fleet = SimulatedFleet(site, mqtt_url=mqtt_url, clock=sim_clock)
        data_dir: Path = args.data_dir
        store_path = data_dir / "equipwatch.sqlite"
        records_location = records_url(store_path)
        if not await records_ready(records_location, None):
            return 2
        storage = await stack.enter_async_context(
            open_storage(
                site,
                clock=SystemClock(),
                sqlite_path=store_path,
                outbox_path=data_dir / "outbox.sqlite",
            )
        )
        records = await stack.enter_async_context(
            RecordStore.open(records_location, clock=SystemClock())
        )
        await records.sync_devices(site.devices)
        # a fresh admin token each run, so that the printed URLs work at once; a name is never
        # reused, and earlier demo tokens stay listed (and revocable) with `equipwatch token`
        _, token = await records.create_token(
            f"demo-{SystemClock().now():%Y%m%dT%H%M%S}-{os.urandom(2).hex()}", "admin", actor="demo"
        )
        port = site.api.port if args.port is None else args.port  # 0 asks for a free port
        api_socket = bind_api_socket(site.api.host, port, fall_back=True)
        host, port = api_socket.getsockname()[:2]
        service = Service(
            site, storage, records, clock=SystemClock(), mqtt_url=mqtt_url, api_socket=api_socket
        )
        url = f"http://{host}:{port}"
        print(
            f"\nequipwatch demo is running "
            f"({len(fleet.targets)} simulated devices, simulated time x{speed:g}).\n"
            + "".join(f"  Not simulated:    {device_id}\n" for device_id in fleet.skipped)
            + f"  Page:             {url}/  (sign in with the API token below)\n"
            f"  Devices:          {url}/api/v1/devices\n"
            f"  Maintenance due:  {url}/api/v1/maintenance/due\n"
            f"  Alarms:           {url}/api/v1/alarms\n"
            f"  API docs:         {url}/docs\n"
            f"  MQTT broker:      {mqtt_url}"
            + ("" if args.mqtt_url else " (embedded)")
            + "\n"
            + "".join(f"  Modbus {old} simulated at {new}\n" for old, new in moved.items())
            + f"  Data:             {data_dir}\n"
            f"  API token:        {token}  (admin, made for this demo run)\n"
            f"  Try:              curl -H 'Authorization: Bearer {token}' {url}/api/v1/devices\n"
            "Press Ctrl-C to stop.\n",
            flush=True,
        )
        await run_until(stop, fleet.tasks() + service.tasks())
    print("equipwatch demo stopped.", flush=True)
    return 0


async def _simulate(args: argparse.Namespace) -> int:
    if args.config is not None:
        site = load_config(args.config)
        qos = 1
    else:
        settings = {"interval": args.interval} if args.interval else {}
        spec = (
            fleet_of(int(args.fleet), **settings)
            if args.fleet.isdigit()
            else load_fleet(args.fleet).model_copy(update=settings)
        )
        site = generate_site(spec, mqtt_url=args.mqtt_url)
        qos = spec.qos
    stop = _stop_event()
    async with AsyncExitStack() as stack:
        mqtt_url: str = args.mqtt_url or await stack.enter_async_context(embedded_broker())
        if args.config is None and args.mqtt_url is None:
            site = site.model_copy(update={"mqtt": MqttSettings(url=mqtt_url)})
        zone = ZoneInfo(site.site.timezone)
        origin = site.simulation.start or default_start(zone, SystemClock().now())
        clock = AcceleratedClock(origin, args.speed or site.simulation.speed)
        fleet = SimulatedFleet(site, mqtt_url=mqtt_url, clock=clock, qos=qos)
        tasks = fleet.tasks()
        if args.scenario is not None:
            scenario = load_scenario(args.scenario, site, origin)
            runner = ScenarioRunner(scenario, fleet.targets, clock=clock, origin=origin)
            tasks.append(("scenario", runner.run()))
        text = site_yaml(site)
        if args.write_config is not None:
            args.write_config.write_text(text, encoding="utf-8")
            where = f"written to {args.write_config}"
        else:
            print(text, flush=True)
            where = "printed above"
        print(
            f"simulating {len(fleet.targets)} devices from {origin.isoformat()} at "
            f"x{clock.speed:g}; MQTT broker {mqtt_url}; site config {where}",
            file=sys.stderr,
            flush=True,
        )

        async def report() -> None:
            while True:
                await asyncio.sleep(args.stats_every)
                print(f"simulator: {fleet.stats.line()}", file=sys.stderr, flush=True)

        async def deadline() -> None:
            await asyncio.sleep(args.duration)
            stop.set()

        tasks.append(("simulator-stats", report()))
        if args.duration:
            tasks.append(("deadline", deadline()))
        await run_until(stop, tasks)
    print(f"simulator stopped: {fleet.stats.line()}", file=sys.stderr, flush=True)
    return 0


async def _run(args: argparse.Namespace) -> int:
    site = load_config(args.config)
    role = Role(args.role)
    try:
        shard = None if args.shard is None else Shard.parse(args.shard)
    except ValueError as exc:
        print(f"error: --shard: {exc}", file=sys.stderr)
        return 2
    if shard is not None and role is not Role.COLLECTOR:
        print("error: --shard splits collectors; use it with --role collector", file=sys.stderr)
        return 2
    mqtt_url = args.mqtt_url or site.mqtt.url
    mqtt_devices = any(isinstance(d.source, MqttSource) for d in site.devices)
    if role.collects and mqtt_devices and mqtt_url is None:
        print(
            "error: devices publish over MQTT; set mqtt.url in the config or pass --mqtt-url",
            file=sys.stderr,
        )
        return 2
    url = records_url_for(site)
    if not await records_ready(url, args.config):
        return 2
    stop = _stop_event()
    clock = SystemClock()
    async with (
        open_storage(site, clock=clock, collecting=role.collects) as storage,
        RecordStore.open(url, clock=clock, config_file=args.config) as records,
    ):
        if role.evaluates:
            await records.sync_devices(site.devices)
        port = site.api.port if args.port is None else args.port
        api_socket = bind_api_socket(site.api.host, port, fall_back=False)
        service = Service(
            site,
            storage,
            records,
            clock=clock,
            mqtt_url=mqtt_url,
            api_socket=api_socket,
            role=role,
            shard=shard,
            client_id=args.client_id or _client_id(site.mqtt.client_id, role, shard),
        )
        host, port = api_socket.getsockname()[:2]
        what = "the API" if role.serves_api else "/healthz, /readyz and /metrics"
        log.info("%s: serving %s on http://%s:%d", role.value, what, host, port)
        await run_until(stop, service.tasks())
    return 0


def _client_id(configured: str, role: Role, shard: Shard | None) -> str:
    """A collector's MQTT client id: the configured one, told apart per shard, since a broker
    drops the older of two connections with one id (and each shard keeps its own session)."""
    if role is not Role.COLLECTOR or shard is None:
        return configured
    return f"{configured}-{shard.index}of{shard.count}"


def _export(args: argparse.Namespace) -> int:
    site = load_config(args.config)
    zone = ZoneInfo(site.site.timezone)
    try:
        start, end = parse_moment(args.start, zone), parse_moment(args.end, zone)
    except ValueError as exc:
        print(f"error: {exc}; give dates as 2026-11-01 or 2026-11-01T08:00", file=sys.stderr)
        return 2
    if end <= start:
        print("error: --to must be after --from", file=sys.stderr)
        return 2
    known = [d.id for d in site.devices]
    unknown = [d for d in args.device or [] if d not in known]
    if unknown:
        print(f"error: no device {', '.join(unknown)} in {args.config}", file=sys.stderr)
        return 2
    path = Path(args.data if args.data is not None else site.store.path)
    if not path.exists():
        print(f"error: no store at {path}", file=sys.stderr)
        return 2

    async def export(out: TextIO) -> int:
        async with SqliteStore(path) as store:
            return await export_csv(
                store, site, start=start, end=end, device_ids=args.device or known, out=out
            )

    if args.output is None:
        rows = asyncio.run(export(sys.stdout))
    else:
        with args.output.open("w", encoding="utf-8", newline="") as out:
            rows = asyncio.run(export(out))
    print(f"exported {rows} readings", file=sys.stderr)
    return 0


async def records_ready(url: str, config_file: Path | None) -> bool:
    """The records database check for start-up: one without records is brought to the head
    at once; one behind or ahead is refused, and why (with the command to run) goes to
    stderr. False means: do not start."""
    try:
        migration = await prepare(url, config_file)
    except (SchemaMismatch, StoreError) as exc:
        print(f"equipwatch: {exc}", file=sys.stderr)
        return False
    if migration is not None:
        log.info("records database %s created at revision %s", describe(url), migration.after)
    return True


def _records_location(args: argparse.Namespace) -> tuple[str, Path | None]:
    """The records database a ``db`` command works on, and the config that named it."""
    if args.url is not None:
        return records_url(args.url), None
    return records_url_for(load_config(args.config)), args.config


async def _db(args: argparse.Namespace) -> int:
    try:
        url, _ = _records_location(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        if args.db_command == "upgrade":
            migration = await upgrade(url)
            print(
                f"records database {describe(url)}: "
                f"{migration.before or 'empty'} -> {migration.after}"
            )
            return 0
        state = await inspect_database(url)
    except (SchemaMismatch, StoreError) as exc:
        print(f"equipwatch: {exc}", file=sys.stderr)
        return 2
    what = {
        "empty": "no records yet",
        "legacy": f"{state.revision} (the store's record tables, not yet stamped)",
        "versioned": str(state.revision),
        "unrecognised": "tables equipwatch did not create",
    }[state.kind]
    print(f"records database {describe(url)}: {what}; this equipwatch needs {head_revision()}")
    return 0


def _check_config(args: argparse.Namespace) -> int:
    site = load_config(args.file)
    mqtt = sum(isinstance(d.source, MqttSource) for d in site.devices)
    plans = sum(len(site.device_plans(d)) for d in site.devices)
    print(
        f"{args.file}: OK: {len(site.devices)} devices ({mqtt} MQTT, "
        f"{len(site.devices) - mqtt} Modbus), {plans} maintenance plans"
    )
    return 0


def _duration(text: str) -> float:
    try:
        seconds = parse_duration(text)
        assert isinstance(seconds, float)
    except (ValueError, AssertionError) as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration such as 10s or 5m") from exc
    return seconds


def _token_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    token = commands.add_parser("token", help="API tokens: create, list, revoke")
    token_commands = token.add_subparsers(dest="token_command", required=True)
    create = token_commands.add_parser("create", help="make a token; it is printed once")
    create.add_argument("--role", required=True, choices=API_ROLES)
    create.add_argument("--name", required=True, help="who or what holds it, e.g. tom or cmms")
    listing = token_commands.add_parser("list", help="every token (never its secret)")
    revoke = token_commands.add_parser("revoke", help="stop a token from working")
    which = revoke.add_mutually_exclusive_group(required=True)
    which.add_argument("--name")
    which.add_argument("--id", type=int)
    for command in (create, listing, revoke):
        command.add_argument("--config", type=Path, required=True, help="the site configuration")


async def _token(args: argparse.Namespace) -> int:
    url = records_url_for(load_config(args.config))
    if not await records_ready(url, args.config):
        return 2
    try:
        async with RecordStore.open(url, config_file=args.config) as records:
            if args.token_command == "create":
                token_id, token = await records.create_token(args.name, args.role)
                print(token)
                print(
                    f"token {token_id} for {args.name} ({args.role}); it is shown only now: "
                    "keep it where the caller reads it, e.g. a secret store",
                    file=sys.stderr,
                )
            elif args.token_command == "revoke":
                revoked = await records.revoke_token(token_id=args.id, name=args.name)
                print(f"token {revoked.id} ({revoked.name}) is revoked")
            else:
                for item in await records.tokens():
                    state = (
                        f"revoked {item.revoked_at:%Y-%m-%d %H:%M}"
                        if item.revoked_at is not None
                        else "active"
                    )
                    print(
                        f"{item.id:>4}  {item.name:<20} {item.role:<12} "
                        f"created {item.created_at:%Y-%m-%d %H:%M}  {state}"
                    )
    except (RecordError, StoreError) as exc:
        print(f"equipwatch: {exc}", file=sys.stderr)
        return 2
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="equipwatch", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    commands = parser.add_subparsers(dest="command", required=True)

    check = commands.add_parser("check-config", help="validate a site configuration file")
    check.add_argument("file", type=Path)

    demo = commands.add_parser("demo", help="run everything with simulated devices")
    demo.add_argument(
        "--config",
        type=Path,
        default=sample_config_path(),
        help="site configuration (default: the bundled sample)",
    )
    demo.add_argument("--mqtt-url", help="use this broker instead of the embedded one")
    demo.add_argument("--data-dir", default="equipwatch-data", help="where the SQLite file lives")
    demo.add_argument("--speed", type=float, help="how much faster simulated time runs")
    demo.add_argument(
        "--port",
        type=int,
        help="API port; 0 takes a free one (default: the config's)",
    )

    simulate = commands.add_parser(
        "simulate",
        help="run simulated devices: a generated fleet, or the devices of a site config",
    )
    what = simulate.add_mutually_exclusive_group(required=True)
    what.add_argument("--fleet", help="a number of devices, or a fleet file (YAML)")
    what.add_argument("--config", type=Path, help="simulate the devices of this site config")
    simulate.add_argument("--scenario", type=Path, help="scripted events (YAML)")
    simulate.add_argument("--speed", type=float, help="how much faster simulated time runs")
    simulate.add_argument("--mqtt-url", help="broker to publish to (default: an embedded one)")
    simulate.add_argument(
        "--interval", type=_duration, help="how often each device reports (default 10s)"
    )
    simulate.add_argument(
        "--write-config", type=Path, help="write the fleet's site config here, not to stdout"
    )
    simulate.add_argument(
        "--duration", type=_duration, help="stop after this long (real time); default: Ctrl-C"
    )
    simulate.add_argument(
        "--stats-every", type=_duration, default=60.0, help="progress line interval (60s)"
    )

    export = commands.add_parser("export", help="readings as CSV, for a spreadsheet")
    export.add_argument("--config", type=Path, required=True, help="the site configuration")
    export.add_argument("--from", dest="start", required=True, help="2026-11-01 or ISO time")
    export.add_argument("--to", dest="end", required=True, help="end (exclusive)")
    export.add_argument("--device", action="append", help="only this device (repeatable)")
    export.add_argument("--format", choices=["csv"], default="csv")
    export.add_argument("--output", type=Path, help="write here instead of to stdout")
    export.add_argument("--data", type=Path, help="the SQLite store (default: the config's)")

    run = commands.add_parser("run", help="run collectors, rules and API against real devices")
    run.add_argument("--config", type=Path, required=True)
    run.add_argument("--mqtt-url", help="broker URL (default: the config's mqtt.url)")
    run.add_argument(
        "--role",
        choices=[role.value for role in Role],
        default=Role.ALL.value,
        help="run one part only, to split the service over processes (default: all)",
    )
    run.add_argument(
        "--shard",
        help="K/N: this collector polls the Modbus devices whose id hashes to K of N",
    )
    run.add_argument("--port", type=int, help="HTTP port (default: the config's api.port)")
    run.add_argument(
        "--client-id", help="MQTT client id (default: the config's, with the shard appended)"
    )

    db = commands.add_parser("db", help="the records database: migrations")
    db_commands = db.add_subparsers(dest="db_command", required=True)
    for name, text in (
        ("upgrade", "apply the migrations up to this version's head"),
        ("current", "show the revision the records database is at"),
    ):
        command = db_commands.add_parser(name, help=text)
        where = command.add_mutually_exclusive_group(required=True)
        where.add_argument("--config", type=Path, help="the site configuration naming the store")
        where.add_argument("--url", help="a SQLite file, a postgresql:// DSN or a SQLAlchemy URL")
    _token_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "demo":
        args.data_dir = Path(args.data_dir).absolute()
    _setup_logging(args.verbose)
    try:
        if args.command == "check-config":
            return _check_config(args)
        if args.command == "demo":
            return asyncio.run(_demo(args))
        if args.command == "simulate":
            return asyncio.run(_simulate(args))
        if args.command == "export":
            return _export(args)
        if args.command == "db":
            return asyncio.run(_db(args))
        if args.command == "token":
            return asyncio.run(_token(args))
        return asyncio.run(_run(args))
    except ConfigError as exc:
        print(f"equipwatch: the configuration has {len(exc.issues)} problem(s):", file=sys.stderr)
        for issue in exc.issues:
            print(f"  {issue}", file=sys.stderr)
        return 2
