"""A small fleet: separate lab machines come online together against a rate-limited API.

``bench/fleet.py`` is the full simulation (``scripts/fleet``); this runs it
small, at a rate every machine reaches whatever its speed (how close a fleet
gets to a higher limit is the benchmark's figure, not a test's).  What must
hold: every job reaches the API exactly once, every machine finishes, and
the machines back off on 429 instead of hammering.
"""

from __future__ import annotations

import sys

import pytest
from support import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT))

from bench.fleet import run_fleet  # noqa: E402

#: Low enough that any machine reaches it, however slow or loaded: each sync's first
#: requests (64 in flight at once) arrive together, over a bucket of this many a second.
RATE = 40.0


@pytest.mark.parametrize("relay", [False, True], ids=["direct", "through-a-relay"])
def test_a_small_fleet_against_a_rate_limit(relay: bool) -> None:
    result = run_fleet(machines=3, entries=100, rate=RATE, relay=relay, timeout=120.0)
    assert result["duplicates"] == 0 and result["jobs_created"] == 300, result
    assert result["refused"] > 0, "the rate limit was never reached: the test proves nothing"
    # With three machines, a 0.1 s spread of first resumes is no statistic (it fails by
    # chance); the jitter itself is tested in tests/unit/test_engine.py.
    failed = [name for name, ok in result["checks"].items() if not ok and "lockstep" not in name]
    assert not failed, (failed, {k: v for k, v in result.items() if k != "timeline"})
