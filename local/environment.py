"""Process environment variables set for a block only: in-process handlers, the layer and botocore read the
process environment, so a local run that plays a second stack (or an emulator's endpoints) scopes its values."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping


@contextlib.contextmanager
def scoped_environment(values: Mapping[str, str]) -> Iterator[None]:
    """`values` in os.environ for the duration; each variable is restored (or removed) afterwards."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
