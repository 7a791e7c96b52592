"""``logbook.watch.settle.Settler``: when a file is ready to read, with clocks the test moves.

The settler does no I/O: the watcher tells it what a file looked like (its
key, ``(size, mtime_ns)``) and asks whether it has been quiet for ``settle``
seconds, by the settler's own observations or by the age of its mtime.
Here both clocks are plain numbers the test sets; nothing sleeps.
"""

from __future__ import annotations

import pytest

from logbook.watch.settle import Settler

SETTLE = 0.25  # binary fractions throughout: due times compare exactly
GRACE = 1.0
#: Wall-clock seconds at the start of every test; mtimes are given relative to it.
WALL0 = 1_800_000_000.0


class Clocks:
    """A monotonic clock and a wall clock, both moved by hand."""

    def __init__(self) -> None:
        self.now = 100.0
        self.wall_now = WALL0

    def clock(self) -> float:
        return self.now

    def wall(self) -> float:
        return self.wall_now

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self.wall_now += seconds


@pytest.fixture
def clocks() -> Clocks:
    return Clocks()


@pytest.fixture
def settler(clocks: Clocks) -> Settler:
    return Settler(SETTLE, GRACE, clock=clocks.clock, wall=clocks.wall)


def key(size: int, age: float, clocks: Clocks) -> tuple[int, int]:
    """A key for a file of ``size`` bytes last modified ``age`` seconds ago (wall clock)."""
    return size, int((clocks.wall_now - age) * 1e9)


def test_touched_then_unchanged_is_ready_after_settle(settler: Settler, clocks: Clocks) -> None:
    k = key(10, 0.0, clocks)
    settler.touch("a.json", k)
    assert settler.next_due() == pytest.approx(clocks.now + SETTLE)
    assert settler.pop_due() is None  # not yet due
    assert not settler.ready("a.json", k)

    clocks.advance(SETTLE / 2)
    assert settler.pop_due() is None
    assert not settler.ready("a.json", k)

    clocks.advance(SETTLE / 2)
    assert settler.pop_due() == "a.json"
    assert settler.ready("a.json", k)


def test_a_growing_file_is_not_ready_until_it_stopped_growing_for_settle(
    settler: Settler, clocks: Clocks
) -> None:
    sizes = [10, 20, 30, 40]
    settler.touch("grow.json", key(sizes[0], 0.0, clocks))
    for size in sizes[1:]:
        clocks.advance(SETTLE * 0.75)  # it grows again before it settled
        k = key(size, 0.0, clocks)
        assert not settler.ready("grow.json", k)  # a new key: settle again from now
        assert settler.pop_due() is None  # the earlier check is stale
    last_change = clocks.now
    clocks.advance(SETTLE * 0.9375)
    assert settler.pop_due() is None
    assert not settler.ready("grow.json", k)
    clocks.advance(SETTLE * 0.0625)
    assert clocks.now == last_change + SETTLE
    assert settler.pop_due() == "grow.json"
    assert settler.ready("grow.json", k)


def test_a_change_seen_at_the_check_resets_the_wait(settler: Settler, clocks: Clocks) -> None:
    settler.touch("p.json", key(1, 0.0, clocks))
    clocks.advance(SETTLE)
    assert settler.pop_due() == "p.json"
    k2 = key(2, 0.0, clocks)
    assert not settler.ready("p.json", k2)  # changed since the touch
    assert settler.next_due() == pytest.approx(clocks.now + SETTLE)
    clocks.advance(SETTLE)
    assert settler.pop_due() == "p.json"
    assert settler.ready("p.json", k2)


def test_an_old_mtime_makes_it_ready_at_once(settler: Settler, clocks: Clocks) -> None:
    k = key(10, SETTLE * 5, clocks)  # written long before the watcher saw it
    settler.touch("old.json", k)
    assert settler.next_due() == pytest.approx(clocks.now)
    assert settler.pop_due() == "old.json"
    assert settler.ready("old.json", k)


