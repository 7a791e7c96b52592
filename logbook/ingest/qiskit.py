"""Map Qiskit results to jobs exactly the way the Haiqu SDK does.

The server should see one job whichever tool sent it, so the hash, results and
shots here follow ``haiqu-sdk`` 1.7.0 (``haiqu.sdk.utils.get_job_hash`` and
``HaiquClient._get_or_create_job``) to the byte.  Qiskit is optional at run
time: nothing here imports it.  Live objects are recognised by duck typing and
the JSON of ``Result.to_dict()`` is decoded by re-implementing
``Result.get_counts()`` (``qiskit.result.Counts`` and
``qiskit.result.postprocess.format_counts``).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ..errors import InvalidFile

#: What the SDK sends for every local Qiskit result.
SDK_STATUS = "Done"
SDK_JOB_TYPE = "User local job"
#: The API's limit on ``name``.
_MAX_NAME = 200
#: How much of a default name the circuits' names may take (a table shows 36 characters).
_SHORT_NAMES = 24

#: Bounds on what a result may expand to: ``header.memory_slots`` pads every
#: counts key to that many bits, so a 333-byte file could ask for gigabytes.
MAX_MEMORY_SLOTS = 65_536
MAX_EXPANDED_CHARS = 64 * 1024 * 1024

_BITSTRING = re.compile(r"^[01\s]+$")  # qiskit.result.Counts.bitstring_regex


def sdk_hash(job_id: object) -> str:
    """The Haiqu SDK's job hash: decimal of the little-endian int of sha256(repr(job_id)).

    Same steps as ``get_job_hash`` for a ``Result`` (it hashes ``repr(result.job_id)``),
    so a job logged here and one logged by ``haiqu.log`` share one identity.
    """
    digest = hashlib.sha256(repr(job_id).encode("utf-8")).digest()
    return str(int.from_bytes(digest, byteorder="little"))


def short_name(circuits: Iterable[Any], device: Any, job_id: object) -> str:
    """A default name a user can tell apart in ``logbook list``: the circuits' names (the
    first few, then how many more) on the backend, e.g. ``bell +2 on ibm_kyiv``.

    Not the SDK's ``get_job_name`` ("Local job <uuid> - Job result, histogram data
    of an experiment"): cut at 36 characters in a table, every one reads the same.
    The name is no part of a job's identity (the hash is), so the SDK and logbook
    still see one job.
    """
    names = list(dict.fromkeys(str(c) for c in circuits if c not in (None, "")))
    shown: list[str] = []
    for name in names:
        if shown and len(", ".join([*shown, name])) > _SHORT_NAMES:
            break
        shown.append(name[:_SHORT_NAMES])
    what = ", ".join(shown) if shown else f"job {str(job_id)[:8]}" if job_id else "Qiskit result"
    if len(names) > len(shown):
        what += f" +{len(names) - len(shown)}"
    on = f" on {device}" if device not in (None, "") else ""
    return (what + on)[:_MAX_NAME]


def _circuit_name(experiment: Any) -> Any:
    """``results[i].header.name``: a dict in JSON and in Qiskit 2, an object in Qiskit 1."""
    header = experiment.get("header") if isinstance(experiment, Mapping) else getattr(
        experiment, "header", None
    )  # fmt: skip
    return header.get("name") if isinstance(header, Mapping) else getattr(header, "name", None)


# --------------------------------------------------------------------------- dict route


def is_result_dict(d: Any) -> bool:
    """True for the JSON of ``qiskit.result.Result.to_dict()``.

    A job document can never hold ``backend_name`` (the API forbids extra fields),
    and its ``results`` is JSON text, so the two kinds cannot be confused.
    """
    if not isinstance(d, Mapping):
        return False
    results = d.get("results")
    if not isinstance(results, list):
        return False
    if "backend_name" not in d and "job_id" not in d:
        return False
    return all(isinstance(r, Mapping) and isinstance(r.get("data"), Mapping) for r in results)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _to_hex_raw(data: dict[Any, Any], has_format: bool) -> dict[str, Any] | None:
    """The hex keys Counts works from, or None when qiskit keeps the keys as given."""
    first = next(iter(data))
    if isinstance(first, int):
        return {hex(k): v for k, v in data.items()}
    if not isinstance(first, str):
        raise InvalidFile(f"counts key {first!r} is neither a string nor an integer")
    if first.startswith("0x"):
        # Counts builds int_raw from every key, so a non-hex key fails there.
        for key in data:
            int(key, 0)
        return data
    if first.startswith("0b"):
        return {hex(int(k, 0)): v for k, v in data.items()}
    if not has_format:
        if not all(isinstance(k, str) for k in data):
            raise InvalidFile("counts keys must all be of the same type")
        return None
    out: dict[str, Any] = {}
    for bits, value in data.items():
        if not isinstance(bits, str) or not _BITSTRING.search(bits):
            raise InvalidFile(f"counts key {bits!r} is not a bit string")
        out[hex(int(bits.replace(" ", "").replace("_", ""), 2))] = value
    return out


def _format_key(key: str, creg_sizes: Any, memory_slots: Any) -> str:
    # qiskit.result.postprocess.format_counts_memory, with header = the truthy ones.
    if key.startswith("0x"):
        key = bin(int(key, 16))[2:]
    if memory_slots:
        key = format(int(key, 2), f"0{memory_slots}b")
        if creg_sizes:
            parts = []
            start = 0
            for _, size in reversed(creg_sizes):
                parts.append(key[start : start + size])
                start += size
            key = " ".join(parts)
    return key


def _format_counts(raw: Mapping[Any, Any], creg_sizes: Any, memory_slots: Any) -> dict[str, Any]:
    """What ``Counts(raw, creg_sizes=..., memory_slots=...)`` holds, as a plain dict."""
    data = dict(raw)
    if not data:
        return {}
    hex_raw = _to_hex_raw(data, bool(creg_sizes or memory_slots))
    if hex_raw is None:
        return data
    out: dict[str, Any] = {}
    for key, value in hex_raw.items():
        out[_format_key(key, creg_sizes, memory_slots)] = value
    return out


def _check_header(index: int, header: Mapping[str, Any]) -> tuple[Any, Any]:
    creg_sizes = header.get("creg_sizes")
    memory_slots = header.get("memory_slots")
    if memory_slots and not _is_int(memory_slots):
        raise InvalidFile(f"experiment {index}: header.memory_slots must be an integer")
    if memory_slots and not 0 < memory_slots <= MAX_MEMORY_SLOTS:
        raise InvalidFile(
            f"experiment {index}: header.memory_slots is {memory_slots},"
            f" outside 1..{MAX_MEMORY_SLOTS}"
        )
    if creg_sizes:
        ok = isinstance(creg_sizes, list) and all(
            isinstance(p, Sequence) and not isinstance(p, str) and len(p) == 2 and _is_int(p[1])
            for p in creg_sizes
        )
        if not ok:
            raise InvalidFile(f"experiment {index}: header.creg_sizes must be [name, size] pairs")
        if sum(max(0, p[1]) for p in creg_sizes) > MAX_MEMORY_SLOTS:
            raise InvalidFile(
                f"experiment {index}: header.creg_sizes add up to over {MAX_MEMORY_SLOTS} bits"
            )
    return creg_sizes, memory_slots


def counts_from_result_dict(d: Mapping[str, Any]) -> dict[str, Any] | list[dict[str, Any]]:
    """What ``Result.from_dict(d).get_counts()`` returns, computed from the plain JSON.

    One experiment gives a dict, any other number a list (as qiskit does).  Raises
    ``InvalidFile`` for an experiment without counts (qiskit raises QiskitError there;
    statevector results are not supported from JSON).
    """
    results = d.get("results")
    if not isinstance(results, list):
        raise InvalidFile("a Qiskit result needs a 'results' list")
    out: list[dict[str, Any]] = []
    for index, exp in enumerate(results):
        if not isinstance(exp, Mapping) or not isinstance(exp.get("data"), Mapping):
            raise InvalidFile(f"experiment {index} has no 'data' object")
        data = exp["data"]
        if "counts" not in data:
            what = "a statevector, which" if "statevector" in data else "no counts and"
            raise InvalidFile(f"experiment {index} has {what} cannot be logged as counts")
        counts = data["counts"]
        if not isinstance(counts, Mapping):
            raise InvalidFile(f"experiment {index}: counts must be an object")
        header = exp.get("header")
        creg_sizes: Any = None
        memory_slots: Any = None
        if header and isinstance(header, Mapping):
            creg_sizes, memory_slots = _check_header(index, header)
        if memory_slots and memory_slots * len(counts) > MAX_EXPANDED_CHARS:
            raise InvalidFile(
                f"experiment {index}: {len(counts)} counts of {memory_slots} bits would expand"
                f" past {MAX_EXPANDED_CHARS} characters"
            )
        try:
            out.append(_format_counts(counts, creg_sizes, memory_slots))
        except (ValueError, TypeError) as err:
            raise InvalidFile(f"experiment {index}: bad counts: {err}") from None
    return out[0] if len(out) == 1 else out


def _json_default(value: Any) -> Any:
    # numpy scalars (shots from some backends); the SDK itself would crash on them.
    item = getattr(value, "item", None)
    if callable(item):
        return item()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _job(
    job_id: object, counts: Any, shots: list[Any], device: Any, circuits: list[Any]
) -> dict[str, Any]:
    # Without a job id the SDK's hash would be one value (of repr(None)) for every such
    # result, and the store would drop all but the first; hash the content instead.
    return {
        "hash": sdk_hash(job_id) if job_id not in (None, "") else "",
        "results": json.dumps(counts, default=_json_default),
        "device_id": device if device is None or isinstance(device, str) else str(device),
        "shots": json.dumps(shots, default=_json_default),
        "name": short_name(circuits, device, job_id),
        "status": SDK_STATUS,
        "job_type": SDK_JOB_TYPE,
    }


def job_from_result_dict(d: Mapping[str, Any]) -> dict[str, Any]:
    """Job fields (no experiment_id) for the JSON of ``Result.to_dict()``, as the SDK sends them.

    ``circuit_hash`` is left out: the SDK computes it from the circuit, which a
    result file does not hold.
    """
    counts = counts_from_result_dict(d)
    shots = [exp.get("shots") for exp in d["results"]]
    circuits = [_circuit_name(exp) for exp in d["results"]]
    return _job(d.get("job_id"), counts, shots, d.get("backend_name"), circuits)


# --------------------------------------------------------------------------- live objects


def looks_like_qiskit_result(obj: object) -> bool:
    """Duck-typed ``qiskit.result.Result``: get_counts, to_dict, results, job_id, backend_name."""
    if isinstance(obj, (Mapping, type)):
        return False
    return (
        callable(getattr(obj, "get_counts", None))
        and callable(getattr(obj, "to_dict", None))
        and isinstance(getattr(obj, "results", None), list)
        and hasattr(obj, "job_id")
        and hasattr(obj, "backend_name")
    )


def looks_like_qiskit_job(obj: object) -> bool:
    """Duck-typed Qiskit job (``JobV1`` and alike): callable result(), job_id() and status()."""
    if isinstance(obj, (Mapping, type)) or looks_like_qiskit_result(obj):
        return False
    return all(callable(getattr(obj, name, None)) for name in ("result", "job_id", "status"))


def job_from_result(result: Any) -> dict[str, Any]:
    """Job fields (no experiment_id) for a live ``qiskit.result.Result``, as the SDK sends them.

    Uses ``result.get_counts()`` like the SDK does; for a counts result this gives
    the same job as ``job_from_result_dict(result.to_dict())``.
    """
    if not looks_like_qiskit_result(result):
        raise TypeError(f"not a Qiskit Result: {type(result).__name__}")
    counts = result.get_counts()
    shots = [exp.shots for exp in result.results]
    circuits = [_circuit_name(exp) for exp in result.results]
    return _job(result.job_id, counts, shots, result.backend_name, circuits)


def job_from_qiskit_job(job: Any) -> dict[str, Any]:
    """Job fields for a finished Qiskit job, via ``job.result()`` (blocks until it is done).

    Unlike the SDK (which hashes ``repr(job)``, an object address that changes on every
    run), this hashes the job's id, so the same run is one entry and two runs are two:
    a ``Result``'s own job id, or ``job.job_id()`` for a primitive job.
    """
    result = job.result()
    if looks_like_qiskit_result(result):
        return job_from_result(result)
    if looks_like_primitive_result(result):
        backend = getattr(job, "backend", None)
        device = getattr(backend() if callable(backend) else backend, "name", None)
        return job_from_primitive_result(result, job_id=job.job_id(), device=device)
    raise TypeError(f"job.result() gave {type(result).__name__}, not a Qiskit result")


# --------------------------------------------------------------------------- primitives (V2)
#
# A PrimitiveResult (StatevectorSampler, SamplerV2, EstimatorV2) is one job: its
# results are one entry per pub, the pub's counts (``join_data().get_counts()``, so
# keys read like ``Result.get_counts()`` without spaces) or, for an estimator, its
# ``evs``/``stds``; its shots, the shots behind each pub's counts.
#
# Identity: not the SDK's hash, which hashes ``repr(repr(result))``, and that repr
# holds shapes, not counts: two runs with different counts would get one hash.  A
# primitive *job* gets the SDK's Result rule applied to ``job.job_id()``; a bare
# result gets logbook's content hash (its counts and metadata), so two runs with
# identical counts and metadata are one entry unless ``hash=`` says otherwise.


def looks_like_primitive_result(obj: object) -> bool:
    """Duck-typed ``qiskit.primitives.containers.PrimitiveResult``: pub results with data."""
    if isinstance(obj, (Mapping, type, str, bytes)) or not hasattr(obj, "metadata"):
        return False
    try:
        pubs = list(obj)  # type: ignore[call-overload]
    except TypeError:
        return False
    return bool(pubs) and all(hasattr(p, "data") and hasattr(p, "metadata") for p in pubs)


def is_primitive_result_dict(d: Any) -> bool:
    """True for the JSON of a PrimitiveResult as qiskit-ibm-runtime's ``RuntimeEncoder``
    writes it.
    """
    return isinstance(d, Mapping) and d.get("__type__") == "PrimitiveResult"


def _plain(value: Any) -> Any:
    """Metadata as plain JSON (numpy scalars and arrays, datetimes and the like made plain)."""

    def default(v: Any) -> Any:
        for attr in ("tolist", "item", "isoformat"):
            fn = getattr(v, attr, None)
            if callable(fn):
                return fn()
        return str(v)

    return json.loads(json.dumps(value, default=default))


def _pub_outcome(pub: Any) -> tuple[Any, int | None]:
    """One pub's results entry and its shots."""
    data = pub.data
    fields = list(data)
    bits = [data[name] for name in fields if hasattr(data[name], "get_counts")]
    if bits:
        counts = pub.join_data().get_counts() if hasattr(pub, "join_data") else bits[0].get_counts()
        return counts, sum(counts.values())
    out = {name: _plain(data[name]) for name in fields}
    return out, None


