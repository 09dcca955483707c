"""Domain errors and the one table that maps them to exit codes and errno values.

Owns: every exception the library raises on purpose, its CLI exit code and the
errno the mount reports for it. The CLI (``fsobj.cli``) and the filesystem
(``fsobj.fs``) both translate through :func:`exit_code_for` / :func:`errno_for`;
nothing else invents codes. The table is reproduced in ``docs/cli.md``.

Each class's docstring is the message template a user sees first.
"""

from __future__ import annotations

import errno as _errno


class FsobjError(Exception):
    """fsobj error."""

    exit_code = 1
    errno = _errno.EIO


class UsageError(FsobjError):
    """Invalid input (for example a sort key that is empty or not UTF-8)."""

    exit_code = 2
    errno = _errno.EINVAL


class NotFoundError(FsobjError):
    """No such partition, object, version or feed."""

    exit_code = 3
    errno = _errno.ENOENT


class ConflictError(FsobjError):
    """The object changed since the version this update replaces (optimistic lock)."""

    exit_code = 4
    errno = _errno.ESTALE

    def __init__(self, message: str, current: bytes | None = None) -> None:
        super().__init__(message)
        self.current = current


class DeletedError(FsobjError):
    """The latest version of the object is a tombstone: it was deleted."""

    exit_code = 5
    errno = _errno.ENOENT

    def __init__(self, message: str, tombstone: bytes | None = None) -> None:
        super().__init__(message)
        self.tombstone = tombstone


class IntegrityError(FsobjError):
    """A blob or signature failed verification: data corrupt or tampered with."""

    exit_code = 6
    errno = _errno.EIO


class AccessDeniedError(FsobjError):
    """The identity has no right to do this (not owner, no grant, read-only)."""

    exit_code = 7
    errno = _errno.EACCES


class IdentityError(FsobjError):
    """Identity missing, unreadable, or the passphrase is wrong."""

    exit_code = 8
    errno = _errno.EACCES


class FormatError(FsobjError):
    """Not an fsobj store, or a store or blob of an unknown format version."""

    exit_code = 9
    errno = _errno.EIO


class NoSpaceError(FsobjError):
    """No space left on the store's device; the failed write is not visible."""

    exit_code = 10
    errno = _errno.ENOSPC


class ExistsError(FsobjError):
    """Already exists (partition, identity, store or feed)."""

    exit_code = 11
    errno = _errno.EEXIST


class VerifyFailed(FsobjError):
    """fsobj verify found at least one fault."""

    exit_code = 12
    errno = _errno.EIO


class NotEmptyError(FsobjError):
    """The partition still holds live objects."""

    exit_code = 13
    errno = _errno.ENOTEMPTY


#: exit code -> meaning, in the order ``docs/cli.md`` lists them.
EXIT_CODES: dict[int, str] = {
    0: "success",
    1: "unexpected error (a bug or an OS error not listed here)",
    **{
        cls.exit_code: (cls.__doc__ or "").strip().splitlines()[0]
        for cls in (
            UsageError,
            NotFoundError,
            ConflictError,
            DeletedError,
            IntegrityError,
            AccessDeniedError,
            IdentityError,
            FormatError,
            NoSpaceError,
            ExistsError,
            VerifyFailed,
            NotEmptyError,
        )
    },
    130: "interrupted (Ctrl-C)",
}


def exit_code_for(exc: BaseException) -> int:
    """The CLI exit code for an exception."""
    if isinstance(exc, FsobjError):
        return exc.exit_code
    if isinstance(exc, OSError) and exc.errno == _errno.ENOSPC:
        return NoSpaceError.exit_code
    if isinstance(exc, KeyboardInterrupt):
        return 130
    return 1


def errno_for(exc: BaseException) -> int:
    """The errno the filesystem reports for an exception."""
    if isinstance(exc, FsobjError):
        return exc.errno
    if isinstance(exc, OSError) and exc.errno:
        return exc.errno
    return _errno.EIO
