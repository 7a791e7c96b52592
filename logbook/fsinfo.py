"""Which filesystem a path lives on (SQLite's WAL and inotify both fail on network ones)."""

from __future__ import annotations

import os

NETWORK_FS = frozenset(
    {
        "nfs", "nfs4", "cifs", "smbfs", "smb3", "ncpfs", "afs", "9p", "ceph",
        "glusterfs", "lustre", "gpfs", "fuse.sshfs", "fuse.glusterfs", "fuse.cephfs",
        "davfs", "fuse.davfs2", "fuse.s3fs", "beegfs", "orangefs",
    }
)  # fmt: skip


def filesystem_type(path: str | os.PathLike[str], mounts: str = "/proc/mounts") -> str | None:
    """The type of the filesystem holding ``path`` (from /proc/mounts), or None if unknown."""
    target = os.path.realpath(path)  # resolves links in the part that exists
    try:
        with open(mounts, encoding="utf-8", errors="replace") as f:
            table = [line.split() for line in f]
    except OSError:
        return None
    best, best_type = "", None
    for fields in table:
        if len(fields) < 3:
            continue
        mount_point = fields[1].replace("\\040", " ")
        inside = target == mount_point or target.startswith(mount_point.rstrip("/") + "/")
        if inside and len(mount_point) >= len(best):
            best, best_type = mount_point, fields[2]
    return best_type


def network_filesystem(path: str | os.PathLike[str], mounts: str = "/proc/mounts") -> str | None:
    """The filesystem type if ``path`` is on a network filesystem, else None."""
    fstype = filesystem_type(path, mounts)
    if fstype and (fstype in NETWORK_FS or fstype.startswith(("nfs", "fuse.sshfs"))):
        return fstype
    return None
