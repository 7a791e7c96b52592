"""What one sync run did: the report the CLI prints and the row ``runs`` keeps."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..store import now_iso


@dataclass
class SyncReport:
    """What one run did; ``pending`` is what is still left to send afterwards."""

    synced: int = 0
    rejected: int = 0
    pending: int = 0
    refreshed: int = 0
    reconciled: int = 0
    held_elsewhere: int = 0
    #: Entries sent again because the hop that had accepted them no longer holds them.
    reoffered: int = 0
    #: Direct to the API: synced entries the API answered 404 for (never re-sent on their own).
    missing: int = 0
    elapsed: float = 0.0
    errors: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, int]:
        return {
            "synced": self.synced,
            "rejected": self.rejected,
            "pending": self.pending,
            "refreshed": self.refreshed,
        }

    @property
    def exit_code(self) -> int:
        return 0 if self.pending == 0 and self.rejected == 0 else 1

    def summary(self) -> str:
        parts = [f"synced {self.synced}"]
        if self.reconciled:
            parts[0] += f" ({self.reconciled} found already on the server)"
        parts += [f"rejected {self.rejected}", f"{self.pending} still pending"]
        parts.append(f"refreshed {self.refreshed}")
        text = ", ".join(parts) + f" in {self.elapsed:.1f} s"
        if self.reoffered:
            text += (
                f"; {self.reoffered} offered again (the relay no longer had them;"
                " each was looked up first)"
            )
        if self.missing:
            text += f"; {self.missing} the API no longer has (`logbook retry --missing`)"
        if self.held_elsewhere:
            text += f"; {self.held_elsewhere} being sent by another sync"
        if self.errors and (self.pending or self.rejected):
            text += f"; last error: {self.errors[-1]}"
        return text

    def add_error(self, message: str) -> None:
        self.errors.append(message)
        del self.errors[:-5]


def report_row(report: SyncReport, outcome: str) -> dict[str, Any]:
    """The ``runs`` row of a finished run."""
    return {
        "ended_at": now_iso(), "outcome": outcome, "synced": report.synced,
        "rejected": report.rejected, "pending": report.pending, "refreshed": report.refreshed,
        "elapsed": round(report.elapsed, 3),
    }  # fmt: skip
