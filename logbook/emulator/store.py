"""The emulator's jobs: kept in memory, optionally saved to a JSON file.

Like the real API, the store never de-duplicates: every ``POST /jobs`` makes a
new job.  It counts the jobs per ``(experiment_id, hash)`` so that tests can
prove that a client delivered each entry exactly once.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..jobs import JobDocument

STATE_VERSION = 1


def iso(ts: float) -> str:
    """An RFC 3339 UTC timestamp, as the API reference shows them."""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class StoredJob:
    """One job as the server recorded it; its status is computed from its age."""

    __slots__ = ("fields", "created", "submitted_status")

    def __init__(self, fields: dict[str, Any], created: float, submitted_status: str) -> None:
        self.fields = fields
        self.created = created
        self.submitted_status = submitted_status

    def view(self, now: float, progress_seconds: float) -> dict[str, Any]:
        """The Job document at time ``now``: Submitted, Queued, Running, then Done."""
        doc = dict(self.fields)
        age = now - self.created
        if progress_seconds <= 0 or age >= progress_seconds:
            doc["status"] = "Done"
            doc["run_date"] = iso(self.created + max(progress_seconds, 0) / 2)
            doc["finish_date"] = iso(self.created + max(progress_seconds, 0))
            doc["time"] = max(progress_seconds, 0) / 2
        elif age >= progress_seconds / 2:
            doc["status"] = "Running"
            doc["run_date"] = iso(self.created + progress_seconds / 2)
        elif age >= progress_seconds / 4:
            doc["status"] = "Queued"
        else:
            doc["status"] = "Submitted"
        return doc

    def to_state(self) -> dict[str, Any]:
        return {
            "fields": self.fields,
            "created": self.created,
            "submitted_status": self.submitted_status,
        }

    @classmethod
    def from_state(cls, data: dict[str, Any]) -> StoredJob:
        return cls(dict(data["fields"]), float(data["created"]), str(data["submitted_status"]))


class JobStore:
    """All jobs, by server id and by ``(experiment_id, hash)`` in creation order."""

    def __init__(self, progress_seconds: float, user_id: int = 1) -> None:
        self.progress_seconds = progress_seconds
        self.user_id = user_id
        self.by_id: dict[str, StoredJob] = {}
        self.by_key: dict[tuple[str, str], list[str]] = {}
        self.dirty = False

    def clear(self) -> None:
        self.by_id.clear()
        self.by_key.clear()
        self.dirty = True

    def create(self, body: dict[str, Any]) -> StoredJob:
        """Record a validated JobSubmit body as a new job (never de-duplicated)."""
        now = time.time()
        doc = JobDocument.from_job(
            body, id=str(uuid.uuid4()), status="Submitted", created=iso(now),
            user_id=self.user_id,
        )  # fmt: skip
        job = StoredJob(doc.to_dict(), now, body["status"])
        self._add(job)
        self.dirty = True
        return job

    def _add(self, job: StoredJob) -> None:
        self.by_id[job.fields["id"]] = job
        key = (job.fields["experiment_id"], job.fields["hash"])
        self.by_key.setdefault(key, []).append(job.fields["id"])

    def get(self, job_id: str) -> StoredJob | None:
        return self.by_id.get(job_id)

    def first_by_hash(self, experiment_id: str, job_hash: str) -> StoredJob | None:
        """The first job created with this hash: duplicates hide behind it."""
        ids = self.by_key.get((experiment_id, job_hash))
        return self.by_id[ids[0]] if ids else None

    def view(self, job: StoredJob) -> dict[str, Any]:
        return job.view(time.time(), self.progress_seconds)

    def all_views(self) -> list[dict[str, Any]]:
        """Every job in creation order, with the status it was submitted with."""
        now = time.time()
        out = []
        for job in self.by_id.values():
            doc = job.view(now, self.progress_seconds)
            doc["submitted_status"] = job.submitted_status
            out.append(doc)
        return out

    def counts(self) -> dict[str, Any]:
        """Created, unique and duplicate counts, for ``GET /_admin/stats``."""
        duplicate_keys: list[list[str | int]] = [
            [exp, h, len(ids)] for (exp, h), ids in self.by_key.items() if len(ids) > 1
        ]
        return {
            "jobs_created": len(self.by_id),
            "unique_jobs": len(self.by_key),
            "duplicates": sum(len(ids) - 1 for ids in self.by_key.values()),
            "duplicate_keys": duplicate_keys,
        }

    # persistence -----------------------------------------------------------

    def save(self, path: Path) -> None:
        """Write every job atomically (temp file + rename), so a crash never truncates it."""
        data = {"version": STATE_VERSION, "jobs": [j.to_state() for j in self.by_id.values()]}
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(data, fh)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self.dirty = False

    def load(self, path: Path) -> int:
        """Load jobs saved by ``save``; a missing file is an empty store."""
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return 0
        data = json.loads(text)
        if data.get("version") != STATE_VERSION:
            raise ValueError(f"{path}: unsupported state version {data.get('version')!r}")
        for item in data["jobs"]:
            self._add(StoredJob.from_state(item))
        self.dirty = False
        return len(data["jobs"])
