"""A job's fields, declared once; the checks a job passes before it is stored; its hash.

``Job`` is the one declaration of the ``POST /jobs`` body.  The store's
columns (``store.schema``), the pydantic model the servers validate with
(``models.JobSubmit``), the body the client posts and the keys ``list
--json`` prints are all derived from it, so a new field is one line here.
``JobDocument`` is the one declaration of the Job the server returns: the
emulator's jobs, the relay's answers and ``models.Job`` are made from it.

``prepare`` checks a job the way the API would, only stricter (unknown
fields are refused, and every string must be valid Unicode, so that a lone
surrogate is one invalid job instead of a failed batch at the insert).  It is
plain Python on purpose: ``logbook import`` runs it on every line of a
100,000-line file.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields
from typing import Any

from .errors import InvalidJob
from .vocab import JOB_TYPES, MAX_ID, MAX_TEXT, STATUSES, reject_constant


@dataclass(frozen=True)
class JobField:
    """How one field of the ``POST /jobs`` body is checked.

    ``kind``: ``id`` (text that travels in the lookup URL, at most ``MAX_ID``
    characters), ``short`` (at most ``MAX_TEXT``), ``text``, ``json`` (JSON
    text; a JSON value is turned into its canonical text), ``enum`` (one of
    ``choices``) or ``object`` (a JSON object).
    """

    name: str
    kind: str
    default: Any = ""
    choices: tuple[str, ...] = ()
    required: bool = False


def _spec(
    kind: str, default: str = "", choices: tuple[str, ...] = (), required: bool = False
) -> Any:
    return field(default=default, metadata={"kind": kind, "choices": choices, "required": required})


#: A job's status and type when none is given (as the Haiqu SDK sends a Qiskit result).
DEFAULT_STATUS = "Done"
DEFAULT_JOB_TYPE = "User local job"
#: The API's ``device_id`` (and ``backend_name``) of a job that names no device.
DEFAULT_DEVICE = "Haiqu OS"


@dataclass(kw_only=True)
class Job:
    """The ``POST /jobs`` body, one line per field, in the order ``list --json`` prints it.

    ``store.schema.Entry`` extends it with the local bookkeeping.
    """

    experiment_id: str = _spec("id", required=True)
    hash: str = _spec("id")
    circuit_hash: str = _spec("text")
    name: str = _spec("short")
    device_id: str = _spec("short")
    shots: str = _spec("json")
    status: str = _spec("enum", DEFAULT_STATUS, STATUSES)
    job_type: str = _spec("enum", DEFAULT_JOB_TYPE, JOB_TYPES)
    results: str = _spec("json")
    metrics: dict[str, Any] = field(default_factory=dict, metadata={"kind": "object"})

    def post_body(self) -> dict[str, Any]:
        """The ``POST /jobs`` body."""
        return {name: getattr(self, name) for name in JOB_FIELDS}


JOB: tuple[JobField, ...] = tuple(
    JobField(f.name, f.metadata["kind"], f.default if f.default is not MISSING else None,
             f.metadata.get("choices", ()), f.metadata.get("required", False))
    for f in fields(Job)
)  # fmt: skip
JOB_FIELDS: tuple[str, ...] = tuple(f.name for f in JOB)
#: Fields whose values make up a job's content (and so its computed hash).
CONTENT_FIELDS: tuple[str, ...] = tuple(f for f in JOB_FIELDS if f not in ("experiment_id", "hash"))


@dataclass(kw_only=True)
class JobDocument:
    """The Job the server returns (``GET /jobs/{id}``, the answer to ``POST /jobs``), in the
    API's order.  ``from_job`` maps a submitted job onto it, the way the API does.
    """

    id: str
    user_id: int
    experiment_id: str
    status: str
    job_type: str
    creation_date: str
    hash: str
    backend_name: str
    name: str | None = None
    description: str | None = None
    device_id: str | None = DEFAULT_DEVICE
    run_date: str | None = None
    finish_date: str | None = None
    logs: str | None = None
    quality: float | None = None
    info: dict[str, Any] | None = None
    time: float | None = None
    circuit_id: str | None = ""
    results: str | None = ""
    shot_local: str | None = ""
    metrics: dict[str, Any] | None = None

    @classmethod
    def from_job(
        cls, job: Mapping[str, Any], *, id: str, status: str, created: str, user_id: int = 0,
        info: dict[str, Any] | None = None,
    ) -> JobDocument:  # fmt: skip
        """A submitted job (``POST /jobs`` fields) as the server shows it."""
        device = job.get("device_id") or DEFAULT_DEVICE
        return cls(
            id=id, user_id=user_id, experiment_id=job["experiment_id"], status=status,
            job_type=job.get("job_type") or DEFAULT_JOB_TYPE, creation_date=created,
            hash=job.get("hash") or "", backend_name=device, name=job.get("name") or None,
            device_id=device, info=info, circuit_id=job.get("circuit_hash"),
            results=job.get("results"), shot_local=job.get("shots"),
            metrics=dict(job.get("metrics") or {}),
        )  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


_FIELD_SET = frozenset(JOB_FIELDS)
_CHOICES = {f.name: frozenset(f.choices) for f in JOB if f.kind == "enum"}
_LIMITS = {"id": MAX_ID, "short": MAX_TEXT}

# One encoder, made once: json.dumps() with options builds a new encoder per call.
_canonical = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
).encode
_json_text = json.JSONDecoder(parse_constant=reject_constant)
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def canonical_json(value: Any) -> str:
    """One spelling of a JSON value: sorted keys, no spaces, UTF-8 kept."""
    return _canonical(value)


def content_hash(job: Mapping[str, Any]) -> str:
    """sha256 (hex) of the canonical JSON of a job's content fields."""
    get = job.get
    content = {f: get(f) for f in CONTENT_FIELDS}
    return hashlib.sha256(_canonical(content).encode("utf-8")).hexdigest()


