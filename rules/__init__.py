"""The rules engine: maintenance plans falling due, and alarms raised from device faults."""
