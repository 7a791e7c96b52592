"""Reading result files into checked jobs, shared by ``import`` and ``watch``.

Pure on purpose: no store, no network, so a watcher can call it from any thread
and tests need nothing but files.  ``read_file`` never raises for a bad file; it
returns an invalid ``ReadResult`` whose ``errors`` say why, because one bad file
in a watched directory must never stop the watcher.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import stat
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InvalidFile, InvalidJob
from ..jobs import JOB_FIELDS, prepare
from . import qiskit as qiskit_results
from .parallel import PARALLEL_MIN_LINES, ChunkedParse, Transform, can_fork
from .walk import DEFAULT_PATTERNS, is_ignored, matches, walk, wanted

__all__ = [
    "DEFAULT_MAX_BYTES", "DEFAULT_PATTERNS", "NEEDS_EXPERIMENT", "ReadResult", "is_ignored",
    "iter_result_files", "matches", "read_file", "walk", "wanted",
]  # fmt: skip

#: Files above this are refused unread (config ``max_file_bytes``): a result
#: file is small, and the whole file is held in memory once.
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
#: How many bad JSON Lines lines are listed one by one before "and N more".
MAX_LINE_ERRORS = 5

_JSONL_SUFFIXES = (".jsonl", ".ndjson")
_JOB_KEYS = frozenset(JOB_FIELDS)


@dataclass
class ReadResult:
    """What one read of one file gave.

    ``kind`` is what the file was recognised as ("job", "qiskit", "primitive",
    "jsonl"), or "invalid" when it is none of them.  A recognised file can
    still have errors (a job document that fails the API's model, bad JSON
    Lines lines); ``ok`` is the test for "nothing wrong".  ``jobs`` holds every
    good job even then.  A big JSON Lines file read with ``workers`` > 1 has
    ``chunks`` instead of ``jobs``: it is parsed as ``chunks.chunks()`` is
    iterated, and ``errors`` is complete once it has been (``finish()``).

    ``size``, ``mtime_ns``, ``ino`` and ``ctime_ns`` describe the bytes read;
    ``read_ns`` is the wall-clock time just before they were read.
    """

    path: str
    jobs: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    kind: str = "invalid"
    size: int = 0
    mtime_ns: int = 0
    ino: int = 0
    ctime_ns: int = 0
    read_ns: int = 0
    sha256: str = ""
    chunks: ChunkedParse | None = None

    @property
    def ok(self) -> bool:
        return not self.errors and self.kind != "invalid"

    def finish(self) -> None:
        """Collect a chunked parse's errors (after ``chunks.chunks()`` is exhausted)."""
        if self.chunks is not None:
            c, self.chunks = self.chunks, None
            _finish_jsonl(self, c.njobs, c.bad, c.nbad)


def iter_result_files(
    paths: Iterable[str | os.PathLike[str]],
    patterns: Iterable[str] = DEFAULT_PATTERNS,
    *,
    exclude: Iterable[str] = (),
) -> Iterator[Path]:
    """Yield the result files under ``paths``, each once, in a deterministic order.

    Directories are walked with ``walk``.  A file named explicitly is yielded
    even if it matches no pattern, but never when its name is hidden or
    temporary.  A path that does not exist is yielded as it is, so that
    ``read_file`` reports it with the other invalid files.
    """
    pats = tuple(patterns)
    skip = frozenset(exclude)
    seen: set[str] = set()

    def once(p: str) -> bool:
        key = os.path.realpath(p)
        if key in seen:
            return False
        seen.add(key)
        return True

    for raw in paths:
        top = os.fspath(raw)
        if os.path.isdir(top):
            for path, _st in walk(top, pats, exclude=skip):
                if once(path):
                    yield Path(path)
        elif not is_ignored(top) and once(top):
            yield Path(top)


# --------------------------------------------------------------------------- reading


def _invalid(res: ReadResult, reason: str) -> ReadResult:
    res.kind = "invalid"
    res.errors.append(reason)
    return res


def _os_reason(err: OSError) -> str:
    if isinstance(err, FileNotFoundError):
        return "file not found"
    if isinstance(err, IsADirectoryError):
        return "is a directory, not a file"
    if isinstance(err, PermissionError):
        return "permission denied"
    return f"cannot read: {err.strerror or err}"


def _too_large(size: int, max_bytes: int) -> str:
    return (
        f"file too large: {size} bytes, over the limit of {max_bytes} bytes "
        "(raise max_file_bytes in config.toml, or --max-file-bytes)"
    )


def _type_name(value: Any) -> str:
    if isinstance(value, list):
        return "a JSON array"
    if isinstance(value, str):
        return "a JSON string"
    if value is None:
        return "JSON null"
    if isinstance(value, bool):
        return "a JSON boolean"
    return "a JSON number"


