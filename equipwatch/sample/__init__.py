"""The sample site configuration the demo runs."""
