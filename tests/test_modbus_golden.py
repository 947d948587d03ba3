"""Golden decoding cases: every data type in every byte and word order, as the collector
decodes a configured register from the words a device sends.

tests/test_registers.py pins the encoder and a handful of decodings; this table is the full
grid (type x byte order x word order), each case with a value chosen so that a wrong order
shows (distinct bytes, a sign that lives in one word), plus scale and offset as the collector
applies them. The property tests below check our decoder against pymodbus's own encoder over
a few hundred seeded random values per type.

A Reading's value is a float: 64-bit integers above 2**53 lose their last digits there (the
"-max-is-not-negative" cases show it); counters keep the exact register value in ``raw``.
"""

from __future__ import annotations

import itertools
import math
import random
import string
import struct
from typing import Literal, NamedTuple

import pytest
from pymodbus.client import ModbusTcpClient

from collector.modbus import decode_register
from core.config import RegisterSpec
from core.registers import DataType, Order, decode, register_count

BIG, LITTLE = Order.BIG, Order.LITTLE
T = DataType


def spec(
    data_type: DataType,
    byte_order: Order = BIG,
    word_order: Order = BIG,
    *,
    count: int | None = None,
    **extra: object,
) -> RegisterSpec:
    """A register as a site config declares it (type, orders, scale, ...)."""
    bit = data_type is DataType.BIT
    return RegisterSpec.model_validate(
        {
            "name": "value",
            "table": "coil" if bit else "holding",
            "address": 0,
            "type": data_type,
            "count": count,
            "byte_order": byte_order,
            "word_order": word_order,
            **extra,
        }
    )


class Case(NamedTuple):
    name: str  # what the case pins down
    register: RegisterSpec
    words: list[int]  # as the device sends them
    expected: float | int | str


case = Case


