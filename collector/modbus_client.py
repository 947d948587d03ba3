"""The one module that talks to pymodbus's client.

pymodbus changes its API between minor versions (``slave=`` became ``device_id=`` in 3.10),
so every call goes through here, and its exceptions become equipwatch's DeviceErrors.
"""

from __future__ import annotations

import asyncio
from typing import Literal

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException, ModbusIOException

from core.errors import DeviceError, DeviceRefused, DeviceTimeout, DeviceUnreachable

__all__ = ["ModbusEndpoint", "Table"]

Table = Literal["holding", "input", "coil", "discrete"]


class ModbusEndpoint:
    """One TCP connection to one host:port, shared by every unit id behind it.

    Many devices and gateways accept a single connection and one request at a time, so
    requests are serialized by a lock.
    """

    def __init__(self, host: str, port: int, *, timeout: float) -> None:
        self.host = host
        self.port = port
        self._client = AsyncModbusTcpClient(host, port=port, timeout=timeout, retries=0)
        self._lock = asyncio.Lock()
        self._timeout = timeout

    @property
    def name(self) -> str:
        return f"{self.host}:{self.port}"

    async def read(self, table: Table, address: int, count: int, unit: int) -> list[int]:
        """Read ``count`` registers (or bits, as 0/1) starting at zero-based ``address``."""
        async with self._lock:
            try:
                if not self._client.connected:
                    async with asyncio.timeout(self._timeout * 2):
                        connected = await self._client.connect()
                    if not connected:
                        raise DeviceUnreachable(f"cannot connect to {self.name}")
                async with asyncio.timeout(self._timeout * 2):
                    response = await self._request(table, address, count, unit)
            except (TimeoutError, ModbusException) as exc:
                # a late answer would be taken for the next request's: start afresh
                self._client.close()
                raise self._translate(exc, unit) from exc
        if response.isError():
            code = int(getattr(response, "exception_code", 0))
            raise DeviceRefused(f"{self.name} unit {unit}: exception code {code}", code)
        if table in ("coil", "discrete"):
            return [int(bit) for bit in response.bits[:count]]
        return list(response.registers)

    def _translate(self, exc: Exception, unit: int) -> DeviceError:
        if isinstance(exc, TimeoutError | ModbusIOException):
            return DeviceTimeout(f"{self.name} unit {unit}: no answer ({exc or 'timeout'})")
        return DeviceUnreachable(f"{self.name}: {exc}")

    async def _request(self, table: Table, address: int, count: int, unit: int):  # type: ignore[no-untyped-def]
        client = self._client
        if table == "holding":
            return await client.read_holding_registers(address, count=count, device_id=unit)
        if table == "input":
            return await client.read_input_registers(address, count=count, device_id=unit)
        if table == "coil":
            return await client.read_coils(address, count=count, device_id=unit)
        return await client.read_discrete_inputs(address, count=count, device_id=unit)

    def close(self) -> None:
        self._client.close()
