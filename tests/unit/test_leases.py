"""Claims, leases and settling: what keeps delivery exactly-once across runs.

Runs are owners (``host:pid:start:token`` from ``new_owner``); old ``host:pid``
owners are still understood.  A run alive on this host keeps its entries even
after its lease ran out; a gone run's entries are taken with ``maybe_sent``;
another host's entries fall back to lease expiry.  Everything here is
in-process: a "gone" run is one whose owner was ended, or a pid that cannot
exist, and time is passed in as ``now``.
"""

from __future__ import annotations

import io
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from logbook.store import Store
from logbook.store.leases import Claim, Outcome, Refreshed, end_owner, new_owner, owner_alive
from logbook.vocab import MAX_RETRY_DELAY

HOST = socket.gethostname()


from support import prepared_job as job  # noqa: E402


def impossible_pid() -> int:
    """A pid no process can have: pids are below the kernel's pid_max."""
    with open("/proc/sys/kernel/pid_max") as f:
        return int(f.read())


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "s.db"


@pytest.fixture
def store(path: Path) -> Iterator[Store]:
    s = Store(path)
    yield s
    s.close()


@pytest.fixture
def other() -> Iterator[str]:
    o = new_owner()
    yield o
    end_owner(o)


def ids_of(claim: Claim) -> list[int]:
    return [e.id for e in claim.entries]


# --- owners -------------------------------------------------------------------------


def test_owner_ids_and_liveness() -> None:
    o = new_owner()
    host, pid, start, token = o.split(":")
    assert host == HOST and pid.isdigit() and start.isdigit() and len(token) == 8
    assert owner_alive(o) is True
    assert new_owner() != o  # every run its own token
    end_owner(o)
    assert owner_alive(o) is False  # this process is alive, that run is not
    assert owner_alive(f"{HOST}:1") is True  # old form: pid 1 always exists
    assert owner_alive(f"{HOST}:{impossible_pid()}") is False
    assert owner_alive(f"{HOST}:{impossible_pid()}:123:abcd") is False
    # pid 1 is alive, but not the process that started at that tick: the pid was reused
    assert owner_alive(f"{HOST}:1:999999999999:abcd") is False
    assert owner_alive("some-other-host:1") is None  # trust its lease
    assert owner_alive("some-other-host:1:5:abcd") is None
    assert owner_alive(None) is False and owner_alive("") is False


# --- claim / settle ------------------------------------------------------------


def test_claim_and_settle_transitions(store: Store, owner: str) -> None:
    ids = [store.record(job(i))[0].id for i in range(4)]
    claimed = store.leases.claim(owner, 10, lease_seconds=60)
    assert ids_of(claimed) == ids and claimed.last_pending == ids[-1]
    assert all(e.state == "sending" and not e.maybe_sent for e in claimed.entries)
    assert all(e.lease_owner == owner for e in claimed.entries)
    assert store.leases.claim(owner, 10, lease_seconds=60).entries == []  # nothing left
    assert store.leases.count_owned(owner) == 4
    written = store.leases.settle(
        owner,
        [
            Outcome(ids[0], "synced", remote_id="r0", remote_status="Queued"),
            Outcome(ids[1], "rejected", error="422 name too long"),
            Outcome(ids[2], "pending", error="503", next_attempt_at=time.time() + 250),
            Outcome(ids[3], "released"),
        ],
    )
    assert written == {"synced": 1, "rejected": 1, "pending": 1, "released": 1}
    assert store.leases.count_owned(owner) == 0
    e0, e1, e2, e3 = (store.get(i) for i in ids)
    assert (e0.state, e0.remote_id, e0.remote_status, e0.attempts) == ("synced", "r0", "Queued", 1)
    assert e0.synced_at and e0.last_error is None
    assert (e1.state, e1.last_error, e1.attempts) == ("rejected", "422 name too long", 1)
    assert (e2.state, e2.last_error, e2.attempts) == ("pending", "503", 1)
    assert (e3.state, e3.attempts) == ("pending", 0)
    assert all(e.lease_owner is None and e.lease_until is None for e in (e0, e1, e2, e3))
    # e2 backs off: not due now, due later
    assert ids_of(store.leases.claim(owner, 10, lease_seconds=60)) == [ids[3]]
    later = store.leases.claim(owner, 10, lease_seconds=60, now=time.time() + 260)
    assert ids_of(later) == [ids[2]]
    assert [e.id for e in store.leases.unfinished_remote(10)] == [ids[0]]
    assert store.leases.count_unfinished_remote() == 1
    store.leases.refreshed([Refreshed(ids[0], "status", "Done")])
    assert store.leases.unfinished_remote(10) == []
    assert store.get(ids[0]).refreshed_at