# Every word below is worked out by hand from the value's big-endian bytes: byte order "little"
# swaps the two bytes inside each word, word order "little" reverses the words.
CASES = [
    # int16 -32768 = 0x8000: the sign bit is in the high byte
    case("int16-big-big-min", spec(T.INT16), [0x8000], -32768),
    case("int16-little-byte-min", spec(T.INT16, LITTLE), [0x0080], -32768),
    case("int16-little-word-is-a-no-op", spec(T.INT16, BIG, LITTLE), [0x8000], -32768),
    case("int16-little-little-min", spec(T.INT16, LITTLE, LITTLE), [0x0080], -32768),
    # uint16 65280 = 0xFF00: a swap would give 255
    case("uint16-big-big-65280", spec(T.UINT16), [0xFF00], 65280),
    case("uint16-little-byte-65280", spec(T.UINT16, LITTLE), [0x00FF], 65280),
    case("uint16-little-word-is-a-no-op", spec(T.UINT16, BIG, LITTLE), [0xFF00], 65280),
    case("uint16-little-little-65280", spec(T.UINT16, LITTLE, LITTLE), [0x00FF], 65280),
    # int32 -123456789 = 0xF8A4_32EB: the sign lives in one word only
    case("int32-big-big-negative", spec(T.INT32), [0xF8A4, 0x32EB], -123456789),
    case("int32-little-byte-negative", spec(T.INT32, LITTLE), [0xA4F8, 0xEB32], -123456789),
    case("int32-little-word-negative", spec(T.INT32, BIG, LITTLE), [0x32EB, 0xF8A4], -123456789),
    case(
        "int32-little-little-negative",
        spec(T.INT32, LITTLE, LITTLE),
        [0xEB32, 0xA4F8],
        -123456789,
    ),
    # uint32 65536 = 0x0001_0000: which word is the high one
    case("uint32-big-big-65536", spec(T.UINT32), [0x0001, 0x0000], 65536),
    case("uint32-little-byte-65536", spec(T.UINT32, LITTLE), [0x0100, 0x0000], 65536),
    case("uint32-little-word-65536", spec(T.UINT32, BIG, LITTLE), [0x0000, 0x0001], 65536),
    case("uint32-little-little-65536", spec(T.UINT32, LITTLE, LITTLE), [0x0000, 0x0100], 65536),
    case("uint32-max-is-not-negative", spec(T.UINT32), [0xFFFF, 0xFFFF], 4294967295),
    # int64 -2 = 0xFFFF_FFFF_FFFF_FFFE: only the lowest byte differs from -1
    case("int64-big-big-minus-two", spec(T.INT64), [0xFFFF, 0xFFFF, 0xFFFF, 0xFFFE], -2),
    case(
        "int64-little-byte-minus-two", spec(T.INT64, LITTLE), [0xFFFF, 0xFFFF, 0xFFFF, 0xFEFF], -2
    ),
    case(
        "int64-little-word-minus-two",
        spec(T.INT64, BIG, LITTLE),
        [0xFFFE, 0xFFFF, 0xFFFF, 0xFFFF],
        -2,
    ),
    case(
        "int64-little-little-minus-two",
        spec(T.INT64, LITTLE, LITTLE),
        [0xFEFF, 0xFFFF, 0xFFFF, 0xFFFF],
        -2,
    ),
    # uint64 2**48 = 0x0001_0000_0000_0000: the most significant of four words
    case("uint64-big-big-2e48", spec(T.UINT64), [0x0001, 0, 0, 0], 2**48),
    case("uint64-little-byte-2e48", spec(T.UINT64, LITTLE), [0x0100, 0, 0, 0], 2**48),
    case("uint64-little-word-2e48", spec(T.UINT64, BIG, LITTLE), [0, 0, 0, 0x0001], 2**48),
    case("uint64-little-little-2e48", spec(T.UINT64, LITTLE, LITTLE), [0, 0, 0, 0x0100], 2**48),
    case("uint64-max-is-not-negative", spec(T.UINT64), [0xFFFF] * 4, 2**64 - 1),
    # float32 pi = 0x4049_0FDB (the float32 nearest pi, widened exactly to a double)
    case("float32-big-big-pi", spec(T.FLOAT32), [0x4049, 0x0FDB], 3.1415927410125732),
    case("float32-little-byte-pi", spec(T.FLOAT32, LITTLE), [0x4940, 0xDB0F], 3.1415927410125732),
    case(
        "float32-little-word-pi",
        spec(T.FLOAT32, BIG, LITTLE),
        [0x0FDB, 0x4049],
        3.1415927410125732,
    ),
    case(
        "float32-little-little-pi",
        spec(T.FLOAT32, LITTLE, LITTLE),
        [0xDB0F, 0x4940],
        3.1415927410125732,
    ),
    case("float32-infinity", spec(T.FLOAT32), [0x7F80, 0x0000], float("inf")),
    # float64 -0.1 = 0xBFB9_9999_9999_999A: the sign and exponent in one word, the rounding
    # in the other end
    case("float64-big-big-minus-tenth", spec(T.FLOAT64), [0xBFB9, 0x9999, 0x9999, 0x999A], -0.1),
    case(
        "float64-little-byte-minus-tenth",
        spec(T.FLOAT64, LITTLE),
        [0xB9BF, 0x9999, 0x9999, 0x9A99],
        -0.1,
    ),
    case(
        "float64-little-word-minus-tenth",
        spec(T.FLOAT64, BIG, LITTLE),
        [0x999A, 0x9999, 0x9999, 0xBFB9],
        -0.1,
    ),
    case(
        "float64-little-little-minus-tenth",
        spec(T.FLOAT64, LITTLE, LITTLE),
        [0x9A99, 0x9999, 0x9999, 0xB9BF],
        -0.1,
    ),
    # string "EW-7" = 45 57 2D 37: text runs first word first whatever the word order
    case("string-big-big", spec(T.STRING, count=2), [0x4557, 0x2D37], "EW-7"),
    case("string-little-byte", spec(T.STRING, LITTLE, count=2), [0x5745, 0x372D], "EW-7"),
    case(
        "string-little-word-is-ignored",
        spec(T.STRING, BIG, LITTLE, count=2),
        [0x4557, 0x2D37],
        "EW-7",
    ),
    case(
        "string-little-little-is-byte-swapped-only",
        spec(T.STRING, LITTLE, LITTLE, count=2),
        [0x5745, 0x372D],
        "EW-7",
    ),
    case(
        "string-trailing-nul-and-space-stripped",
        spec(T.STRING, count=3),
        [0x4557, 0x2000, 0x0000],
        "EW",
    ),
    # bit: one coil or discrete input, read as 0/1; orders cannot apply to it
    case("bit-big-big-set", spec(T.BIT), [1], 1),
    case("bit-little-byte-set", spec(T.BIT, LITTLE), [1], 1),
    case("bit-little-word-clear", spec(T.BIT, BIG, LITTLE), [0], 0),
    case("bit-little-little-clear", spec(T.BIT, LITTLE, LITTLE), [0], 0),
    # scale and offset, applied after decoding, in the collector
    case("int16-scale-tenth-negative", spec(T.INT16, scale=0.1), [0xFFF1], -1.5),
    case(
        "uint32-little-word-scale-tenth-hours",
        spec(T.UINT32, BIG, LITTLE, scale=0.1),
        [0x86A5, 0x0002],  # 0x0002_86A5 = 165541
        16554.1,
    ),
    case(
        "uint16-offset-then-scale-celsius",
        spec(T.UINT16, scale=0.5, offset=-40.0),
        [0x00A0],  # 160 * 0.5 - 40
        40.0,
    ),
]


GOLDEN = [pytest.param(*c[1:], id=c.name) for c in CASES]


