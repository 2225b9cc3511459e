"""Time as an injectable dependency, so expiry logic is tested without sleeping."""

from __future__ import annotations

import time
from collections.abc import Callable

Clock = Callable[[], float]
Sleep = Callable[[float], None]

system_clock: Clock = time.time
system_sleep: Sleep = time.sleep