def job_from_primitive_result(
    result: Any, *, job_id: Any = None, device: Any = None
) -> dict[str, Any]:
    """Job fields (no experiment_id) for a live PrimitiveResult (see the notes above)."""
    outcomes = [_pub_outcome(pub) for pub in result]
    return _primitive_job(
        [o for o, _ in outcomes], [n for _, n in outcomes],
        {"metadata": _plain(result.metadata), "pubs": [_plain(p.metadata) for p in result]},
        job_id, device,
    )  # fmt: skip


def _primitive_job(
    outcomes: list[Any], shots: list[int | None], metadata: dict[str, Any], job_id: Any, device: Any
) -> dict[str, Any]:
    return {
        "hash": sdk_hash(job_id) if job_id not in (None, "") else "",
        "results": json.dumps(
            outcomes[0] if len(outcomes) == 1 else outcomes, default=_json_default
        ),
        "shots": json.dumps(shots),
        "device_id": "" if device is None else str(device),
        "name": short_name((), device, job_id)
        if job_id
        else f"Primitive result ({len(outcomes)} pubs)",
        "status": SDK_STATUS,
        "job_type": SDK_JOB_TYPE,
        "metrics": {"qiskit": metadata},
    }


def _decode(value: Any) -> Any:
    """A RuntimeEncoder value, with ndarrays, BitArrays and DataBins made live (needs qiskit)."""
    if isinstance(value, list):
        return [_decode(v) for v in value]
    if not isinstance(value, Mapping):
        return value
    kind: Any = value.get("__type__")
    inner: Any = value.get("__value__")
    if kind is None:
        return {k: _decode(v) for k, v in value.items()}
    if kind == "ndarray":
        return _ndarray(inner)
    if kind == "BitArray":
        from qiskit.primitives.containers import BitArray

        return BitArray(_decode(inner["array"]), inner["num_bits"])
    if kind == "DataBin":
        from qiskit.primitives.containers import DataBin

        fields = {k: _decode(v) for k, v in inner["fields"].items()}
        return DataBin(**fields, shape=tuple(inner.get("shape") or ()))
    if kind in ("SamplerPubResult", "PubResult"):
        from qiskit.primitives.containers import PubResult, SamplerPubResult

        cls = SamplerPubResult if kind == "SamplerPubResult" else PubResult
        return cls(_decode(inner["data"]), _decode(inner.get("metadata") or {}))
    if kind == "PrimitiveResult":
        from qiskit.primitives.containers import PrimitiveResult

        return PrimitiveResult(_decode(inner["pub_results"]), _decode(inner.get("metadata") or {}))
    return _decode(inner)  # datetimes, spans: kept as plain values in metadata


