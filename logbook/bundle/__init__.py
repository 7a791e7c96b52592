"""Bundles and receipts: the jobs of a machine that is never online, carried out in a file,
and word of what became of them carried back.

    export_bundle(store, FILE)           # the air-gapped machine: every entry not yet synced
    import_bundle(store, FILE)           # a machine that syncs (or a relay's store)
    make_receipt(store, FILE, R)         # there, later: what became of each job of FILE
    apply_receipt(store, R)              # back on the first machine

Nothing is taken from a file until all of it has been read and verified: a reader streams
it once to check it, then again to use it, and takes each batch only once the bytes read up
to it are the bytes verified.  A file that is damaged, cut short, of the other kind or of a
newer format is a ``BadInput`` naming the problem, and nothing is changed.  The format is
``files.py``.  Neither file holds anything but jobs, ids and states (no key, no proxy).
"""

from __future__ import annotations

import secrets
from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from ..errors import BadInput, InvalidJob, StoreError
from ..jobs import prepare
from ..progress import Progress
from ..store import Store, now_iso
from ..store.bundles import Outcome, job_digest
from .files import (
    BUNDLE,
    FORMAT,
    OUTCOMES,
    RECEIPT,
    Manifest,
    Writer,
    bundle_job,
    dumps,
    job_line,
    open_file,
    receipt_outcome,
    show,
    version,
)

#: Jobs recorded (or outcomes applied) per write transaction.
BATCH = 5000


def _invalid(job: Mapping[str, Any]) -> str | None:
    """Why this logbook would not store a job as it is, or None."""
    try:
        checked = prepare(job)
    except InvalidJob as err:
        return str(err)
    return None if checked == job else "not a job as logbook stores it (fields missing)"


def _store_id(store: Store) -> str:
    store_id = store.get_meta("store_id")
    if not store_id:
        raise StoreError(f"the store {store.path} has no store id: open it once with logbook")
    return str(store_id)


def _step(progress: Progress | None, phase: str, total: int) -> Progress:
    progress = progress if progress is not None else Progress()
    progress.begin(phase, total)
    return progress


# --- export ----------------------------------------------------------------------------------


@dataclass
class Exported:
    path: str
    jobs: int
    sha256: str
    store_id: str
    bundle_id: str
    created: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def export_bundle(store: Store, path: str, *, progress: Progress | None = None) -> Exported | None:
    """Write every entry not yet synced to a bundle at ``path``; None (and no file) when there
    is nothing to carry.  One read transaction: a consistent snapshot while others record.
    The entries stay as they are (a receipt changes them); only ``meta`` notes the export.
    """
    store_id = _store_id(store)
    bundle_id = secrets.token_hex(8)
    created = now_iso()
    with store.bundles.snapshot() as (count, jobs):
        if count == 0:
            return None
        step = _step(progress, "exporting", count)
        manifest = Manifest(BUNDLE, FORMAT, store_id, bundle_id, created, version(), count)
        with Writer(path) as out:
            out.line(manifest.line())
            for job in jobs:
                out.line(job_line(job))
                step.done += 1
            sha256 = out.finish(step.done)
    store.bundles.exported(created)
    return Exported(path, step.done, sha256, store_id, bundle_id, created)


# --- import ----------------------------------------------------------------------------------


