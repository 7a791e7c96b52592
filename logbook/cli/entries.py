"""The commands about entries: record, import, list, show, status, export, retry, rm."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

import click

from ..health import age_text, timestamp
from ..jobs import DEFAULT_JOB_TYPE, DEFAULT_STATUS
from ..vocab import STATES
from .context import Ctx, EntryId, LogbookCommand, pass_ctx
from .monitoring import max_lag_option, verdict_line
from .output import echo, print_json, printable, redacted

if TYPE_CHECKING:
    from ..store import Entry


# --- record -------------------------------------------------------------------------------


def _parse_metric(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise click.BadParameter(f"expected KEY=VALUE, got {text!r}", param_hint="--metric")
    from ..vocab import reject_constant

    try:
        return key, json.loads(value, parse_constant=reject_constant)
    except (ValueError, RecursionError):  # not JSON (or NaN/Infinity): keep the text
        return key, value


def _read_results_file(path: str, max_bytes: int) -> str:
    """At most ``max_bytes`` of a file (``/dev/zero`` is endless), as UTF-8 text."""
    from ..errors import InvalidJob

    try:
        with click.open_file(path, "rb") as f:
            data = f.read(max_bytes + 1)
    except OSError as err:
        raise InvalidJob(f"cannot read --results-file {path}: {err.strerror or err}") from None
    if len(data) > max_bytes:
        raise InvalidJob(
            f"--results-file {path} is over {max_bytes} bytes (max_file_bytes in config.toml)"
        )
    try:
        return data.decode("utf-8-sig").strip()
    except UnicodeDecodeError:
        raise InvalidJob(f"--results-file {path} is not UTF-8 text") from None


@click.command(cls=LogbookCommand)
@click.option(
    "--experiment", "-e", "experiment", help="Experiment id.",
    show_default="experiment in config.toml",
)  # fmt: skip
@click.option("--name", help="Job name (at most 200 characters).")
@click.option("--device", help="Device id (at most 200 characters).")
@click.option("--shots", help='Shots as JSON text, e.g. "[1024]".')
@click.option(
    "--status", default=DEFAULT_STATUS, show_default=True, help="Job status (the API's enum)."
)
@click.option("--job-type", default=DEFAULT_JOB_TYPE, show_default=True, help="Job type.")
@click.option("--results", help="Results as JSON text (e.g. counts).")
@click.option(
    "--results-file", type=click.Path(dir_okay=False, allow_dash=True),
    help="Read the results JSON from a file (- for stdin).",
)  # fmt: skip
@click.option(
    "--metric", "metrics", multiple=True, metavar="KEY=VALUE", help="A metric (repeatable)."
)
@click.option("--hash", "hash_", help="Job hash (default: computed from the content).")
@click.option("--circuit-hash", help="Circuit hash.")
@click.option("--json", "as_json", is_flag=True, help="Print the entry as JSON.")
@pass_ctx
def record(
    c: Ctx, experiment: str | None, name: str | None, device: str | None, shots: str | None,
    status: str, job_type: str, results: str | None, results_file: str | None,
    metrics: tuple[str, ...], hash_: str | None, circuit_hash: str | None, as_json: bool,
) -> None:  # fmt: skip
    """Record one job, offline; prints its id.

    Recording the same (experiment, hash) again returns the existing entry.

    \b
    Example:
      logbook record -e bell --name "bell 1" --device ibm_kyiv --shots '[1024]' \\
          --results '{"00": 510, "11": 514}' --metric fidelity=0.98
    """
    from ..jobs import prepare

    experiment = experiment or c.config().experiment
    if not experiment:
        raise click.UsageError(
            "Missing option '--experiment' / '-e' (or set experiment in config.toml)"
        )
    if results is not None and results_file is not None:
        raise click.UsageError("give --results or --results-file, not both")
    if results_file is not None:
        results = _read_results_file(results_file, c.config().max_file_bytes)
    doc: dict[str, Any] = {"experiment_id": experiment, "status": status, "job_type": job_type}
    for key, value in (
        ("name", name), ("device_id", device), ("shots", shots), ("results", results),
        ("hash", hash_), ("circuit_hash", circuit_hash),
    ):  # fmt: skip
        if value is not None:
            doc[key] = value
    doc["metrics"] = dict(_parse_metric(m) for m in metrics)
    job = prepare(doc)
    store = c.open()
    assert store is not None
    entry, created = store.record(job, source="cli")
    if as_json:
        print_json(entry.to_dict())
    else:
        click.echo(str(entry.id))
        if not created and not c.quiet:
            click.echo(f"logbook: already recorded as entry {entry.id}", err=True)


# --- import -------------------------------------------------------------------------------


@click.command("import", cls=LogbookCommand)
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option("--experiment", "-e", help="Experiment id for files that do not name one.")
@click.option(
    "--max-file-bytes", type=click.IntRange(min=1), help="Largest file to read (default 64 MiB)."
)
@click.option("--json", "as_json", is_flag=True, help="Print the counts as JSON.")
@pass_ctx
def import_(
    c: Ctx,
    paths: tuple[str, ...],
    experiment: str | None,
    max_file_bytes: int | None,
    as_json: bool,
) -> None:
    """Record result files and directories (JSON, Qiskit, JSON Lines).

    Directories are read recursively; each file is reported once as recorded,
    already known or invalid (with its reason).  Exit 1 if any was invalid.

    \b
    Example:
      logbook import results/ --experiment bell
    """
    from ..importer import check_paths, import_paths
    from ..progress import Progress

    cfg = c.config()
    check_paths(paths)  # before the store is opened: a typo creates nothing
    store = c.open()
    assert store is not None
    progress = Progress()
    progress.begin("importing", 0)

    def advance(done: int, total: int, recorded: int) -> None:
        progress.total, progress.done = total, done

    with c.progress(progress, "files", as_json=as_json):
        report = import_paths(
            store, paths, experiment_id=experiment or cfg.experiment,
            max_bytes=max_file_bytes or cfg.max_file_bytes, progress=advance,
        )  # fmt: skip
    if as_json:
        print_json(report.to_dict())
    else:
        for path, reason in report.invalid:
            click.echo(redacted(f"logbook: invalid: {path}: {reason}"), err=True)
        click.echo(  # jobs and files apart: one file may hold many jobs
            f"{report.recorded} jobs recorded, {report.known} already known;"
            f" {report.files} files read, {len(report.invalid)} invalid"
        )
    sys.exit(1 if report.invalid else 0)


# --- list / show / status / export / path --------------------------------------------------


def _table(entries: Iterable[Entry]) -> None:
    cols = (
        "id",
        "state",
        "experiment_id",
        "name",
        "device_id",
        "remote_status",
        "remote_id",
        "created_at",
    )
    heads = ("id", "state", "experiment", "name", "device", "server status", "server id", "created")
    rows = [
        [printable(str(getattr(e, k) if getattr(e, k) is not None else "")) for k in cols]
        for e in entries
    ]
    if not rows:
        click.echo("no entries (record one with `logbook record`, or `logbook import DIR`)")
        return
    widths = [min(36, max(len(h), *(len(r[i]) for r in rows))) for i, h in enumerate(heads)]
    echo("  ".join(h.ljust(w) for h, w in zip(heads, widths, strict=True)).rstrip())
    for r in rows:
        echo("  ".join(v[:w].ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())


@click.command("list", cls=LogbookCommand)
@click.option("--state", type=click.Choice(STATES), help="Only entries in this state.")
@click.option("--experiment", "-e", help="Only entries of this experiment.")
@click.option(
    "--limit",
    type=click.IntRange(min=0),
    default=20,
    show_default=True,
    help="At most N entries (0: all).",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON array of entries.")
@pass_ctx
def list_(c: Ctx, state: str | None, experiment: str | None, limit: int, as_json: bool) -> None:
    """List entries, newest first.

    \b
    Example:
      logbook list --state pending --limit 0
    """
    store = c.open(readonly=True)
    entries = (
        []
        if store is None
        else list(store.entries(state=state, experiment_id=experiment, limit=limit or None))
    )
    if as_json:
        print_json([e.to_dict() for e in entries])
    else:
        _table(entries)


@click.command(cls=LogbookCommand)
@click.argument("entry_id", metavar="ID", type=EntryId())
@click.option("--json", "as_json", is_flag=True, help="Print the entry as JSON.")
@pass_ctx
def show(c: Ctx, entry_id: int, as_json: bool) -> None:
    """Show one entry, with its server's id and the API's.

    "recorded status" is the job's status as recorded; "server status" is
    the server's.  Synced through a relay, a job is confirmed once the API's
    id comes back ("API id").  --json adds upstream_id and confirmed after
    the entry's keys.

    \b
    Example:
      logbook show 42
      logbook show 42 --json
    """
    from ..errors import NotFound

    store = c.open(readonly=True)
    if store is None:
        raise NotFound(f"no entry with id {entry_id} (the store is empty)")
    entry = store.get(entry_id)
    if as_json:
        print_json({**entry.to_dict(), "upstream_id": entry.upstream_id,
                    "confirmed": entry.confirmed})  # fmt: skip
        return
    for key, value in entry.to_dict().items():
        if isinstance(value, dict):
            value = json.dumps(value, ensure_ascii=False)
        label = SHOW_LABELS.get(key, key)
        echo(f"{label + ':':18}{'' if value is None else printable(str(value))}")
    if entry.via:
        echo(f"{'relay:':18}{printable(entry.via)}")
    echo(f"{'API id:':18}{printable(api_id(entry))}")


#: ``show``'s words for fields a user could not tell apart by their JSON names.
SHOW_LABELS = {
    "status": "recorded status", "remote_status": "server status", "remote_id": "server id",
}  # fmt: skip


def api_id(entry: Entry) -> str:
    """The job's id at the API, or why it is not known (``show``)."""
    if entry.state != "synced":
        return "- (the API does not have it yet)"
    if entry.upstream_id:  # synced through a relay, and the API's id came back
        return entry.upstream_id
    if entry.via:
        return (
            f"not confirmed yet (accepted by the relay at {entry.via}; `logbook sync` asks again)"
        )
    if entry.missing_at:
        return (
            f"{entry.remote_id} (the API no longer has it, since {entry.missing_at}:"
            " `logbook retry --missing` sends it again)"
        )
    return f"{entry.remote_id} (the server id: synced straight to the API)"


