"""What several benches share: the repository's paths, and a scoped environment for the local emulators."""

from __future__ import annotations

from pathlib import Path

from local.environment import scoped_environment as environment

ROOT = Path(__file__).resolve().parent.parent
LAYER_DIR = ROOT / "layers" / "usage_engine"
FUNCTIONS = ("token_refresher", "meter_events", "meter_query")

__all__ = ["FUNCTIONS", "LAYER_DIR", "ROOT", "environment"]
