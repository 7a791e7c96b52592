"""Fixtures of the in-process tests: a store of their own, and a sync run's owner id."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from logbook.store import Store
from logbook.store.leases import end_owner, new_owner


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "store.db")
    yield s
    s.close()


@pytest.fixture
def owner() -> Iterator[str]:
    o = new_owner()
    yield o
    end_owner(o)