@click.command(cls=LogbookCommand)
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
@max_lag_option("Say not ready")
@pass_ctx
def status(c: Ctx, as_json: bool, max_lag: float | None) -> None:
    """Entries by state, the last sync, and the verdict /readyz gives.

    \b
    Example:
      logbook status --json
    """
    from ..store import Status

    cfg = c.config()
    store = c.open(readonly=True)
    data = (Status(db=str(cfg.db)) if store is None else store.status()).to_dict()
    since = timestamp(data["oldest_unconfirmed"])  # DESIGN: the age of the oldest
    data["oldest_unconfirmed_age_seconds"] = (
        None if since is None else round(max(0.0, time.time() - since), 3)
    )
    data["ready"], data["verdict"] = verdict_line(cfg, max_lag)
    if as_json:
        print_json(data)
        return
    counts = data["counts"]
    echo(f"store:          {data['db']}")
    click.echo("entries:        " + ", ".join(f"{counts[s]} {s}" for s in STATES))
    click.echo(f"oldest pending: {data['oldest_pending'] or '-'}")
    click.echo(f"last sync:      {data['last_sync'] or 'never'}")
    if data["unconfirmed"]:
        click.echo(
            f"unconfirmed:    {data['unconfirmed']} accepted by a relay, the API's id not back"
            f" yet (the oldest waits {age_text(data['oldest_unconfirmed_age_seconds'] or 0)},"
            f" since {data['oldest_unconfirmed']}); `logbook sync` asks again"
        )
    if data["missing"]:
        click.echo(
            f"missing:        {data['missing']} synced jobs the API no longer has"
            " (`logbook retry --missing` sends them again)"
        )
    stuck = (
        counts["sending"] and store is not None and counts["sending"] - store.leases.count_held()
    )
    if stuck:
        click.echo(
            f"left sending:   {stuck} left 'sending' by a sync that is gone (killed?): the next"
            " `logbook sync` looks each up on the server before it sends it again"
        )
    if data.get("invalid_files"):
        click.echo(f"invalid files:  {data['invalid_files']} (`logbook doctor` lists them)")
    if data["last_bundle_export"] or data["last_receipt_applied"]:  # an air-gapped machine
        click.echo(f"last bundle:    {data['last_bundle_export'] or 'never'} (exported)")
        click.echo(f"last receipt:   {data['last_receipt_applied'] or 'never'} (applied)")
    click.echo(data["verdict"])