def test_an_mtime_partly_old_only_waits_for_the_rest(settler: Settler, clocks: Clocks) -> None:
    k = key(10, SETTLE * 0.75, clocks)
    settler.touch("part.json", k)
    assert settler.next_due() == pytest.approx(clocks.now + SETTLE * 0.25)
    clocks.advance(SETTLE * 0.25)
    assert settler.pop_due() == "part.json"
    assert settler.ready("part.json", k)


def test_an_mtime_in_the_future_still_settles_by_our_own_clock(
    settler: Settler, clocks: Clocks
) -> None:
    k = key(10, -3600.0, clocks)  # another host's clock is an hour ahead
    settler.touch("future.json", k)
    assert settler.pop_due() is None
    clocks.advance(SETTLE)
    assert settler.pop_due() == "future.json"
    assert settler.ready("future.json", k)


def test_an_unknown_path_is_never_ready(settler: Settler, clocks: Clocks) -> None:
    assert not settler.ready("never-touched.json", key(1, 100.0, clocks))
    assert not settler.hold_invalid("never-touched.json", key(1, 100.0, clocks))


def test_hold_invalid_holds_for_grace_after_the_last_change_then_releases(
    settler: Settler, clocks: Clocks
) -> None:
    k = key(5, 0.0, clocks)
    settler.touch("half.json", k)
    clocks.advance(SETTLE)
    assert settler.pop_due() == "half.json"
    assert settler.ready("half.json", k)
    # It does not parse: a writer may have paused half-way.  Held until GRACE after the change.
    assert settler.hold_invalid("half.json", k)
    assert settler.next_due() == pytest.approx(clocks.now + GRACE - SETTLE)
    clocks.advance(GRACE - SETTLE - 0.0625)
    assert settler.pop_due() is None
    assert settler.hold_invalid("half.json", k)  # still within the grace
    clocks.advance(0.0625)
    assert settler.pop_due() == "half.json"
    assert settler.ready("half.json", k)
    assert not settler.hold_invalid("half.json", k)  # released: now it is called invalid


def test_hold_invalid_counts_from_the_last_change(settler: Settler, clocks: Clocks) -> None:
    settler.touch("w.json", key(5, 0.0, clocks))
    clocks.advance(GRACE * 0.75)
    k = key(9, 0.0, clocks)
    settler.touch("w.json", k)  # the writer came back
    clocks.advance(GRACE * 0.5)
    assert settler.hold_invalid(
        "w.json", k
    )  # 1.25 GRACE since the first change, 0.5 since the last
    clocks.advance(GRACE * 0.5)
    assert not settler.hold_invalid("w.json", k)


def test_hold_invalid_with_an_old_mtime_releases_at_once(settler: Settler, clocks: Clocks) -> None:
    k = key(5, GRACE * 2, clocks)
    settler.touch("stale.json", k)
    assert not settler.hold_invalid("stale.json", k)


def test_grace_is_never_shorter_than_settle(clocks: Clocks) -> None:
    s = Settler(2.0, 0.5, clock=clocks.clock, wall=clocks.wall)
    assert s.grace == 2.0
    assert Settler(-1.0, 0.5, clock=clocks.clock, wall=clocks.wall).settle == 0.0


def test_pop_due_returns_paths_in_due_order(settler: Settler, clocks: Clocks) -> None:
    settler.touch("c.json", key(1, 0.0, clocks))  # due at +SETTLE
    clocks.advance(0.0625)
    settler.touch("a.json", key(1, 0.0, clocks))  # due at +SETTLE+0.0625
    settler.touch("b.json", key(1, SETTLE * 0.5, clocks))  # half settled: +0.0625+SETTLE/2
    settler.touch("old.json", key(1, 3600.0, clocks))  # due now
    clocks.advance(1.0)
    order = []
    while (path := settler.pop_due()) is not None:
        order.append(path)
    assert order == ["old.json", "b.json", "c.json", "a.json"]
    assert settler.next_due() is None


