"""The model-based reliability test: random sequences of what users and failures do.

A hypothesis ``RuleBasedStateMachine`` drives real things: a temporary
LOGBOOK_HOME, an emulator process of its own (``--state-file``, so a restart
keeps its jobs), real ``logbook`` processes (record, import, watch, sync,
retry), the Python API in-process, SIGKILL and SIGSTOP, another process
holding the store's write lock, and the emulator's faults switched on and off.

The model is the set of ``(experiment_id, hash)`` identities recorded
successfully.  After every step: the store holds each of them exactly once
and nothing else; no entry is synced without a remote id; after a sync ran to
completion nothing is left ``sending`` by a run that is gone; the emulator
holds no duplicate and nothing outside the model, and every synced entry
carries the id of the server's job; the API key shows in no output, log or
store (``support.assert_no_key``: every spelling of it), and no output holds a
traceback.  At the end (watcher stopped, faults off, ``retry --all``, ``sync``
until it exits 0): every entry is synced and the emulator holds exactly one
job per identity.

A second lab machine syncs through a relay (``logbook relay``, the same
emulator upstream) while the relay is killed, wiped (a fresh relay on the same
address), put back to a snapshot of its store taken at an earlier step, or has
its clock's retry times pushed a year ahead.  Its identities are its own
(experiments ``relay-...``).  Invariants: the emulator never holds a duplicate
of any identity, and a lab entry that names its API id names the server's; at
the end every entry of both labs is confirmed (its API id known) and the
emulator holds exactly one job per identity of both.

Sizing (environment): LOGBOOK_MODEL_EXAMPLES (default 3), LOGBOOK_MODEL_STEPS
(default 12), LOGBOOK_MODEL_DB (a directory: keep hypothesis's example
database there), LOGBOOK_MODEL_SHRINK=0 (report a failure unshrunk: shrinking
replays real processes for up to five minutes), LOGBOOK_MODEL_STATS (a file:
the counts of the run, as JSON).  ``scripts/soak`` runs it for a given time.
"""

from __future__ import annotations

import functools
import json
import os
import secrets
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from adversary import closed_port
from bundlesupport import bundle_jobs, read_lines
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.database import DirectoryBasedExampleDatabase
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from relaysupport import RelayProcess
from support import (
    Run,
    assert_no_key,
    assert_no_traceback,
    base_env,
    cli,
    cli_cmd,
    dump_db,
    wait_until,
)

import logbook
from logbook import api as logbook_api
from logbook.emulator.testing import EmulatorProcess
from logbook.errors import InvalidJob
from logbook.jobs import canonical_json, prepare
from logbook.server import ROUTE_GET_BY_HASH, ROUTE_POST_JOBS
from logbook.store.leases import owner_alive

F = TypeVar("F", bound=Callable[..., Any])
Identity = tuple[str, str]

EXAMPLES = int(os.environ.get("LOGBOOK_MODEL_EXAMPLES", "3"))
STEPS = int(os.environ.get("LOGBOOK_MODEL_STEPS", "12"))
SHRINK = os.environ.get("LOGBOOK_MODEL_SHRINK", "1") != "0"
# A step takes about a second (a few under faults); shrinking a failure replays real
# processes for up to five minutes (hypothesis's own cap).  A timeout that hits the run
# mid-step loses the counterexample, so it grows with the run.
pytestmark = pytest.mark.timeout(900 + EXAMPLES * STEPS * 5)
#: The experiment ids travel in the lookup URL: a slash, a space, "+", "%2F", "?" and "#".
EXPERIMENTS = ("exp-a", "exp b/ü+1", "e%2F?#x")
#: JSON text whose value holds a lone surrogate (the escape, not the code point).
POISON_RESULTS = '{"x": "\\ud800"}'
PROGRESS_SECONDS = 1.0
SYNC_TIMEOUT = 150.0
ALL = "*"

#: What the run did, for the soak and for CI's log (LOGBOOK_MODEL_STATS).
STATS: dict[str, Any] = {
    "examples": 0,
    "steps": 0,
    "rules": Counter(),
    "rule_seconds": Counter(),
    "events": Counter(),
    "seconds": 0.0,
    "setup_seconds": 0.0,
    "teardown_seconds": 0.0,
}


def _write_stats() -> None:
    target = os.environ.get("LOGBOOK_MODEL_STATS")
    if target:
        data = {k: dict(v) if isinstance(v, Counter) else v for k, v in STATS.items()}
        tmp = f"{target}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1, sort_keys=True)
        os.replace(tmp, target)


# --- data ------------------------------------------------------------------------------------

names = st.text(
    st.characters(codec="utf-8", categories=("L", "N", "P", "S", "Zs")), min_size=1, max_size=12
)


@st.composite
def job_docs(draw: st.DrawFn) -> dict[str, Any]:
    """A job as every channel can express it (results as canonical JSON text)."""
    counts = draw(
        st.dictionaries(
            st.sampled_from(["00", "01", "10", "11"]), st.integers(0, 2000), min_size=1,
            max_size=4,
        )
    )  # fmt: skip
    return {
        "experiment_id": draw(st.sampled_from(EXPERIMENTS)),
        "name": draw(names),
        "device_id": draw(st.sampled_from(["sim", "ibm_kyiv"])),
        "results": canonical_json(counts),
        "shots": canonical_json([sum(counts.values())]),
        "metrics": {"i": draw(st.integers(-5, 10**6))},
    }


def identity(doc: dict[str, Any]) -> Identity:
    job = prepare(doc)
    return job["experiment_id"], job["hash"]


def record_args(doc: dict[str, Any]) -> list[str]:
    """``logbook record`` for a job (``--opt=value``: a value may start with "-")."""
    args = [
        "record", f"--experiment={doc['experiment_id']}", f"--name={doc['name']}",
        f"--device={doc['device_id']}", f"--results={doc['results']}", f"--shots={doc['shots']}",
    ]  # fmt: skip
    args += [f"--metric={k}={json.dumps(v)}" for k, v in doc["metrics"].items()]
    return [*args, "--json"]


