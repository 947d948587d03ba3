"""A Modbus TCP server hosting simulated devices, one unit id each, on one port (as a gateway
in front of an RS-485 line does).

Every request first brings the addressed device's model to the current simulated time and
rewrites its four tables (coils, discrete inputs, holding and input registers) from the kind's
register map, so a reader always sees the model as it is now. The device's scripted
misbehaviour decides whether it answers at all, late, or with an exception code.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType as SimType
from pymodbus.simulator import SimData, SimDevice

from core.clock import AcceleratedClock
from simulators.behaviour import Behaviour
from simulators.devices.base import DeviceModel
from simulators.devices.registermap import TABLES, encode_tables, table_sizes
from simulators.stats import SimStats

__all__ = ["ModbusSimServer", "ModbusUnit"]

log = logging.getLogger(__name__)

_TABLE_OF_FUNCTION = {1: "coil", 2: "discrete", 3: "holding", 4: "input"}
NO_ANSWER = 3600.0  # real seconds a device that is "offline" keeps a request waiting, at most


@dataclass(slots=True)
class ModbusUnit:
    """One simulated device behind the server."""

    model: DeviceModel
    behaviour: Behaviour = field(default_factory=Behaviour)


class ModbusSimServer:
    def __init__(
        self,
        host: str,
        port: int,
        units: dict[int, ModbusUnit],
        *,
        clock: AcceleratedClock,
        stats: SimStats | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self._clock = clock
        self.stats = stats or SimStats()
        devices = [self._device(unit_id, unit) for unit_id, unit in units.items()]
        self._server = ModbusTcpServer(devices, address=(host, port))

    def _device(self, unit_id: int, unit: ModbusUnit) -> SimDevice:
        sizes = table_sizes(unit.model.register_map)

        def block(table: str) -> list[SimData]:
            # every table gets at least one entry: pymodbus cannot build an empty one
            count = max(sizes[table], 1)
            if table in ("coil", "discrete"):
                return [SimData(address=0, count=count, values=False, datatype=SimType.BITS)]
            return [SimData(address=0, count=count, values=0, datatype=SimType.REGISTERS)]

        coils, discrete, holding, inputs = (block(table) for table in TABLES)
        return SimDevice(
            id=unit_id,
            simdata=(coils, discrete, holding, inputs),
            action=self._action(unit),
        )

    def _action(self, unit: ModbusUnit):  # type: ignore[no-untyped-def]
        clock = self._clock
        stats = self.stats

        async def answer(
            function_code: int,
            start_address: int,
            address: int,
            count: int,
            registers: list[int],
            set_values: list[int] | list[bool] | None,
        ) -> ExcCodes | None:
            now = clock.now()
            behaviour = unit.behaviour
            silent = behaviour.active("offline", now) or behaviour.active("timeout", now)
            if silent is not None:
                stats.unanswered += 1
                wait = NO_ANSWER if silent.end is None else clock.wall_seconds(silent.end)
                await asyncio.sleep(max(wait, 0.05))
                return ExcCodes.DEVICE_FAILURE  # late: the client has long given up
            if (window := behaviour.active("exception", now)) is not None:
                stats.exceptions += 1
                return ExcCodes(window.code)
            if (window := behaviour.active("slow", now)) is not None:
                await asyncio.sleep(window.delay)
            table = _TABLE_OF_FUNCTION.get(function_code)
            if table is None:
                return ExcCodes.ILLEGAL_FUNCTION
            model = unit.model
            model.advance(clock.now())
            image = encode_tables(model.register_map, model.values())[table]
            if table in ("coil", "discrete"):
                image = _pack_bits(image)
            registers[: len(image)] = image
            stats.requests += 1
            return None

        return answer

    async def serve(self) -> None:
        """Serve until cancelled."""
        try:
            await self._server.serve_forever()
        finally:
            await self._server.shutdown()  # type: ignore[no-untyped-call]


def _pack_bits(bits: list[int]) -> list[int]:
    """Bits as pymodbus stores them: sixteen to a register, the first in the lowest bit."""
    words = [0] * ((len(bits) + 15) // 16)
    for index, bit in enumerate(bits):
        if bit:
            words[index // 16] |= 1 << (index % 16)
    return words
