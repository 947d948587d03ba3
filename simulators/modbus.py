"""A Modbus TCP server hosting one or more simulated devices (unit ids).

The registers are refreshed from each device's model on every request, so a reader always sees
the model at the current simulated time.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType as SimType
from pymodbus.simulator import SimData, SimDevice

__all__ = ["ModbusSimServer"]

log = logging.getLogger(__name__)

RegisterImage = Callable[[], list[int]]


class ModbusSimServer:
    def __init__(self, host: str, port: int, units: dict[int, tuple[int, RegisterImage]]) -> None:
        """``units`` maps a unit id to (register count, function returning the register image)."""
        self.host = host
        self.port = port
        devices = [
            SimDevice(
                id=unit,
                simdata=[SimData(address=0, count=count, values=0, datatype=SimType.REGISTERS)],
                action=self._refresher(image),
            )
            for unit, (count, image) in units.items()
        ]
        self._server = ModbusTcpServer(devices, address=(host, port))

    @staticmethod
    def _refresher(image: RegisterImage):  # type: ignore[no-untyped-def]
        async def refresh(
            function_code: int,
            start_address: int,
            address: int,
            count: int,
            registers: list[int],
            set_values: list[int] | list[bool] | None,
        ) -> None:
            words = image()
            registers[: len(words)] = words

        return refresh

    async def serve(self) -> None:
        """Serve until cancelled."""
        try:
            await self._server.serve_forever()
        finally:
            await self._server.shutdown()  # type: ignore[no-untyped-call]
