"""Operator tools (python -m tools.NAME)."""
