"""Register maps of the Modbus kinds: declared once as the collector's own ``RegisterSpec``
objects, so the map a simulator serves is by construction the map the shipped config reads.

This module turns a model's values into register tables, and a map into the documentation table.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from core.config import RegisterSpec
from core.records import MetricKind
from core.registers import DataType, encode

__all__ = ["TABLES", "encode_tables", "markdown_table", "spec", "table_sizes"]

TABLES = ("coil", "discrete", "holding", "input")
_FLOATS = (DataType.FLOAT32, DataType.FLOAT64)


def spec(
    name: str, table: str, address: int, data_type: DataType, kind: MetricKind, **extra: object
) -> RegisterSpec:
    return RegisterSpec.model_validate(
        {"name": name, "table": table, "address": address, "type": data_type, "kind": kind, **extra}
    )


def table_sizes(register_map: Sequence[RegisterSpec]) -> dict[str, int]:
    """Registers (or bits) each table needs to hold every address of the map."""
    sizes = dict.fromkeys(TABLES, 0)
    for register in register_map:
        sizes[register.table] = max(sizes[register.table], register.address + register.registers)
    return sizes


def encode_tables(
    register_map: Sequence[RegisterSpec], values: Mapping[str, float | str]
) -> dict[str, list[int]]:
    """Each table's image (bits as 0/1) holding ``values`` as the map lays them out."""
    tables = {table: [0] * size for table, size in table_sizes(register_map).items()}
    for register in register_map:
        value = values[register.name]
        if register.type is DataType.STRING or register.type is DataType.BIT:
            raw: float | str = value
        else:
            scaled = (float(value) - register.offset) / register.scale
            raw = scaled if register.type in _FLOATS else round(scaled)
        words = encode(
            raw,
            register.type,
            byte_order=register.byte_order,
            word_order=register.word_order,
            count=register.count,
        )
        tables[register.table][register.address : register.address + len(words)] = words
    return tables


def markdown_table(register_map: Sequence[RegisterSpec]) -> str:
    """The documentation table of a map; ``docs/simulated-devices.md`` holds one per kind."""
    lines = [
        "| table | address | conventional | name | type | words | byte/word order | scale "
        "| unit | kind |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    prefix = {"holding": 40001, "input": 30001, "discrete": 10001, "coil": 1}
    for r in sorted(register_map, key=lambda r: (TABLES.index(r.table), r.address)):
        end = r.address + r.registers - 1
        addresses = f"{r.address}" if end == r.address else f"{r.address}-{end}"
        conventional = prefix[r.table] + r.address
        order = f"{r.byte_order}/{r.word_order}" if r.registers > 1 else "-"
        lines.append(
            f"| {r.table} | {addresses} | {conventional} | {r.name} | {r.type} | {r.registers} "
            f"| {order} | {r.scale:g} | {r.unit or ''} | {r.kind} |"
        )
    return "\n".join(lines) + "\n"
