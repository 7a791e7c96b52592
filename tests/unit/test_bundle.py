"""Bundles and receipts through the library, in-process: the format, the rules of import and
apply, and every damaged form of a small bundle and receipt.

The machines are two stores: A (never online) and B (imports, syncs, makes receipts).  A
sync on B is stood in for by writing its outcome into B's store; the real round trip with
processes and the emulator is ``tests/e2e/test_bundle.py``.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from bundlesupport import (
    bundle_jobs,
    damaged_forms,
    job_line,
    read_lines,
    receipt_lines,
    replace_job,
    write_lines,
)
from support import prepared_job

import logbook.bundle as bundle_module
from logbook.bundle import (
    FORMAT,
    apply_receipt,
    export_bundle,
    import_bundle,
    make_receipt,
    verify_bundle,
)
from logbook.errors import BadInput
from logbook.store import Store

Key = tuple[str, str]


@pytest.fixture
def a(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "a.db")
    yield s
    s.close()


@pytest.fixture
def b(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "b.db")
    yield s
    s.close()


def jobs_of(store: Store) -> dict[Key, dict[str, Any]]:
    return {(e.experiment_id, e.hash): e.post_body() for e in store.entries()}


def rows(store: Store) -> list[tuple[Any, ...]]:
    """Everything the store holds about its entries, and its meta."""
    entries = [tuple(r) for r in store.read("SELECT * FROM entries ORDER BY id")]
    return entries + [tuple(r) for r in store.read("SELECT * FROM meta ORDER BY key")]


def set_row(store: Store, key: Key, **values: Any) -> None:
    with store.write() as conn:
        cols = ", ".join(f"{k} = ?" for k in values)
        conn.execute(
            f"UPDATE entries SET {cols} WHERE experiment_id = ? AND hash = ?",
            (*values.values(), *key),
        )


def record(store: Store, *jobs: dict[str, Any]) -> list[Key]:
    store.record_many(jobs)
    return [(j["experiment_id"], j["hash"]) for j in jobs]


def varied_jobs() -> list[dict[str, Any]]:
    """Three small jobs with what a job may hold: text beyond ASCII, metrics, JSON text."""
    return [
        prepared_job(1, "exp a/ü+1", metrics={"fidelity": 0.98, "tags": ["x", "ÿ"]}),
        prepared_job(2, "e%2F?#x", name="名前 \u2028 line", shots="[1024, 2048]"),
        prepared_job(3, "exp", device_id="ibm_kyiv", circuit_hash="c1"),
    ]


# --- export ----------------------------------------------------------------------------------


def test_a_bundle_carries_every_entry_not_yet_synced_and_changes_no_entry(
    a: Store, tmp_path: Path
) -> None:
    keys = record(a, *(prepared_job(i) for i in range(5)))
    set_row(a, keys[1], state="synced", remote_id="srv-1")
    set_row(a, keys[2], state="rejected", last_error="422")
    set_row(a, keys[3], state="sending", lease_owner="host:1:1:x")
    before = [r for r in rows(a)]
    done = export_bundle(a, str(tmp_path / "out.bundle"))
    assert done is not None and done.jobs == 3
    assert set(bundle_jobs(tmp_path / "out.bundle")) == {keys[0], keys[3], keys[4]}
    after = rows(a)
    assert [r for r in after if len(r) > 2] == [r for r in before if len(r) > 2]  # entries
    assert a.status().last_bundle_export == done.created
    manifest, *_, end = read_lines(tmp_path / "out.bundle")
    assert manifest == {
        "kind": "logbook-bundle", "format": FORMAT, "store_id": a.get_meta("store_id"),
        "bundle_id": done.bundle_id, "created": done.created, "logbook": manifest["logbook"],
        "jobs": 3,
    }  # fmt: skip
    assert end["kind"] == "end" and end["jobs"] == 3
    assert not list(tmp_path.glob(".*.tmp")), "the temporary file was left behind"


def test_each_job_is_carried_whole_with_the_checksum_of_its_canonical_json(
    a: Store, tmp_path: Path
) -> None:
    record(a, *varied_jobs())
    export_bundle(a, str(tmp_path / "out.bundle"))
    lines = read_lines(tmp_path / "out.bundle")[1:-1]
    assert lines == [job_line(e.post_body()) for e in a.entries(newest_first=False)]
    assert bundle_jobs(tmp_path / "out.bundle") == jobs_of(a)


def test_with_nothing_to_carry_export_writes_no_file(a: Store, tmp_path: Path) -> None:
    (key,) = record(a, prepared_job(1))
    set_row(a, key, state="synced", remote_id="srv-1")
    assert export_bundle(a, str(tmp_path / "out.bundle")) is None
    assert not (tmp_path / "out.bundle").exists()
    assert a.status().last_bundle_export is None


def test_export_to_a_directory_or_nowhere_is_bad_input(a: Store, tmp_path: Path) -> None:
    record(a, prepared_job(1))
    with pytest.raises(BadInput, match="is a directory"):
        export_bundle(a, str(tmp_path))
    with pytest.raises(BadInput, match="cannot write"):
        export_bundle(a, str(tmp_path / "no" / "such" / "dir" / "x.bundle"))


# --- import ----------------------------------------------------------------------------------


def test_import_records_each_job_once_however_often_and_remembers_where_from(
    a: Store, b: Store, tmp_path: Path
) -> None:
    record(a, *(prepared_job(i) for i in range(4)))
    first = export_bundle(a, str(tmp_path / "1.bundle"))
    record(a, *(prepared_job(i) for i in range(4, 6)))  # the second bundle overlaps the first
    export_bundle(a, str(tmp_path / "2.bundle"))
    got = [import_bundle(b, str(tmp_path / "1.bundle")) for _ in range(3)]
    assert [(r.new, r.known) for r in got] == [(4, 0), (0, 4), (0, 4)]
    again = import_bundle(b, str(tmp_path / "2.bundle"))
    assert (again.new, again.known, again.conflicts, again.invalid) == (2, 4, 0, 0)
    assert jobs_of(b) == jobs_of(a)
    assert first is not None and got[0].store_id == a.get_meta("store_id")
    sources = {e.source for e in b.entries()}
    assert sources == {
        f"bundle:{first.store_id}/{first.bundle_id}",
        f"bundle:{first.store_id}/{again.bundle_id}",
    }
    # Looked up on the server before the first post: another machine may have sent it.
    assert all(e.maybe_sent for e in b.entries())


def test_a_job_held_with_other_content_is_not_recorded_and_the_receipt_rejects_it(
    a: Store, b: Store, tmp_path: Path
) -> None:
    same = prepared_job(1, hash="h-1")
    record(a, same, prepared_job(2))
    record(b, {**same, "name": "another run"})
    export_bundle(a, str(tmp_path / "x.bundle"))
    done = import_bundle(b, str(tmp_path / "x.bundle"))
    assert (done.new, done.known, done.conflicts) == (1, 0, 1)
    assert done.problems[0][1:3] == ("exp", "h-1")
    assert b.find("exp", "h-1").name == "another run"  # type: ignore[union-attr]
    make_receipt(b, str(tmp_path / "x.bundle"), str(tmp_path / "x.receipt"))
    line = receipt_lines(tmp_path / "x.receipt")[("exp", "h-1")]
    assert line["outcome"] == "rejected" and "other content" in line["reason"]
    apply_receipt(a, str(tmp_path / "x.receipt"))
    entry = a.find("exp", "h-1")
    assert (
        entry is not None and entry.state == "rejected" and "other content" in str(entry.last_error)
    )


def test_a_job_this_logbook_would_not_store_is_reported_and_its_neighbours_recorded(
    a: Store, b: Store, tmp_path: Path
) -> None:
    good = prepared_job(1)
    bad = {**prepared_job(2), "status": "Exploded"}  # from a newer logbook, say
    manifest = {
        "kind": "logbook-bundle", "format": 1, "store_id": a.get_meta("store_id"),
        "bundle_id": "b1", "created": "2026-01-01T00:00:00Z", "logbook": "9.9", "jobs": 2,
    }  # fmt: skip
    write_lines(tmp_path / "x.bundle", manifest, [job_line(good), job_line(bad)])
    done = import_bundle(b, str(tmp_path / "x.bundle"))
    assert (done.new, done.invalid) == (1, 1) and "status" in done.problems[0][3]
    make_receipt(b, str(tmp_path / "x.bundle"), str(tmp_path / "x.receipt"))
    line = receipt_lines(tmp_path / "x.receipt")[(bad["experiment_id"], bad["hash"])]
    assert line["outcome"] == "rejected" and line["reason"].startswith("not a valid job")


@pytest.mark.parametrize(
    "content, says",
    [
        (b"", "is empty"),
        (b'{"kind": "logbook-bundle"}\n', "looks like JSON"),
        (bytes(range(256)) * 4, "not a logbook bundle"),
        (b"SQLite format 3\x00" + b"\x00" * 100, "SQLite database"),
    ],
    ids=["empty", "json", "random", "sqlite"],
)
def test_a_file_that_is_no_bundle_is_refused_by_name(
    b: Store, tmp_path: Path, content: bytes, says: str
) -> None:
    (tmp_path / "x").write_bytes(content)
    with pytest.raises(BadInput, match=says):
        import_bundle(b, str(tmp_path / "x"))
    assert jobs_of(b) == {}


def test_a_newer_format_is_refused_by_name(a: Store, b: Store, tmp_path: Path) -> None:
    manifest = {
        "kind": "logbook-bundle", "format": FORMAT + 1, "store_id": "s", "bundle_id": "b",
        "created": "2030-01-01T00:00:00Z", "logbook": "3.0", "jobs": 1, "new": {"field": 1},
    }  # fmt: skip
    write_lines(tmp_path / "x.bundle", manifest, [{"a": "line of another shape"}])
    with pytest.raises(BadInput, match="made by a newer logbook"):
        import_bundle(b, str(tmp_path / "x.bundle"))
    assert jobs_of(b) == {}


def test_a_receipt_is_no_bundle_and_a_bundle_no_receipt(a: Store, b: Store, tmp_path: Path) -> None:
    record(a, prepared_job(1))
    export_bundle(a, str(tmp_path / "x.bundle"))
    import_bundle(b, str(tmp_path / "x.bundle"))
    make_receipt(b, str(tmp_path / "x.bundle"), str(tmp_path / "x.receipt"))
    with pytest.raises(BadInput, match="is a receipt, not a bundle"):
        import_bundle(b, str(tmp_path / "x.receipt"))
    with pytest.raises(BadInput, match="is a bundle, not a receipt"):
        apply_receipt(a, str(tmp_path / "x.bundle"))
    with pytest.raises(BadInput, match="is a receipt for the store"):
        apply_receipt(b, str(tmp_path / "x.receipt"))


def test_an_edited_job_is_refused_by_its_checksum_even_recompressed(
    a: Store, b: Store, tmp_path: Path
) -> None:
    """``zcat | sed | gzip``: gzip's CRC matches the new content; the checksums do not."""
    record(a, *varied_jobs())
    export_bundle(a, str(tmp_path / "x.bundle"))
    manifest, *records, end = read_lines(tmp_path / "x.bundle")
    records[1]["job"]["results"] = '{"n": "999"}'
    write_lines(tmp_path / "edited.bundle", manifest, records)  # a fresh, matching end line
    with pytest.raises(BadInput, match="job 2 does not match its checksum"):
        import_bundle(b, str(tmp_path / "edited.bundle"))
    # The job and its checksum both edited: the end line's checksum no longer matches.
    records[1] = job_line(records[1]["job"])
    body = b"".join((json.dumps(d) + "\n").encode() for d in [manifest, *records])
    (tmp_path / "edited.bundle").write_bytes(
        gzip.compress(body + (json.dumps(end) + "\n").encode())
    )
    with pytest.raises(BadInput, match="its checksum does not match"):
        import_bundle(b, str(tmp_path / "edited.bundle"))
    # The count: a job dropped, the checksum made anew.
    write_lines(tmp_path / "edited.bundle", manifest, records[:2])
    with pytest.raises(BadInput, match="holds 2 jobs"):
        import_bundle(b, str(tmp_path / "edited.bundle"))
    assert jobs_of(b) == {}