@dataclass
class Imported:
    store_id: str
    bundle_id: str
    created: str
    jobs: int
    new: int = 0
    known: int = 0
    #: Held here under the same (experiment_id, hash) with other content: not recorded.
    conflicts: int = 0
    #: Not valid jobs for this logbook: not recorded (the receipt says why).
    invalid: int = 0
    #: ``(job number, experiment_id, hash, why)`` of the first few not recorded.
    problems: list[tuple[int, str, str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["problems"] = [dict(zip(("job", "experiment_id", "hash", "reason"), p, strict=True))
                         for p in self.problems]  # fmt: skip
        return d


@dataclass
class Verified:
    """What reading a whole bundle found: its manifest, the jobs this logbook would not
    store (their numbers), and the checksum of what was read after every ``BATCH`` jobs
    and at the end (a second reading must match it before it records a batch).
    """

    manifest: Manifest
    invalid: set[int]
    marks: list[str]


def verify_bundle(path: str, *, progress: Progress | None = None) -> Verified:
    """Read a whole bundle and check it: every job against its checksum and this logbook's
    checks.  Raises ``BadInput`` for a file it cannot take.
    """
    manifest, records = open_file(path, BUNDLE)
    step = _step(progress, "verifying", manifest.jobs)
    invalid: set[int] = set()
    marks: list[str] = []
    for n, (line, doc) in enumerate(records, 1):
        if _invalid(bundle_job(path, n, line, doc)[0]) is not None:
            invalid.add(n)
        if n % BATCH == 0:
            marks.append(records.digest())
        step.done = n
    marks.append(records.digest())
    return Verified(manifest, invalid, marks)


def import_bundle(
    store: Store, path: str, *, progress: Progress | None = None, verified: Verified | None = None
) -> Imported:
    """Verify the whole bundle (unless ``verified`` is ``verify_bundle``'s answer), then
    record its jobs in batches: a job already held (same ``(experiment_id, hash)``) is not
    recorded again.  Entries remember where they came from (``source``:
    ``bundle:STORE/BUNDLE``).  Each batch is recorded only once the bytes read up to it are
    the very bytes verified: a file that changes meanwhile stops the import there.
    """
    v = verified or verify_bundle(path, progress=progress)
    manifest = v.manifest
    report = Imported(manifest.store_id, manifest.bundle_id, manifest.created, manifest.jobs)
    source = f"bundle:{manifest.store_id}/{manifest.bundle_id}"
    step = _step(progress, "recording", manifest.jobs)
    batch: list[tuple[int, dict[str, Any], str]] = []
    again, records = open_file(path, BUNDLE)
    try:
        if again != manifest:
            raise BadInput(f"{path} is not the bundle verified")
        for n, (line, doc) in enumerate(records, 1):
            # Not checked again: the bytes are compared with those verified, batch by batch.
            job, digest = bundle_job(path, n, line, doc, check=False)
            if n in v.invalid:
                report.invalid += 1
                _note(report, n, job, _invalid(job) or "invalid")
            else:
                batch.append((n, job, digest))
            if n % BATCH == 0:
                _same(path, records.digest(), v.marks[min(n // BATCH, len(v.marks)) - 1])
                _record(store, batch, source, report)
                batch = []
            step.done = n
        _same(path, records.digest(), v.marks[-1])
    except BadInput as err:
        raise BadInput(
            f"{err} (it changed while being imported: {report.new} jobs recorded, each as"
            " verified; import it again once it is whole)"
        ) from None
    _record(store, batch, source, report)
    return report


def _same(path: str, digest: str, verified: str) -> None:
    if digest != verified:
        raise BadInput(f"{path} is not the bundle verified")


def _record(
    store: Store, batch: list[tuple[int, dict[str, Any], str]], source: str, report: Imported
) -> None:
    if not batch:
        return
    created, held = store.bundles.record([job for _, job, _ in batch], source)
    conflicts = 0
    for i, theirs in held:
        n, job, digest = batch[i]
        if job_digest(theirs) != digest:
            conflicts += 1
            _note(report, n, job, "held here with other content under this experiment and hash")
    report.new += created
    report.conflicts += conflicts
    report.known += len(batch) - created - conflicts


def _note(report: Imported, n: int, job: Mapping[str, Any], why: str) -> None:
    if len(report.problems) < 10:
        report.problems.append((n, str(job["experiment_id"]), str(job["hash"]), why))


# --- receipt ---------------------------------------------------------------------------------


@dataclass
class Receipt:
    path: str
    jobs: int
    sha256: str
    store_id: str
    bundle_id: str
    created: str
    made_in: str
    outcomes: dict[str, int]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def make_receipt(
    store: Store, bundle_path: str, out_path: str, *, progress: Progress | None = None
) -> Receipt:
    """Write, for every job of a bundle, what became of it in this store: ``synced`` (the
    API's id and status), ``rejected`` (why), ``waiting`` (not yet delivered, or a relay has
    not confirmed it) or ``absent`` (not imported here).  Whole or not at all.
    """
    manifest, records = open_file(bundle_path, BUNDLE)
    made_in = _store_id(store)
    created = now_iso()
    step = _step(progress, "checking", manifest.jobs)
    counts: Counter[str] = Counter(dict.fromkeys(OUTCOMES, 0))
    receipt = Manifest(RECEIPT, FORMAT, manifest.store_id, manifest.bundle_id, created,
                       version(), manifest.jobs, made_in)  # fmt: skip
    with store.bundles.lookup() as find, Writer(out_path) as out:
        out.line(receipt.line())
        for n, (raw, doc) in enumerate(records, 1):
            job, digest = bundle_job(bundle_path, n, raw, doc)
            line = _what_became(job, digest, find(job["experiment_id"], job["hash"]), made_in)
            counts[line["outcome"]] += 1
            out.line(dumps(line) + "\n")
            step.done = n
        sha256 = out.finish(step.done)
    return Receipt(out_path, step.done, sha256, manifest.store_id, manifest.bundle_id, created,
                   made_in, dict(counts))  # fmt: skip


def _what_became(
    job: dict[str, Any], digest: str, found: tuple[dict[str, Any], dict[str, Any]] | None,
    made_in: str,
) -> dict[str, Any]:  # fmt: skip
    """One receipt line.  A job counts as synced only when the API has it and this store
    knows it: synced, and (through a relay) its upstream id is back.
    """
    line: dict[str, Any] = {
        "experiment_id": job["experiment_id"], "hash": job["hash"], "sha256": digest,
        "outcome": "absent", "state": None, "remote_id": None, "remote_status": None,
        "synced_at": None, "reason": None,
    }  # fmt: skip
    if found is None:
        problem = _invalid(job)
        if problem is not None:
            line.update(outcome="rejected", reason=f"not a valid job: {problem}")
        return line
    held, here = found
    line["state"] = here["state"]
    if job_digest(held) != digest:
        line.update(outcome="rejected", reason=f"the store {made_in} holds another job under"
                    " this experiment_id and hash (other content)")  # fmt: skip
    elif here["missing_at"]:
        line.update(outcome="waiting", reason="the API no longer has it (`logbook retry"
                    " --missing` there sends it again)")  # fmt: skip
    elif here["state"] == "synced" and (here["via"] is None or here["upstream_id"]):
        api_id = here["remote_id"] if here["via"] is None else here["upstream_id"]
        line.update(outcome="synced", remote_id=api_id, remote_status=here["remote_status"],
                    synced_at=here["synced_at"])  # fmt: skip
    elif here["state"] == "rejected":
        line.update(outcome="rejected", reason=here["last_error"] or "rejected by the API")
    else:
        line["outcome"] = "waiting"
    return line


# --- apply -----------------------------------------------------------------------------------


@dataclass
class Applied:
    store_id: str
    bundle_id: str
    created: str
    made_in: str
    jobs: int
    #: What became of the entries here: synced, rejected, already synced, unchanged, ...
    changes: dict[str, int] = field(default_factory=dict)
    #: Set when a receipt as new or newer was applied before for this bundle: nothing changed.
    superseded_by: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def verify_receipt(store: Store, path: str) -> Manifest:
    """Read a whole receipt and check it is for this store; ``BadInput`` otherwise."""
    manifest, records = open_file(path, RECEIPT)
    here = _store_id(store)
    if manifest.store_id != here:
        raise BadInput(
            f"{path} is a receipt for the store {show(manifest.store_id)}, and this store is"
            f" {here}: apply it on the machine that exported bundle {show(manifest.bundle_id)}"
        )
    for n, (line, doc) in enumerate(records, 1):
        receipt_outcome(path, n, line, doc)
    return manifest


def apply_receipt(store: Store, path: str, *, progress: Progress | None = None) -> Applied:
    """Take a receipt for this store: jobs it names synced become ``synced`` with the API's
    id and status (confirmed), rejected ones ``rejected`` with the reason; others stay.  A
    synced entry never goes back, an entry a running sync holds is left alone, the same
    receipt again, or an older one for the same bundle, changes nothing, and one older than a
    receipt applied from the same store (for another bundle) rejects nothing.
    """
    manifest = verify_receipt(store, path)
    report = Applied(manifest.store_id, manifest.bundle_id, manifest.created, str(manifest.made_in),
                     manifest.jobs)  # fmt: skip
    last = store.bundles.receipt_applied(manifest.bundle_id)
    if last is not None and manifest.created <= last:
        report.superseded_by = last
        return report
    # A receipt older than one already applied from the same store (for another bundle that
    # carried the same jobs again) may name as rejected what was sent again since: it still
    # brings synced jobs (the API has them), and rejects nothing.
    newest = store.bundles.newest_receipt_from(str(manifest.made_in))
    stale = newest is not None and manifest.created < newest
    step = _step(progress, "applying", manifest.jobs)
    changes: Counter[str] = Counter()
    batch: list[Outcome] = []
    _, records = open_file(path, RECEIPT)
    for n, (line, doc) in enumerate(records, 1):
        o = receipt_outcome(path, n, line, doc)
        if o.outcome == "rejected" and stale:
            changes["rejected in an older receipt"] += 1
        elif o.outcome in ("synced", "rejected"):
            batch.append(o)
        else:
            changes[o.outcome] += 1
        if len(batch) >= BATCH:
            changes.update(store.bundles.apply(batch))
            batch = []
        step.done = n
    if batch:
        changes.update(store.bundles.apply(batch))
    store.bundles.applied(manifest.bundle_id, manifest.created, str(manifest.made_in))
    report.changes = dict(changes)
    return report
