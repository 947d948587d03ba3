"""Register maps decoded by pymodbus itself: an independent check of what the simulators serve."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from pymodbus.client import ModbusTcpClient

from core.config import RegisterSpec
from core.registers import DataType, Order

DECODE_AS = {t: ModbusTcpClient.DATATYPE[t.name] for t in DataType if t is not DataType.BIT}


def decoded_by_pymodbus(
    register_map: Sequence[RegisterSpec], tables: dict[str, list[int]]
) -> dict[str, int | float | str]:
    """Every register of the map as pymodbus decodes it: raw (unscaled) register values."""
    decoded: dict[str, int | float | str] = {}
    for register in register_map:
        words = tables[register.table][register.address : register.address + register.registers]
        if register.type is DataType.BIT:
            assert len(words) == 1
            assert words[0] in (0, 1)
            decoded[register.name] = words[0]
            continue
        # pymodbus has a word order but no byte order: the map must not need one
        assert register.byte_order is Order.BIG
        word_order: Literal["big", "little"] = (
            "little" if register.word_order is Order.LITTLE else "big"
        )
        value = ModbusTcpClient.convert_from_registers(
            words, DECODE_AS[register.type], word_order=word_order
        )
        assert isinstance(value, int | float | str)
        decoded[register.name] = value
    return decoded
