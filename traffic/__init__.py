"""Simulated interaction traffic for demos, tests and training."""