#: What tells two posts of one identity apart: the content but its labels.  The name is a
#: label (the Haiqu SDK names a Result "Local job <uuid> - ...", logbook's reader after its
#: circuits), and the circuit hash is compared on its own (``same_job``).
_KEYED = tuple(f for f in CONTENT_FIELDS if f not in ("circuit_hash", "name"))


def content_key(job: Mapping[str, Any]) -> str:
    """sha256 (hex) of a job's content but its labels (``same_job``)."""
    get = job.get
    content = {f: get(f) for f in _KEYED}
    return hashlib.sha256(_canonical(content).encode("utf-8")).hexdigest()


def same_job(key: str, circuit_hash: str | None, job: Mapping[str, Any]) -> bool:
    """Whether ``job`` (of one identity) is the job of that content key and circuit hash.

    A circuit hash only one of them carries is no difference: a Result file does not
    hold its circuit, while the Haiqu SDK sends the circuit's hash with the same Result.
    """
    theirs, ours = circuit_hash or "", job.get("circuit_hash") or ""
    return key == content_key(job) and (theirs == ours or not theirs or not ours)


def _json_text_problem(value: str) -> str | None:
    """Why ``value`` is not JSON text to store, or None.

    An escaped lone surrogate (``"\\ud800"``) parses but decodes to text that
    is not Unicode, the same value a dict would be refused for; the decoded
    value is checked only when such an escape is present, to keep the usual
    case one parse.
    """
    # raw_decode skips decode()'s two whitespace regexes; text with surrounding
    # whitespace (or trailing garbage) takes the full decode, which decides.
    try:
        decoded, end = _json_text.raw_decode(value)
        if end != len(value):
            raise ValueError("trailing text")
    except (ValueError, RecursionError):
        try:
            decoded = _json_text.decode(value)
        except json.JSONDecodeError as err:  # where it broke, as the user can find it
            return f"must be JSON text ({err.msg} at line {err.lineno} column {err.colno})"
        except (ValueError, RecursionError):
            return "must be JSON text"
    if _SURROGATE_ESCAPE.search(value):
        try:
            _canonical(decoded).encode("utf-8")
        except UnicodeEncodeError:
            return "not valid Unicode text (an escaped lone surrogate)"
    return None


