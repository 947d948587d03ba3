"""The ``equipwatch`` command."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from zoneinfo import ZoneInfo

from core.clock import AcceleratedClock, SystemClock
from core.config import MqttSource, load_config
from core.errors import ConfigError
from core.net import free_port
from core.store import SqliteStore
from equipwatch.broker import run_embedded_broker
from equipwatch.runtime import Service, bind_api_socket, run_until
from simulators.fleet import SimulatedFleet, default_start, localize_modbus_endpoints

__all__ = ["main"]

log = logging.getLogger("equipwatch")

BROKER_START_TIMEOUT = 15.0


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
    broker: asyncio.Task[None] | None = None
    mqtt_url: str | None = args.mqtt_url
    try:
        if mqtt_url is None:
            port = free_port()
            started = asyncio.Event()
            broker = asyncio.create_task(
                run_embedded_broker("127.0.0.1", port, started), name="embedded-broker"
            )
            waiter = asyncio.create_task(started.wait())
            await asyncio.wait(
                {broker, waiter}, timeout=BROKER_START_TIMEOUT, return_when=asyncio.FIRST_COMPLETED
            )
            waiter.cancel()
            if broker.done():
                broker.result()  # re-raises why the broker could not start
            if not started.is_set():
                raise RuntimeError("the embedded MQTT broker did not start")
            mqtt_url = f"mqtt://127.0.0.1:{port}"
        zone = ZoneInfo(site.site.timezone)
        sim_start = site.simulation.start or default_start(zone, SystemClock().now())
        speed = args.speed or site.simulation.speed
        sim_clock = AcceleratedClock(sim_start, speed)
        fleet = SimulatedFleet(site, mqtt_url=mqtt_url, clock=sim_clock)
        data_dir: Path = args.data_dir
        async with SqliteStore(data_dir / "equipwatch.sqlite") as store:
            port = site.api.port if args.port is None else args.port  # 0 asks for a free port
            api_socket = bind_api_socket(site.api.host, port, fall_back=True)
            host, port = api_socket.getsockname()[:2]
            service = Service(
                site, store, clock=SystemClock(), mqtt_url=mqtt_url, api_socket=api_socket
            )
            url = f"http://{host}:{port}"
            print(
                f"\nequipwatch demo is running "
                f"({len(site.devices) - len(fleet.skipped)} simulated devices, "
                f"simulated time x{speed:g}).\n"
                + "".join(f"  Not simulated:    {device_id}\n" for device_id in fleet.skipped)
                + f"  Devices:          {url}/api/v1/devices\n"
                f"  Maintenance due:  {url}/api/v1/maintenance/due\n"
                f"  Alarms:           {url}/api/v1/alarms\n"
                f"  API docs:         {url}/docs\n"
                f"  MQTT broker:      {mqtt_url}"
                + ("" if args.mqtt_url else " (embedded)")
                + "\n"
                + "".join(f"  Modbus {old} simulated at {new}\n" for old, new in moved.items())
                + f"  Data:             {data_dir}\n"
                "Press Ctrl-C to stop.\n",
                flush=True,
            )
            await run_until(stop, fleet.tasks() + service.tasks())
    finally:
        if broker is not None:
            broker.cancel()
            await asyncio.gather(broker, return_exceptions=True)
    print("equipwatch demo stopped.", flush=True)
    return 0


async def _run(args: argparse.Namespace) -> int:
    site = load_config(args.config)
    mqtt_url = args.mqtt_url or site.mqtt.url
    if mqtt_url is None and any(isinstance(d.source, MqttSource) for d in site.devices):
        print(
            "error: devices publish over MQTT; set mqtt.url in the config or pass --mqtt-url",
            file=sys.stderr,
        )
        return 2
    stop = _stop_event()
    async with SqliteStore(site.store.path) as store:
        api_socket = bind_api_socket(site.api.host, site.api.port, fall_back=False)
        service = Service(
            site, store, clock=SystemClock(), mqtt_url=mqtt_url, api_socket=api_socket
        )
        host, port = api_socket.getsockname()[:2]
        log.info("serving the API on http://%s:%d", host, port)
        await run_until(stop, service.tasks())
    return 0


def _check_config(args: argparse.Namespace) -> int:
    site = load_config(args.file)
    mqtt = sum(isinstance(d.source, MqttSource) for d in site.devices)
    plans = sum(len(d.plans) for d in site.devices)
    print(
        f"{args.file}: OK: {len(site.devices)} devices ({mqtt} MQTT, "
        f"{len(site.devices) - mqtt} Modbus), {plans} maintenance plans"
    )
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

    run = commands.add_parser("run", help="run collectors, rules and API against real devices")
    run.add_argument("--config", type=Path, required=True)
    run.add_argument("--mqtt-url", help="broker URL (default: the config's mqtt.url)")
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
        return asyncio.run(_run(args))
    except ConfigError as exc:
        print(f"equipwatch: the configuration has {len(exc.issues)} problem(s):", file=sys.stderr)
        for issue in exc.issues:
            print(f"  {issue}", file=sys.stderr)
        return 2
