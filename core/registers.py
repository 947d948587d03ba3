"""Encoding and decoding of Modbus register values.

A Modbus register is a 16-bit word. Multi-register values are laid out big-endian by the
protocol, but devices differ in *word order* (which register holds the most significant word)
and some also swap the two bytes inside each register (*byte order*). This module is the one
place that knows how; the collector decodes with it and the simulators encode with it.
"""

from __future__ import annotations

import struct
from enum import StrEnum

__all__ = ["DataType", "Order", "decode", "encode", "register_count"]


class DataType(StrEnum):
    INT16 = "int16"
    UINT16 = "uint16"
    INT32 = "int32"
    UINT32 = "uint32"
    INT64 = "int64"
    UINT64 = "uint64"
    FLOAT32 = "float32"
    FLOAT64 = "float64"
    STRING = "string"
    BIT = "bit"


class Order(StrEnum):
    BIG = "big"
    LITTLE = "little"


_STRUCT: dict[DataType, tuple[str, int]] = {
    DataType.INT16: (">h", 1),
    DataType.UINT16: (">H", 1),
    DataType.INT32: (">i", 2),
    DataType.UINT32: (">I", 2),
    DataType.INT64: (">q", 4),
    DataType.UINT64: (">Q", 4),
    DataType.FLOAT32: (">f", 2),
    DataType.FLOAT64: (">d", 4),
}


def register_count(data_type: DataType) -> int | None:
    """Registers one value of ``data_type`` occupies; None where the length is configured
    (strings) and 1 for a bit."""
    if data_type is DataType.STRING:
        return None
    if data_type is DataType.BIT:
        return 1
    return _STRUCT[data_type][1]


def _to_words(data: bytes, byte_order: Order, word_order: Order) -> list[int]:
    words = [int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2)]
    if byte_order is Order.LITTLE:
        words = [((w & 0xFF) << 8) | (w >> 8) for w in words]
    if word_order is Order.LITTLE:
        words.reverse()
    return words


def _from_words(words: list[int], byte_order: Order, word_order: Order) -> bytes:
    ordered = list(reversed(words)) if word_order is Order.LITTLE else list(words)
    if byte_order is Order.LITTLE:
        ordered = [((w & 0xFF) << 8) | (w >> 8) for w in ordered]
    return b"".join(w.to_bytes(2, "big") for w in ordered)


def encode(
    value: float | int | str | bool,
    data_type: DataType,
    *,
    byte_order: Order = Order.BIG,
    word_order: Order = Order.BIG,
    count: int | None = None,
) -> list[int]:
    """The registers that carry ``value``. Strings are padded with NULs to ``count`` registers."""
    if data_type is DataType.BIT:
        return [1 if value else 0]
    if data_type is DataType.STRING:
        if count is None:
            raise ValueError("a string needs a register count")
        raw = str(value).encode("ascii")
        if len(raw) > count * 2:
            raise ValueError(f"{value!r} does not fit in {count} registers")
        return _to_words(raw.ljust(count * 2, b"\0"), byte_order, Order.BIG)
    fmt, _ = _STRUCT[data_type]
    if data_type in (DataType.FLOAT32, DataType.FLOAT64):
        data = struct.pack(fmt, float(value))
    else:
        data = struct.pack(fmt, int(value))
    return _to_words(data, byte_order, word_order)


def decode(
    registers: list[int],
    data_type: DataType,
    *,
    byte_order: Order = Order.BIG,
    word_order: Order = Order.BIG,
) -> float | int | str:
    """The value carried by ``registers`` (exactly as many as the type occupies)."""
    if data_type is DataType.BIT:
        return 1 if registers[0] else 0
    if data_type is DataType.STRING:
        return (
            _from_words(registers, byte_order, Order.BIG).rstrip(b"\0 ").decode("ascii", "replace")
        )
    fmt, size = _STRUCT[data_type]
    if len(registers) != size:
        raise ValueError(f"{data_type} needs {size} registers, got {len(registers)}")
    result: float | int = struct.unpack(fmt, _from_words(registers, byte_order, word_order))[0]
    return result
