"""``python -m logbook.emulator``: run the Haiqu Jobs API emulator."""

from __future__ import annotations

import sys

if __name__ == "__main__":
    try:
        from logbook.emulator.server import main
    except ModuleNotFoundError as err:  # a partial install: one line, not a traceback
        if (err.name or "").startswith("logbook"):
            raise
        print(
            f"logbook emulator: cannot start: {err.name or err} is not installed"
            " (pip install haiqu-logbook installs what it needs)",
            file=sys.stderr,
        )
        sys.exit(2)
    sys.exit(main())
