"""Sharing a partition between two users end to end: two identities, one store,
two mounts at the same time, driven with ordinary tools (issue 4)."""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from test_mount_support import PASSPHRASE, World, make_world, needs_fuse, wait_for, write_synced

from fsobj import identity as identity_files
from fsobj.crypto import Identity
from fsobj.errors import IntegrityError
from fsobj.store import Store

pytestmark = needs_fuse

SEEN_WITHIN_S = 10.0  # docs/mount.md: commit window + refresh + attr_timeout (about 3 s), with margin


def _bob_world(alice: World) -> World:
    ident = alice.root / "bob.json"
    identity_files.create(ident, "bob", PASSPHRASE)
    env = dict(alice.env, FSOBJ_IDENTITY=str(ident), XDG_CACHE_HOME=str(alice.root / "bob-cache"))
    return World(alice.root, alice.store, ident, env)


@pytest.fixture
def two(tmp_path: Path) -> Iterator[tuple[World, World]]:
    alice = make_world(tmp_path / "w")
    bob = _bob_world(alice)
    try:
        yield alice, bob
    finally:
        bob.close()
        alice.close()


def _alice_id(alice: World) -> str:
    return identity_files.load_public(alice.identity).user_id.hex()


def test_two_mounts_read_grant_write_grant_revoke(two: tuple[World, World]) -> None:
    alice, bob = two
    a = alice.mount("alice-mnt")
    b = bob.mount("bob-mnt")
    write_synced(a.part / "hello.txt", b"from alice\n")
    shared = b.path / f"p@{_alice_id(alice)[:8]}"
    assert not shared.exists(), "no grant: bob sees nothing of the partition"
    assert os.listdir(b.path) == []

    bob_pub = alice.root / "bob.pub"
    bob.fsobj("identity", "export", "-o", str(bob_pub))
    alice.fsobj("partition", "grant", "p", "--to", str(bob_pub), "--read")
    wait_for(lambda: (shared / "hello.txt").exists(), SEEN_WITHIN_S, "bob sees the shared partition")
    assert (shared / "hello.txt").read_bytes() == b"from alice\n"
    with pytest.raises(OSError) as err:
        (shared / "bob.txt").write_bytes(b"no")
    assert err.value.errno in (errno.EACCES, errno.EROFS, errno.EPERM)
    assert "bob.txt" not in os.listdir(a.part)

    alice.fsobj("partition", "grant", "p", "--to", str(bob_pub), "--write")

    def bob_writes() -> bool:
        try:
            write_synced(shared / "bob.txt", b"from bob\n")
            return True
        except OSError:
            return False

    wait_for(bob_writes, SEEN_WITHIN_S, "bob's write right arrives in his mount")
    wait_for(lambda: (a.part / "bob.txt").exists(), SEEN_WITHIN_S, "bob's file appears in alice's mount")
    assert (a.part / "bob.txt").read_bytes() == b"from bob\n"
    author = subprocess.run(
        ["getfattr", "--only-values", "-n", "system.fsobj.author", str(a.part / "bob.txt")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    bob_id = identity_files.load_public(bob.identity).user_id.hex()
    assert author == bob_id, "signed by bob, shown in alice's xattrs"

    alice.fsobj("partition", "revoke", "p", "--from", "bob")
    write_synced(a.part / "after.txt", b"bob must not read this\n")
    wait_for(lambda: not shared.exists(), SEEN_WITHIN_S, "the partition leaves bob's mount")
    listing = bob.fsobj("ls", f"p@{_alice_id(alice)[:8]}", check=False)
    assert listing.returncode == 3 and b"after.txt" not in listing.stdout


def test_forged_version_is_refused_on_read(tmp_path: Path) -> None:
    """A member with read access signs a version himself: every reader refuses it."""
    root = tmp_path / "store"
    Store.init(root)
    alice, bob = Identity.generate("alice"), Identity.generate("bob")
    with Store.open(root, alice) as a:
        pid = a.create_partition("p").id
        a.put(pid, "k", b"genuine")
        a.grant(pid, bob.public, "read")
    with Store.open(root, bob) as b:
        view = b.partition(pid)
        b._views[pid] = replace(view, role="write")  # bypass the API's own check
        forged = b.commit(b._views[pid], b.get(pid, "k"), source=b"forged")
    with Store.open(root, alice) as a:
        with pytest.raises(IntegrityError, match="no write access"):
            a.get_hash(forged.hash)
