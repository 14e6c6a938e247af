"""Helpers shared by the test suite (process harnesses live in fusefs.testing)."""
