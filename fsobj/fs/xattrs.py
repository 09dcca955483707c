"""Headers as extended attributes: names, values, and user-header edits.

Owns: the xattr namespace of the mount (docs/mount.md, "Extended attributes").
``system.fsobj.*`` are read-only facts about a version, a partition or the
daemon; every ``user.<name>`` is the user header ``<name>`` of the object, set
and removed with setfattr (each change is a new version). Other names
(security, trusted, the rest of system) are not stored. Pure: values are
computed from what the caller hands in.

Why ``system.``: copy tools copy what ``listxattr`` lists. Under ``user.``,
``rsync -aX`` into the mount failed on every run (exit 23: it removes the
destination's attributes that its source lacks), ``mv`` between partitions,
``tar --xattrs`` and ``cp --preserve=all`` reported one error per attribute,
and ``cp -a`` out of the mount gave the copies stale hashes as user
attributes. rsync skips ``system.*`` names, other filesystems refuse them
with ENOTSUP (which cp, mv and tar pass over quietly), and the kernel lets
symlinks have them, where it hides ``user.*``. The kernel checks no
permission for ``system.*`` names, so the daemon does (``may_read_facts``).
"""

from __future__ import annotations

import datetime
import errno
import json

from fsobj.store import PartitionView, Version

NS = "system.fsobj."
USER = "user."


def _time(us: int) -> str:
    t = datetime.datetime.fromtimestamp(us / 1e6, datetime.UTC)
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


VERSION_FACTS = (
    "absolute_hash",
    "base_hash",
    "version",
    "previous_hash",
    "sort_key",
    "partition_id",
    "owner",
    "author",
    "created",
    "length",
    "checksum",
    "checksum_type",
    "chunks",
    "signature",
)


def version_xattr_names(headers: tuple[tuple[str, str], ...]) -> list[str]:
    """The names :func:`version_xattrs` gives a version with these user headers."""
    return [NS + k for k in VERSION_FACTS] + [USER + k for k, _ in headers]


def version_xattrs(v: Version, view: PartitionView, chunk_count: int) -> dict[str, bytes]:
    """Every attribute of one version: the fsobj facts, then the user headers."""
    h = v.header
    facts = {
        "absolute_hash": v.hash.hex(),
        "base_hash": v.base_hash.hex(),
        "version": str(h.seq),
        "previous_hash": h.prev.hex() if h.prev else "",
        "sort_key": h.sort_key,
        "partition_id": view.id.hex(),
        "owner": view.record.owner.user_id.hex(),
        "author": h.author.hex(),
        "created": _time(h.created_us),
        "length": str(h.length),
        "checksum": h.checksum.hex(),
        "checksum_type": h.checksum_type,
        "chunks": str(chunk_count),
        "signature": "valid",  # load_version verified the session certificate and the integrity signature
    }
    assert tuple(facts) == VERSION_FACTS
    out = {NS + k: val.encode() for k, val in facts.items()}
    for k, val in h.headers:
        out[USER + k] = val.encode("utf-8", "surrogateescape")
    return out


def partition_xattrs(view: PartitionView) -> dict[str, bytes]:
    """What every directory of a partition shows: the partition's id, owner and grants."""
    rec = view.record
    grants = [{"user_id": m.user_id.hex(), "name": m.public.name, "role": m.role} for m in rec.members]
    facts = {
        "partition_id": view.id.hex(),
        "partition": view.display_name,
        "owner": rec.owner.user_id.hex(),
        "owner_name": rec.owner.name,
        "role": view.role or "",
        "grants": json.dumps(grants, separators=(",", ":")),
        "epoch": str(rec.current_epoch),
    }
    return {NS + k: val.encode() for k, val in facts.items()}


def header_name(xattr: str) -> str:
    """The user header an xattr name stands for; OSError if it cannot be set.

    ``system.fsobj.*`` facts are read-only: ENOTSUP, as other filesystems answer for
    names they do not store, so that a copy carrying them (``cp -a``, ``mv``, ``tar
    --xattrs``) passes over them instead of failing."""
    if xattr.startswith(NS):
        raise OSError(errno.ENOTSUP, f"{xattr} is computed by the store and read-only")
    if not xattr.startswith(USER) or len(xattr) == len(USER):
        raise OSError(errno.ENOTSUP, f"only user.* attributes can be stored, not {xattr}")
    return xattr[len(USER) :]


def may_read_facts(mode: int, uid: int, gid: int, caller_uid: int, caller_groups: set[int]) -> bool:
    """Whether a caller may read the ``system.fsobj.*`` facts of a node with this mode
    and owner: the check the kernel makes for ``user.*`` names (read permission on the
    node; root always), which it leaves to the filesystem for ``system.*`` names. A
    checksum of the plaintext must not reach someone who may not read the file."""
    if caller_uid == 0:
        return True
    if caller_uid == uid:
        return bool(mode & 0o400)
    if gid in caller_groups:
        return bool(mode & 0o040)
    return bool(mode & 0o004)


def header_value(value: bytes) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise OSError(errno.EINVAL, "attribute values must be UTF-8 text") from None


def with_header(headers: tuple[tuple[str, str], ...], name: str, value: str) -> tuple[tuple[str, str], ...]:
    """Set one user header, keeping the order of the others."""
    out = [(k, v) for k, v in headers if k != name]
    out.append((name, value))
    return tuple(out)


def without_header(headers: tuple[tuple[str, str], ...], name: str) -> tuple[tuple[str, str], ...]:
    if all(k != name for k, _ in headers):
        raise OSError(errno.ENODATA, f"no header {name}")
    return tuple((k, v) for k, v in headers if k != name)
