"""The layer's version: the one place it is written (the package metadata reads it from here at build time)."""

__version__ = "1.1.0"
