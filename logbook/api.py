"""The Python API: ``logbook.log()`` and ``logbook.sync()``, mirroring the CLI."""

from __future__ import annotations

import json
import numbers
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import load_config
from .errors import InvalidFile, InvalidJob
from .jobs import JOB_FIELDS, prepare
from .store import Entry, Store

if TYPE_CHECKING:
    from .engine import SyncReport

_local = threading.local()


def open_store(db: str | Path | None = None) -> Store:
    """The store for ``db`` (default: the configured one), one connection per thread."""
    path = str(db) if db is not None else str(load_config().db)
    stores: dict[str, Store] = getattr(_local, "stores", None) or {}
    _local.stores = stores
    store = stores.get(path)
    if store is None:
        store = stores[path] = Store(path)
    return store


def _is_counts(obj: Mapping[str, Any]) -> bool:
    # numbers.Integral: numpy's integer counts are counts too.
    return (
        bool(obj)
        and all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in obj.values())
        and not (set(obj) & set(JOB_FIELDS))
    )


def _from_qiskit(obj: Any) -> dict[str, Any] | None:
    """Job fields for a Qiskit Result, job or ``Result.to_dict()`` mapping; else None."""
    from .ingest import qiskit as qc

    try:
        if qc.looks_like_qiskit_result(obj):
            return qc.job_from_result(obj)
        if qc.looks_like_primitive_result(obj):
            return qc.job_from_primitive_result(obj)
        if qc.looks_like_qiskit_job(obj):
            return qc.job_from_qiskit_job(obj)
        if qc.is_result_dict(obj):  # the JSON of Result.to_dict(), as `import` reads it
            return qc.job_from_result_dict(obj)
        if qc.is_primitive_result_dict(obj):  # RuntimeEncoder's JSON of a PrimitiveResult
            return qc.job_from_primitive_dict(obj)
    except (TypeError, ValueError, InvalidFile) as err:
        raise InvalidJob(f"cannot log a {type(obj).__name__}: {err}") from None
    return None


def job_from_object(
    obj: Any, experiment_id: str | None = None, *, circuit: Any = None, **fields: Any
) -> dict[str, Any]:
    """The checked job for a Qiskit Result or job, a primitive result or job, a mapping of
    job fields, or a counts dict; ``circuit`` gives the SDK's ``circuit_hash``."""
    base = _from_qiskit(obj)
    if base is None and isinstance(obj, Mapping) and _is_counts(obj):
        counts = {str(k): int(v) for k, v in obj.items()}
        base = {"results": json.dumps(counts), "shots": json.dumps([sum(counts.values())])}
    elif base is None and isinstance(obj, Mapping):
        base = dict(obj)
    elif base is None:
        raise InvalidJob(
            f"cannot log a {type(obj).__name__}: give a Qiskit Result or job,"
            " a mapping of job fields, or a counts dict"
        )
    if circuit is not None and "circuit_hash" not in fields:
        from .ingest.qiskit import circuit_hash

        try:
            base["circuit_hash"] = circuit_hash(circuit)
        except TypeError as err:
            raise InvalidJob(f"circuit: {err}") from None
    metrics = fields.pop("metrics", None)
    base.update(fields)
    if metrics is not None:  # the caller's metrics join what the result itself brought
        if not isinstance(metrics, Mapping):
            raise InvalidJob(f"metrics: must be a mapping, not {type(metrics).__name__}")
        base["metrics"] = {**(base.get("metrics") or {}), **metrics}
    if experiment_id is not None:
        base["experiment_id"] = experiment_id
    return prepare(base)


def log(
    obj: Any,
    experiment_id: str | None = None,
    *,
    circuit: Any = None,
    db: str | Path | None = None,
    **fields: Any,
) -> Entry:
    """Record a job offline and return its entry (the existing one if already recorded).

    ``obj``: a Qiskit ``Result`` or job, a ``PrimitiveResult`` or primitive job
    (Qiskit 2), a mapping of job fields, or a counts dict.  ``circuit``: the
    circuit it ran, for the Haiqu SDK's ``circuit_hash``.  ``fields``: any job
    field (``name``, ``device_id``, ``metrics={...}``, ``hash=`` to tell two runs
    with identical counts apart).  ``experiment_id`` defaults to ``experiment``
    in config.toml.  Never touches the network: ``sync()`` sends it later.
    """
    if experiment_id is None and not (isinstance(obj, Mapping) and obj.get("experiment_id")):
        # config.toml's experiment, as `record` and `import` use it
        experiment_id = load_config(db=str(db) if db is not None else None).experiment
    job = job_from_object(obj, experiment_id, circuit=circuit, **fields)
    entry, _created = open_store(db).record(job, source="python")
    return entry


def sync(
    *,
    db: str | Path | None = None,
    endpoint: str | None = None,
    auth: str | None = None,
    **options: Any,
) -> SyncReport:
    """Run one sync (see ``logbook.engine.run_sync``) and return its report."""
    from .engine import run_sync

    cfg = load_config(db=str(db) if db is not None else None, endpoint=endpoint, auth=auth)
    return run_sync(cfg, **options)