#: What every reason of a file invalid for want of an experiment id holds: a watcher
#: given one later reads such a file again.
NEEDS_EXPERIMENT = "give --experiment"


def _job_reason(reason: str, experiment_id: str | None) -> str:
    if reason.startswith("experiment_id") and not experiment_id:
        return f"{reason} ({NEEDS_EXPERIMENT})"
    return reason


def _prepare_object(obj: Any, experiment_id: str | None) -> tuple[str, dict[str, Any]]:
    """One JSON value to (kind, job).  Raises InvalidFile/InvalidJob with the reason."""
    if not isinstance(obj, dict):
        raise InvalidFile(f"{_type_name(obj)}, not a JSON object")
    if qiskit_results.is_primitive_result_dict(obj):
        try:
            job = qiskit_results.job_from_primitive_dict(obj)
        except InvalidFile as err:
            raise InvalidFile(f"Qiskit primitive result: {err}") from None
        if not experiment_id:
            raise InvalidFile(f"a Qiskit primitive result has no experiment: {NEEDS_EXPERIMENT}")
        return "primitive", prepare(job, experiment_id=experiment_id)
    if qiskit_results.is_result_dict(obj):
        if not experiment_id:
            raise InvalidFile(f"a Qiskit result has no experiment: {NEEDS_EXPERIMENT}")
        try:
            job = qiskit_results.job_from_result_dict(obj)
        except InvalidFile as err:
            raise InvalidFile(f"Qiskit result: {err}") from None
        return "qiskit", prepare(job, experiment_id=experiment_id)
    if not _JOB_KEYS.intersection(obj):
        keys = ", ".join(sorted(obj)[:5]) or "none"
        raise InvalidFile(
            "a JSON object that is neither a job document nor a Qiskit result "
            f"(keys: {keys}; a job has experiment_id, results, shots, status, ...)"
        )
    try:
        return "job", prepare(obj, experiment_id=experiment_id)
    except InvalidJob as err:
        raise InvalidJob(_job_reason(str(err), experiment_id)) from None


_LINE_DECODER = json.JSONDecoder()


def _parse_lines(
    lines: list[str], first_lineno: int, experiment_id: str | None = None
) -> tuple[list[dict[str, Any]], list[str], int]:
    """Jobs of some JSON Lines lines, the first few bad lines' reasons, and how many were bad."""
    raw_decode = _LINE_DECODER.raw_decode
    jobs: list[dict[str, Any]] = []
    bad: list[str] = []
    nbad = 0
    for lineno, line in enumerate(lines, first_lineno):
        if not line or line.isspace():
            continue
        try:
            try:  # decode() without its whitespace regexes; anything odd takes json.loads
                obj, end = raw_decode(line)
                if end != len(line):
                    obj = json.loads(line)
            except json.JSONDecodeError:
                obj = json.loads(line)
            if type(obj) is dict and not ("backend_name" in obj or "job_id" in obj):
                # The hot path: a plain job document.
                jobs.append(prepare(obj, experiment_id=experiment_id))
            else:
                jobs.append(_prepare_object(obj, experiment_id)[1])
            continue
        except json.JSONDecodeError as err:
            reason = f"not JSON: {err.msg} at column {err.colno}"
        except InvalidJob as err:
            reason = _job_reason(str(err), experiment_id)
        except ValueError as err:  # e.g. an integer of more than 4,300 digits
            reason = f"not JSON: {err}"
        except InvalidFile as err:
            reason = str(err)
        except RecursionError:
            reason = "JSON nested too deeply"
        nbad += 1
        if len(bad) < MAX_LINE_ERRORS:
            bad.append(f"line {lineno}: {reason}")
    return jobs, bad, nbad


def _finish_jsonl(res: ReadResult, njobs: int, bad: list[str], nbad: int) -> None:
    bad = bad[:MAX_LINE_ERRORS]
    if nbad > len(bad):
        bad.append(f"and {nbad - len(bad)} more invalid lines")
    if not njobs and not nbad:
        res.kind = "invalid"
        res.errors.append("no job lines (only blank lines)")
        return
    res.errors.extend(bad)


def _read_jsonl(
    res: ReadResult,
    text: str,
    experiment_id: str | None,
    workers: int = 1,
    transform: Transform | None = None,
) -> ReadResult:
    """One job per line; good lines' jobs are kept whatever the bad lines say."""
    res.kind = "jsonl"
    lines = text.split("\n")
    if workers > 1 and len(lines) >= PARALLEL_MIN_LINES and can_fork():
        parse = functools.partial(_parse_lines, experiment_id=experiment_id)
        res.chunks = ChunkedParse(lines, parse, workers, transform)
        return res
    jobs, bad, nbad = _parse_lines(lines, 1, experiment_id)
    res.jobs = jobs
    _finish_jsonl(res, len(jobs), bad, nbad)
    return res


