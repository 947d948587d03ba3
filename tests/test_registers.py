"""Modbus register encoding: exact words, round trips, and agreement with pymodbus."""

from __future__ import annotations

import itertools
import math
from typing import Literal

import pytest
from pymodbus.client import ModbusTcpClient

from core.registers import DataType, Order, decode, encode, register_count

BIG, LITTLE = Order.BIG, Order.LITTLE

# (value, type, byte order, word order, count, words), every word worked out by hand from the
# value's big-endian bytes: byte order swaps the two bytes of each word, word order reverses
# the words.
GOLDEN = [
    pytest.param(0x1234, DataType.UINT16, BIG, BIG, None, [0x1234], id="uint16"),
    pytest.param(0x1234, DataType.UINT16, LITTLE, BIG, None, [0x3412], id="uint16-byte-little"),
    pytest.param(0x1234, DataType.UINT16, BIG, LITTLE, None, [0x1234], id="uint16-word-no-op"),
    pytest.param(-2, DataType.INT16, BIG, BIG, None, [0xFFFE], id="int16-negative"),
    pytest.param(-2, DataType.INT16, LITTLE, BIG, None, [0xFEFF], id="int16-negative-byte-little"),
    pytest.param(
        0x12345678, DataType.UINT32, BIG, BIG, None, [0x1234, 0x5678], id="uint32-big-big"
    ),
    pytest.param(
        0x12345678, DataType.UINT32, BIG, LITTLE, None, [0x5678, 0x1234], id="uint32-word-little"
    ),
    pytest.param(
        0x12345678, DataType.UINT32, LITTLE, BIG, None, [0x3412, 0x7856], id="uint32-byte-little"
    ),
    pytest.param(
        0x12345678, DataType.UINT32, LITTLE, LITTLE, None, [0x7856, 0x3412], id="uint32-both-little"
    ),
    pytest.param(-2, DataType.INT32, BIG, BIG, None, [0xFFFF, 0xFFFE], id="int32-negative"),
    pytest.param(
        -2, DataType.INT32, BIG, LITTLE, None, [0xFFFE, 0xFFFF], id="int32-negative-word-little"
    ),
    pytest.param(
        0x0102030405060708,
        DataType.UINT64,
        BIG,
        BIG,
        None,
        [0x0102, 0x0304, 0x0506, 0x0708],
        id="uint64-big-big",
    ),
    pytest.param(
        0x0102030405060708,
        DataType.UINT64,
        BIG,
        LITTLE,
        None,
        [0x0708, 0x0506, 0x0304, 0x0102],
        id="uint64-word-little",
    ),
    pytest.param(
        0x0102030405060708,
        DataType.UINT64,
        LITTLE,
        BIG,
        None,
        [0x0201, 0x0403, 0x0605, 0x0807],
        id="uint64-byte-little",
    ),
    pytest.param(
        0x0102030405060708,
        DataType.UINT64,
        LITTLE,
        LITTLE,
        None,
        [0x0807, 0x0605, 0x0403, 0x0201],
        id="uint64-both-little",
    ),
    pytest.param(-1, DataType.INT64, BIG, BIG, None, [0xFFFF] * 4, id="int64-minus-one"),
    # 1.0 = 0x3F800000; -2.5 = -1.25 * 2**1 = sign 1, exponent 128, mantissa 0x200000
    pytest.param(1.0, DataType.FLOAT32, BIG, BIG, None, [0x3F80, 0x0000], id="float32-one"),
    pytest.param(
        1.0, DataType.FLOAT32, BIG, LITTLE, None, [0x0000, 0x3F80], id="float32-word-little"
    ),
    pytest.param(
        1.0, DataType.FLOAT32, LITTLE, BIG, None, [0x803F, 0x0000], id="float32-byte-little"
    ),
    pytest.param(-2.5, DataType.FLOAT32, BIG, BIG, None, [0xC020, 0x0000], id="float32-negative"),
    # 1.0 = 0x3FF0000000000000
    pytest.param(1.0, DataType.FLOAT64, BIG, BIG, None, [0x3FF0, 0, 0, 0], id="float64-one"),
    pytest.param(
        1.0, DataType.FLOAT64, BIG, LITTLE, None, [0, 0, 0, 0x3FF0], id="float64-word-little"
    ),
    pytest.param("AB", DataType.STRING, BIG, BIG, 2, [0x4142, 0x0000], id="string-nul-padded"),
    pytest.param("ABC", DataType.STRING, BIG, BIG, 2, [0x4142, 0x4300], id="string-odd-length"),
    pytest.param("ABC", DataType.STRING, LITTLE, BIG, 2, [0x4241, 0x0043], id="string-byte-little"),
    pytest.param(
        "ABCD", DataType.STRING, BIG, LITTLE, 2, [0x4142, 0x4344], id="string-ignores-word-order"
    ),
    pytest.param(True, DataType.BIT, BIG, BIG, None, [1], id="bit-true"),
    pytest.param(False, DataType.BIT, BIG, BIG, None, [0], id="bit-false"),
]


