"""The file format of bundles and receipts: gzip-compressed JSON Lines, written whole and read
as a verified stream.

Both kinds: line 1 the manifest (kind, format version, store id, bundle id, when it was made,
by which logbook, how many jobs); then one line per job; last an end line with the count and
the sha256 of every byte before it.  In a bundle each job line carries the job whole (every
``POST /jobs`` field) and the sha256 of its canonical JSON; in a receipt, what became of one
job.  gzip's CRC catches a damaged copy, the end line a cut or altered one, and the per-job
checksums say which job.  ``zcat FILE | jq`` shows either.

A file is written under a hidden temporary name in its directory, fsynced and renamed (whole
or not at all); a reader streams it (memory flat) and raises ``BadInput`` naming whatever is
wrong: empty, not gzip, cut short, damaged, the other kind, a newer format.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import sys
import tempfile
import zlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from types import TracebackType
from typing import Any, BinaryIO

from ..errors import BadInput, LogbookError
from ..jobs import canonical_json
from ..store.bundles import Outcome, job_digest
from ..vocab import reject_constant

FORMAT = 1
BUNDLE = "logbook-bundle"
RECEIPT = "logbook-receipt"
END = "end"
_WHAT = {BUNDLE: "bundle", RECEIPT: "receipt"}
#: The longest line read (a job with large results): past it the file is damaged, not memory.
MAX_LINE = 256 * 2**20
#: What a receipt says of a job: on the server (with its id), refused, not yet, or not there.
OUTCOMES = ("synced", "rejected", "waiting", "absent")
#: A job line as the exporter writes it: this head, 64 hex digits, then the job from _JOB_AT.
_JOB_HEAD = b'{"sha256":"'
_JOB_AT = len(_JOB_HEAD) + 64 + len(b'","job":')
_loads = json.JSONDecoder(parse_constant=reject_constant).decode
dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode


def version() -> str:
    """This logbook's version (the package's ``__version__``; its parent is always loaded)."""
    return str(getattr(sys.modules.get("logbook"), "__version__", "unknown"))


def show(value: Any) -> str:
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
        return dumps({k: v for k, v in asdict(self).items() if v is not None}) + "\n"


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


class Writer:
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
        # Level 6, gzip's own default: half the time of 9 (the module's default), 0.3% larger.
        sink: Any = self.hashing
        self.gz = gzip.GzipFile(fileobj=sink, mode="wb", compresslevel=6, mtime=0)
        self.body = hashlib.sha256()
        self.buf: list[str] = []
        self.size = 0
        self.done = False

    def __enter__(self) -> Writer:
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
        self._io(self.gz.write, (dumps(end) + "\n").encode("utf-8"))
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
            f"{path} was made by a newer logbook ({show(doc.get('logbook'))}, {what} format"
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


def open_file(path: str, kind: str) -> tuple[Manifest, Records]:
    """The file's manifest, and its records (each line between it and the end line): the
    records check the end line (count, checksum) once they are all read.
    """
    lines = _lines(path, _WHAT[kind])
    first = next(lines, None)
    if first is None:
        raise BadInput(f"{path} holds nothing: not a logbook {_WHAT[kind]}")
    manifest = _manifest(path, kind, first)
    return manifest, Records(path, manifest, first, lines)


class Records:
    """A file's records, streamed; ``digest()`` is the sha256 of every byte read so far (a
    second reading compares it with the first's, so what it takes is what was verified).
    """

    def __init__(self, path: str, manifest: Manifest, first: bytes, lines: Iterator[bytes]) -> None:
        self.path, self.manifest, self.lines = path, manifest, lines
        self.body = hashlib.sha256(first)

    def digest(self) -> str:
        return self.body.hexdigest()

    def __iter__(self) -> Iterator[tuple[bytes, dict[str, Any] | None]]:
        """Each record's line, and the line parsed (None for a job line in the exporter's
        own shape: its reader parses only the job).
        """
        path, lines = self.path, self.lines
        n = 0
        for line in lines:
            doc = None
            if not line.startswith(_JOB_HEAD):
                doc = _parse(path, line, n + 2)
                if doc.get("kind") == END:
                    self._check_end(doc, n)
                    if next(lines, None) is not None:
                        raise BadInput(
                            f"{path} is damaged: there is more after its end; copy it again"
                        )
                    return
            self.body.update(line)
            n += 1
            yield line, doc
        raise BadInput(f"{path} is cut short (its end line is missing): copy it again")

    def _check_end(self, doc: dict[str, Any], n: int) -> None:
        if doc.get("sha256") != self.digest():
            raise BadInput(f"{self.path} is damaged: its checksum does not match; copy it again")
        for where, said in (("end line", doc.get("jobs")), ("manifest", self.manifest.jobs)):
            if said != n:
                raise BadInput(f"{self.path} is damaged: it holds {n} jobs, its {where} says"
                               f" {show(said)}; copy it again")  # fmt: skip


def job_line(job: dict[str, Any]) -> str:
    """A bundle's job line as the exporter writes it (the shape a reader checks on its bytes)."""
    text = canonical_json(job)
    return f'{{"sha256":"{hashlib.sha256(text.encode("utf-8")).hexdigest()}","job":{text}}}\n'


def bundle_job(
    path: str, number: int, line: bytes, doc: dict[str, Any] | None, *, check: bool = True
) -> tuple[dict[str, Any], str]:
    """A bundle's job line: the job and its checksum, checked (``check``) against each other.

    A line in the exporter's own shape (``{"sha256":"…","job":…}``) is checked on its bytes,
    the job's canonical JSON as written; any other spelling of it (a person's ``jq``) is
    parsed and its job's canonical JSON made anew.
    """
    job: Any = None
    digest: Any = None
    try:
        if doc is None and line[_JOB_AT - 8 : _JOB_AT] == b'","job":' and line.endswith(b"}\n"):
            text, digest = line[_JOB_AT:-2], line[len(_JOB_HEAD) : _JOB_AT - 8].decode("ascii")
            if not check or hashlib.sha256(text).hexdigest() == digest:
                job = _loads(text.decode("utf-8"))
        else:
            doc = doc if doc is not None else _parse(path, line, number + 1)
            job, digest = doc.get("job"), doc.get("sha256")
            if check and not (isinstance(job, dict) and job_digest(job) == digest):
                job = None
    except (TypeError, ValueError, RecursionError):
        job = None
    if not (isinstance(job, dict) and isinstance(digest, str)) or not all(
        isinstance(job.get(k), str) for k in ("experiment_id", "hash")
    ):
        raise BadInput(f"{path} is damaged: job {number} does not match its checksum;"
                       " copy it again")  # fmt: skip
    return job, digest


def receipt_outcome(path: str, number: int, line: bytes, doc: dict[str, Any] | None) -> Outcome:
    """A receipt's line, checked: what became of one job."""
    doc = doc if doc is not None else _parse(path, line, number + 1)
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
