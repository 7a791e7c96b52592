"""The one directory walker, shared by ``import`` and the watcher's scans.

It yields regular files whose names match the patterns, each once:
hidden directories (``.git``) and hidden or temporary names (``.*``,
``*.tmp``, ``*.part``, ``*~``) are skipped, symlinked directories are not
followed (so no loops), and anything that is not a regular file (a FIFO, a
socket, a device, a symlink to ``/dev/zero``, a dangling or looping link) is
skipped without being opened.  Names need not be UTF-8: on Linux a path is
bytes, and Python carries undecodable bytes as surrogate escapes.
"""

from __future__ import annotations

import fnmatch
import os
import stat
from collections.abc import Callable, Iterable, Iterator

DEFAULT_PATTERNS: tuple[str, ...] = ("*.json", "*.jsonl")
_IGNORED_SUFFIXES = (".tmp", ".part", "~")


def is_ignored(name: str | os.PathLike[str]) -> bool:
    """Temporary and hidden files (``.*``, ``*.tmp``, ``*.part``, ``*~``): writers' scratch."""
    base = os.path.basename(os.fspath(name))
    return base.startswith(".") or base.lower().endswith(_IGNORED_SUFFIXES)


def matches(name: str | os.PathLike[str], patterns: Iterable[str] = DEFAULT_PATTERNS) -> bool:
    """Whether the file name (not the path) matches one of the globs; no patterns match all."""
    base = os.path.basename(os.fspath(name))
    pats = tuple(patterns)
    return not pats or any(fnmatch.fnmatch(base, p) for p in pats)


def wanted(name: str, patterns: Iterable[str]) -> bool:
    """A result file's name: matches a pattern and is not hidden or temporary."""
    return not is_ignored(name) and matches(name, patterns)


def not_a_file(st: os.stat_result) -> str:
    """What a result file's name that is no regular file is, in a few words."""
    if stat.S_ISFIFO(st.st_mode):
        return "a FIFO, not a regular file: never opened"
    if stat.S_ISSOCK(st.st_mode):
        return "a socket, not a regular file: never opened"
    if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
        return "a device, not a regular file: never opened"
    return "not a regular file: never opened"


def unstattable(path: str, err: OSError) -> str | None:
    """Why a result file's name could not be stat'ed; None when it is simply gone (a
    writer's rename or delete)."""
    if os.path.islink(path):
        return "a symlink that leads nowhere (dangling, or a loop)"
    return None if isinstance(err, FileNotFoundError) else f"cannot stat it ({err.strerror})"


class Excluded:
    """Paths never to read, whatever their spelling: a symlinked directory, a relative top.

    Cheap for the common case: only a file whose *name* is excluded has its
    directory resolved.
    """

    def __init__(self, paths: Iterable[str]) -> None:
        self.where: dict[str, set[str]] = {}
        for p in paths:
            self.where.setdefault(os.path.basename(p), set()).add(
                os.path.realpath(os.path.dirname(os.path.abspath(p)))
            )

    def __call__(self, path: str) -> bool:
        dirs = self.where.get(os.path.basename(path))
        return bool(dirs) and os.path.realpath(os.path.dirname(os.path.abspath(path))) in dirs  # type: ignore[operator]


def walk(
    top: str,
    patterns: Iterable[str] = DEFAULT_PATTERNS,
    *,
    exclude: Iterable[str] = (),
    sort: bool = True,
    skipped: Callable[[str, str], None] | None = None,
) -> Iterator[tuple[str, os.stat_result]]:
    """``(path, stat)`` of every result file under the directory ``top``.

    ``exclude`` holds paths never to yield (the store's own files, when the
    store sits in a watched directory).  A directory that cannot be listed is
    skipped; the walk goes on.  ``skipped(path, why)`` hears of each result
    file's name that is not a regular file (see ``not_a_file``, ``unstattable``).
    """
    pats = tuple(patterns)
    skip = Excluded(exclude)
    stack = [top]
    while stack:
        d = stack.pop()
        try:
            with os.scandir(d) as it:
                entries = list(it)
        except OSError:
            continue
        if sort:
            entries.sort(key=lambda e: e.name)
        subdirs = []
        for entry in entries:
            name = entry.name
            if name.startswith("."):
                continue
            try:
                if entry.is_dir(follow_symlinks=False):
                    subdirs.append(entry.path)
                    continue
                if not wanted(name, pats) or skip(entry.path):
                    continue
                st = entry.stat()  # follows a symlink to a file; a loop raises
            except OSError as err:
                why = unstattable(entry.path, err)
                if why and skipped is not None:
                    skipped(entry.path, why)
                continue
            if stat.S_ISREG(st.st_mode):
                yield entry.path, st
            elif skipped is not None:
                skipped(entry.path, not_a_file(st))
        stack.extend(reversed(subdirs))  # popped in name order