# Fault profiles: each is what one "switch faults" step turns on.
FAULT_PROFILES = st.one_of(
    st.just({}),
    st.fixed_dictionaries(
        {"error_rate": st.sampled_from([0.2, 0.5]),
         "error_status": st.sampled_from([500, 502, 503, 400, 422])}
    ),
    st.fixed_dictionaries(
        {"rate_limit_rate": st.sampled_from([0.3, 0.6]), "retry_after": st.sampled_from([0, 1])}
    ),
    st.fixed_dictionaries({"rate_limit_per_s": st.sampled_from([5.0, 20.0])}),
    st.fixed_dictionaries(
        {"drop_rate": st.sampled_from([0.3, 0.6]),
         "routes": st.sampled_from([[ROUTE_POST_JOBS], [ALL]])}
    ),
    st.fixed_dictionaries({"latency_ms": st.sampled_from([50.0, 300.0])}),
    st.fixed_dictionaries(
        {"redirect_to": st.just("http://127.0.0.1:9/moved"),
         "redirect_status": st.sampled_from([301, 302, 307, 308]),
         "routes": st.sampled_from([[ROUTE_POST_JOBS], [ALL]])}
    ),
    st.fixed_dictionaries({"echo_rate": st.sampled_from([0.3, 1.0]), "routes": st.just([ALL])}),
    st.fixed_dictionaries(
        {"wrong_job_rate": st.sampled_from([0.5, 1.0]),
         "routes": st.sampled_from([[ROUTE_GET_BY_HASH], [ALL]])}
    ),
    st.fixed_dictionaries({"bad_json_rate": st.sampled_from([0.3])}),
)  # fmt: skip

#: New jobs recorded right before a sync that is killed or paused.
FRESH = st.lists(job_docs(), min_size=1, max_size=3)
#: The relay lab's jobs: its own experiments (two paths to the API never share an identity).
RELAY_DOCS = job_docs().map(lambda d: {**d, "experiment_id": f"relay-{d['experiment_id']}"})

