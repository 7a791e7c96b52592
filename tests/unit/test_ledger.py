"""The ledger of files read by ``watch`` and ``import``: nothing read twice, nothing missed.

A file is ``unchanged`` only when size, mtime, inode and ctime are all as
recorded and its mtime is not too close to the moment it was read; these
tests change one of them at a time, with real files, and check each is seen.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from support import wait_until

from logbook.store import Store
from logbook.store.ledger import RACY_NS, FileRead, FileRecord, FileState, path_key, shown

#: An mtime well before any read in these tests (one hour ago).
OLD_NS = time.time_ns() - 3600 * 10**9


from support import prepared_job as job  # noqa: E402


def state(path: Path | str) -> FileState:
    return FileState.of(os.stat(path))


def write_old(path: Path, content: bytes) -> None:
    """Write ``content`` and date its mtime an hour back (so it is not racily clean)."""
    path.write_bytes(content)
    os.utime(path, ns=(OLD_NS, OLD_NS))


def record_now(store: Store, path: Path, **kwargs: Any) -> FileRecord:
    store.ledger.record([FileRead(str(path), state(path), "sha", read_ns=time.time_ns(), **kwargs)])
    rec = store.ledger.seen(str(path))
    assert rec is not None
    return rec


# --- recording ----------------------------------------------------------------------


def test_record_is_atomic_with_its_ledger(store: Store) -> None:
    [(created, known)] = store.ledger.record(
        [FileRead("/a.jsonl", FileState(3, 5), "abc", jobs=[job(1), job(2)])]
    )
    assert (created, known) == (2, 0)
    [(created, known)] = store.ledger.record(
        [FileRead("/a.jsonl", FileState(4, 6), "abd", jobs=[job(1)])]
    )
    assert (created, known) == (0, 1)
    rec = store.ledger.seen("/a.jsonl")
    assert rec is not None
    got = (rec.state.size, rec.state.mtime_ns, rec.sha256, rec.outcome)
    assert got == (4, 6, "abd", "recorded")
    store.ledger.record([FileRead("/bad.json", FileState(1, 1), "x", reason="not JSON")])
    assert store.ledger.counts() == {"recorded": 1, "invalid": 1}
    assert store.ledger.invalid_count() == 1
    assert store.ledger.invalid() == [("/bad.json", "not JSON")]
    assert store.status().invalid_files == 1
    assert store.ledger.seen("/never.json") is None
    # the jobs carry the file as their source
    assert {e.source for e in store.entries()} == {"/a.jsonl"}
    assert store.ledger.record([]) == []


def test_a_file_made_valid_again_is_no_longer_invalid(store: Store) -> None:
    store.ledger.record([FileRead("/f.json", FileState(1, 1), "x", reason="not JSON")])
    store.ledger.record([FileRead("/f.json", FileState(2, 2), "y", jobs=[job(1)])])
    rec = store.ledger.seen("/f.json")
    assert rec is not None and (rec.outcome, rec.reason) == ("recorded", None)
    assert store.ledger.invalid_count() == 0


def test_a_reason_known_only_after_the_rows_is_asked_for_then(store: Store) -> None:
    asked: list[int] = []

    def reason() -> str:
        asked.append(store.counts()["pending"])
        return "line 2: not JSON"

    store.ledger.record([FileRead("/p.jsonl", FileState(1, 1), "x", jobs=[job(1)], reason=reason)])
    assert asked == [1]  # after the good line's row went in, in the same transaction
    rec = store.ledger.seen("/p.jsonl")
    assert rec is not None and (rec.outcome, rec.reason) == ("invalid", "line 2: not JSON")
    assert store.counts()["pending"] == 1


def test_one_bad_member_never_fails_its_neighbours(store: Store) -> None:
    good = [
        FileRead(f"/good/{i}.json", FileState(10 + i, i, i, i), f"h{i}", jobs=[job(i)])
        for i in range(20)
    ]
    bad_job = {k: v for k, v in job("bad").items() if k != "name"}  # the insert fails: KeyError
    bad = FileRead("/bad.json", FileState(1, 1, 1, 1), "hb", jobs=[job("fine"), bad_job])
    files = good[:11] + [bad] + good[11:]
    counts = store.ledger.record(files)
    assert counts == [(1, 0)] * 11 + [(0, 0)] + [(1, 0)] * 9
    assert sorted(e.name for e in store.entries()) == sorted(f"job {i}" for i in range(20))
    for f in good:
        rec = store.ledger.seen(f.path)
        assert rec is not None and rec.outcome == "recorded" and rec.state == f.state
    rec = store.ledger.seen("/bad.json")
    assert rec is not None and rec.outcome == "invalid"
    assert rec.reason is not None and rec.reason.startswith("cannot record")
    assert rec.state == bad.state and rec.sha256 == "hb"
    # the bad member is all or nothing: its good job is not in either
    assert store.find("exp", job("fine")["hash"]) is None
    assert store.ledger.counts() == {"recorded": 20, "invalid": 1}


def test_bytes_named_paths_round_trip(store: Store, tmp_path: Path) -> None:
    raw = os.path.join(os.fsencode(str(tmp_path)), b"bad\xff.json")
    with open(raw, "wb") as f:
        f.write(b"{}")
    name = os.fsdecode(raw)  # "...bad\udcff.json": the surrogate escape of byte 0xff
    assert "\udcff" in name
    store.ledger.record([FileRead(name, state(name), "sha", reason="not a job")])
    rec = store.ledger.seen(name)
    assert rec is not None and rec.state == state(name) and rec.sha256 == "sha"
    assert path_key(name) == raw
    assert store.scalar("SELECT path_bytes FROM files") == raw  # the bytes on disk, as a BLOB
    # and as text beside them, escaped, so Datasette and sqlite3 show a path
    assert store.scalar("SELECT path FROM files") == raw.decode("utf-8", "backslashreplace")
    # U+00FF is another name (its UTF-8 is c3 bf): another row
    other = name.replace("\udcff", "\u00ff")
    assert store.ledger.seen(other) is None
    store.ledger.record([FileRead(other, FileState(1, 1), "o")])
    assert store.ledger.seen(name).sha256 == "sha"  # type: ignore[union-attr]
    assert store.ledger.seen(other).sha256 == "o"  # type: ignore[union-attr]
    # shown as text with the byte escaped, never a surrogate that cannot be printed
    [(path, reason)] = store.ledger.invalid()
    assert path == shown(name) and path.endswith("bad\\xff.json") and reason == "not a job"
    path.encode("utf-8")


# --- what counts as unchanged ------------------------------------------------------------


def test_an_untouched_file_is_unchanged(store: Store, tmp_path: Path) -> None:
    p = tmp_path / "a.json"
    write_old(p, b'{"a": 1}')
    rec = record_now(store, p)
    assert rec.unchanged(state(p))


def test_size_or_mtime_change_is_seen(store: Store, tmp_path: Path) -> None:
    p = tmp_path / "a.json"
    write_old(p, b'{"a": 1}')
    rec = record_now(store, p)
    s = state(p)
    assert rec.unchanged(s)
    assert not rec.unchanged(FileState(s.size + 1, s.mtime_ns, s.ino, s.ctime_ns))
    assert not rec.unchanged(FileState(s.size, s.mtime_ns + 1, s.ino, s.ctime_ns))


def test_a_file_replaced_by_same_size_and_mtime_is_not_unchanged(
    store: Store, tmp_path: Path
) -> None:
    p = tmp_path / "a.json"
    write_old(p, b'{"a": 1}')
    rec = record_now(store, p)
    assert rec.unchanged(state(p))
    tmp = tmp_path / "a.json.tmp"
    write_old(tmp, b'{"a": 2}')  # other content, same size, same mtime
    os.replace(tmp, p)
    now = state(p)
    assert (now.size, now.mtime_ns) == (rec.state.size, rec.state.mtime_ns)
    assert now.ino != rec.state.ino
    assert not rec.unchanged(now)


def test_a_chmod_is_not_unchanged(store: Store, tmp_path: Path) -> None:
    p = tmp_path / "a.json"
    write_old(p, b'{"a": 1}')
    rec = record_now(store, p)
    assert rec.unchanged(state(p))
    # an unreadable file made readable again: only its ctime tells.  The kernel stamps
    # ctime from a coarse clock, so within one tick a chmod may leave it as it was: chmod
    # until the ctime moved (the test is about the ledger seeing it, not the kernel).

    def chmod_round_trip() -> bool:
        p.chmod(0o000)
        p.chmod(0o644)
        return state(p).ctime_ns != rec.state.ctime_ns

    wait_until(chmod_round_trip, what="a chmod to change the ctime")
    now = state(p)
    assert (now.size, now.mtime_ns, now.ino) == (
        rec.state.size, rec.state.mtime_ns, rec.state.ino
    )  # fmt: skip
    assert now.ctime_ns != rec.state.ctime_ns
    assert not rec.unchanged(now)


def test_a_racily_clean_record_is_not_unchanged(store: Store, tmp_path: Path) -> None:
    s = FileState(10, 1_000 * 10**9, 7, 1_000 * 10**9)
    for read_ns in (s.mtime_ns - 5, s.mtime_ns, s.mtime_ns + 1, s.mtime_ns + RACY_NS):
        assert not FileRecord(s, "h", "recorded", None, read_ns).unchanged(s), read_ns
    assert FileRecord(s, "h", "recorded", None, s.mtime_ns + RACY_NS + 1).unchanged(s)
    # a file written just now and read just now: through the ledger too
    p = tmp_path / "fresh.json"
    p.write_bytes(b"{}")
    rec = record_now(store, p)
    assert rec.state == state(p) and rec.read_ns - rec.state.mtime_ns <= RACY_NS
    assert not rec.unchanged(state(p))
    # the same file recorded as read well after its mtime is trusted
    store.ledger.record(
        [FileRead(str(p), state(p), "sha", read_ns=rec.state.mtime_ns + RACY_NS + 1)]
    )
    later = store.ledger.seen(str(p))
    assert later is not None and later.unchanged(state(p))


def test_a_racily_clean_file_is_settled_by_its_bytes_and_then_trusted(
    store: Store, tmp_path: Path
) -> None:
    """As git: the same bytes under the same stat are unchanged, and the row is marked read
    now, so the next check is a stat alone; other bytes under the same stat are a change."""
    import hashlib

    p = tmp_path / "fresh.json"
    p.write_bytes(b'{"a": 1}')
    sha = hashlib.sha256(b'{"a": 1}').hexdigest()
    st = state(p)
    store.ledger.record([FileRead(str(p), st, sha, read_ns=st.mtime_ns + 1)])  # racy
    rec = store.ledger.seen(str(p))
    assert rec is not None and not rec.unchanged(st)
    # Its mtime an hour back (same stat otherwise): still racy by the row; its bytes decide.
    os.utime(p, ns=(OLD_NS, OLD_NS))
    st = state(p)
    store.ledger.record([FileRead(str(p), st, sha, read_ns=OLD_NS + 1)])
    rec = store.ledger.seen(str(p))
    assert rec is not None and not rec.unchanged(st)
    assert store.ledger.unchanged(str(p), rec, st)
    marked = store.ledger.seen(str(p))
    assert marked is not None and marked.unchanged(st)  # a stat alone from now on
    # Same stat, other bytes (a write within one timestamp tick): changed.
    store.ledger.record([FileRead(str(p), st, "0" * 64, read_ns=OLD_NS + 1)])
    other = store.ledger.seen(str(p))
    assert other is not None and not store.ledger.unchanged(str(p), other, st)
    assert not store.ledger.unchanged(str(p), None, st)  # never read
    assert not store.ledger.unchanged(str(tmp_path / "gone.json"), other, st)
