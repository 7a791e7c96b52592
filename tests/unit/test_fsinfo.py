"""Stores and watched directories on NFS/SMB: detected from the mounts table and reported."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from logbook import fsinfo

MOUNTS = """\
/dev/vda / ext4 rw,relatime 0 0
server:/export/lab /mnt/lab nfs4 rw,relatime 0 0
//nas/share /mnt/nas cifs rw 0 0
/dev/vdb /mnt/lab/local-scratch ext4 rw 0 0
host:/x /mnt/with\\040space nfs rw 0 0
sshfs#u@h: /mnt/ssh fuse.sshfs rw 0 0
broken-line
"""


@pytest.fixture
def mounts(tmp_path: Path) -> str:
    path = tmp_path / "mounts"
    path.write_text(MOUNTS)
    return str(path)


@pytest.mark.parametrize(
    "path, expected",
    [
        ("/mnt/lab/results/logbook.db", "nfs4"),
        ("/mnt/nas/x.db", "cifs"),
        ("/mnt/lab/local-scratch/logbook.db", None),  # the longest mount point wins
        ("/home/user/logbook.db", None),
        ("/mnt/labyrinth/x.db", None),  # a prefix of the name is not the mount
        ("/mnt/lab", "nfs4"),  # the mount point itself
        ("/mnt/with space/x.db", "nfs"),  # octal escapes of the mounts table
        ("/mnt/ssh/x.db", "fuse.sshfs"),
    ],
)
def test_network_filesystem_from_the_mounts_table(
    mounts: str, path: str, expected: str | None
) -> None:
    assert fsinfo.network_filesystem(path, mounts) == expected


def test_filesystem_type_of_any_path(mounts: str, tmp_path: Path) -> None:
    assert fsinfo.filesystem_type("/mnt/lab/local-scratch/x", mounts) == "ext4"
    assert fsinfo.filesystem_type("/home/user/x", mounts) == "ext4"  # "/" holds it
    # symlinks are resolved: a link on a local disk into the NFS mount is on NFS
    link = tmp_path / "to-lab"
    link.symlink_to("/mnt/lab")
    assert fsinfo.network_filesystem(link / "logbook.db", mounts) == "nfs4"
    # no mounts table: unknown, never an error
    assert fsinfo.filesystem_type("/x", str(tmp_path / "no-such-file")) is None
    assert fsinfo.network_filesystem("/x", str(tmp_path / "no-such-file")) is None


def test_record_warns_and_doctor_fails_on_a_network_store(
    cli_runner: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fsinfo, "network_filesystem", lambda path, mounts="": "nfs4")
    monkeypatch.setattr("logbook.doctor.network_filesystem", lambda path, mounts="": "nfs4")
    r = cli_runner("record", "-e", "x", "--results", "{}")
    assert r.exit_code == 0
    assert "network filesystem (nfs4)" in r.stderr and "LOGBOOK_HOME" in r.stderr
    d = cli_runner("doctor", "--json")
    assert d.exit_code == 1
    fs = {c["check"]: c for c in json.loads(d.stdout)}["filesystem"]
    assert fs["level"] == "fail" and "nfs4" in fs["message"]


def test_a_local_store_gets_no_warning(cli_runner: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fsinfo, "network_filesystem", lambda path, mounts="": None)
    monkeypatch.setattr("logbook.doctor.network_filesystem", lambda path, mounts="": None)
    r = cli_runner("record", "-e", "x", "--results", "{}")
    assert r.exit_code == 0 and "network filesystem" not in r.stderr
    d = cli_runner("doctor", "--json")
    fs = {c["check"]: c for c in json.loads(d.stdout)}["filesystem"]
    assert fs["level"] == "ok"