LOCKER = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], timeout=30, isolation_level=None)
conn.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
conn.execute("COMMIT")
print("released", flush=True)
"""


def tracked(fn: F) -> F:
    """Count the step; a failing step marks the example failed (teardown then only cleans up)."""

    @functools.wraps(fn)
    def wrapper(self: LogbookMachine, *args: Any, **kwargs: Any) -> Any:
        STATS["steps"] += 1
        STATS["rules"][fn.__name__] += 1
        began = time.monotonic()
        try:
            return fn(self, *args, **kwargs)
        except BaseException:
            self.failed = True
            raise
        finally:
            STATS["rule_seconds"][fn.__name__] += time.monotonic() - began

    return wrapper  # type: ignore[return-value]


def checked(fn: F) -> F:
    @functools.wraps(fn)
    def wrapper(self: LogbookMachine, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(self, *args, **kwargs)
        except BaseException:
            self.failed = True
            raise

    return wrapper  # type: ignore[return-value]


# --- bundles: an air-gapped machine ----------------------------------------------------------
#
# A second home, A, never online (no key; its endpoint a closed port), records jobs of its own
# (some also recorded on the main machine, B).  Its bundles are imported into B (any bundle,
# again and again, in any order), B makes receipts for them, and A applies them (any
# receipt, in any order, older ones too).  The invariant: one job per key upstream, and an
# applied receipt never contradicts the server (every entry A holds as synced carries the id
# of the server's job for its key).  The files never hold the key.


class BundleRules(RuleBasedStateMachine):
    """The bundle rules, mixed into ``LogbookMachine`` (they use its helpers and its model)."""

    # What LogbookMachine gives these rules.
    tmp: Path
    db: Path
    key: str
    emu: EmulatorProcess
    model: set[Identity]
    docs: list[dict[str, Any]]

    def gap(self) -> Path:
        """A's home, made on first use."""
        home = self.tmp / "gap"
        if not hasattr(self, "gap_docs"):
            home.mkdir()
            self.gap_docs: dict[Identity, dict[str, Any]] = {}
            self.bundles: list[Path] = []
            self.receipts: list[Path] = []
            self.gap_env = {"HAIQU_EDGE_URI": f"http://127.0.0.1:{closed_port()}"}
        return home

    def gap_run(self, *args: str | Path) -> Run:
        res = cli(self.gap(), *args, env=self.gap_env)
        self.keep(f"A: logbook {' '.join(map(str, args[:2]))}", res.out, res.err)
        assert_no_traceback(res.err)
        return res

    def gap_rows(self) -> list[sqlite3.Row]:
        return self.rows(self.gap() / "logbook.db")

    def gap_record(self, docs: list[dict[str, Any]], dups: list[int]) -> None:
        """A records jobs (``logbook import``), some of them ones B recorded too."""
        docs = docs + [self.docs[p % len(self.docs)] for p in dups if self.docs]
        if not docs:
            return
        path = self.gap().parent / f"gap-{self.next_serial()}.jsonl"
        path.write_text("".join(json.dumps(d) + "\n" for d in docs), encoding="utf-8")
        res = self.gap_run("import", path)
        assert res.code == 0, res
        for d in docs:
            self.gap_docs[identity(d)] = d

    @rule(docs=st.lists(job_docs(), max_size=3), dups=st.lists(st.integers(0, 10**6), max_size=2))
    @tracked
    def bundle_export(self, docs: list[dict[str, Any]], dups: list[int]) -> None:
        """A records a few jobs (or none), then exports every entry not yet synced."""
        if docs or dups:
            self.gap_record(docs, dups)
        path = self.gap().parent / f"b-{self.next_serial()}.bundle"
        res = self.gap_run("bundle", "export", path, "--json")
        assert res.code == 0, res
        left = {(r["experiment_id"], r["hash"]) for r in self.gap_rows()
                if r["state"] in ("pending", "sending")}  # fmt: skip
        assert set(bundle_jobs(path)) == left if left else not path.exists(), res
        if left:
            self.bundles.append(path)
            STATS["events"]["bundle-exported"] += 1

    @precondition(lambda self: getattr(self, "bundles", None))
    @rule(pick=st.integers(0, 10**6))
    @tracked
    def bundle_import(self, pick: int) -> None:
        """B imports one of A's bundles (an old one, or one imported before, is harmless)."""
        path = self.bundles[pick % len(self.bundles)]
        res = self.run("bundle", "import", str(path), "--json")
        assert res.code == 0, res
        carried = bundle_jobs(path)
        assert res.json()["new"] == len(set(carried) - self.model), res
        for ident in carried:
            self.recorded(self.gap_docs[ident])

    @precondition(lambda self: getattr(self, "bundles", None) and self.db.exists())
    @rule(pick=st.integers(0, 10**6), older=st.booleans())
    @tracked
    def bundle_apply(self, pick: int, older: bool) -> None:
        """B makes a receipt for one of the bundles; A applies it (or an earlier receipt)."""
        bundle = self.bundles[pick % len(self.bundles)]
        receipt = bundle.with_suffix(f".{self.next_serial()}.receipt")
        res = self.run("bundle", "receipt", str(bundle), "-o", str(receipt))
        assert res.code == 0, res
        self.receipts.append(receipt)
        if older and len(self.receipts) > 1:
            receipt = self.receipts[pick % len(self.receipts)]
            STATS["events"]["receipt-older"] += 1
        res = self.gap_run("bundle", "apply", receipt, "--json")
        assert res.code == 0, res

    @invariant()
    @checked
    def a_receipt_never_contradicts_the_server(self) -> None:
        if not hasattr(self, "gap_docs"):
            return
        server = {(j["experiment_id"], j["hash"]): j["id"] for j in self.emu.jobs()}
        rows = self.gap_rows()
        held = Counter((r["experiment_id"], r["hash"]) for r in rows)
        assert held == Counter(list(self.gap_docs)), held
        for r in rows:
            if r["state"] == "synced":
                assert r["remote_id"] == server.get((r["experiment_id"], r["hash"])), dict(r)
        for path in self.bundles + self.receipts:
            assert_no_key(json.dumps(read_lines(path)), self.key, str(path))

    def bundle_final_checks(self) -> None:
        """After the final sync: A's last bundle goes through B, and its receipt makes every
        entry of A synced with the server's id, one job per key upstream."""
        if not hasattr(self, "gap_docs"):
            return
        assert self.gap_run("retry", "--all").code == 0
        self.bundle_export([], [])
        if self.gap_rows() and any(r["state"] != "synced" for r in self.gap_rows()):
            self.bundle_import(len(self.bundles) - 1)
            for _ in range(8):
                res = self.run("--stats", "0", "sync", "--json", timeout=SYNC_TIMEOUT)
                assert res.code in (0, 1), res
                if res.code == 0:
                    break
            self.bundle_apply(len(self.bundles) - 1, False)
        server = {(j["experiment_id"], j["hash"]): j["id"] for j in self.emu.jobs()}
        stats = self.emu.stats()
        assert stats["duplicates"] == 0, stats["duplicate_keys"]
        for r in self.gap_rows():
            assert r["state"] == "synced", dict(r)
            assert r["remote_id"] == server[(r["experiment_id"], r["hash"])], dict(r)


