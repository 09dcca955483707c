"""What every CLI command shares: where the store, identity and passphrase come
from, output helpers, progress bars, and the translation of library errors into
messages and exit codes (through ``fsobj.errors.exit_code_for`` only).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from fsobj import identity as identity_files
from fsobj.crypto import Identity
from fsobj.errors import IdentityError, UsageError
from fsobj.store import Store


@dataclass
class Context:
    store_path: str | None
    identity_path: str | None
    passphrase_file: str | None
    _identity: Identity | None = None
    _store: Store | None = None
    _closers: list[Callable[[], None]] = field(default_factory=list)

    @property
    def identity_file(self) -> Path:
        return Path(self.identity_path) if self.identity_path else identity_files.default_path()

    def passphrase(self, confirm: bool = False) -> str:
        if self.passphrase_file:
            try:
                text = Path(self.passphrase_file).read_text()
            except OSError as e:
                raise IdentityError(f"cannot read passphrase file: {e}") from e
            return text.rstrip("\r\n")
        env = os.environ.get("FSOBJ_PASSPHRASE")
        if env is not None:
            return env
        if not sys.stdin.isatty():
            raise IdentityError("a passphrase is needed: use --passphrase-file, FSOBJ_PASSPHRASE, or run on a terminal")
        return str(click.prompt("Passphrase", hide_input=True, confirmation_prompt=confirm, err=True))

    def identity(self) -> Identity:
        if self._identity is None:
            path = self.identity_file
            if not path.exists():
                raise IdentityError(f"no identity at {path}: create one with 'fsobj identity create'")
            self._identity = identity_files.load(path, self.passphrase())
        return self._identity

    def store(self) -> Store:
        if self._store is None:
            if not self.store_path:
                raise UsageError("no store given: use --store PATH or set FSOBJ_STORE")
            self._store = Store.open(Path(self.store_path), self.identity())
            self._closers.append(self._store.close)
        return self._store

    def close(self) -> None:
        for c in reversed(self._closers):
            c()
        self._closers.clear()


pass_ctx = click.make_pass_decorator(Context)


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False))


def hash_arg(value: str) -> bytes:
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        raise UsageError(f"{value!r} is not a hex hash") from None
    if len(raw) != 32:
        raise UsageError(f"{value!r} is not a 64-digit hash")
    return raw


@contextmanager
def progress(total: int, label: str, unit_min: int = 16 * 1024 * 1024) -> Iterator[Callable[[int], None] | None]:
    """A progress bar on stderr when it is a terminal and the work is long
    (``total`` at least ``unit_min`` bytes, or items)."""
    if not sys.stderr.isatty() or total < unit_min:
        yield None
        return
    with click.progressbar(length=total, label=label, file=sys.stderr) as bar:
        yield bar.update


def fmt_time(us: int) -> str:
    import datetime

    return datetime.datetime.fromtimestamp(us / 1e6, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
