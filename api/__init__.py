"""The HTTP API: what technicians, managers and other practice systems read."""
