"""The one module that talks to pymodbus's client.

pymodbus changes its API between minor versions (``slave=`` became ``device_id=`` in 3.10),
so every call goes through here, and its exceptions become equipwatch's DeviceErrors.
"""

from __future__ import annotations

import asyncio
from typing import Literal

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException, ModbusIOException
from pymodbus.pdu import ModbusPDU

from core.errors import DeviceError, DeviceRefused, DeviceTimeout, DeviceUnreachable

__all__ = ["ModbusEndpoint", "Table"]

Table = Literal["holding", "input", "coil", "discrete"]


class ModbusEndpoint:
    """One TCP connection to one host:port, shared by every unit id behind it.

    Many devices and gateways accept a single connection and one request at a time, so
    requests are serialized by a (first come, first served) lock, and slow RS-485 gateways get
    ``pause`` seconds of quiet after each answer before the next request goes out.

    A request that times out costs only its own ``timeout``: the connection is dropped at once
    (a late answer would otherwise be taken for the next request's, possibly another unit's)
    and the next request, whoever makes it, opens a fresh one. pymodbus's own reconnect task is
    switched off so that it never races with that.
    """

    def __init__(self, host: str, port: int, *, timeout: float, pause: float = 0.0) -> None:
        self.host = host
        self.port = port
        self._client: AsyncModbusTcpClient | None = None  # made in the loop that uses it
        self._lock = asyncio.Lock()
        self._timeout = timeout
        self._pause = pause
        self._quiet_until = 0.0  # loop time before which no request may go out (``pause``)
        self.requests = 0  # requests sent
        self.wait_max = 0.0  # longest a request waited for the connection (lock and pause)

    @property
    def name(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def timeout(self) -> float:
        """The longest a request may wait for its answer (or its connection)."""
        return self._timeout

    @property
    def pause(self) -> float:
        """Quiet seconds between one answer and the next request."""
        return self._pause

    async def read(
        self,
        table: Table,
        address: int,
        count: int,
        unit: int,
        *,
        response_timeout: float | None = None,
    ) -> list[int]:
        """Read ``count`` registers (or bits, as 0/1) starting at zero-based ``address``.

        ``response_timeout`` (the device's own, at most the endpoint's) bounds the connect and
        the answer, each on its own; time spent queued behind other units' requests does not
        count against it, which is why it is a parameter and not the caller's
        ``asyncio.timeout``. Raises DeviceTimeout, DeviceRefused (an exception response; the
        connection stays up) or DeviceUnreachable.
        """
        limit = self._timeout
        if response_timeout is not None:
            limit = min(response_timeout, self._timeout)
        loop = asyncio.get_running_loop()
        queued = loop.time()
        async with self._lock:
            try:
                if self._pause and (quiet := self._quiet_until - loop.time()) > 0:
                    await asyncio.sleep(quiet)
                self.wait_max = max(self.wait_max, loop.time() - queued)
                client = await self._connected(limit)
                self.requests += 1
                async with asyncio.timeout(limit):
                    response = await self._request(client, table, address, count, unit)
            except (TimeoutError, ModbusException) as exc:
                self.close()
                raise self._translate(exc, unit) from exc
            except asyncio.CancelledError:
                self.close()  # the answer may still come: it must not meet the next request
                raise
            finally:
                self._quiet_until = loop.time() + self._pause
        if response.isError():
            code = int(getattr(response, "exception_code", 0))
            raise DeviceRefused(f"{self.name} unit {unit}: exception code {code}", code)
        if table in ("coil", "discrete"):
            return [int(bit) for bit in response.bits[:count]]
        return list(response.registers)

    async def _connected(self, limit: float) -> AsyncModbusTcpClient:
        """The client, connected within ``limit`` seconds or DeviceUnreachable."""
        if self._client is None:
            # pymodbus's own response timeout is the longest any caller may ask for; shorter
            # ones are enforced per request (``response_timeout``)
            self._client = AsyncModbusTcpClient(
                self.host, port=self.port, timeout=self._timeout, retries=0, reconnect_delay=0
            )
        if self._client.connected:
            return self._client
        try:
            async with asyncio.timeout(limit):
                connected = await self._client.connect()
        except TimeoutError as exc:
            self.close()
            raise DeviceUnreachable(f"cannot connect to {self.name}: no answer") from exc
        if not connected:
            raise DeviceUnreachable(f"cannot connect to {self.name}")
        return self._client

    def _translate(self, exc: Exception, unit: int) -> DeviceError:
        if isinstance(exc, TimeoutError | ModbusIOException):
            return DeviceTimeout(f"{self.name} unit {unit}: no answer ({exc or 'timeout'})")
        return DeviceUnreachable(f"{self.name}: {exc}")

    @staticmethod
    async def _request(
        client: AsyncModbusTcpClient, table: Table, address: int, count: int, unit: int
    ) -> ModbusPDU:
        if table == "holding":
            return await client.read_holding_registers(address, count=count, device_id=unit)
        if table == "input":
            return await client.read_input_registers(address, count=count, device_id=unit)
        if table == "coil":
            return await client.read_coils(address, count=count, device_id=unit)
        return await client.read_discrete_inputs(address, count=count, device_id=unit)

    def close(self) -> None:
        """Drop the connection; the next read opens a new one."""
        if self._client is not None:
            self._client.close()