def test_pop_due_ignores_stale_heap_entries(settler: Settler, clocks: Clocks) -> None:
    settler.touch("x.json", key(1, 0.0, clocks))
    clocks.advance(0.125)
    settler.touch("x.json", key(2, 0.0, clocks))  # changed: a new check, the first one stale
    clocks.advance(0.125)
    assert settler.next_due() is not None  # the stale entry is still on the heap ...
    assert settler.pop_due() is None  # ... but is not handed out
    clocks.advance(0.125)
    assert settler.pop_due() == "x.json"  # once, when the fresh check is due
    assert settler.pop_due() is None


def test_a_forgotten_path_is_not_handed_out(settler: Settler, clocks: Clocks) -> None:
    settler.touch("gone.json", key(1, 0.0, clocks))
    settler.forget("gone.json")
    assert len(settler) == 0
    clocks.advance(SETTLE)
    assert settler.pop_due() is None


def test_touching_an_unchanged_file_again_keeps_one_check(settler: Settler, clocks: Clocks) -> None:
    k = key(1, 0.0, clocks)
    settler.touch("e.json", k)
    for _ in range(5):  # five events for the same content
        clocks.advance(0.015625)
        settler.touch("e.json", k)
    clocks.advance(SETTLE)
    assert settler.pop_due() == "e.json"
    assert settler.pop_due() is None
    assert settler.ready("e.json", k)


def test_done_forgets_only_when_the_key_is_unchanged(settler: Settler, clocks: Clocks) -> None:
    k1 = key(1, 0.0, clocks)
    settler.touch("d.json", k1)
    clocks.advance(SETTLE)
    assert settler.pop_due() == "d.json" and settler.ready("d.json", k1)
    # While it was being read and recorded, an event says it changed again.
    k2 = key(2, 0.0, clocks)
    settler.touch("d.json", k2)
    settler.done("d.json", k1)  # recorded as it was at k1: the change must still be read
    assert "d.json" in settler.candidates
    clocks.advance(SETTLE)
    assert settler.pop_due() == "d.json"
    assert settler.ready("d.json", k2)
    settler.done("d.json", k2)
    assert "d.json" not in settler.candidates and len(settler) == 0


def test_the_backlog_is_what_was_found_unchanged_not_what_is_being_written(
    settler: Settler, clocks: Clocks
) -> None:
    """A start-up scan's files count until read; a file that changes after the scan is live."""
    old, growing = key(10, 5.0, clocks), key(10, 0.0, clocks)
    settler.touch("old.json", old)
    settler.touch("growing.jsonl", growing)
    scanned = clocks.clock()
    assert settler.backlog(scanned) == 2
    clocks.advance(0.125)
    settler.touch("growing.jsonl", key(20, 0.0, clocks))  # written since the scan
    settler.touch("new.json", key(5, 0.0, clocks))  # arrived since the scan
    assert settler.backlog(scanned) == 1
    settler.done("old.json", old)
    assert settler.backlog(scanned) == 0 and len(settler) == 2


def test_a_rename_hands_the_wait_to_the_new_name(settler: Settler, clocks: Clocks) -> None:
    """Write-then-rename, as the watcher sees it: the temporary name is forgotten and never
    comes due; the new name is judged by its own quiet time (its mtime moves with it)."""
    written = key(64, 0.0, clocks)
    settler.touch("result.json.tmp", written)
    clocks.advance(SETTLE / 2)  # renamed before it settled
    settler.forget("result.json.tmp")
    settler.touch("result.json", written)
    assert settler.next_due() is not None and settler.pop_due() is None
    clocks.advance(SETTLE / 2)  # SETTLE since the last write, by its mtime
    assert settler.pop_due() == "result.json"
    assert settler.ready("result.json", written) and len(settler) == 1
    assert settler.pop_due() is None  # the temporary name never comes due
    # A file renamed in long after it was written is ready at once.
    old = key(8, 10.0, clocks)
    settler.touch("moved-in.json", old)
    assert settler.pop_due() == "moved-in.json" and settler.ready("moved-in.json", old)
