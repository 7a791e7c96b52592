"""``logbook bundle``: carry jobs out of a machine that is never online, and word back."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import click

from .context import Ctx, LogbookGroup, json_option, pass_ctx
from .output import echo, print_json, printable

if TYPE_CHECKING:
    from ..store import Store


@click.group(cls=LogbookGroup)
def bundle() -> None:
    """Air-gapped machines: jobs out in a file, their ids back.

    A bundle holds every entry not yet synced, each with a checksum; a receipt
    says what became of each job of a bundle.  Both are gzip-compressed JSON
    Lines (`zcat FILE | jq` shows them) and hold no key.

    \b
    Example:
      logbook bundle export /media/usb/lab-pc-3.bundle      # the air-gapped machine
      logbook bundle import /media/usb/lab-pc-3.bundle      # a machine that syncs
      logbook sync
      logbook bundle receipt /media/usb/lab-pc-3.bundle -o /media/usb/lab-pc-3.receipt
      logbook bundle apply /media/usb/lab-pc-3.receipt      # back on the air-gapped machine
    """


def _store(c: Ctx) -> Store:
    store = c.open()
    assert store is not None
    return store


@bundle.command("export")
@click.argument("file", type=click.Path(dir_okay=False))
@json_option("what was exported")
@pass_ctx
def export(c: Ctx, file: str, as_json: bool) -> None:
    """Write every entry not yet synced to FILE (a bundle), with a manifest.

    A consistent snapshot, safe while other processes record; the entries stay
    pending until a receipt says otherwise, so the next bundle carries them
    again (importing a job twice is harmless).  Prints how many jobs and the
    file's sha256 (compare it with `sha256sum FILE` after copying).

    \b
    Example:
      logbook bundle export /media/usb/lab-pc-3.bundle
    """
    from ..bundle import export_bundle
    from ..progress import Progress

    # no store: nothing to carry, and none made; a --db path that is not there is a typo
    store = c.open(create=False)
    progress = Progress()
    with c.progress(progress, "jobs", as_json=as_json):
        done = None if store is None else export_bundle(store, file, progress=progress)
    if as_json:
        print_json(done.to_dict() if done else {"path": None, "jobs": 0})
    elif done is None:
        click.echo("nothing to export: every entry is synced or rejected (no file written)")
    else:
        echo(f"exported {done.jobs} jobs to {printable(file)}")
        click.echo(f"sha256 {done.sha256}  (bundle {done.bundle_id} of store {done.store_id})")


@bundle.command("import")
@click.argument("file", type=click.Path(dir_okay=False))
@json_option("the counts")
@pass_ctx
def import_(c: Ctx, file: str, as_json: bool) -> None:
    """Record the jobs of a bundle, once each, after verifying all of it.

    A damaged, cut or foreign file is refused whole (exit 2, nothing recorded).
    A job already here (same experiment and hash) is not recorded again, so a
    bundle imported twice, or bundles that overlap, are harmless.  Exit 1 when
    some job could not be recorded (the receipt tells its machine why).

    \b
    Example:
      logbook bundle import /media/usb/lab-pc-3.bundle && logbook sync
    """
    from ..bundle import import_bundle, verify_bundle
    from ..progress import Progress

    progress = Progress()
    with c.progress(progress, "jobs", as_json=as_json):
        # Verified before the store is opened: a bad file creates nothing.
        verified = verify_bundle(file, progress=progress)
        done = import_bundle(_store(c), file, progress=progress, verified=verified)
    if as_json:
        print_json(done.to_dict())
    else:
        for n, experiment, hash_, why in done.problems:
            line = f"logbook: not recorded: job {n} ({experiment}, {hash_}): {why}"
            click.echo(printable(line), err=True)
        click.echo(
            f"{done.new} new, {done.known} already here"
            + (f", {done.conflicts} held here with other content" if done.conflicts else "")
            + (f", {done.invalid} invalid" if done.invalid else "")
            + f"; from store {done.store_id} (bundle {done.bundle_id}, exported {done.created})"
        )
    sys.exit(1 if done.conflicts or done.invalid else 0)


@bundle.command("receipt")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("-o", "--output", "output", required=True, type=click.Path(dir_okay=False),
              metavar="R", help="Where to write the receipt.")  # fmt: skip
@json_option("the counts")
@pass_ctx
def receipt(c: Ctx, file: str, output: str, as_json: bool) -> None:
    """Write a receipt R: what became of each job of bundle FILE in this store.

    Synced (with the API's id and status: through a relay, once the relay has
    passed the API's id back), rejected (with the reason), waiting (not yet
    delivered: a later receipt tells more) or absent (not imported here).

    \b
    Example:
      logbook bundle receipt /media/usb/lab-pc-3.bundle -o /media/usb/lab-pc-3.receipt
    """
    from ..bundle import make_receipt
    from ..errors import NotFound

    store = c.open(readonly=True)
    if store is None:
        raise NotFound(f"no store at {c.config().db}: import the bundle first")
    done = make_receipt(store, file, output)
    if as_json:
        print_json(done.to_dict())
        return
    o = done.outcomes
    echo(
        f"receipt {printable(output)}: {o['synced']} synced, {o['rejected']} rejected,"
        f" {o['waiting']} waiting, {o['absent']} absent (of {done.jobs})"
    )
    click.echo(f"sha256 {done.sha256}  (for store {done.store_id}, bundle {done.bundle_id})")


@bundle.command("apply")
@click.argument("receipt_file", metavar="R", type=click.Path(dir_okay=False))
@json_option("what changed")
@pass_ctx
def apply(c: Ctx, receipt_file: str, as_json: bool) -> None:
    """Take a receipt for this store: synced jobs become synced with the API's ids.

    Rejected ones become rejected with the reason (fix, `logbook retry`, next
    bundle); others stay.  A synced entry never goes back: the same receipt
    twice, or an older one after a newer, changes nothing.  Another store's
    receipt, or a bundle, is refused (exit 2, nothing changed).

    \b
    Example:
      logbook bundle apply /media/usb/lab-pc-3.receipt && logbook status
    """
    from ..bundle import apply_receipt
    from ..errors import BadInput

    db = c.config().db
    if not db.exists():
        raise BadInput(
            f"no store at {db}: apply a receipt on the machine that exported its bundle"
            " (--db or LOGBOOK_HOME naming its store)"
        )
    done = apply_receipt(_store(c), receipt_file)
    if as_json:
        print_json(done.to_dict())
        return
    if done.superseded_by is not None:
        click.echo(
            f"nothing changed: a receipt for bundle {done.bundle_id} made {done.superseded_by}"
            f" was applied already (this one was made {done.created})"
        )
        return
    ch = done.changes
    click.echo(
        f"{ch.get('synced', 0)} now synced, {ch.get('rejected', 0)} now rejected,"
        f" {done.jobs - ch.get('synced', 0) - ch.get('rejected', 0)} unchanged"
        f" (receipt from store {done.made_in}, bundle {done.bundle_id})"
    )
    others = {k: n for k, n in sorted(ch.items()) if k not in ("synced", "rejected") and n}
    if others:
        click.echo("unchanged: " + ", ".join(f"{n} {k}" for k, n in others.items()))
