"""Device models: pure functions of a seed and the (simulated) time. No I/O."""