def _unicode_problem(value: str) -> str | None:
    """Why ``value`` cannot be stored as UTF-8 (a lone surrogate), or None."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as err:
        return f"not valid Unicode text (a lone surrogate at position {err.start})"
    return None


def _not_json(err: ValueError) -> str:
    """Why a value cannot be JSON: NaN/Infinity, or what the encoder said (a 5,000-digit int)."""
    return "NaN and Infinity are not JSON" if "float" in str(err) else f"not JSON: {err}"


def _show(value: Any) -> str:
    """A value in an error message: short, and printable whatever it holds."""
    return repr(value[:60] if isinstance(value, str) else value)[:80]


def _check_text(field: JobField, value: Any) -> tuple[Any, str | None]:
    """The value to store for a text-like field, or the reason it cannot be."""
    if value is None:
        return "", None
    if field.kind == "json" and not isinstance(value, str):
        if not isinstance(value, (dict, list, int, float, bool)):
            return value, f"must be JSON text, not {type(value).__name__}"
        try:
            value = _canonical(value)
        except ValueError as err:
            return value, _not_json(err)
        except (TypeError, RecursionError) as err:
            return value, f"not JSON: {err}" if isinstance(err, TypeError) else "nested too deeply"
    if type(value) is not str:
        return value, f"must be text, not {type(value).__name__}"
    problem = _unicode_problem(value)
    if problem:
        return value, problem
    limit = _LIMITS.get(field.kind)
    if limit is not None and len(value) > limit:
        return value, f"at most {limit} characters (got {len(value)})"
    if field.kind == "json" and value:
        return value, _json_text_problem(value)
    return value, None


def _check_metrics(value: Any) -> tuple[dict[str, Any], str | None]:
    if value is None:
        return {}, None
    if not isinstance(value, Mapping):
        return {}, f"must be a JSON object, not {type(value).__name__}"
    metrics = dict(value)
    if not all(type(k) is str for k in metrics):
        return metrics, "keys must be text"
    try:
        _canonical(metrics).encode("utf-8")
    except ValueError as err:
        if isinstance(err, UnicodeEncodeError):
            return metrics, "not valid Unicode text (a lone surrogate)"
        return metrics, _not_json(err)
    except TypeError as err:
        return metrics, str(err)
    except RecursionError:
        return metrics, "nested too deeply"
    return metrics, None


def prepare(doc: Mapping[str, Any], *, experiment_id: str | None = None) -> dict[str, Any]:
    """Check a job document against the API's model and return the job to store.

    ``experiment_id`` fills in for a document without one.  Missing status and
    job_type default to ``Done`` and ``User local job``; a missing hash is
    computed from the content.  Raises ``InvalidJob`` with one line naming
    every field that is wrong.
    """
    if not isinstance(doc, Mapping):
        raise InvalidJob("a job must be a JSON object")
    problems: list[str] = []
    unknown = [k for k in doc if k not in _FIELD_SET]
    for key in unknown[:3]:
        problems.append(f"{_show(key)}: unknown field (a job has {', '.join(JOB_FIELDS)})")
    job: dict[str, Any] = {}
    for spec in JOB:
        value = doc.get(spec.name)
        if spec.name == "experiment_id" and not value and experiment_id:
            value = experiment_id
        if spec.kind == "object":
            value, problem = _check_metrics(value)
        elif spec.kind == "enum":
            if value is None or value == "":
                value = spec.default
            problem = None
            if not isinstance(value, str) or value not in _CHOICES[spec.name]:
                problem = f"must be one of {', '.join(spec.choices)} (got {_show(value)})"
        else:
            value, problem = _check_text(spec, value)
            if spec.required and not problem and not value:
                problem = "required (a non-empty string)"
        if problem:
            problems.append(f"{spec.name}: {problem}")
        job[spec.name] = value
    if problems:
        raise InvalidJob("; ".join(problems))
    if not job["hash"]:
        job["hash"] = content_hash(job)
    return job