@pytest.mark.parametrize(("register", "words", "expected"), GOLDEN)
def test_golden(register: RegisterSpec, words: list[int], expected: float | int | str) -> None:
    assert len(words) == register.registers
    value = decode(
        words, register.type, byte_order=register.byte_order, word_order=register.word_order
    )
    if register.type is DataType.STRING:
        assert value == expected  # identification text: decoded, never a reading
        return
    reading, _ = decode_register(register, words)  # the value a Reading carries
    if register.scale == 1.0 and register.offset == 0.0:
        assert value == expected
        assert type(value) is type(expected)  # integers stay exact integers
        assert reading == float(expected)
    else:
        assert reading == pytest.approx(expected, rel=1e-12)


def test_golden_covers_every_type_and_order() -> None:
    covered = {(c.register.type, c.register.byte_order, c.register.word_order) for c in CASES}
    assert len({c.name for c in CASES}) == len(CASES)
    assert covered >= set(itertools.product(DataType, Order, Order))


def test_a_counter_keeps_its_raw_register_value() -> None:
    counter = spec(T.UINT32, BIG, LITTLE, scale=0.1, kind="counter")
    value, raw = decode_register(counter, [0x86A5, 0x0002])
    assert value == pytest.approx(16554.1)
    assert raw == 165541
    assert decode_register(spec(T.UINT16, kind="gauge"), [7])[1] is None


# --- property: our decoder against pymodbus's encoder ------------------------------------

SAMPLES = 300
PYMODBUS_TYPES = {t: ModbusTcpClient.DATATYPE[t.name] for t in DataType if t is not DataType.BIT}
_INT_RANGES = {
    T.INT16: (-(2**15), 2**15 - 1),
    T.UINT16: (0, 2**16 - 1),
    T.INT32: (-(2**31), 2**31 - 1),
    T.UINT32: (0, 2**32 - 1),
    T.INT64: (-(2**63), 2**63 - 1),
    T.UINT64: (0, 2**64 - 1),
}


def random_values(data_type: DataType, rng: random.Random) -> list[float | int | str]:
    """``SAMPLES`` values of a type, its extremes first: random bit patterns for floats (every
    exponent, subnormals, infinities; not NaN, which equals nothing), printable ASCII for
    strings (without the trailing blanks decoding strips)."""
    values: list[float | int | str] = []
    if data_type in _INT_RANGES:
        low, high = _INT_RANGES[data_type]
        values += [low, high, 0, 1, high // 2 + 1]
        values += [rng.randint(low, high) for _ in range(SAMPLES - len(values))]
    elif data_type in (T.FLOAT32, T.FLOAT64):
        fmt, bits = (">f", 32) if data_type is T.FLOAT32 else (">d", 64)
        while len(values) < SAMPLES:
            (value,) = struct.unpack(fmt, rng.getrandbits(bits).to_bytes(bits // 8, "big"))
            if not math.isnan(value):
                values.append(value)
    elif data_type is T.STRING:
        alphabet = string.ascii_letters + string.digits + string.punctuation + " "
        while len(values) < SAMPLES:
            text = "".join(rng.choices(alphabet, k=rng.randint(1, 16))).rstrip()
            if text:
                values.append(text)
    else:
        values = [rng.randint(0, 1) for _ in range(SAMPLES)]
    return values


def swap_bytes(words: list[int]) -> list[int]:
    return [((w & 0xFF) << 8) | (w >> 8) for w in words]


def pymodbus_words(value: float | int | str, data_type: DataType, word_order: Order) -> list[int]:
    """The registers pymodbus's own encoder gives for ``value``. It knows word order only, and
    reverses a string's words for "little", which no device does: strings are asked for in
    big word order, as our config reads them. A bit is the first of sixteen packed flags."""
    if data_type is DataType.BIT:
        return ModbusTcpClient.convert_to_registers(
            [bool(value)] + [False] * 15, ModbusTcpClient.DATATYPE.BITS
        )
    order: Literal["big", "little"] = "little" if word_order is LITTLE else "big"
    if data_type is DataType.STRING:
        order = "big"
    return ModbusTcpClient.convert_to_registers(value, PYMODBUS_TYPES[data_type], word_order=order)


@pytest.mark.parametrize(
    ("data_type", "byte_order", "word_order"),
    list(itertools.product(DataType, Order, Order)),
    ids=str,
)
def test_decoding_agrees_with_pymodbus(
    data_type: DataType, byte_order: Order, word_order: Order
) -> None:
    rng = random.Random(f"{data_type}-{byte_order}-{word_order}")
    for value in random_values(data_type, rng):
        words = pymodbus_words(value, data_type, word_order)
        if byte_order is LITTLE:
            words = swap_bytes(words)  # what a byte-swapping device sends
        assert len(words) == (register_count(data_type) or len(words))
        decoded = decode(words, data_type, byte_order=byte_order, word_order=word_order)
        assert decoded == value, f"{value!r} sent as {[hex(w) for w in words]}"
