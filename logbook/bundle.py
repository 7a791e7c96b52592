"""Bundles and receipts: the jobs of a machine that is never online, carried out in a file,
and word of what became of them carried back.

    export_bundle(store, FILE)           # the air-gapped machine: every entry not yet synced
    import_bundle(store, FILE)           # a machine that syncs (or a relay's store)
    make_receipt(store, FILE, R)         # there, later: what became of each job of FILE
    apply_receipt(store, R)              # back on the first machine

Both files are gzip-compressed JSON Lines, so ``zcat FILE | jq`` shows them
and both are written and read as streams (memory stays flat whatever the
count).  Line 1 is the manifest (kind, format version, store id, bundle id,
when it was made, by which logbook, how many jobs); then one line per job;
last, an end line with the count and the sha256 of every byte before it.  In
a bundle each job line carries the job whole (every ``POST /jobs`` field) and
the sha256 of its canonical JSON.  gzip's CRC catches a damaged copy, the
end line a cut or altered one, and the per-job checksums say which job.

Nothing is taken from a file until all of it has been read and verified:
a reader streams it once to check it, then again to use it.  A file that is
damaged, cut short, of the other kind or of a newer format is a ``BadInput``
naming the problem, and nothing is changed.  Files are written under a
temporary name in the same directory, fsynced and renamed: whole or not at
all.  Neither holds anything but jobs, ids and states (no key, no proxy).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import secrets
import sys
import tempfile
import zlib
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from types import TracebackType
from typing import Any, BinaryIO

from .errors import BadInput, InvalidJob, LogbookError, StoreError
from .jobs import canonical_json, prepare
from .progress import Progress
from .store import Store, now_iso
from .store.bundles import Outcome, job_digest
from .vocab import reject_constant

FORMAT = 1
BUNDLE = "logbook-bundle"
RECEIPT = "logbook-receipt"
END = "end"
_WHAT = {BUNDLE: "bundle", RECEIPT: "receipt"}
#: The longest line read (a job with large results): past it the file is damaged, not memory.
MAX_LINE = 256 * 2**20
#: Jobs recorded (or outcomes applied) per write transaction.
BATCH = 5000
#: What a receipt says of a job: on the server (with its id), refused, not yet, or not there.
OUTCOMES = ("synced", "rejected", "waiting", "absent")
_loads = json.JSONDecoder(parse_constant=reject_constant).decode
_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode


def _version() -> str:
    """This logbook's version (the package's ``__version__``; its parent is always loaded)."""
    return str(getattr(sys.modules.get("logbook"), "__version__", "unknown"))


def _show(value: Any) -> str:
    """A value from a file in a message: short and printable whatever it holds."""
    text = value if isinstance(value, str) else repr(value)
    return repr(text[:60])[1:-1]


@dataclass
class Manifest:
    """The first line of a bundle or a receipt."""

    kind: str
    format: int
    store_id: str  # a bundle: the store it came from; a receipt: the store it is for
    bundle_id: str
    created: str
    logbook: str
    jobs: int
    made_in: str | None = None  # a receipt: the store that made it

    def line(self) -> str:
        return _dumps({k: v for k, v in asdict(self).items() if v is not None}) + "\n"


# --- writing ---------------------------------------------------------------------------------


class _Hashing:
    """A file object that hashes what goes through it (the file's own checksum)."""

    def __init__(self, raw: BinaryIO) -> None:
        self.raw = raw
        self.sha256 = hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.sha256.update(data)
        return self.raw.write(data)

    def flush(self) -> None:
        self.raw.flush()


class _Writer:
    """A bundle or receipt written under a temporary name beside ``path``, fsynced, renamed
    (a watcher ignores the hidden ``.tmp`` name meanwhile); removed on any way out but
    ``finish``.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        if os.path.isdir(path):
            raise BadInput(f"{path} is a directory: give the name of a file to write")
        directory = os.path.dirname(os.path.abspath(path))
        try:
            fd, self.tmp = tempfile.mkstemp(
                dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp"
            )
        except OSError as err:
            raise BadInput(f"cannot write {path}: {err.strerror or err}") from None
        self.raw = os.fdopen(fd, "wb")
        self.hashing = _Hashing(self.raw)
        self.gz = gzip.GzipFile(fileobj=self.hashing, mode="wb", mtime=0)  # type: ignore[arg-type]
        self.body = hashlib.sha256()
        self.buf: list[str] = []
        self.size = 0
        self.done = False

    def __enter__(self) -> _Writer:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None
    ) -> None:
        if not self.done:
            self.discard()

    def line(self, text: str) -> None:
        self.buf.append(text)
        self.size += len(text)
        if self.size >= 1 << 20:
            self._flush()

    def _flush(self) -> None:
        data = "".join(self.buf).encode("utf-8")
        self.buf, self.size = [], 0
        self.body.update(data)
        self._io(self.gz.write, data)

    def _io(self, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except OSError as err:
            raise LogbookError(f"cannot write {self.path}: {err.strerror or err}") from None

    def finish(self, count: int) -> str:
        """Write the end line and put the file in place; returns the file's sha256."""
        self._flush()
        end = {"kind": END, "jobs": count, "sha256": self.body.hexdigest()}
        self._io(self.gz.write, (_dumps(end) + "\n").encode("utf-8"))
        self._io(self.gz.close)
        self._io(self.raw.flush)
        self._io(os.fsync, self.raw.fileno())
        self.raw.close()
        self._io(os.replace, self.tmp, self.path)
        self.done = True
        try:  # the rename itself survives a power loss once the directory is synced
            dirfd = os.open(os.path.dirname(os.path.abspath(self.path)), os.O_RDONLY)
            try:
                os.fsync(dirfd)
            finally:
                os.close(dirfd)
        except OSError:
            pass  # some filesystems (a FAT stick) cannot sync a directory: the file is written
        return self.hashing.sha256.hexdigest()

    def discard(self) -> None:
        for close in (self.gz.close, self.raw.close):
            try:
                close()
            except (OSError, ValueError):
                pass
        try:
            os.unlink(self.tmp)
        except OSError:
            pass


# --- reading ---------------------------------------------------------------------------------


def _lines(path: str, what: str) -> Iterator[bytes]:
    """The file's lines, decompressed as they are read; any problem is a ``BadInput``."""
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed below; a generator cannot use `with` here
    except FileNotFoundError:
        raise BadInput(f"no such file: {path}") from None
    except IsADirectoryError:
        raise BadInput(f"{path} is a directory, not a logbook {what}") from None
    except OSError as err:
        raise BadInput(f"cannot read {path}: {err.strerror or err}") from None
    with f:
        head = f.read(16)
        if not head:
            raise BadInput(f"{path} is empty: not a logbook {what} (copy it again)")
        if head[:2] != b"\x1f\x8b":
            raise BadInput(_not_gzip(path, what, head))
        f.seek(0)
        gz = gzip.GzipFile(fileobj=f, mode="rb")
        try:
            while line := gz.readline(MAX_LINE + 1):
                if len(line) > MAX_LINE or not line.endswith(b"\n"):
                    raise BadInput(f"{path} is damaged: a line is cut or too long; copy it again")
                yield line
        except EOFError:
            raise BadInput(
                f"{path} is cut short (its compressed data ends early): copy it again"
            ) from None
        except (OSError, zlib.error) as err:
            raise BadInput(f"{path} is damaged ({err}): copy it again") from None


def _not_gzip(path: str, what: str, head: bytes) -> str:
    looks = ""
    if head.lstrip()[:1] in (b"{", b"["):
        looks = " (it looks like JSON text)"
    elif head.startswith(b"SQLite format 3"):
        looks = " (it is an SQLite database)"
    return (
        f"{path} is not a logbook {what}{looks}: a {what} is gzip-compressed JSON Lines,"
        f" as `logbook bundle {'export' if what == 'bundle' else 'receipt'}` writes it"
    )


def _parse(path: str, line: bytes, number: int) -> dict[str, Any]:
    try:
        doc = _loads(line.decode("utf-8"))
    except (ValueError, RecursionError):
        doc = None
    if not isinstance(doc, dict):
        raise BadInput(f"{path} is damaged: line {number} is not a JSON object; copy it again")
    return doc


def _manifest(path: str, kind: str, line: bytes) -> Manifest:
    what = _WHAT[kind]
    try:
        doc = _parse(path, line, 1)
    except BadInput:
        raise BadInput(f"{path} is not a logbook {what}: its first line is no manifest") from None
    found = doc.get("kind")
    if found not in _WHAT:
        raise BadInput(f"{path} is not a logbook {what}: its first line is no manifest")
    if found != kind:
        use = "import it with `logbook bundle import`" if found == BUNDLE else (
            "apply it with `logbook bundle apply`")  # fmt: skip
        raise BadInput(f"{path} is a {_WHAT[found]}, not a {what}: {use}")
    fmt = doc.get("format")
    if type(fmt) is int and fmt > FORMAT:
        raise BadInput(
            f"{path} was made by a newer logbook ({_show(doc.get('logbook'))}, {what} format"
            f" {fmt}; this logbook reads format {FORMAT} and older): upgrade logbook"
        )
    texts = ["store_id", "bundle_id", "created", "logbook"] + (
        ["made_in"] if found == RECEIPT else []
    )
    if (
        type(fmt) is not int or fmt < 1 or type(doc.get("jobs")) is not int or doc["jobs"] < 0
        or not all(isinstance(doc.get(k), str) and doc[k] for k in texts)
    ):  # fmt: skip
        raise BadInput(f"{path} is damaged: its manifest is incomplete; copy it again")
    return Manifest(found, fmt, doc["store_id"], doc["bundle_id"], doc["created"],
                    doc["logbook"], doc["jobs"], doc.get("made_in"))  # fmt: skip


def _open(path: str, kind: str) -> tuple[Manifest, Iterator[dict[str, Any]]]:
    """The file's manifest, and its records (each line between it and the end line): the
    records check the end line (count, checksum) once they are all read.
    """
    lines = _lines(path, _WHAT[kind])
    first = next(lines, None)
    if first is None:
        raise BadInput(f"{path} holds nothing: not a logbook {_WHAT[kind]}")
    manifest = _manifest(path, kind, first)
    return manifest, _records(path, manifest, first, lines)


def _records(
    path: str, manifest: Manifest, first: bytes, lines: Iterator[bytes]
) -> Iterator[dict[str, Any]]:
    body = hashlib.sha256(first)
    n = 0
    for line in lines:
        doc = _parse(path, line, n + 2)
        if doc.get("kind") == END:
            if doc.get("sha256") != body.hexdigest():
                raise BadInput(f"{path} is damaged: its checksum does not match; copy it again")
            for where, said in (("end line", doc.get("jobs")), ("manifest", manifest.jobs)):
                if said != n:
                    raise BadInput(f"{path} is damaged: it holds {n} jobs, its {where} says"
                                   f" {_show(said)}; copy it again")  # fmt: skip
            if next(lines, None) is not None:
                raise BadInput(f"{path} is damaged: there is more after its end; copy it again")
            return
        body.update(line)
        n += 1
        yield doc
    raise BadInput(f"{path} is cut short (its end line is missing): copy it again")


def _bundle_job(path: str, number: int, doc: dict[str, Any]) -> dict[str, Any]:
    """A bundle's job line: the job, checked against its checksum."""
    job, digest = doc.get("job"), doc.get("sha256")
    try:
        ok = isinstance(job, dict) and isinstance(digest, str) and job_digest(job) == digest
    except (TypeError, ValueError, RecursionError):
        ok = False
    if not ok or not all(isinstance(job.get(k), str) for k in ("experiment_id", "hash")):  # type: ignore[union-attr]
        raise BadInput(f"{path} is damaged: job {number} does not match its checksum;"
                       " copy it again")  # fmt: skip
    return job  # type: ignore[return-value]


def _invalid(job: Mapping[str, Any]) -> str | None:
    """Why this logbook would not store a job as it is, or None."""
    try:
        checked = prepare(job)
    except InvalidJob as err:
        return str(err)
    return None if checked == job else "not a job as logbook stores it (fields missing)"


def _outcome(path: str, number: int, doc: dict[str, Any]) -> Outcome:
    """A receipt's line, checked: what became of one job."""
    texts = ("experiment_id", "hash", "sha256")
    o = str(doc.get("outcome"))
    ok = all(isinstance(doc.get(k), str) for k in texts) and o in OUTCOMES and all(
        doc.get(k) is None or isinstance(doc[k], str)
        for k in ("remote_id", "remote_status", "synced_at", "reason")
    )  # fmt: skip
    if ok and o == "synced":
        ok = bool(doc.get("remote_id"))
    if not ok:
        raise BadInput(f"{path} is damaged: line {number + 1} is no job's outcome; copy it again")
    return Outcome(
        doc["experiment_id"], doc["hash"], doc["sha256"], o, doc.get("remote_id"),
        doc.get("remote_status"), doc.get("synced_at"), doc.get("reason"),
    )  # fmt: skip


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
        manifest = Manifest(BUNDLE, FORMAT, store_id, bundle_id, created, _version(), count)
        with _Writer(path) as out:
            out.line(manifest.line())
            for job in jobs:
                text = canonical_json(job)
                digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
                out.line(f'{{"sha256":"{digest}","job":{text}}}\n')
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


def verify_bundle(path: str, *, progress: Progress | None = None) -> tuple[Manifest, set[int]]:
    """Read a whole bundle and check it; returns its manifest and the numbers of the jobs
    this logbook would not store (invalid).  Raises ``BadInput`` for a file it cannot take.
    """
    manifest, records = _open(path, BUNDLE)
    step = _step(progress, "verifying", manifest.jobs)
    invalid: set[int] = set()
    for n, doc in enumerate(records, 1):
        if _invalid(_bundle_job(path, n, doc)) is not None:
            invalid.add(n)
        step.done = n
    return manifest, invalid


def import_bundle(
    store: Store, path: str, *, progress: Progress | None = None,
    verified: tuple[Manifest, set[int]] | None = None,
) -> Imported:  # fmt: skip
    """Verify the whole bundle (unless ``verified`` is ``verify_bundle``'s answer), then
    record its jobs in batches: a job already held (same ``(experiment_id, hash)``) is not
    recorded again.  Entries remember where they came from (``source``:
    ``bundle:STORE/BUNDLE``).
    """
    manifest, invalid = verified or verify_bundle(path, progress=progress)
    report = Imported(manifest.store_id, manifest.bundle_id, manifest.created, manifest.jobs)
    source = f"bundle:{manifest.store_id}/{manifest.bundle_id}"
    step = _step(progress, "recording", manifest.jobs)
    batch: list[tuple[int, dict[str, Any]]] = []
    _, records = _open(path, BUNDLE)
    try:
        for n, doc in enumerate(records, 1):
            job = _bundle_job(path, n, doc)  # again: the file may have changed meanwhile
            if n in invalid:
                report.invalid += 1
                _note(report, n, job, _invalid(job) or "invalid")
            else:
                batch.append((n, job))
            if len(batch) >= BATCH:
                _record(store, batch, source, report)
                batch = []
            step.done = n
    except BadInput as err:
        raise BadInput(
            f"{err} (it changed while being imported: {report.new} jobs recorded, each as"
            " exported; import it again once it is whole)"
        ) from None
    _record(store, batch, source, report)
    return report


def _record(
    store: Store, batch: list[tuple[int, dict[str, Any]]], source: str, report: Imported
) -> None:
    if not batch:
        return
    created, held = store.bundles.record([job for _, job in batch], source)
    report.new += created
    for i, theirs in held:
        n, job = batch[i]
        if job_digest(theirs) == job_digest(job):
            report.known += 1
        else:
            report.conflicts += 1
            _note(report, n, job, "held here with other content under this experiment and hash")


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
    manifest, records = _open(bundle_path, BUNDLE)
    made_in = _store_id(store)
    created = now_iso()
    step = _step(progress, "checking", manifest.jobs)
    counts: Counter[str] = Counter(dict.fromkeys(OUTCOMES, 0))
    receipt = Manifest(RECEIPT, FORMAT, manifest.store_id, manifest.bundle_id, created,
                       _version(), manifest.jobs, made_in)  # fmt: skip
    with store.bundles.lookup() as find, _Writer(out_path) as out:
        out.line(receipt.line())
        for n, doc in enumerate(records, 1):
            job = _bundle_job(bundle_path, n, doc)
            line = _what_became(
                job, doc["sha256"], find(job["experiment_id"], job["hash"]), made_in
            )
            counts[line["outcome"]] += 1
            out.line(_dumps(line) + "\n")
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
    manifest, records = _open(path, RECEIPT)
    here = _store_id(store)
    if manifest.store_id != here:
        raise BadInput(
            f"{path} is a receipt for the store {_show(manifest.store_id)}, and this store is"
            f" {here}: apply it on the machine that exported bundle {_show(manifest.bundle_id)}"
        )
    for n, doc in enumerate(records, 1):
        _outcome(path, n, doc)
    return manifest


def apply_receipt(store: Store, path: str, *, progress: Progress | None = None) -> Applied:
    """Take a receipt for this store: jobs it names synced become ``synced`` with the API's
    id and status (confirmed), rejected ones ``rejected`` with the reason; others stay.  A
    synced entry never goes back, an entry a running sync holds is left alone, and the same
    receipt again, or an older one for the same bundle, changes nothing.
    """
    manifest = verify_receipt(store, path)
    report = Applied(manifest.store_id, manifest.bundle_id, manifest.created, str(manifest.made_in),
                     manifest.jobs)  # fmt: skip
    last = store.bundles.receipt_applied(manifest.bundle_id)
    if last is not None and manifest.created <= last:
        report.superseded_by = last
        return report
    step = _step(progress, "applying", manifest.jobs)
    changes: Counter[str] = Counter()
    batch: list[Outcome] = []
    _, records = _open(path, RECEIPT)
    for n, doc in enumerate(records, 1):
        o = _outcome(path, n, doc)
        if o.outcome in ("synced", "rejected"):
            batch.append(o)
        else:
            changes[o.outcome] += 1
        if len(batch) >= BATCH:
            changes.update(store.bundles.apply(batch))
            batch = []
        step.done = n
    if batch:
        changes.update(store.bundles.apply(batch))
    store.bundles.applied(manifest.bundle_id, manifest.created)
    report.changes = dict(changes)
    return report
