"""The verdict ``/readyz`` gives, read straight from a store: for ``status`` and
``relay status``, which must start fast (no server, no HTTP client imported).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .config import DEFAULT_MAX_LAG
from .health import Figures, Verdict, verdict
from .store import Store

if TYPE_CHECKING:
    from .config import Config


def figures_of(cfg: Config) -> Figures:
    """The store's figures (an empty store's when there is none yet)."""
    if not cfg.db.exists():
        return Figures()
    with Store(cfg.db, readonly=True) as store:
        return store.figures()


def verdict_of(cfg: Config, max_lag: float = DEFAULT_MAX_LAG) -> Verdict:
    """The verdict ``/readyz`` would give, from the store's figures."""
    return verdict(figures_of(cfg), max_lag)