@click.command(cls=LogbookCommand)
@click.option(
    "--format", "fmt", type=click.Choice(["jsonl", "csv"]), default="jsonl", show_default=True
)
@click.option("--state", type=click.Choice(STATES), help="Only entries in this state.")
@click.option("--experiment", "-e", help="Only entries of this experiment.")
@pass_ctx
def export(c: Ctx, fmt: str, state: str | None, experiment: str | None) -> None:
    """Write entries to stdout (oldest first), streaming.

    \b
    Example:
      logbook export --format csv > jobs.csv
    """
    import csv

    from ..store.schema import ENTRY_KEYS

    store = c.open(readonly=True)
    entries: Iterator[Entry] = (
        iter(()) if store is None
        else store.entries(state=state, experiment_id=experiment, newest_first=False)
    )  # fmt: skip
    out = sys.stdout
    if fmt == "jsonl":
        for e in entries:
            out.write(json.dumps(e.to_dict(), ensure_ascii=False) + "\n")
        return
    writer = csv.DictWriter(out, fieldnames=list(ENTRY_KEYS), lineterminator="\n")
    writer.writeheader()
    for e in entries:
        row = e.to_dict()
        row["metrics"] = json.dumps(row["metrics"], ensure_ascii=False)
        writer.writerow(row)