def test_settle_rejects_an_unknown_state(store: Store, owner: str) -> None:
    eid = store.record(job(1))[0].id
    store.leases.claim(owner, 1, lease_seconds=60)
    with pytest.raises(ValueError, match="unknown outcome state"):
        store.leases.settle(owner, [Outcome(eid, "lost")])
    assert store.get(eid).state == "sending"
    assert store.leases.settle(owner, []) == {}


def test_claim_ignore_backoff_and_after_id(store: Store, owner: str) -> None:
    ids = [store.record(job(i))[0].id for i in range(5)]
    store.leases.claim(owner, 5, lease_seconds=60)
    retry_at = time.time() + 250
    store.leases.settle(
        owner, [Outcome(i, "pending", error="503", next_attempt_at=retry_at) for i in ids]
    )
    assert store.leases.claim(owner, 10, lease_seconds=60).entries == []
    assert store.leases.count_due() == 0 and store.leases.count_due(ignore_backoff=True) == 5
    # --dry-run lists what a sync would claim, with the same back-off rule as count_due
    assert store.leases.due(10) == []
    assert [e.id for e in store.leases.due(10, ignore_backoff=True)] == ids
    assert store.leases.count_left() == 5
    first = store.leases.claim(owner, 2, lease_seconds=60, ignore_backoff=True)
    assert ids_of(first) == ids[:2] and first.last_pending == ids[1]
    rest = store.leases.claim(owner, 10, lease_seconds=60, ignore_backoff=True, after_id=ids[3])
    assert ids_of(rest) == [ids[4]]
    assert store.leases.next_due_at() == retry_at  # of the two still pending


def test_settle_only_touches_entries_this_run_holds(path: Path, owner: str) -> None:
    with Store(path) as a, Store(path) as b:
        eid = a.record(job(1))[0].id
        a.leases.claim(owner, 1, lease_seconds=60)
        # another live owner (pid 1 always exists), old form
        written = b.leases.settle(
            f"{HOST}:1", [Outcome(eid, "synced", remote_id="x", remote_status="Done")]
        )
        assert written == {"synced": 0}
        assert a.get(eid).state == "sending" and a.get(eid).remote_id is None


def test_gone_run_sending_entry_is_reclaimed_with_maybe_sent(
    path: Path, owner: str, other: str
) -> None:
    with Store(path) as crashed, Store(path) as survivor:
        ids = [crashed.record(job(i))[0].id for i in range(3)]
        assert len(crashed.leases.claim(other, 2, lease_seconds=3600).entries) == 2
        end_owner(other)  # then it "crashed": the run is gone, its lease is not over
        assert survivor.leases.count_due() == 3 and survivor.leases.count_left() == 3
        assert survivor.leases.count_held(owner) == 0
        got = survivor.leases.claim(owner, 10, lease_seconds=60)
        assert ids_of(got) == ids
        flags = {e.id: e.maybe_sent for e in got.entries}
        assert flags == {ids[0]: True, ids[1]: True, ids[2]: False}
        # after a lookup found nothing, the retry keeps the flag until it succeeds
        survivor.leases.settle(
            owner, [Outcome(ids[0], "pending", error="timeout", maybe_sent=False)]
        )
        assert survivor.get(ids[0]).maybe_sent
        survivor.leases.settle(
            owner, [Outcome(ids[1], "synced", remote_id="r", remote_status="Done")]
        )
        assert not survivor.get(ids[1]).maybe_sent
        # the gone run's late answer no longer counts
        assert crashed.leases.settle(other, [Outcome(ids[2], "rejected", error="x")]) == {
            "rejected": 0
        }
        assert survivor.get(ids[2]).state == "sending"


def test_old_style_dead_owner_is_reclaimed(path: Path, owner: str) -> None:
    dead = f"{HOST}:{impossible_pid()}"
    with Store(path) as s:
        ids = [s.record(job(i))[0].id for i in range(2)]
        s.leases.claim(dead, 2, lease_seconds=3600)
        got = s.leases.claim(owner, 10, lease_seconds=60)
        assert ids_of(got) == ids and all(e.maybe_sent for e in got.entries)


def test_reused_pid_owner_is_reclaimed(path: Path, owner: str) -> None:
    reused = f"{HOST}:1:999999999999:abcd"  # pid 1 is alive, but a later process
    with Store(path) as s:
        eid = s.record(job(1))[0].id
        s.leases.claim(reused, 1, lease_seconds=3600)
        got = s.leases.claim(owner, 10, lease_seconds=60)
        assert ids_of(got) == [eid] and got.entries[0].maybe_sent