def _looks_like_jsonl(text: str) -> bool:
    first = next((ln for ln in text.split("\n") if ln.strip()), "")
    try:
        return isinstance(json.loads(first), dict)
    except (ValueError, RecursionError):
        return False


def _parse(
    res: ReadResult,
    data: bytes,
    experiment_id: str | None,
    workers: int = 1,
    transform: Transform | None = None,
) -> ReadResult:
    if not data.strip():
        return _invalid(res, "empty file")
    if b"\x00" in data:
        return _invalid(res, "binary file (contains NUL bytes), not JSON text")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        bom = 3 if data.startswith(b"\xef\xbb\xbf") else 0
        return _invalid(res, f"not UTF-8 text (bad byte at offset {err.start + bom})")
    if res.path.lower().endswith(_JSONL_SUFFIXES):
        return _read_jsonl(res, text, experiment_id, workers, transform)
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as err:
        if err.msg == "Extra data" and _looks_like_jsonl(text):
            return _read_jsonl(res, text, experiment_id, workers, transform)
        return _invalid(res, f"not JSON: {err.msg} at line {err.lineno} column {err.colno}")
    except RecursionError:
        return _invalid(res, "JSON nested too deeply")
    try:
        res.kind, job = _prepare_object(obj, experiment_id)
    except InvalidFile as err:
        if qiskit_results.is_result_dict(obj):
            res.kind = "qiskit"
            res.errors.append(str(err))
            return res
        return _invalid(res, str(err))
    except InvalidJob as err:
        res.kind = "job"
        res.errors.append(f"invalid job: {err}")
        return res
    except RecursionError:
        return _invalid(res, "JSON nested too deeply")
    res.jobs.append(job)
    return res


def _read_at_most(fh: Any, limit: int) -> bytes:
    """Up to ``limit`` bytes, read in pieces: no buffer of ``limit`` bytes for a small file."""
    buf = bytearray()
    while len(buf) < limit:
        chunk = fh.read(min(1 << 20, limit - len(buf)))
        if not chunk:
            break
        buf += chunk
    return bytes(buf)


def read_file(
    path: str | os.PathLike[str],
    *,
    experiment_id: str | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    workers: int = 1,
    transform: Transform | None = None,
) -> ReadResult:
    """Read one result file into jobs ready for the store; never raises for a bad file.

    ``workers`` > 1 lets a big JSON Lines file be parsed by that many forked
    processes (``ReadResult.chunks``, each chunk passed through ``transform``
    in its worker).  Only for single-threaded callers (``logbook import``),
    since it forks.

    The bytes are read once and both hashed and parsed, so ``sha256`` always
    describes exactly what the jobs came from (a file rewritten meanwhile is
    read again later, not mixed).  At most ``max_bytes + 1`` bytes are ever
    read, whatever the file claims to be (``/dev/zero`` through a symlink).
    ``experiment_id`` fills in for documents that have none; a document's own
    experiment_id wins.
    """
    res = ReadResult(path=os.fspath(path), read_ns=time.time_ns())
    try:
        # O_NONBLOCK: a FIFO swapped in after a stat must not block the reader.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
        with open(fd, "rb", closefd=True) as fh:
            st = os.fstat(fd)
            res.size, res.mtime_ns, res.ino, res.ctime_ns = (
                st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns,
            )  # fmt: skip
            if stat.S_ISDIR(st.st_mode):
                return _invalid(res, "is a directory, not a file")
            if not stat.S_ISREG(st.st_mode):
                return _invalid(res, "not a regular file (a FIFO, socket or device)")
            if st.st_size > max_bytes:
                return _invalid(res, _too_large(st.st_size, max_bytes))
            data = _read_at_most(fh, max_bytes + 1)
    except OSError as err:
        return _invalid(res, _os_reason(err))
    if len(data) > max_bytes:  # grew after the stat
        return _invalid(res, _too_large(len(data), max_bytes))
    res.size = len(data)
    res.sha256 = hashlib.sha256(data).hexdigest()
    try:
        return _parse(res, data, experiment_id, workers, transform)
    except RecursionError:
        res.jobs.clear()
        return _invalid(res, "JSON nested too deeply")
    except MemoryError:
        res.jobs.clear()
        return _invalid(res, "out of memory while reading")
    except Exception as err:  # noqa: BLE001 - a watcher must outlive any one file
        res.jobs.clear()
        return _invalid(res, f"cannot read: {type(err).__name__}: {err}")