@click.command(cls=LogbookCommand)
@click.argument("ids", nargs=-1, metavar="[ID]...", type=EntryId())
@click.option("--all", "all_", is_flag=True, help="Every rejected entry.")
@click.option(
    "--missing", is_flag=True,
    help="Synced entries whose job the API no longer has (`logbook status` counts them).",
)  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print the count as JSON.")
@pass_ctx
def retry(c: Ctx, ids: tuple[int, ...], all_: bool, missing: bool, as_json: bool) -> None:
    """Put rejected entries back to pending, for the next sync to send.

    --missing puts back synced entries whose job the API no longer has (a
    person may have deleted it there): the next sync looks each up first,
    then sends it again.  An id that is neither says why nothing changed.

    \b
    Example:
      logbook list --state rejected
      logbook retry --all
      logbook retry --missing
    """
    if not ids and not all_ and not missing:
        raise click.UsageError("give entry ids, --all or --missing")
    store = c.open(create=False)  # a store that does not exist: nothing to retry
    n, unchanged = (0, []) if store is None else store.retry_entries(
        ids, all_rejected=all_, missing=missing
    )  # fmt: skip
    if as_json:
        print_json({"retried": n, "unchanged": [{"id": str(i), "reason": r} for i, r in unchanged]})
        return
    for _, reason in unchanged:
        click.echo(redacted(printable(f"logbook: {reason}")), err=True)
    click.echo(f"{n} entries back to pending")


@click.command("rm", cls=LogbookCommand)
@click.argument("ids", nargs=-1, required=True, metavar="ID...", type=EntryId())
@click.option("--json", "as_json", is_flag=True, help="Print the count as JSON.")
@pass_ctx
def rm(c: Ctx, ids: tuple[int, ...], as_json: bool) -> None:
    """Remove entries not yet sent (pending or rejected).

    A synced entry (or one being sent, or one a sync may have delivered) is
    refused with the reason, exit 1, and nothing is removed.  To correct an
    entry, remove it and record it again.

    \b
    Example:
      logbook rm 42 43
      logbook record -e bell --name "bell 1 (fixed)" --results '{"00": 510, "11": 514}'
    """
    store = c.open(create=False)
    if store is None:
        from ..errors import NotFound

        raise NotFound(f"no entry with id {ids[0]} (the store is empty)")
    n = store.remove(ids)
    if as_json:
        print_json({"removed": n})
    else:
        click.echo(f"{n} entries removed")

