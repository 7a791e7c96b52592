"""Reading result files into checked jobs, shared by ``import`` and ``watch``.

Pure on purpose: no store, no network, so a watcher can call it from any thread
and tests need nothing but files.  ``read_file`` never raises for a bad file; it
returns an invalid ``ReadResult`` whose ``errors`` say why, because one bad file
in a watched directory must never stop the watcher.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import stat
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import qiskit_compat
from .errors import InvalidFile, InvalidJob
from .jobs import JOB_FIELDS, prepare

DEFAULT_PATTERNS: tuple[str, ...] = ("*.json", "*.jsonl")
#: Files above this are refused unread (config ``max_file_bytes``): a result
#: file is small, and the whole file is held in memory once.
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
#: How many bad JSON Lines lines are listed one by one before "and N more".
MAX_LINE_ERRORS = 5

_IGNORED_SUFFIXES = (".tmp", ".part", "~")
_JSONL_SUFFIXES = (".jsonl", ".ndjson")
_JOB_KEYS = frozenset(JOB_FIELDS)


@dataclass
class ReadResult:
    """What one read of one file gave.

    ``kind`` is what the file was recognised as ("job", "qiskit", "jsonl"), or
    "invalid" when it is none of them.  A recognised file can still have errors
    (a job document that fails the API's model, bad JSON Lines lines); ``ok`` is
    the test for "nothing wrong".  ``jobs`` holds every good job even then.
    """

    path: str
    jobs: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    kind: str = "invalid"
    size: int = 0
    mtime_ns: int = 0
    sha256: str = ""

    @property
    def ok(self) -> bool:
        return not self.errors and self.kind != "invalid"


def is_ignored(name: str | os.PathLike[str]) -> bool:
    """Temporary and hidden files (``.*``, ``*.tmp``, ``*.part``, ``*~``): writers' scratch."""
    base = os.path.basename(os.fspath(name))
    return base.startswith(".") or base.lower().endswith(_IGNORED_SUFFIXES)


def matches(name: str | os.PathLike[str], patterns: Iterable[str] = DEFAULT_PATTERNS) -> bool:
    """Whether the file name (not the path) matches one of the globs; no patterns match all."""
    base = os.path.basename(os.fspath(name))
    pats = list(patterns)
    return not pats or any(fnmatch.fnmatch(base, p) for p in pats)


def iter_result_files(
    paths: Iterable[str | os.PathLike[str]], patterns: Iterable[str] = DEFAULT_PATTERNS
) -> Iterator[Path]:
    """Yield the result files under ``paths``, each once, in a deterministic order.

    Directories are walked recursively (sorted; hidden directories such as ``.git``
    skipped; symlinked directories not followed, so no loops) and yield the files
    that match ``patterns`` and are not ignored.  A file named explicitly is
    yielded even if it matches no pattern, but never when its name is ignored.
    A path that does not exist is yielded as it is, so that ``read_file`` reports
    it ("file not found") with the other invalid files instead of aborting the run.
    """
    pats = tuple(patterns)
    seen: set[str] = set()

    def once(p: Path) -> bool:
        key = os.path.realpath(p)
        if key in seen:
            return False
        seen.add(key)
        return True

    for raw in paths:
        top = Path(raw)
        if top.is_dir():
            for dirpath, dirnames, filenames in os.walk(top):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                for name in sorted(filenames):
                    if is_ignored(name) or not matches(name, pats):
                        continue
                    path = Path(dirpath, name)
                    if path.is_file() and once(path):
                        yield path
        elif not is_ignored(top.name) and once(top):
            yield top


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


def _job_reason(reason: str, experiment_id: str | None) -> str:
    if reason.startswith("experiment_id") and not experiment_id:
        return f"{reason} (give --experiment)"
    return reason


def _prepare_object(obj: Any, experiment_id: str | None) -> tuple[str, dict[str, Any]]:
    """One JSON value to (kind, job).  Raises InvalidFile/InvalidJob with the reason."""
    if not isinstance(obj, dict):
        raise InvalidFile(f"{_type_name(obj)}, not a JSON object")
    if qiskit_compat.is_result_dict(obj):
        if not experiment_id:
            raise InvalidFile("a Qiskit result has no experiment: give --experiment")
        try:
            job = qiskit_compat.job_from_result_dict(obj)
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
    lines: list[str], first_lineno: int, experiment_id: str | None
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
    transform: Callable[[list[dict[str, Any]], int], Any] | None = None,
) -> ReadResult:
    """One job per line; good lines' jobs are kept whatever the bad lines say."""
    res.kind = "jsonl"
    lines = text.split("\n")
    if workers > 1 and len(lines) >= PARALLEL_MIN_LINES and _can_fork():
        res.jobs = ParallelJobs(res, lines, experiment_id, workers, transform)  # type: ignore[assignment]
        return res
    jobs, bad, nbad = _parse_lines(lines, 1, experiment_id)
    res.jobs = jobs
    _finish_jsonl(res, len(jobs), bad, nbad)
    return res