@pytest.mark.parametrize(
    ("value", "data_type", "byte_order", "word_order", "count", "words"), GOLDEN
)
def test_encode_golden(
    value: float | int | str | bool,
    data_type: DataType,
    byte_order: Order,
    word_order: Order,
    count: int | None,
    words: list[int],
) -> None:
    assert encode(value, data_type, byte_order=byte_order, word_order=word_order, count=count) == (
        words
    )


@pytest.mark.parametrize(
    ("value", "data_type", "byte_order", "word_order", "count", "words"), GOLDEN
)
def test_decode_golden(
    value: float | int | str | bool,
    data_type: DataType,
    byte_order: Order,
    word_order: Order,
    count: int | None,
    words: list[int],
) -> None:
    assert decode(words, data_type, byte_order=byte_order, word_order=word_order) == value


# One value per type, chosen to use every byte and the sign where there is one.
ROUND_TRIP_VALUES: dict[DataType, float | int | str] = {
    DataType.INT16: -12345,
    DataType.UINT16: 54321,
    DataType.INT32: -123456789,
    DataType.UINT32: 3_000_000_001,
    DataType.INT64: -(2**62) + 7,
    DataType.UINT64: 2**64 - 3,
    DataType.FLOAT32: -1234.5,  # exactly representable in 32 bits
    DataType.FLOAT64: math.pi,
    DataType.STRING: "EW-42",
    DataType.BIT: 1,
}
STRING_COUNT = 4


def test_round_trip_covers_every_type() -> None:
    assert set(ROUND_TRIP_VALUES) == set(DataType)


@pytest.mark.parametrize(
    ("data_type", "byte_order", "word_order"),
    list(itertools.product(DataType, Order, Order)),
    ids=str,
)
def test_round_trip(data_type: DataType, byte_order: Order, word_order: Order) -> None:
    value = ROUND_TRIP_VALUES[data_type]
    count = STRING_COUNT if data_type is DataType.STRING else None
    words = encode(value, data_type, byte_order=byte_order, word_order=word_order, count=count)
    assert len(words) == (count or register_count(data_type))
    assert all(0 <= w <= 0xFFFF for w in words)
    assert decode(words, data_type, byte_order=byte_order, word_order=word_order) == value


def test_decode_rejects_wrong_register_count() -> None:
    with pytest.raises(ValueError, match="uint32 needs 2 registers, got 1"):
        decode([0x1234], DataType.UINT32)


def test_string_needs_count_and_must_fit() -> None:
    with pytest.raises(ValueError, match="needs a register count"):
        encode("AB", DataType.STRING)
    with pytest.raises(ValueError, match="does not fit in 1 registers"):
        encode("ABC", DataType.STRING, count=1)


def test_register_count() -> None:
    assert [register_count(t) for t in DataType] == [1, 1, 2, 2, 4, 4, 2, 4, None, 1]


# --- against pymodbus's own codec (it knows big-endian byte order only) ------------------

NUMERIC = [t for t in DataType if t not in (DataType.STRING, DataType.BIT)]


@pytest.mark.parametrize(
    ("data_type", "word_order"),
    list(itertools.product(NUMERIC, Order)),
    ids=str,
)
def test_matches_pymodbus(data_type: DataType, word_order: Order) -> None:
    value = ROUND_TRIP_VALUES[data_type]
    theirs = ModbusTcpClient.DATATYPE[data_type.name]
    order: Literal["big", "little"] = "big" if word_order is Order.BIG else "little"
    ours = encode(value, data_type, word_order=word_order)
    assert ours == ModbusTcpClient.convert_to_registers(value, theirs, word_order=order)
    assert ModbusTcpClient.convert_from_registers(ours, theirs, word_order=order) == value
    assert decode(ours, data_type, word_order=word_order) == value


def test_string_matches_pymodbus() -> None:
    theirs = ModbusTcpClient.DATATYPE.STRING
    assert encode("ABCD", DataType.STRING, count=2) == ModbusTcpClient.convert_to_registers(
        "ABCD", theirs
    )
    padded = encode("EW-42", DataType.STRING, count=STRING_COUNT)
    assert ModbusTcpClient.convert_from_registers(padded, theirs) == "EW-42"
    assert decode(ModbusTcpClient.convert_to_registers("EW-42", theirs), DataType.STRING) == "EW-42"
