"""Headers as extended attributes: names, values, and user-header edits.

Owns: the xattr namespace of the mount (docs/mount.md, "Extended attributes").
``user.fsobj.*`` are read-only facts about a version, a partition or the
daemon; every other ``user.<name>`` is the user header ``<name>`` of the
object, set and removed with setfattr (each change is a new version). Other
namespaces (security, trusted, system) are not stored. Pure: values are
computed from what the caller hands in.
"""

from __future__ import annotations

import datetime
import errno
import json

from fsobj.store import PartitionView, Version

NS = "user.fsobj."
USER = "user."


def _time(us: int) -> str:
    t = datetime.datetime.fromtimestamp(us / 1e6, datetime.UTC)
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


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
    """The user header an xattr name stands for; OSError if it cannot be set."""
    if xattr.startswith(NS) or xattr == NS[:-1]:
        raise OSError(errno.EPERM, f"{xattr} is read-only")
    if not xattr.startswith(USER) or len(xattr) == len(USER):
        raise OSError(errno.ENOTSUP, f"only user.* attributes can be stored, not {xattr}")
    return xattr[len(USER) :]


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
