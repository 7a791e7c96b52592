"""The emulator's command line, declared once: ``python -m logbook.emulator`` parses it with
argparse and ``logbook emulator`` builds its click options from the same declarations.

Light on purpose (no aiohttp): ``logbook --help`` builds the click command from it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

DEFAULT_PORT = 8000
DEFAULT_PROGRESS_SECONDS = 3.0
FAULTS_TITLE = "faults (also settable at run time: POST /_admin/faults)"

EPILOG = """\
Admin routes (no key needed):
  GET /_admin/stats      requests per route, jobs_created, unique_jobs, duplicates
  GET|POST|DELETE /_admin/faults   show, change or clear the faults while it runs
  POST /_admin/reset     forget jobs, counters and faults
  GET /_admin/jobs       every stored job, duplicates included
Example:
  HAIQU_API_KEY=try-it logbook emulator --port 8765 --rate-limit-rate 0.1
  curl -s localhost:8765/_admin/stats
"""


class _Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The epilog as written, and each option's default after its help."""


def build_parser(prog: str = "python -m logbook.emulator") -> argparse.ArgumentParser:
    """Every option of the emulator, each with its help text and default."""
    p = argparse.ArgumentParser(
        prog=prog,
        description="An emulator of the Haiqu Jobs API, with fault injection, for tests and demos."
        " It expects the key in HAIQU_API_KEY.",
        epilog=EPILOG,
        formatter_class=_Formatter,
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument(
        "--port", type=int, default=DEFAULT_PORT,
        help="port to listen on; 0 picks a free one",
    )  # fmt: skip
    p.add_argument(
        "--api-key",
        help="the key to expect (default: $HAIQU_API_KEY); prefer the environment, "
        "a key on the command line shows in ps",
    )
    p.add_argument(
        "--progress-seconds", type=float, default=DEFAULT_PROGRESS_SECONDS,
        help="seconds a job takes from Submitted through Queued and Running to Done"
        " (0: Done at once)",
    )  # fmt: skip
    p.add_argument(
        "--seed", type=int, default=None, help="seed of the fault dice (repeatable runs)"
    )
    p.add_argument("--state-file", type=Path, help="load jobs from and save them to this file")
    p.add_argument(
        "--save-interval", type=float, default=2.0,
        help="seconds between saves of --state-file",
    )  # fmt: skip
    p.add_argument("--tls-cert", help="serve https with this PEM certificate (chain)")
    p.add_argument("--tls-key", help="the certificate's PEM private key")
    _fault_options(p.add_argument_group(FAULTS_TITLE))
    return p


def _fault_options(g: argparse._ArgumentGroup) -> None:
    """What goes wrong, and where (``faults.Faults`` holds them while it runs)."""
    g.add_argument(
        "--latency-ms", type=float, default=0.0,
        help="milliseconds added to every API request",
    )  # fmt: skip
    g.add_argument("--unauthorized", action="store_true", help="answer 401 to everything")
    g.add_argument(
        "--error-rate", type=float, default=0.0,
        help="share of requests (0..1) answered with --error-status",
    )  # fmt: skip
    g.add_argument("--error-status", type=int, default=500, help="status of --error-rate")
    g.add_argument(
        "--fail-next", type=int, default=0,
        help="the next N requests fail with --fail-status",
    )  # fmt: skip
    g.add_argument("--fail-status", type=int, default=503, help="status of --fail-next")
    g.add_argument(
        "--rate-limit-next", type=int, default=0,
        help="the next N requests get 429 with Retry-After",
    )  # fmt: skip
    g.add_argument(
        "--rate-limit-rate", type=float, default=0.0,
        help="share of requests (0..1) answered 429 with Retry-After",
    )  # fmt: skip
    g.add_argument(
        "--rate-limit-per-s", type=float, default=0.0,
        help="a real rate limit: 429 with Retry-After above this many requests a second, on"
        " every API route (0: none)",
    )  # fmt: skip
    g.add_argument(
        "--retry-after", default="1",
        help='Retry-After of the injected 429s: seconds, or "none" for no header',
    )  # fmt: skip
    g.add_argument(
        "--retry-after-format", choices=("seconds", "date"), default="seconds",
        help="Retry-After as seconds or as an HTTP date",
    )  # fmt: skip
    g.add_argument(
        "--drop-rate", type=float, default=0.0,
        help="share of POSTs (0..1) whose job is stored, then the connection dropped with no"
        " answer: the client cannot know it arrived",
    )  # fmt: skip
    g.add_argument(
        "--bad-json-rate", type=float, default=0.0,
        help="share of answers (0..1) that are 200 with a body that is not JSON; the job is"
        " stored",
    )  # fmt: skip
    g.add_argument(
        "--trickle-seconds", type=float, default=0.0,
        help="send each answer's body slowly, over this many seconds",
    )  # fmt: skip
    g.add_argument(
        "--fault-routes", default="POST /jobs",
        help='comma-separated routes the faults hit, or "*" for every API route'
        " (--latency-ms and --unauthorized hit every route)",
    )  # fmt: skip


def parse_args(argv: list[str] | None = None, prog: str | None = None) -> argparse.Namespace:
    parser = build_parser() if prog is None else build_parser(prog)
    return parser.parse_args(argv)
