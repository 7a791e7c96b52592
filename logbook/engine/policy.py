"""One policy: what a failed request's verdict makes a run do.

The client gives every failure one ``Verdict`` (``errors.Verdict``); this is
the only place that turns it into an action for the entry and, when the run
cannot go on, into the error the run ends with.

    verdict          the entry                      the run
    NOT_SENT         pending, back-off              stops (unreachable) if nothing answered yet
    MAYBE_SENT       pending, looked up first       goes on
    RETRY_LATER      pending, back-off              goes on
    REJECTED         rejected with the reason       goes on
    STOP_AUTH        as it was                      stops: AuthError (exit 3)
    STOP_REDIRECT    as it was                      stops: Redirected (exit 2)
    STOP_TRUST       as it was                      stops: TrustError (exit 4)
    STOP_ENDPOINT    as it was                      stops: WrongEndpoint (exit 2)

A run whose requests time out ``MAX_TIMEOUTS`` times in a row before any
answer stops too (unreachable, exit 4); the entries in flight keep their
``maybe_sent``.
"""

from __future__ import annotations

from enum import Enum

from ..errors import (
    AuthError,
    Redirected,
    RequestFailed,
    SyncError,
    TrustError,
    Unreachable,
    Verdict,
    WrongEndpoint,
)

#: This many requests in a row that time out make the endpoint unreachable (exit 4).
MAX_TIMEOUTS = 8


class Action(Enum):
    """What happens to the entry a failed request carried."""

    STOP = "stop"  # the run ends; the entry goes back exactly as it was
    REJECT = "reject"  # rejected for good, with the server's reason
    RETRY = "retry"  # pending again after a back-off
    RETRY_UNCERTAIN = "retry_uncertain"  # pending, and looked up before it is posted again


_ACTIONS: dict[Verdict, Action] = {
    Verdict.NOT_SENT: Action.RETRY,
    Verdict.MAYBE_SENT: Action.RETRY_UNCERTAIN,
    Verdict.RETRY_LATER: Action.RETRY,
    Verdict.REJECTED: Action.REJECT,
    Verdict.STOP_AUTH: Action.STOP,
    Verdict.STOP_REDIRECT: Action.STOP,
    Verdict.STOP_TRUST: Action.STOP,
    Verdict.STOP_ENDPOINT: Action.STOP,
}


def decide(verdict: Verdict, *, reached: bool) -> Action:
    """The action for a failure's verdict.  ``reached``: the server answered this run before.

    A connection that cannot be opened before anything answered means the
    endpoint is unreachable: the run stops rather than back off every entry.
    """
    if verdict is Verdict.NOT_SENT and not reached:
        return Action.STOP
    return _ACTIONS[verdict]


def throttles(failure: RequestFailed) -> bool:
    """The server is overloaded (429, 503): fewer requests in flight, and its pause honoured."""
    return failure.status in (429, 503)


def run_error(
    failure: RequestFailed, endpoint: str, kept: str, setting: str = "HAIQU_EDGE_URI"
) -> SyncError:
    """The error a run that was stopped by ``failure`` ends with; ``kept`` says what was kept;
    ``setting`` is what the user sets to change the endpoint (a relay's ``--upstream``)."""
    verdict = failure.verdict
    if verdict is Verdict.STOP_AUTH:
        return AuthError(
            f"the server refused the API key (HTTP {failure.status}): check HAIQU_API_KEY"
            f" (`logbook doctor` tests it); {kept}"
        )
    if verdict is Verdict.STOP_REDIRECT:
        return Redirected(
            f"the endpoint redirects to {failure.location}; set {setting} to it ({kept})"
        )
    if verdict is Verdict.STOP_TRUST:
        return TrustError(f"{failure}; {kept}")
    if verdict is Verdict.STOP_ENDPOINT:
        return WrongEndpoint(f"{failure}; {kept}")
    if failure.timed_out:
        return Unreachable(
            f"{endpoint} timed out {MAX_TIMEOUTS} requests in a row: is it up? {kept};"
            " entries that were in flight are looked up before they are sent again"
        )
    return Unreachable(f"{failure}; {kept}")
