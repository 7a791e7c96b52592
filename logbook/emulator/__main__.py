"""``python -m logbook.emulator``: run the Haiqu Jobs API emulator."""

from __future__ import annotations

import sys

from logbook.emulator.server import main

if __name__ == "__main__":
    sys.exit(main())
