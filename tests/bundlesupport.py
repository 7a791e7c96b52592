"""Bundles and receipts as a person (or another program) sees them: gzip-compressed JSON
Lines, read and written here with the standard library only, never with logbook's reader.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

Key = tuple[str, str]


def read_lines(path: Path) -> list[dict[str, Any]]:
    """Every line of a bundle or receipt (``zcat FILE | jq``)."""
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def bundle_jobs(path: Path) -> dict[Key, dict[str, Any]]:
    """The jobs a bundle carries, by identity."""
    return {(d["job"]["experiment_id"], d["job"]["hash"]): d["job"] for d in read_lines(path)[1:-1]}


def receipt_lines(path: Path) -> dict[Key, dict[str, Any]]:
    return {(d["experiment_id"], d["hash"]): d for d in read_lines(path)[1:-1]}


def canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def job_line(job: dict[str, Any]) -> dict[str, Any]:
    """A bundle's job line as the format says: the job and the sha256 of its canonical JSON."""
    return {"sha256": hashlib.sha256(canonical(job).encode()).hexdigest(), "job": job}


def write_lines(path: Path, manifest: dict[str, Any], records: list[dict[str, Any]]) -> None:
    """A well-formed file of either kind: manifest, records, an end line that matches."""
    body = b"".join(
        (json.dumps(d, ensure_ascii=False) + "\n").encode() for d in [manifest, *records]
    )
    end = {"kind": "end", "jobs": len(records), "sha256": hashlib.sha256(body).hexdigest()}
    path.write_bytes(gzip.compress(body + (json.dumps(end) + "\n").encode()))


def replace_job(path: Path, number: int, job: dict[str, Any]) -> None:
    """Job ``number`` (from 1) replaced, with its checksum and the end line made anew: every
    other byte stays as it was."""
    lines = gzip.decompress(path.read_bytes()).splitlines(keepends=True)
    line = job_line(job)
    lines[number] = f'{{"sha256":"{line["sha256"]}","job":{canonical(job)}}}\n'.encode()
    body = b"".join(lines[:-1])
    end = {"kind": "end", "jobs": len(lines) - 2, "sha256": hashlib.sha256(body).hexdigest()}
    path.write_bytes(gzip.compress(body + (json.dumps(end) + "\n").encode()))


def damaged_forms(data: bytes) -> Iterator[tuple[str, bytes]]:
    """Every cut (each length short of the whole) and every single-byte flip (each bit, and
    all eight bits, at each position) of ``data``.
    """
    for n in range(len(data)):
        yield f"cut at {n}", data[:n]
    for i in range(len(data)):
        for mask in (1, 2, 4, 8, 16, 32, 64, 128, 255):
            yield f"byte {i} ^ {mask:#x}", data[:i] + bytes([data[i] ^ mask]) + data[i + 1 :]
