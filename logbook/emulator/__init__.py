"""An emulator of the Haiqu Jobs API, for tests, benchmarks and demos.

Run it as ``python -m logbook.emulator``; it needs the ``emulator`` extra
(aiohttp).  ``logbook.emulator.testing.EmulatorProcess`` starts it as a real
subprocess and drives its admin routes with the standard library only, so
importing this package must not import aiohttp.
"""

from __future__ import annotations