def test_a_bundle_that_changes_between_verifying_and_recording_stops_where_it_changed(
    a: Store, b: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What is recorded is what was verified: batches up to the change, each job as exported."""
    monkeypatch.setattr(bundle_module, "BATCH", 2)
    keys = record(a, *(prepared_job(i) for i in range(5)))
    path = tmp_path / "x.bundle"
    export_bundle(a, str(path))
    verified = verify_bundle(str(path))
    job = read_lines(path)[4]["job"]
    replace_job(path, 4, {**job, "name": "swapped on the stick"})  # well-formed, not verified
    with pytest.raises(BadInput, match="changed while being imported: 2 jobs recorded"):
        import_bundle(b, str(path), verified=verified)
    assert jobs_of(b) == {k: j for k, j in jobs_of(a).items() if k in keys[:2]}


def test_every_damaged_form_of_a_bundle_is_refused_or_taken_whole(
    a: Store, b: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each cut and every single-byte flip of a small bundle: refused (nothing recorded)
    or taken with every job exactly as exported (a flip in gzip's header: its time, its
    OS byte); never another error, never part of it (one job per write: only verifying
    the whole file first keeps a damaged end from leaving its first jobs recorded)."""
    monkeypatch.setattr(bundle_module, "BATCH", 1)
    record(a, *varied_jobs())
    export_bundle(a, str(tmp_path / "x.bundle"))
    data = (tmp_path / "x.bundle").read_bytes()
    exported = jobs_of(a)
    damaged = tmp_path / "damaged.bundle"
    outcomes = {"refused": 0, "taken": 0}
    for label, form in damaged_forms(data):
        damaged.write_bytes(form)
        try:
            done = import_bundle(b, str(damaged))
        except BadInput:
            assert b.counts() == dict.fromkeys(b.counts(), 0), label
            outcomes["refused"] += 1
            continue
        assert (done.new, done.known) == (3, 0) and jobs_of(b) == exported, label
        outcomes["taken"] += 1
        with b.write() as conn:
            conn.execute("DELETE FROM entries")
    assert outcomes["refused"] > len(data) * 9 and outcomes["taken"] > 0, outcomes


# --- receipt and apply -----------------------------------------------------------------------


def synced_on_b(b: Store, key: Key, remote_id: str, *, via: str | None = None,
                upstream_id: str | None = None) -> None:  # fmt: skip
    set_row(b, key, state="synced", remote_id=remote_id, remote_status="Done",
            synced_at="2026-01-02T00:00:00Z", via=via, upstream_id=upstream_id)  # fmt: skip


@pytest.fixture
def trip(a: Store, b: Store, tmp_path: Path) -> list[Key]:
    """Five jobs exported from A and imported on B."""
    keys = record(a, *(prepared_job(i) for i in range(5)))
    export_bundle(a, str(tmp_path / "x.bundle"))
    import_bundle(b, str(tmp_path / "x.bundle"))
    return keys


def test_a_job_counts_as_synced_only_when_the_api_has_it_and_logbook_knows_it(
    a: Store, b: Store, tmp_path: Path, trip: list[Key]
) -> None:
    synced_on_b(b, trip[0], "srv-0")  # straight to the API
    synced_on_b(b, trip[1], "relay-9", via="http://relay", upstream_id="srv-1")  # confirmed
    synced_on_b(b, trip[2], "relay-10", via="http://relay")  # the relay has it; the API?
    set_row(b, trip[3], state="rejected", last_error="HTTP 422: results must be JSON text")
    synced_on_b(b, trip[4], "srv-4")
    set_row(b, trip[4], missing_at="2026-01-03T00:00:00Z")  # a refresh found the API lost it
    done = make_receipt(b, str(tmp_path / "x.bundle"), str(tmp_path / "x.receipt"))
    assert done.outcomes == {"synced": 2, "rejected": 1, "waiting": 2, "absent": 0}
    lines = receipt_lines(tmp_path / "x.receipt")
    assert [lines[k]["remote_id"] for k in trip] == ["srv-0", "srv-1", None, None, None]
    assert [lines[k]["outcome"] for k in trip] == [
        "synced", "synced", "waiting", "rejected", "waiting"]  # fmt: skip
    # On A, an entry a relay once took and then lost (offered again: pending, via kept).
    set_row(a, trip[1], via="http://old-relay:8700")
    applied = apply_receipt(a, str(tmp_path / "x.receipt"))
    assert applied.changes == {"synced": 2, "rejected": 1, "waiting": 2}
    got = {k: a.find(*k) for k in trip}
    for key, server_id in ((trip[0], "srv-0"), (trip[1], "srv-1")):
        e = got[key]
        assert e is not None and (e.state, e.remote_id, e.remote_status) == (
            "synced", server_id, "Done")  # fmt: skip
        assert e.confirmed and e.via is None and e.upstream_id is None
        assert e.synced_at == "2026-01-02T00:00:00Z"
    assert got[trip[3]].state == "rejected"  # type: ignore[union-attr]
    assert "results must be JSON text" in str(got[trip[3]].last_error)  # type: ignore[union-attr]
    assert [got[k].state for k in (trip[2], trip[4])] == ["pending", "pending"]  # type: ignore[union-attr]
    assert a.status().last_receipt_applied is not None
    # The next bundle carries only what is still to be sent.
    export_bundle(a, str(tmp_path / "next.bundle"))
    assert set(bundle_jobs(tmp_path / "next.bundle")) == {trip[2], trip[4]}


def test_a_job_not_imported_there_is_absent_and_stays(
    a: Store, b: Store, tmp_path: Path, trip: list[Key]
) -> None:
    with b.write() as conn:
        conn.execute("DELETE FROM entries WHERE hash = ?", (trip[0][1],))
    make_receipt(b, str(tmp_path / "x.bundle"), str(tmp_path / "x.receipt"))
    assert receipt_lines(tmp_path / "x.receipt")[trip[0]]["outcome"] == "absent"
    apply_receipt(a, str(tmp_path / "x.receipt"))
    assert a.find(*trip[0]).state == "pending"  # type: ignore[union-attr]


def test_a_synced_entry_never_goes_back_and_a_running_sync_is_left_alone(
    a: Store, b: Store, tmp_path: Path, trip: list[Key]
) -> None:
    set_row(b, trip[0], state="rejected", last_error="422")
    set_row(b, trip[1], state="rejected", last_error="422")
    synced_on_b(b, trip[2], "srv-2")
    set_row(a, trip[0], state="synced", remote_id="srv-own")  # A was online once
    set_row(a, trip[1], state="sending", lease_owner="host:1:1:x")  # a sync on A holds it
    set_row(a, trip[2], state="sending", lease_owner="host:1:1:x")
    make_receipt(b, str(tmp_path / "x.bundle"), str(tmp_path / "x.receipt"))
    done = apply_receipt(a, str(tmp_path / "x.receipt"))
    assert done.changes == {"already synced": 1, "sending": 2, "waiting": 2}
    assert [(e.state, e.remote_id) for e in (a.find(*k) for k in trip[:3])] == [  # type: ignore[union-attr]
        ("synced", "srv-own"), ("sending", None), ("sending", None)]  # fmt: skip


def test_a_receipt_twice_or_an_older_after_a_newer_changes_nothing(
    a: Store, b: Store, tmp_path: Path, trip: list[Key]
) -> None:
    older = str(tmp_path / "older.receipt")
    make_receipt(b, str(tmp_path / "x.bundle"), older)  # all waiting
    set_row(b, trip[0], state="rejected", last_error="422")
    synced_on_b(b, trip[1], "srv-1")
    newer = str(tmp_path / "newer.receipt")
    make_receipt(b, str(tmp_path / "x.bundle"), newer)
    assert apply_receipt(a, newer).changes["rejected"] == 1
    a.retry(all_rejected=True)  # the user fixed what was wrong: next bundle
    before = rows(a)
    again = apply_receipt(a, newer)
    assert again.superseded_by is not None and rows(a) == before
    old = apply_receipt(a, older)
    assert old.superseded_by is not None and rows(a) == before
    assert a.find(*trip[0]).state == "pending"  # type: ignore[union-attr]


def test_an_older_receipt_of_another_bundle_after_a_newer_one_rejects_nothing(
    a: Store, b: Store, tmp_path: Path, trip: list[Key]
) -> None:
    """Bundle x, then bundle y carrying the same jobs again: y's receipt (newer) applied first,
    then x's (older) still brings what the API has, and rejects nothing on stale news."""
    export_bundle(a, str(tmp_path / "y.bundle"))  # the same jobs, a bundle of its own
    set_row(b, trip[0], state="rejected", last_error="HTTP 422")
    synced_on_b(b, trip[1], "srv-1")
    older = str(tmp_path / "x.receipt")
    make_receipt(b, str(tmp_path / "x.bundle"), older)  # trip[0] rejected, trip[1] synced
    set_row(b, trip[0], state="pending", last_error=None)  # retried there since
    newer = str(tmp_path / "y.receipt")
    make_receipt(b, str(tmp_path / "y.bundle"), newer)  # trip[0] waiting
    apply_receipt(a, newer)
    set_row(a, trip[1], state="pending", remote_id=None)  # as if y had not said so
    done = apply_receipt(a, older)
    assert done.superseded_by is None and done.changes["rejected in an older receipt"] == 1
    assert a.find(*trip[0]).state == "pending"  # type: ignore[union-attr]
    assert a.find(*trip[1]).state == "synced"  # type: ignore[union-attr]


def test_an_older_receipt_first_then_a_newer_one_takes_both(
    a: Store, b: Store, tmp_path: Path, trip: list[Key]
) -> None:
    synced_on_b(b, trip[0], "srv-0")
    make_receipt(b, str(tmp_path / "x.bundle"), str(tmp_path / "1.receipt"))
    synced_on_b(b, trip[1], "srv-1")
    make_receipt(b, str(tmp_path / "x.bundle"), str(tmp_path / "2.receipt"))
    assert apply_receipt(a, str(tmp_path / "1.receipt")).changes["synced"] == 1
    assert apply_receipt(a, str(tmp_path / "2.receipt")).changes["synced"] == 1
    assert a.counts()["synced"] == 2


def test_every_damaged_form_of_a_receipt_is_refused_or_taken_whole(
    a: Store, b: Store, tmp_path: Path
) -> None:
    keys = record(a, *varied_jobs())
    export_bundle(a, str(tmp_path / "x.bundle"))
    import_bundle(b, str(tmp_path / "x.bundle"))
    synced_on_b(b, keys[0], "srv-0")
    set_row(b, keys[1], state="rejected", last_error="HTTP 422")
    make_receipt(b, str(tmp_path / "x.bundle"), str(tmp_path / "x.receipt"))
    data = (tmp_path / "x.receipt").read_bytes()
    a.close()
    pristine = tmp_path / "pristine.db"
    shutil.copy(tmp_path / "a.db", pristine)
    store = Store(tmp_path / "a.db")
    before = rows(store)
    damaged = tmp_path / "damaged.receipt"
    outcomes = {"refused": 0, "taken": 0}
    try:
        for label, form in damaged_forms(data):
            damaged.write_bytes(form)
            try:
                apply_receipt(store, str(damaged))
            except BadInput:
                assert rows(store) == before, label
                outcomes["refused"] += 1
                continue
            got = [(e.state, e.remote_id, e.last_error) for e in (store.find(*k) for k in keys)]  # type: ignore[union-attr]
            assert got == [("synced", "srv-0", None), ("rejected", None, "HTTP 422"),
                           ("pending", None, None)], label  # fmt: skip
            outcomes["taken"] += 1
            store.close()
            shutil.copy(pristine, tmp_path / "a.db")
            store = Store(tmp_path / "a.db")
    finally:
        store.close()
    assert outcomes["refused"] > len(data) * 9 and outcomes["taken"] > 0, outcomes


def test_neither_file_holds_anything_but_jobs_ids_and_states(
    a: Store, b: Store, tmp_path: Path, trip: list[Key]
) -> None:
    """The bundle's job lines are the jobs (``POST /jobs`` fields) and nothing of the
    store's bookkeeping; the receipt's lines the outcome fields."""
    for d in read_lines(tmp_path / "x.bundle")[1:-1]:
        assert set(d) == {"sha256", "job"} and set(d["job"]) == set(prepared_job(0))
    make_receipt(b, str(tmp_path / "x.bundle"), str(tmp_path / "x.receipt"))
    for d in read_lines(tmp_path / "x.receipt")[1:-1]:
        assert set(d) == {"experiment_id", "hash", "sha256", "outcome", "state", "remote_id",
                          "remote_status", "synced_at", "reason"}  # fmt: skip


# --- the commands (in-process) ---------------------------------------------------------------


def test_commands_create_no_store_where_there_is_none(
    cli_runner: Any, logbook_home: Path, tmp_path: Path
) -> None:
    out = cli_runner("bundle", "export", tmp_path / "x.bundle")
    assert out.exit_code == 0 and "nothing to export" in out.stdout
    assert not (tmp_path / "x.bundle").exists() and not (logbook_home / "logbook.db").exists()
    # a --db path that is not there is a typo, not an empty store (as for every reading command)
    out = cli_runner("bundle", "export", tmp_path / "x.bundle", "--db", tmp_path / "typo.db")
    assert out.exit_code == 1 and "no store at" in out.stderr
    assert "nothing to export" not in out.stdout
    assert not (tmp_path / "typo.db").exists()
    (tmp_path / "r").write_bytes(b"")
    out = cli_runner("bundle", "apply", tmp_path / "r")
    assert out.exit_code == 2 and "no store at" in out.stderr
    assert not (logbook_home / "logbook.db").exists()


def test_status_shows_the_last_export_and_receipt_after_its_other_keys(
    cli_runner: Any, logbook_home: Path, tmp_path: Path
) -> None:
    assert cli_runner("record", "-e", "bell", "--results", '{"00": 1}').exit_code == 0
    status = json.loads(cli_runner("status", "--json").stdout)
    keys = list(status)
    assert keys[:4] == ["db", "counts", "oldest_pending", "last_sync"]  # the contract's first
    assert {"last_bundle_export", "last_receipt_applied"} <= set(keys[4:])
    assert status["last_bundle_export"] is None and "last bundle" not in cli_runner("status").stdout
    out = cli_runner("bundle", "export", tmp_path / "x.bundle", "--json")
    exported = json.loads(out.stdout)
    assert exported["jobs"] == 1 and exported["sha256"] == hashlib.sha256(
        (tmp_path / "x.bundle").read_bytes()).hexdigest()  # fmt: skip
    status = json.loads(cli_runner("status", "--json").stdout)
    assert status["last_bundle_export"] == exported["created"]
    assert status["last_receipt_applied"] is None
    text = cli_runner("status").stdout
    assert f"last bundle:    {exported['created']}" in text and "last receipt:   never" in text