class LogbookMachine(BundleRules, RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        STATS["examples"] += 1
        self.failed = False
        self.tmp = Path(tempfile.mkdtemp(prefix="logbook-model-"))
        self.home = self.tmp / "home"
        self.home.mkdir()
        self.db = self.home / "logbook.db"
        self.watch_dir = self.tmp / "watch"
        self.watch_dir.mkdir()
        self.import_dir = self.tmp / "imports"
        self.import_dir.mkdir()
        self.watch_log = self.tmp / "watch.log"
        # "+", "/" and "=": a key that must be percent-encoded in the query string.
        self.key = f"{secrets.token_hex(3)}+{secrets.token_hex(3)}/{secrets.token_hex(3)}=="
        self.emu = EmulatorProcess(
            self.key, progress_seconds=PROGRESS_SECONDS,
            extra_args=("--state-file", str(self.tmp / "emulator-state.json")),
        )  # fmt: skip
        self.emulator_logs: list[str] = []
        self.model: set[Identity] = set()
        self.docs: list[dict[str, Any]] = []  # recorded jobs, for duplicates
        self.faults: dict[str, Any] = {}
        self.procs: list[subprocess.Popen[Any]] = []
        self.outputs: list[tuple[str, str]] = []
        self.checked_outputs = 0
        self.watcher: subprocess.Popen[Any] | None = None
        self.watch_logf: Any = None
        self.serial = 0
        #: A sync ran to completion and no run was killed since.
        self.clean = False
        # The second lab, behind a relay (started by the first rule that needs it).
        self.lab2 = self.tmp / "lab2"
        self.lab2.mkdir()
        self.db2 = self.lab2 / "logbook.db"
        self.model2: set[Identity] = set()
        self.relay: RelayProcess | None = None
        self.relay_key = ""
        self.snapshots: list[Path] = []
        self.started = time.monotonic()
        self.emu.start()
        STATS["setup_seconds"] += time.monotonic() - self.started

    # --- running things --------------------------------------------------------------------

    def env(self, **extra: str) -> dict[str, str]:
        return {**self.emu.env(), **extra}

    def next_serial(self) -> int:
        self.serial += 1
        return self.serial

    def keep(self, label: str, *texts: str | None) -> None:
        for text in texts:
            if text:
                self.outputs.append((label, text))

    def run(self, *args: str, timeout: float = 60.0, **extra: str) -> Run:
        result = cli(self.home, *args, env=self.env(**extra), timeout=timeout)
        self.keep(f"logbook {' '.join(args[:2])}", result.out, result.err)
        return result

    def spawn(self, *args: str, **extra: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            cli_cmd(*args), env=base_env(self.home, self.env(**extra)),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
            errors="replace",
        )  # fmt: skip
        self.procs.append(proc)
        return proc

    def finish(self, proc: subprocess.Popen[str], label: str, timeout: float) -> Run:
        """Wait for a process we started (killed by PID if it overruns); keep its output."""
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            self.keep(label, out, err)
            raise AssertionError(f"{label} did not finish in {timeout} s:\n{out}\n{err}") from None
        self.keep(label, out, err)
        return Run(proc.returncode, out, err)

    def allowed_sync_codes(self) -> set[int]:
        """What ``logbook sync`` may exit with under the live faults (the key is right: never 3;
        the emulator is up: never 4)."""
        codes = {0, 1}
        if self.faults.get("redirect_to"):
            codes.add(2)
        return codes

    def api_requests(self) -> int:
        """POSTs and lookups the emulator has seen (a lookup comes first for a maybe-sent job)."""
        requests = self.emu.stats()["requests"]
        return int(requests.get(ROUTE_POST_JOBS, 0) + requests.get(ROUTE_GET_BY_HASH, 0))

    def until_mid_flight(self, proc: subprocess.Popen[str]) -> None:
        """Poll (fast) until a request of ``proc`` reached the emulator, or it ended."""
        before = self.api_requests()
        deadline = time.monotonic() + 60
        while proc.poll() is None and self.api_requests() <= before:
            assert time.monotonic() < deadline, "the sync sent nothing in 60 s"
            time.sleep(0.01)

    def settle_server(self) -> None:
        """Let the emulator see a killed run's connections close (it drops their requests).

        The kernel closes a killed process's sockets at once; an admin call answered by
        the same event loop comes after the server noticed.
        """
        self.emu.stats()

    def rows(self, db: Path | None = None) -> list[sqlite3.Row]:
        db = db or self.db
        if not db.exists():
            return []
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
        conn.row_factory = sqlite3.Row
        try:
            return conn.execute(
                "SELECT id, experiment_id, hash, state, remote_id, lease_owner, maybe_sent,"
                " via, upstream_id FROM entries ORDER BY id"
            ).fetchall()
        finally:
            conn.close()

    def store_identities(self) -> Counter[Identity]:
        return Counter((r["experiment_id"], r["hash"]) for r in self.rows())

    def ledger_has(self, path: Path) -> bool:
        if not self.db.exists():
            return False
        conn = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=30)
        try:
            row = conn.execute(
                "SELECT outcome FROM files WHERE path_bytes = ?", (os.fsencode(path.resolve()),)
            ).fetchone()
        except sqlite3.OperationalError:  # no files table yet
            return False
        finally:
            conn.close()
        return row is not None

    def recorded(self, doc: dict[str, Any]) -> Identity:
        ident = identity(doc)
        self.model.add(ident)
        self.docs.append(doc)
        return ident

    def choose(self, kind: str, doc: dict[str, Any], pick: int) -> dict[str, Any]:
        if kind == "dup" and self.docs:
            STATS["events"]["duplicate"] += 1
            return self.docs[pick % len(self.docs)]
        return doc

    def emulator_stderr(self) -> str:
        """What the emulator process wrote to stderr so far (before it is stopped)."""
        return self.emu.stderr_text()

    # --- rules: recording ------------------------------------------------------------------

    @rule(
        kind=st.sampled_from(["new", "new", "dup", "poison-results", "poison-arg"]),
        doc=job_docs(), pick=st.integers(0, 10**6),
    )  # fmt: skip
    @tracked
    def record_cli(self, kind: str, doc: dict[str, Any], pick: int) -> None:
        if kind == "poison-results":
            # JSON text whose string holds a lone surrogate: refused, nothing stored.
            args = [a for a in record_args(doc) if not a.startswith("--results=")]
            res = self.run(*args, f"--results={POISON_RESULTS}")
            assert res.code == 2, f"a lone surrogate in --results was accepted: {res}"
            return
        if kind == "poison-arg":
            # A name that is not UTF-8 on the command line arrives as a lone surrogate.
            bad = os.fsdecode(b"name-\xff")
            args = [a if not a.startswith("--name=") else f"--name={bad}" for a in record_args(doc)]
            res = self.run(*args)
            assert res.code == 2, f"a lone surrogate in --name was accepted: {res}"
            assert "surrogate" in res.err, res.err
            return
        doc = self.choose(kind, doc, pick)
        res = self.run(*record_args(doc))
        assert res.code == 0, res
        entry = res.json()
        ident = identity(doc)
        assert (entry["experiment_id"], entry["hash"]) == ident, (entry, doc)
        self.recorded(doc)

    @rule(
        kind=st.sampled_from(["new", "dup", "poison"]), doc=job_docs(), pick=st.integers(0, 10**6)
    )
    @tracked
    def log_python(self, kind: str, doc: dict[str, Any], pick: int) -> None:
        if kind == "poison":
            fields = {k: v for k, v in doc.items() if k != "experiment_id"}
            fields["name"] = "half \ud800 a pair"
            with pytest.raises(InvalidJob, match="surrogate"):
                logbook.log(fields, experiment_id=doc["experiment_id"], db=self.db)
            return
        doc = self.choose(kind, doc, pick)
        fields = {k: v for k, v in doc.items() if k != "experiment_id"}
        entry = logbook.log(fields, experiment_id=doc["experiment_id"], db=self.db)
        assert (entry.experiment_id, entry.hash) == identity(doc)
        self.recorded(doc)

    @rule(
        docs=st.lists(job_docs(), min_size=1, max_size=4),
        dups=st.lists(st.integers(0, 10**6), max_size=2),
        poison=st.sampled_from([None, 0, 1, 5]), bad_name=st.booleans(), ascii_only=st.booleans(),
    )  # fmt: skip
    @tracked
    def import_jsonl(
        self, docs: list[dict[str, Any]], dups: list[int], poison: int | None, bad_name: bool,
        ascii_only: bool,
    ) -> None:  # fmt: skip
        good = list(docs) + ([self.docs[p % len(self.docs)] for p in dups] if self.docs else [])
        lines = [json.dumps(d, ensure_ascii=ascii_only) for d in good]
        if poison is not None:
            bad = json.dumps({"experiment_id": "exp-a", "name": "\ud800", "results": "{}"})
            assert "\\ud800" in bad
            lines.insert(min(poison, len(lines)), bad)
        n = self.next_serial()
        name = b"bad\xff-%d.jsonl" % n if bad_name else b"import-%d.jsonl" % n
        path = os.path.join(os.fsencode(self.import_dir), name)
        with open(path, "wb") as f:
            f.write(("\n".join(lines) + "\n").encode("utf-8"))
        new = {identity(d) for d in good} - self.model
        res = self.run("import", os.fsdecode(path), "--json")
        assert res.code == (1 if poison is not None else 0), res
        report = res.json()
        assert report["invalid"] == (1 if poison is not None else 0), report
        assert report["recorded"] == len(new), (report, new)
        for d in good:
            self.recorded(d)
        STATS["events"]["import-non-utf8-name" if bad_name else "import"] += 1

    @rule(
        kind=st.sampled_from(["new", "new", "dup"]), doc=job_docs(), pick=st.integers(0, 10**6),
        poison_first=st.booleans(),
    )  # fmt: skip
    @tracked
    def watch_drop(self, kind: str, doc: dict[str, Any], pick: int, poison_first: bool) -> None:
        if self.watcher is None or self.watcher.poll() is not None:
            assert self.watcher is None, f"the watcher died:\n{self.watch_log.read_text()}"
            self.watch_logf = open(self.watch_log, "ab")  # closed in teardown
            self.watcher = subprocess.Popen(
                cli_cmd("watch", self.watch_dir, "--settle", "0.05"),
                env=base_env(self.home, self.env()), stdout=self.watch_logf,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )  # fmt: skip
            self.procs.append(self.watcher)
            STATS["events"]["watcher-started"] += 1
        n = self.next_serial()
        if poison_first:
            self.drop(f"poison-{n}.json", json.dumps({"experiment_id": "exp-a", "name": "\ud800"}))
        doc = self.choose(kind, doc, pick)
        target = self.drop(f"w-{n}.json", json.dumps(doc))
        ident = identity(doc)
        wait_until(
            lambda: self.ledger_has(target) and self.store_identities()[ident] >= 1,
            timeout=30, what=f"the watcher to record {target.name}",
        )  # fmt: skip
        self.recorded(doc)

    def drop(self, name: str, text: str) -> Path:
        """Write a file the way a careful program does: a temporary name, then a rename."""
        tmp = self.watch_dir / f".{name}.part"
        tmp.write_text(text, encoding="utf-8")
        target = self.watch_dir / name
        os.replace(tmp, target)
        return target

    # --- rules: syncing --------------------------------------------------------------------

    # The only rule without arguments: hypothesis tries it first and most often.
    @rule()
    @tracked
    def sync(self) -> None:
        allowed = self.allowed_sync_codes()
        res = self.run("--stats", "0", "sync", "--json", timeout=SYNC_TIMEOUT)
        STATS["events"][f"sync-exit-{res.code}"] += 1
        assert res.code in allowed, f"sync exited {res.code} under {self.faults}: {res}"
        assert_no_traceback(res.err)
        if res.code in (0, 1):
            report = res.json()
            if res.code == 0:
                assert report["pending"] == 0 and report["rejected"] == 0, report
                # Nothing else ran: everything is on the server or refused for good.
                left = Counter(r["state"] for r in self.rows())
                assert set(left) <= {"synced", "rejected"}, left
        self.clean = True

    @rule(
        latency=st.sampled_from([150.0, 400.0]), extra=st.sampled_from([0.0, 0.05, 0.3]),
        faults=st.none() | FAULT_PROFILES, fresh=FRESH,
    )  # fmt: skip
    @tracked
    def kill_sync(
        self, latency: float, extra: float, faults: dict[str, Any] | None,
        fresh: list[dict[str, Any]],
    ) -> None:  # fmt: skip
        """SIGKILL a sync mid-flight: once a request reached the emulator (or it ended)."""
        self.apply_faults(faults, merge=True)
        self.log_fresh(fresh)
        old = float(self.faults.get("latency_ms", 0.0))
        self.emu.set_faults(latency_ms=max(old, latency))
        try:
            proc = self.spawn("--stats", "0", "sync", "--json")
            self.until_mid_flight(proc)
            if extra:
                time.sleep(extra)
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
                STATS["events"]["sigkill"] += 1
            else:
                STATS["events"]["sigkill-too-late"] += 1
            res = self.finish(proc, "killed sync", timeout=30)  # reaped: its pid is gone
            if res.code != -signal.SIGKILL:
                assert res.code in self.allowed_sync_codes(), res
            self.settle_server()
        finally:
            self.emu.set_faults(latency_ms=old)
        self.clean = False

    @rule(latency=st.sampled_from([200.0, 500.0]), faults=st.none() | FAULT_PROFILES, fresh=FRESH)
    @tracked
    def pause_sync(
        self, latency: float, faults: dict[str, Any] | None, fresh: list[dict[str, Any]]
    ) -> None:
        """SIGSTOP a sync past its lease while another runs to completion; then SIGCONT it."""
        self.apply_faults(faults, merge=True)
        self.log_fresh(fresh)
        old = float(self.faults.get("latency_ms", 0.0))
        self.emu.set_faults(latency_ms=max(old, latency))
        paused = False
        a = self.spawn("--stats", "0", "sync", "--json", LOGBOOK_LEASE_SECONDS="1")
        try:
            self.until_mid_flight(a)
            if a.poll() is None:
                os.kill(a.pid, signal.SIGSTOP)
                paused = True
                STATS["events"]["sigstop"] += 1
                time.sleep(1.5)  # past its one-second lease
            self.emu.set_faults(latency_ms=old)
            b = self.spawn("--stats", "0", "sync", "--json")
            waited = time.monotonic()
            locked = 0
            while b.poll() is None:
                time.sleep(0.05)
                if paused and time.monotonic() - waited > 3:
                    # A run stopped inside a write transaction blocks every other writer:
                    # that is SQLite, not a bug; let it go on.
                    locked = locked + 1 if self.store_locked() else 0
                    if locked >= 3:
                        os.kill(a.pid, signal.SIGCONT)
                        paused = False
                        STATS["events"]["sigstop-held-the-lock"] += 1
                assert time.monotonic() - waited < SYNC_TIMEOUT, "the second sync hangs"
            rb = self.finish(b, "second sync", timeout=10)
            assert rb.code in self.allowed_sync_codes(), rb
            if paused:
                os.kill(a.pid, signal.SIGCONT)
                paused = False
            ra = self.finish(a, "paused sync", timeout=SYNC_TIMEOUT)
            assert ra.code in self.allowed_sync_codes(), ra
            assert_no_traceback(ra.err, rb.err)
        finally:
            if paused:
                os.kill(a.pid, signal.SIGCONT)
            self.emu.set_faults(latency_ms=old)
        self.clean = True

    def log_fresh(self, docs: list[dict[str, Any]]) -> None:
        """Record a few jobs (Python API) so that the sync about to be upset has work in hand."""
        for doc in docs:
            fields = {k: v for k, v in doc.items() if k != "experiment_id"}
            entry = logbook.log(fields, experiment_id=doc["experiment_id"], db=self.db)
            assert (entry.experiment_id, entry.hash) == identity(doc)
            self.recorded(doc)

    def store_locked(self) -> bool:
        conn = sqlite3.connect(self.db, timeout=0.1, isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("ROLLBACK")
            return False
        except sqlite3.OperationalError:
            return True
        finally:
            conn.close()

    @precondition(lambda self: self.db.exists())
    @rule(hold=st.sampled_from([1.0, 1.5, 2.0]), faults=st.none() | FAULT_PROFILES)
    @tracked
    def locked_store_sync(self, hold: float, faults: dict[str, Any] | None) -> None:
        """Another process holds the store's write lock for a while; a sync waits it out."""
        self.apply_faults(faults, merge=True)
        locker = subprocess.Popen(
            [sys.executable, "-c", LOCKER, str(self.db), str(hold)],
            env=base_env(self.home), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        self.procs.append(locker)
        try:
            assert locker.stdout is not None
            assert locker.stdout.readline().strip() == "locked", "the locker did not lock"
            res = self.run("--stats", "0", "sync", "--json", timeout=SYNC_TIMEOUT)
            assert res.code in self.allowed_sync_codes(), res
            assert_no_traceback(res.err)
        finally:
            lr = self.finish(locker, "locker", timeout=30)
        assert lr.code == 0, lr
        self.clean = True

    @rule(by_id=st.booleans())
    @tracked
    def retry_all(self, by_id: bool) -> None:
        """``logbook retry --all`` (or each rejected entry by its id): back to pending."""
        rejected = [str(r["id"]) for r in self.rows() if r["state"] == "rejected"]
        if by_id and rejected:
            res = self.run("retry", *rejected, "--json")
        else:
            res = self.run("retry", "--all", "--json")
        assert res.code == 0, res
        assert res.json()["retried"] == len(rejected), res
        assert not any(r["state"] == "rejected" for r in self.rows())
        if self.db2.exists():
            assert cli(self.lab2, "retry", "--all").code == 0

    # --- rules: the server -----------------------------------------------------------------

    @rule(profile=FAULT_PROFILES, merge=st.booleans())
    @tracked
    def switch_faults(self, profile: dict[str, Any], merge: bool) -> None:
        self.apply_faults(profile, merge)

    def apply_faults(self, profile: dict[str, Any] | None, merge: bool) -> None:
        """Turn a fault profile on (added to the live ones, or instead of them); {}: all off.

        The kill, pause and lock rules take one too (None: leave the faults as they are),
        so that what goes wrong and what runs meet often even in a short run.
        """
        if profile is None:
            return
        if not merge or not profile:
            self.emu.clear_faults()
            self.faults = {}
        self.emu.set_faults(**profile)
        self.faults.update(profile)
        STATS["events"]["faults:" + ("+".join(sorted(profile)) or "off")] += 1

    @rule(keep_faults=st.booleans())
    @tracked
    def restart_emulator(self, keep_faults: bool) -> None:
        """Restart it on a new port (the jobs survive in its state file); it comes back
        without faults, or misbehaving as before (``keep_faults``)."""
        self.emulator_logs.append(self.emulator_stderr())
        self.emu.restart()
        if keep_faults and self.faults:
            self.emu.set_faults(**self.faults)
        else:
            self.faults = {}
        if self.relay is not None:  # the relay forwards to the API's new address
            self.relay.stop()
            self.relay_up()

    # --- rules: a second lab behind a relay, and what happens to the relay ----------------

    def relay_up(self) -> RelayProcess:
        """The relay, started on first use (a fixed port: a fresh relay comes back there)."""
        if self.relay is None:
            self.relay = RelayProcess(self.tmp / "relay", self.emu.url, self.key)
            self.relay_key = self.relay.add_key("lab2")
        if self.relay.proc is None or self.relay.proc.poll() is not None:
            self.relay.upstream = self.emu.url
            self.relay.start()
            STATS["events"]["relay-started"] += 1
        return self.relay

    def run_lab2(self, *args: str, timeout: float = SYNC_TIMEOUT) -> Run:
        relay = self.relay_up()
        env = {"HAIQU_EDGE_URI": relay.url, "HAIQU_API_KEY": self.relay_key}
        result = cli(self.lab2, *args, env=env, timeout=timeout)
        self.keep(f"lab2 {' '.join(args[:3])}", result.out, result.err)
        return result

    @rule(docs=st.lists(RELAY_DOCS, min_size=1, max_size=4))
    @tracked
    def record_lab2(self, docs: list[dict[str, Any]]) -> None:
        for doc in docs:
            fields = {k: v for k, v in doc.items() if k != "experiment_id"}
            entry = logbook.log(fields, experiment_id=doc["experiment_id"], db=self.db2)
            assert (entry.experiment_id, entry.hash) == identity(doc)
            self.model2.add(identity(doc))

    @rule()
    @tracked
    def sync_lab2(self) -> None:
        """The lab behind the relay syncs: its entries reach the relay, and the API's ids
        flow back (or what the relay lost is offered again)."""
        res = self.run_lab2("--stats", "0", "sync", "--json")
        assert res.code in self.allowed_sync_codes(), res
        assert_no_traceback(res.err)
        if "offered again" in res.err + res.out:
            STATS["events"]["relay-reoffer"] += 1

    @precondition(lambda self: self.relay is not None)
    @rule()
    @tracked
    def snapshot_relay(self) -> None:
        """A backup of the relay's store, taken while it runs (SQLite's backup API)."""
        assert self.relay is not None
        target = self.tmp / f"relay-snapshot-{self.next_serial()}.db"
        src = sqlite3.connect(self.relay.home / "logbook.db", timeout=30)
        dst = sqlite3.connect(target)
        try:
            src.backup(dst)
        finally:
            src.close()
            dst.close()
        self.snapshots.append(target)

    @precondition(lambda self: self.relay is not None and bool(self.snapshots))
    @rule(pick=st.integers(0, 10**6))
    @tracked
    def restore_relay(self, pick: int) -> None:
        """The relay's disk is put back to a snapshot taken at an earlier step."""
        relay = self.relay_up()
        relay.stop()
        db = relay.home / "logbook.db"
        for suffix in ("", "-wal", "-shm"):
            Path(f"{db}{suffix}").unlink(missing_ok=True)
        shutil.copyfile(self.snapshots[pick % len(self.snapshots)], db)
        self.relay_up()
        STATS["events"]["relay-restored"] += 1

    @precondition(lambda self: self.relay is not None)
    @rule(how=st.sampled_from(["kill", "wipe"]))
    @tracked
    def lose_relay(self, how: str) -> None:
        """SIGKILL the relay (it restarts on its own store), or replace it with a fresh one
        on the same address (nothing kept; a new key under the same name)."""
        relay = self.relay_up()
        if how == "kill":
            relay.kill()
        else:
            relay.stop()
            shutil.rmtree(relay.home)
            self.relay_key = relay.add_key("lab2")
        self.relay_up()
        STATS["events"][f"relay-{how}"] += 1

    @precondition(lambda self: self.relay is not None)
    @rule()
    @tracked
    def relay_clock_jumped(self) -> None:
        """The relay ran under a clock a year ahead: its retry times lie a year ahead now
        that the clock is right again.  They must not stall its backlog."""
        assert self.relay is not None
        conn = sqlite3.connect(self.relay.home / "logbook.db", timeout=30)
        try:
            with conn:
                conn.execute(
                    "UPDATE entries SET next_attempt_at = ? WHERE state = 'pending'",
                    (time.time() + 365 * 86400,),
                )
        finally:
            conn.close()
        STATS["events"]["relay-clock-jumped"] += 1

    # --- invariants ------------------------------------------------------------------------

    @invariant()
    @checked
    def store_matches_model(self) -> None:
        rows = self.rows()
        seen = Counter((r["experiment_id"], r["hash"]) for r in rows)
        extra = {k: n for k, n in seen.items() if k not in self.model or n != 1}
        missing = self.model - set(seen)
        assert not extra and not missing, f"store vs model: extra {extra}, missing {missing}"
        for r in rows:
            if r["state"] == "synced":
                assert r["remote_id"], dict(r)
        if self.clean:
            for r in rows:
                if r["state"] == "sending":
                    assert owner_alive(r["lease_owner"]) is not False, dict(r)

    @invariant()
    @checked
    def server_matches_store(self) -> None:
        stats = self.emu.stats()
        assert stats["duplicates"] == 0, stats["duplicate_keys"]
        server = {(j["experiment_id"], j["hash"]): j["id"] for j in self.emu.jobs()}
        assert set(server) <= self.model | self.model2, set(server) - self.model - self.model2
        for r in self.rows():
            if r["state"] == "synced":
                ident = (r["experiment_id"], r["hash"])
                assert r["remote_id"] == server.get(ident), (dict(r), server.get(ident))
        rows2 = self.rows(self.db2)
        assert Counter((r["experiment_id"], r["hash"]) for r in rows2) == Counter(self.model2)
        for r in rows2:
            if r["state"] == "synced" and r["upstream_id"]:  # confirmed: it names the API's job
                ident = (r["experiment_id"], r["hash"])
                assert r["upstream_id"] == server.get(ident), (dict(r), server.get(ident))

    @invariant()
    @checked
    def key_never_shows(self) -> None:
        for label, text in self.outputs[self.checked_outputs :]:
            assert_no_key(text, self.key, label)
            if "Traceback" in text:
                raise AssertionError(f"a traceback in {label}: {text[-3000:]}")
        self.checked_outputs = len(self.outputs)
        if self.watch_log.exists():
            text = self.watch_log.read_text("utf-8", "replace")
            assert_no_key(text, self.key, "the watch log")
            assert "Traceback" not in text, f"a traceback in the watch log: {text[-3000:]}"
        if self.db.exists():
            assert_no_key(dump_db(self.db), self.key, "the store")

    # --- the end ---------------------------------------------------------------------------

    def teardown(self) -> None:
        began = time.monotonic()
        try:
            self.stop_watcher()
            if not self.failed:
                self.final_checks()
        finally:
            self.cleanup()
            STATS["teardown_seconds"] += time.monotonic() - began
            STATS["seconds"] += time.monotonic() - self.started
            _write_stats()

    def stop_watcher(self) -> None:
        w, self.watcher = self.watcher, None
        if w is None:
            return
        if w.poll() is None:
            w.terminate()
            try:
                w.wait(timeout=15)
            except subprocess.TimeoutExpired:
                w.kill()
                w.wait()
                raise AssertionError("the watcher did not stop on SIGTERM") from None
        if self.watch_logf is not None:
            self.watch_logf.close()
            self.watch_logf = None
        assert w.returncode == 0 or self.failed, (
            f"watch exited {w.returncode}:\n{self.watch_log.read_text('utf-8', 'replace')}"
        )

    def final_checks(self) -> None:
        self.emu.clear_faults()
        self.faults = {}
        res = self.run("retry", "--all", "--json")
        assert res.code == 0, res
        for _ in range(8):
            res = self.run("--stats", "0", "sync", "--json", timeout=SYNC_TIMEOUT)
            assert res.code in (0, 1), res
            if res.code == 0:
                break
        else:
            raise AssertionError(f"still not synced after 8 runs: {res}")
        self.final_lab2()
        self.key_never_shows()
        rows = self.rows()
        assert all(r["state"] == "synced" for r in rows), [dict(r) for r in rows]
        stats = self.emu.stats()
        assert stats["duplicates"] == 0, stats["duplicate_keys"]
        assert stats["jobs_created"] == len(self.model) + len(self.model2), (stats, len(self.model))
        jobs = self.emu.jobs()
        server = {(j["experiment_id"], j["hash"]): j["id"] for j in jobs}
        assert set(server) == self.model | self.model2
        for r in rows:
            assert r["remote_id"] == server[(r["experiment_id"], r["hash"])], dict(r)
        for text in [*self.emulator_logs, self.emulator_stderr()]:
            assert_no_key(text, self.key, "the emulator's stderr")
        self.bundle_final_checks()

    def final_lab2(self) -> None:
        """The lab behind the relay: every entry confirmed, each job upstream once."""
        if not self.model2:
            return
        assert cli(self.lab2, "retry", "--all").code == 0

        def confirmed() -> bool:
            res = self.run_lab2("--stats", "0", "sync", "--json")
            assert res.code in (0, 1), res
            rows = self.rows(self.db2)
            return all(r["state"] == "synced" and r["upstream_id"] for r in rows)

        wait_until(confirmed, SYNC_TIMEOUT, "every entry of the relay lab to be confirmed")
        server = {(j["experiment_id"], j["hash"]): j["id"] for j in self.emu.jobs()}
        for r in self.rows(self.db2):
            assert r["upstream_id"] == server[(r["experiment_id"], r["hash"])], dict(r)
        assert self.relay is not None
        assert self.relay.stop() == 0
        assert_no_key(self.relay.log.read_text("utf-8", "replace"), self.key, "the relay log")

    def cleanup(self) -> None:
        """Every process we started is stopped by its PID; the temporary tree goes."""
        for proc in self.procs:
            if proc.poll() is None:
                try:
                    os.kill(proc.pid, signal.SIGCONT)
                    proc.kill()
                except ProcessLookupError:
                    pass
            try:
                proc.communicate(timeout=10)
            except (subprocess.TimeoutExpired, ValueError):
                pass
        if self.watch_logf is not None:
            self.watch_logf.close()
        if self.relay is not None:
            self.relay.kill()
        self.emu.stop()
        for db in (self.db, self.db2):
            store = (getattr(logbook_api._local, "stores", None) or {}).pop(str(db), None)
            if store is not None:
                store.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


TestLogbookModel = LogbookMachine.TestCase
TestLogbookModel.settings = settings(
    max_examples=EXAMPLES,
    stateful_step_count=STEPS,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    # Shrinking replays real processes: minutes. LOGBOOK_MODEL_SHRINK=0 reports the
    # failing sequence as found instead.
    phases=[p for p in Phase if SHRINK or p != Phase.shrink],
    database=(
        DirectoryBasedExampleDatabase(os.environ["LOGBOOK_MODEL_DB"])
        if os.environ.get("LOGBOOK_MODEL_DB")
        else None
    ),
)


@pytest.fixture(autouse=True, scope="module")
def report_steps(request: pytest.FixtureRequest) -> Iterator[None]:
    """Say how much the model ran (on the terminal, past pytest's capture, and in a file)."""
    yield
    _write_stats()
    line = (
        f"\nlogbook model: {STATS['examples']} examples, {STATS['steps']} steps"
        f" in {STATS['seconds']:.1f} s; rules {dict(STATS['rules'])}"
    )
    capman = request.config.pluginmanager.getplugin("capturemanager")
    if capman is not None:
        with capman.global_and_fixture_disabled():
            print(line, file=sys.stderr)
    else:
        print(line, file=sys.stderr)