def _ndarray(value: Any) -> Any:
    """An ndarray as RuntimeEncoder writes it: base64 of zlib of the ``.npy`` bytes, read by
    numpy.
    """
    import base64
    import io
    import zlib

    import numpy

    if isinstance(value, str):
        inflate = zlib.decompressobj()
        raw = inflate.decompress(base64.standard_b64decode(value), MAX_EXPANDED_CHARS)
        if inflate.unconsumed_tail:
            raise ValueError(f"an array that expands past {MAX_EXPANDED_CHARS} bytes")
        return numpy.load(io.BytesIO(raw), allow_pickle=False)
    return numpy.asarray(value)


def job_from_primitive_dict(d: Mapping[str, Any]) -> dict[str, Any]:
    """Job fields for the RuntimeEncoder JSON of a PrimitiveResult (reading it needs qiskit)."""
    try:
        result = _decode(d)
    except ImportError as err:
        raise InvalidFile(
            f"a Qiskit primitive result: reading it needs qiskit ({err.name} is not installed)"
        ) from None
    except (KeyError, TypeError, ValueError, OSError, EOFError) as err:
        raise InvalidFile(f"a Qiskit primitive result that cannot be decoded ({err})") from None
    return job_from_primitive_result(result)


# --------------------------------------------------------------------------- circuits


