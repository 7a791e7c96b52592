"""logbook: a local-first job logbook with sync for quantum jobs.

    import logbook
    entry = logbook.log(result, experiment_id="bell")   # offline, durable
    report = logbook.sync()                              # later, when online

Names are imported on first use so that ``logbook --help`` stays fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.2.0"

_EXPORTS = {
    "log": "api",
    "sync": "api",
    "open_store": "api",
    "Store": "store",
    "Entry": "store",
    "SyncReport": "engine",
    "LogbookError": "errors",
    "InvalidJob": "errors",
    "InvalidFile": "errors",
    "ConfigError": "errors",
    "StoreError": "errors",
    "NotFound": "errors",
    "SyncError": "errors",
    "AuthError": "errors",
    "Unreachable": "errors",
}
__all__ = [
    "AuthError",
    "ConfigError",
    "Entry",
    "InvalidFile",
    "InvalidJob",
    "LogbookError",
    "NotFound",
    "Store",
    "StoreError",
    "SyncError",
    "SyncReport",
    "Unreachable",
    "log",
    "open_store",
    "sync",
]

if TYPE_CHECKING:
    from .api import log, open_store, sync
    from .engine import SyncReport
    from .errors import (
        AuthError,
        ConfigError,
        InvalidFile,
        InvalidJob,
        LogbookError,
        NotFound,
        StoreError,
        SyncError,
        Unreachable,
    )
    from .store import Entry, Store


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'logbook' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value