def _stat_line(pid: int, state: bytes) -> bytes:
    """``/proc/PID/stat`` of a live process as it would read in ``state`` ("Z": a zombie).

    Its command name holds ") R (": the state is the field after the *last* parenthesis.
    """
    with open(f"/proc/{pid}/stat", "rb") as f:
        real = f.read()
    after = real[real.rfind(b")") + 2 :].split()
    return b" ".join([str(pid).encode(), b"(sh) R (x)", state, *after[1:]]) + b"\n"


def test_a_killed_not_yet_reaped_run_is_gone_whatever_its_lease(
    path: Path, owner: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """kill -9 of a sync whose parent has not reaped it yet: the pid still exists (and
    answers signal 0) with its start time, but it will never post again."""
    import logbook.store.leases as leases

    with open("/proc/1/stat", "rb") as f:
        start = f.read().rsplit(b")", 1)[1].split()[19].decode()
    killed = f"{HOST}:1:{start}:deadbeef"  # pid 1 with its own start time: a live run...
    proc_stat = {b"S": _stat_line(1, b"S"), b"Z": _stat_line(1, b"Z")}
    state = [b"S"]
    real_open = open

    def fake_proc(file: Any, *args: Any, **kwargs: Any) -> Any:
        if file == "/proc/1/stat":
            return io.BytesIO(proc_stat[state[0]])
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(leases, "open", fake_proc, raising=False)
    assert owner_alive(killed) is True
    with Store(path) as s:
        eid = s.record(job(1))[0].id
        now = time.time()
        s.leases.claim(killed, 1, lease_seconds=3600, now=now)
        assert s.leases.claim(owner, 10, lease_seconds=60, now=now + 1).entries == []
        state[0] = b"Z"  # ...killed, and not reaped yet
        assert owner_alive(killed) is False
        assert s.leases.count_held(owner) == 0 and s.leases.count_due(now + 1) == 1
        got = s.leases.claim(owner, 10, lease_seconds=60, now=now + 1)  # its lease stands
        assert ids_of(got) == [eid] and got.entries[0].maybe_sent


@pytest.mark.parametrize("kind", ["new-style run of this process", "old-style live pid"])
def test_live_run_keeps_its_entries_even_after_its_lease_expired(
    path: Path, owner: str, other: str, kind: str
) -> None:
    busy_owner = other if kind.startswith("new") else f"{HOST}:1"
    with Store(path) as busy, Store(path) as s:
        eid = busy.record(job(1))[0].id
        now = time.time()
        busy.leases.claim(busy_owner, 1, lease_seconds=100, now=now)
        for later in (now + 50, now + 101, now + 10**6):  # a paused run may still post it
            assert s.leases.claim(owner, 10, lease_seconds=60, now=later).entries == []
            assert s.leases.due(10, now=later) == []
            assert s.leases.count_due(later) == 0 and s.leases.count_left(later) == 0
        assert s.leases.count_held(owner) == 1 and s.leases.count_held(busy_owner) == 0
        # the run that holds it can still settle it
        busy.leases.settle(
            busy_owner, [Outcome(eid, "synced", remote_id="x", remote_status="Done")]
        )
        assert s.get(eid).state == "synced" and s.get(eid).remote_id == "x"


def test_other_host_owner_is_trusted_until_lease_expires(path: Path, owner: str) -> None:
    remote_owner = "some-other-host:1"
    with Store(path) as remote, Store(path) as local:
        eid = remote.record(job(1))[0].id
        now = time.time()
        remote.leases.claim(remote_owner, 1, lease_seconds=100, now=now)
        assert local.leases.claim(owner, 10, lease_seconds=60, now=now + 1).entries == []
        assert local.leases.due(10, now=now + 1) == []
        assert local.leases.count_due(now + 1) == 0
        assert local.leases.count_due(now + 200) == 1
        late = local.leases.claim(owner, 10, lease_seconds=60, now=now + 200)
        assert ids_of(late) == [eid] and late.entries[0].maybe_sent
        # the first owner's late answer no longer counts
        remote.leases.settle(
            remote_owner, [Outcome(eid, "synced", remote_id="x", remote_status="Done")]
        )
        assert local.get(eid).state == "sending" and local.get(eid).remote_id is None


def test_revalidate_and_renew(store: Store, owner: str, other: str) -> None:
    ids = [store.record(job(i))[0].id for i in range(3)]
    now = time.time()
    store.leases.claim(owner, 2, lease_seconds=10, now=now - 100)  # lease ran out long ago
    store.leases.claim(other, 1, lease_seconds=10, now=now - 100)
    before = time.time()
    held = store.leases.revalidate(owner, ids, lease_seconds=60)
    assert held == set(ids[:2])  # not the other run's entry
    assert all(store.get(i).lease_until >= before + 60 for i in ids[:2])
    assert store.get(ids[2]).lease_until == (now - 100) + 10  # untouched
    assert store.leases.revalidate(owner, [], lease_seconds=60) == set()
    before = time.time()
    assert store.leases.revalidate(other, ids, lease_seconds=120) == {ids[2]}
    assert store.get(ids[2]).lease_until >= before + 120
    store.leases.settle(owner, [Outcome(ids[0], "released")])
    assert store.leases.revalidate(owner, ids, lease_seconds=60) == {ids[1]}


def test_due_lists_without_claiming(store: Store, owner: str, other: str) -> None:
    ids = [store.record(job(i))[0].id for i in range(4)]
    store.leases.claim(other, 1, lease_seconds=3600)
    end_owner(other)
    due = store.leases.due(10)
    assert [e.id for e in due] == ids  # the gone run's entry too, in id order
    assert [e.id for e in store.leases.due(2)] == ids[:2]
    assert store.counts()["pending"] == 3  # nothing was claimed
    assert store.get(ids[0]).state == "sending"


def test_a_retry_time_beyond_the_longest_backoff_is_due_now(store: Store, owner: str) -> None:
    """Written while the clock was a year ahead, then the clock was corrected: due now."""
    ids = [store.record(job(i))[0].id for i in range(3)]
    store.leases.claim(owner, 3, lease_seconds=60)
    now = time.time()
    store.leases.settle(owner, [
        Outcome(ids[0], "pending", error="503", next_attempt_at=now + 365 * 86400),
        Outcome(ids[1], "pending", error="503", next_attempt_at=now + MAX_RETRY_DELAY - 5),
        Outcome(ids[2], "pending", error="503", next_attempt_at=now + MAX_RETRY_DELAY + 60),
    ])  # fmt: skip
    assert store.leases.count_due() == 2
    assert [e.id for e in store.leases.due(10)] == [ids[0], ids[2]]
    assert store.leases.next_due_at() == 0  # a sync waits for none of them
    assert ids_of(store.leases.claim(owner, 10, lease_seconds=60)) == [ids[0], ids[2]]


def test_unconfirmed_entries_are_found_through_their_partial_index(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A refresh, ``status`` and a relay's view of a store of a million synced entries must
    not walk every synced row to find the few a relay has not confirmed: each query that
    looks for them goes through ``entries_unconfirmed`` (without statistics, which a store
    never gathers, SQLite picked ``entries_state`` and scanned the lot: 0.6 s a query on a
    million), and a page of the refresh sorts nothing.
    """
    import sqlite3

    with Store(path) as store:
        store.record_many([job(i) for i in range(40)])
        with store.write() as conn:
            conn.execute(
                "UPDATE entries SET state = 'synced', remote_id = 'relay-' || id,"
                " synced_at = '2026-01-01T00:00:00.000000Z', via = CASE WHEN id % 4 = 0"
                " THEN 'http://relay.test' END"
            )
        asked: list[tuple[str, tuple[Any, ...]]] = []
        for name in ("read", "scalar"):
            real = getattr(store, name)

            def spy(sql: str, params: Any = (), real: Any = real) -> Any:
                asked.append((sql, tuple(params)))
                return real(sql, params)

            monkeypatch.setattr(store, name, spy)
        first = store.leases.unconfirmed(3)
        rest = store.leases.unconfirmed(100, (first[-1].synced_at or "", first[-1].id))
        assert [e.id for e in first + rest] == list(range(4, 41, 4))  # each one once
        assert store.leases.count_unconfirmed() == 10
        assert store.unconfirmed()[0] == 10 and store.oldest_undelivered()
    conn = sqlite3.connect(path)
    try:
        for sql, params in asked:
            plan = " / ".join(r[3] for r in conn.execute("EXPLAIN QUERY PLAN " + sql, params))
            if "via IS NOT NULL AND upstream_id IS NULL" in sql:
                assert "entries_unconfirmed" in plan and "entries_state" not in plan, (sql, plan)
                assert "TEMP B-TREE" not in plan, (sql, plan)
    finally:
        conn.close()
    assert sum("upstream_id IS NULL" in sql for sql, _ in asked) >= 5
