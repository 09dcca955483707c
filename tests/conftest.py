"""Shared fixtures: a fresh store on disk, identities, opened stores closed in teardown."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from fsobj.crypto import Identity
from fsobj.store import Store


@pytest.fixture
def store_dir(tmp_path: Path) -> Path:
    """A fresh, empty store directory created by ``Store.init``."""
    root = tmp_path / "store"
    Store.init(root)
    return root


@pytest.fixture
def alice() -> Identity:
    return Identity.generate("alice")


@pytest.fixture
def bob() -> Identity:
    return Identity.generate("bob")


@pytest.fixture
def open_store() -> Iterator[Callable[[Path, Identity], Store]]:
    """``open_store(root, identity)`` opens a Store; every store opened is closed in teardown."""
    opened: list[Store] = []

    def _open(root: Path, identity: Identity) -> Store:
        s = Store.open(root, identity)
        opened.append(s)
        return s

    yield _open
    for s in reversed(opened):
        s.close()


@pytest.fixture
def store(store_dir: Path, alice: Identity, open_store: Callable[[Path, Identity], Store]) -> Store:
    """The store opened as ``alice`` (owner of everything she creates)."""
    return open_store(store_dir, alice)
