"""Collectors: turn what devices send (MQTT) or answer (Modbus TCP) into typed records."""