def circuit_hash(circuit: Any) -> str:
    """The Haiqu SDK's circuit hash (``haiqu.sdk.utils.get_circuit_hash``), so the server
    sees one circuit.

    Custom gates are unrolled, parameters bound to 0, and the decimal little-endian
    int of sha256(repr(circuit key)) taken; the key comes from qiskit's own
    ``_circuit_key`` (qiskit-algorithms keeps it for Qiskit 2).
    """
    try:
        from qiskit.circuit.equivalence_library import SessionEquivalenceLibrary
        from qiskit.transpiler import PassManager
        from qiskit.transpiler.passes import UnrollCustomDefinitions
    except ImportError:
        raise TypeError("circuit= needs qiskit installed") from None
    try:
        from qiskit_algorithms.utils.circuit_key import _circuit_key
    except ImportError:
        try:
            from qiskit.primitives.utils import _circuit_key  # type: ignore[attr-defined,no-redef]
        except ImportError:
            raise TypeError(
                "circuit= needs qiskit-algorithms for the Haiqu SDK's circuit hash"
                " (pip install qiskit-algorithms), or pass circuit_hash= yourself"
            ) from None
    basis = ["HaiquCircuit", "HaiquCircuitdg", "rx", "ry", "rz", "cx"]
    unrolled = PassManager([UnrollCustomDefinitions(SessionEquivalenceLibrary, basis)]).run(circuit)
    if unrolled.num_parameters > 0:
        unrolled = unrolled.assign_parameters([0] * unrolled.num_parameters)
    digest = hashlib.sha256(repr(_circuit_key(unrolled)).encode("utf-8")).digest()
    return str(int.from_bytes(digest, byteorder="little"))