# --- big JSON Lines files: parsed by forked workers while the caller stores them -----

PARALLEL_MIN_LINES = 20_000
_CHUNK_LINES = 4_000
_fork_lines: list[str] = []
_fork_experiment: str | None = None
_fork_transform: Callable[[list[dict[str, Any]], int], Any] | None = None


def _can_fork() -> bool:
    import multiprocessing

    return "fork" in multiprocessing.get_all_start_methods()


def _parse_chunk(bounds: tuple[int, int, int]) -> tuple[Any, int, list[str], int]:
    index, start, end = bounds
    jobs, bad, nbad = _parse_lines(_fork_lines[start:end], start + 1, _fork_experiment)
    if _fork_transform is not None:
        return _fork_transform(jobs, index), len(jobs), bad, nbad
    return jobs, len(jobs), bad, nbad


class ParallelJobs:
    """The jobs of a big JSON Lines file, parsed in worker processes, in file order.

    ``chunks()`` runs the workers and yields their results chunk by chunk: each
    chunk's jobs, or what ``transform(jobs, chunk_index)`` made of them in the
    worker (``logbook import`` has the store write them to a scratch file
    there, and copies each in as it arrives, so parsing and inserting
    overlap).  The file's errors are in ``res.errors`` once done.
    """

    def __init__(
        self,
        res: ReadResult,
        lines: list[str],
        experiment_id: str | None,
        workers: int,
        transform: Callable[[list[dict[str, Any]], int], Any] | None = None,
    ) -> None:
        self.res, self.lines, self.experiment_id = res, lines, experiment_id
        self.workers, self.transform = workers, transform
        self.max_chunks: int | None = None  # None: chunks of _CHUNK_LINES lines

    def __iter__(self) -> Iterator[Any]:
        if self.transform is not None:
            raise TypeError("iterate chunks() when a transform is set")
        for chunk in self.chunks():
            yield from chunk

    def chunks(self) -> Iterator[Any]:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        global _fork_lines, _fork_experiment, _fork_transform
        n = len(self.lines)
        size = _CHUNK_LINES
        if self.max_chunks is not None:
            size = max(size, -(-n // self.max_chunks))
        bounds = [(i, s, min(s + size, n)) for i, s in enumerate(range(0, n, size))]
        njobs, bad, nbad = 0, [], 0
        _fork_lines, _fork_experiment = self.lines, self.experiment_id
        _fork_transform = self.transform
        try:
            ctx = multiprocessing.get_context("fork")
            with ProcessPoolExecutor(self.workers, mp_context=ctx) as pool:
                futures = [pool.submit(_parse_chunk, b) for b in bounds]
                _fork_lines = []  # the workers have their copy
                for fut in futures:
                    chunk, count, chunk_bad, chunk_nbad = fut.result()
                    njobs += count
                    bad += chunk_bad
                    nbad += chunk_nbad
                    yield chunk
        finally:
            _fork_lines, _fork_experiment, _fork_transform = [], None, None
            self.lines = []
        _finish_jsonl(self.res, njobs, bad, nbad)


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
    transform: Callable[[list[dict[str, Any]], int], Any] | None = None,
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
        if qiskit_compat.is_result_dict(obj):
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


def read_file(
    path: str | os.PathLike[str],
    *,
    experiment_id: str | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    workers: int = 1,
    transform: Callable[[list[dict[str, Any]], int], Any] | None = None,
) -> ReadResult:
    """Read one result file into jobs ready for the store; never raises for a bad file.

    ``workers`` > 1 lets a big JSON Lines file be parsed by that many forked
    processes: ``jobs`` is then a ``ParallelJobs`` that parses as it is consumed
    (its items passed through ``transform`` in the workers), and ``errors`` is
    complete once it has been.  Only for single-threaded callers
    (``logbook import``), since it forks.

    The bytes are read once and both hashed and parsed, so ``sha256`` always
    describes exactly what the jobs came from (a file rewritten meanwhile is
    read again later, not mixed).  ``experiment_id`` fills in for documents that
    have none; a document's own experiment_id wins.
    """
    res = ReadResult(path=os.fspath(path))
    try:
        st = os.stat(path)
        res.size, res.mtime_ns = st.st_size, st.st_mtime_ns
        if stat.S_ISDIR(st.st_mode):
            return _invalid(res, "is a directory, not a file")
        if not stat.S_ISREG(st.st_mode):
            # A FIFO or device would block or never end.
            return _invalid(res, "not a regular file")
        if st.st_size > max_bytes:
            return _invalid(res, _too_large(st.st_size, max_bytes))
        with open(path, "rb") as fh:
            st = os.fstat(fh.fileno())
            res.size, res.mtime_ns = st.st_size, st.st_mtime_ns
            data = fh.read(max_bytes + 1)
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
