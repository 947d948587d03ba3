"""Simulated devices: pure, clock-driven models behind real MQTT and Modbus TCP front-ends."""
