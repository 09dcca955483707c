"""The optimistic lock: stale updates conflict and write nothing; concurrent
read-modify-write loops (threads and processes) lose no update; concurrent
creators of one sort key: exactly one wins."""

from __future__ import annotations

import itertools
import json
import os
import sqlite3
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import blobfiles
import pytest

import fsobj
from fsobj import crypto
from fsobj.errors import ConflictError, NotFoundError
from fsobj.index import Index
from fsobj.store import Store

#: children import the very fsobj this process imported
FSOBJ_ROOT = Path(fsobj.__file__).resolve().parent.parent


def version_count(store: Store) -> int:
    return store.index.stats()["versions"]


def check_no_lost_update(store: Store, pid: bytes, key: str, tokens: list[bytes], initial: bytes) -> None:
    """Every version extends the one before it by exactly one token; all tokens are there once."""
    log = store.log(pid, key)
    assert len(log) == 1 + len(tokens)
    assert [v.header.seq for v in log] == list(range(1, len(log) + 1))
    for a, b in itertools.pairwise(log):
        assert b.header.prev == a.hash
    payloads = [store.read_bytes(v) for v in log]
    assert payloads[0] == initial
    appended = []
    for a, b in itertools.pairwise(payloads):
        assert b.startswith(a)
        appended.append(b[len(a) :])
    assert sorted(appended) == sorted(tokens)
    final = store.read_bytes(store.get(pid, key))
    assert final == payloads[-1]
    for t in tokens:
        assert final.count(t) == 1


# ---------------------------------------------------------------- single-threaded optimistic lock


def test_stale_expect_conflicts_and_writes_nothing(store_dir: Path, store: Store, alice, open_store) -> None:
    pid = store.create_partition("docs").id
    v1 = store.put(pid, "k", b"one")
    someone_else = open_store(store_dir, alice)
    v2 = someone_else.put(pid, "k", b"two", expect=v1.hash)
    assert v2.header.prev == v1.hash

    versions, files = version_count(store), blobfiles.stored(store_dir)
    with pytest.raises(ConflictError) as ei:
        store.put(pid, "k", b"one", expect=v1.hash)  # content already stored: no chunk written either
    assert ei.value.current == v2.hash
    with pytest.raises(ConflictError) as ei:
        store.update(v1, source=b"one")
    assert ei.value.current == v2.hash
    with pytest.raises(ConflictError) as ei:
        store.delete(pid, "k", expect=v1.hash)
    assert ei.value.current == v2.hash
    assert version_count(store) == versions
    assert blobfiles.stored(store_dir) == files
    assert [v.hash for v in store.log(pid, "k")] == [v1.hash, v2.hash]
    assert store.read_bytes(store.get(pid, "k")) == b"two"

    # with the current version named, the update goes through
    v3 = store.put(pid, "k", b"three", expect=ei.value.current)
    assert v3.header.prev == v2.hash


def test_expect_after_delete_names_tombstone(store_dir: Path, store: Store, alice, open_store) -> None:
    pid = store.create_partition("docs").id
    v1 = store.put(pid, "k", b"one")
    t = open_store(store_dir, alice).delete(pid, "k")
    with pytest.raises(ConflictError) as ei:
        store.put(pid, "k", b"two", expect=v1.hash)
    assert ei.value.current == t.hash
    assert [v.hash for v in store.log(pid, "k")] == [v1.hash, t.hash]


# ---------------------------------------------------------------- threads


@pytest.mark.parametrize("sharing", ["shared-store", "store-per-thread"])
def test_threads_read_modify_write_lose_no_update(store_dir: Path, store: Store, alice, open_store, sharing) -> None:
    n_threads, per_thread = 4, 5
    pid = store.create_partition("docs").id
    store.put(pid, "counter", b"start:")
    stores = [store if sharing == "shared-store" else open_store(store_dir, alice) for _ in range(n_threads)]
    first_round = threading.Barrier(n_threads)
    conflicts = [0] * n_threads
    ok = [0] * n_threads

    def worker(i: int) -> None:
        s = stores[i]
        for j in range(per_thread):
            token = f"<t{i}-{j}>".encode()
            while True:
                v = s.get(pid, "counter")
                data = s.read_bytes(v)
                if j == 0 and ok[i] == 0 and conflicts[i] == 0:
                    first_round.wait(timeout=30)  # everybody read the same version: all but one must conflict
                try:
                    s.put(pid, "counter", data + token, expect=v.hash)
                except ConflictError as e:
                    assert e.current is not None and e.current != v.hash
                    conflicts[i] += 1
                    continue
                ok[i] += 1
                break

    with ThreadPoolExecutor(n_threads) as pool:
        for f in [pool.submit(worker, i) for i in range(n_threads)]:
            f.result(timeout=120)

    assert ok == [per_thread] * n_threads
    assert sum(conflicts) >= n_threads - 1
    tokens = [f"<t{i}-{j}>".encode() for i in range(n_threads) for j in range(per_thread)]
    check_no_lost_update(store, pid, "counter", tokens, b"start:")


@pytest.mark.parametrize("sharing", ["shared-store", "store-per-thread"])
def test_threads_exclusive_create_exactly_one_wins(store_dir: Path, store: Store, alice, open_store, sharing) -> None:
    n_threads = 6
    pid = store.create_partition("docs").id
    stores = [store if sharing == "shared-store" else open_store(store_dir, alice) for _ in range(n_threads)]
    # Every creator has looked up the sort key (and found nothing) before any of
    # them commits: put() looks the key up, then writes the payload, then commits.
    gate = threading.Barrier(n_threads)
    for s in set(stores):
        real_write = s.payloads.write

        def gated(*args, _real=real_write, **kwargs):
            gate.wait(timeout=30)
            return _real(*args, **kwargs)

        s.payloads.write = gated  # type: ignore[method-assign]

    def creator(i: int):
        try:
            return stores[i].put(pid, "same", f"from {i}".encode())
        except ConflictError as e:
            return e

    with ThreadPoolExecutor(n_threads) as pool:
        results = list(pool.map(creator, range(n_threads), timeout=120))

    winners = [r for r in results if not isinstance(r, ConflictError)]
    losers = [r for r in results if isinstance(r, ConflictError)]
    assert len(winners) == 1, results
    assert len(losers) == n_threads - 1
    win = winners[0]
    assert all(e.current == win.hash for e in losers)
    assert [(e.sort_key, e.head_hash) for e in store.list(pid)] == [("same", win.hash)]
    assert [v.hash for v in store.log(pid, "same")] == [win.hash]
    assert store.get(pid, "same").hash == win.hash
    assert version_count(store) == 1


# ---------------------------------------------------------------- processes

CHILD = r"""
import json, sys, time
from pathlib import Path
from fsobj.crypto import Identity
from fsobj import crypto
from fsobj.errors import ConflictError, NotFoundError
from fsobj.store import Store

mode, root, secret, pid_hex, key, name, count, gate_dir, n_procs = sys.argv[1:]
pid = bytes.fromhex(pid_hex)
gate = Path(gate_dir)


def wait_gate(tag):
    (gate / f"{tag}-{name}").touch()
    deadline = time.monotonic() + 30
    while len(list(gate.glob(tag + "-*"))) < int(n_procs):
        if time.monotonic() > deadline:
            raise SystemExit("gate timeout")
        time.sleep(0.001)


store = Store.open(Path(root), Identity.from_private_bytes("alice", bytes.fromhex(secret)))
try:
    if mode == "rmw":
        wait_gate("start")
        ok = conflicts = 0
        for j in range(int(count)):
            token = f"<{name}-{j}>".encode()
            while True:
                v = store.get(pid, key)
                data = store.read_bytes(v)
                try:
                    store.put(pid, key, data + token, expect=v.hash)
                except ConflictError as e:
                    assert e.current not in (None, v.hash)
                    conflicts += 1
                    continue
                ok += 1
                break
        print(json.dumps({"ok": ok, "conflicts": conflicts}))
    else:
        real = store.payloads.write

        def gated(*a, **kw):
            wait_gate("create")  # every process looked the key up before anyone commits
            return real(*a, **kw)

        store.payloads.write = gated
        try:
            v = store.put(pid, key, name.encode())
            print(json.dumps({"won": v.hash.hex()}))
        except ConflictError as e:
            print(json.dumps({"conflict": e.current.hex() if e.current else None}))
finally:
    store.close()
"""


def run_children(mode: str, store_dir: Path, alice, pid: bytes, key: str, n: int, count: int, gate: Path) -> list[dict]:
    gate.mkdir()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(FSOBJ_ROOT), env.get("PYTHONPATH")) if p)
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                CHILD,
                mode,
                str(store_dir),
                alice.private_bytes().hex(),
                pid.hex(),
                key,
                f"p{i}",
                str(count),
                str(gate),
                str(n),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for i in range(n)
    ]
    results = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=120)
            assert p.returncode == 0, err
            results.append(json.loads(out))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return results


def test_processes_read_modify_write_lose_no_update(store_dir: Path, tmp_path: Path, store: Store, alice) -> None:
    n_procs, per_proc = 3, 8
    pid = store.create_partition("docs").id
    store.put(pid, "counter", b"start:")
    results = run_children("rmw", store_dir, alice, pid, "counter", n_procs, per_proc, tmp_path / "gate")
    assert [r["ok"] for r in results] == [per_proc] * n_procs
    tokens = [f"<p{i}-{j}>".encode() for i in range(n_procs) for j in range(per_proc)]
    check_no_lost_update(store, pid, "counter", tokens, b"start:")


def test_processes_exclusive_create_exactly_one_wins(store_dir: Path, tmp_path: Path, store: Store, alice) -> None:
    n_procs = 3
    pid = store.create_partition("docs").id
    results = run_children("create", store_dir, alice, pid, "same", n_procs, 1, tmp_path / "gate")
    winners = [r["won"] for r in results if "won" in r]
    assert len(winners) == 1, results
    assert sorted(r.get("conflict") for r in results if "conflict" in r) == [winners[0]] * (n_procs - 1)
    [entry] = store.list(pid)
    assert entry.head_hash.hex() == winners[0]
    assert [v.hash.hex() for v in store.log(pid, "same")] == winners


# ---------------------------------------------------------------- purge racing a deduplicating put


@pytest.mark.parametrize("b_exists", [False, True], ids=["new-object", "new-version"])
def test_purge_racing_deduplicating_put_loses_no_data(
    store_dir: Path, store: Store, alice, open_store, b_exists: bool
) -> None:
    """A put whose chunks deduplicate against an object being purged: after both
    calls return successfully, the new object must read back (or the put must fail).
    Also when the put is a new version of another object, whose own chunks the
    commit does not look for again."""
    pid = store.create_partition("docs").id
    data = os.urandom(1024 * 1024)
    store.put(pid, "a", data)
    if b_exists:
        store.put(pid, "b", os.urandom(1024 * 1024))
    writer = open_store(store_dir, alice)
    payload_done, purged = threading.Event(), threading.Event()
    real_write = writer.payloads.write

    def write_then_pause(*args, **kwargs):
        result = real_write(*args, **kwargs)  # finds every chunk already stored: writes none
        payload_done.set()
        assert purged.wait(timeout=30)
        return result

    writer.payloads.write = write_then_pause  # type: ignore[method-assign]
    with ThreadPoolExecutor(1) as pool:
        fut = pool.submit(writer.put, pid, "b", data)
        assert payload_done.wait(timeout=30)
        try:
            store.purge(pid, "a")
        finally:
            purged.set()
        try:
            fut.result(timeout=30)
        except ConflictError:
            return  # refusing the put is a correct outcome too
    assert store.read_bytes(store.get(pid, "b")) == data


def test_a_generation_counts_as_ours_before_its_commit_is_visible(tmp_path: Path) -> None:
    """Once a commit is visible to other connections, its generation already counts as this
    Index's own; a transaction whose COMMIT fails leaves none counted. Counted only after
    COMMIT, a mount's refresh that read the counter in between took the mount's own
    commit for another process's and reloaded every partition, dropping its .versions tree
    (the likely cause of a bench run that listed 1,000 versions in 0.902 s, not 0.23)."""
    from sqlite_utils import Database

    idx = Index(tmp_path / "index.sqlite")
    idx.create()
    real = idx.db.conn
    at_commit: list[tuple[int, bool]] = []  # (the generation being committed, counted as ours then)
    fail = False

    class Watched:
        """This thread's real connection, looked at as it commits."""

        def execute(self, sql: str, *args: object) -> sqlite3.Cursor:
            if sql == "COMMIT":
                pending = int(real.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()[0])
                with idx._own_lock:
                    at_commit.append((pending, pending in idx._own))
                if fail:
                    raise sqlite3.OperationalError("disk I/O error (made by the test)")
            return real.execute(sql, *args)

        def __getattr__(self, name: str) -> object:
            return getattr(real, name)

    idx._local.db = Database(Watched())  # type: ignore[arg-type]
    other = sqlite3.connect(idx.path)  # another reader: sees only what is committed

    def visible() -> int:
        return int(other.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()[0])

    g0 = visible()
    with idx.write():
        idx.db.execute("UPDATE meta SET value = value WHERE key = 'schema'")
    assert at_commit == [(g0 + 1, True)]
    assert visible() == g0 + 1 and idx.only_own_commits(g0, g0 + 1)

    fail = True
    with pytest.raises(sqlite3.OperationalError, match="made by the test"):
        with idx.write():
            pass
    assert at_commit[-1] == (g0 + 2, True)
    assert visible() == g0 + 1  # rolled back
    with idx._own_lock:
        assert g0 + 2 not in idx._own  # another writer may take that number: not ours
    other.close()
    idx.close()


# ---------------------------------------------------------------- group commit


def test_batch_commits_together(store_dir: Path, store: Store, alice, open_store) -> None:
    pid = store.create_partition("docs").id
    a1 = store.put(pid, "a", b"a1")
    other = open_store(store_dir, alice)
    with store.batch():
        a2 = store.put(pid, "a", b"a2")
        b1 = store.put(pid, "b", b"b1")
        # not visible to anyone before the batch ends
        assert other.get(pid, "a").hash == a1.hash
        assert [e.sort_key for e in other.list(pid)] == ["a"]
    assert other.get(pid, "a").hash == a2.hash
    assert other.read_bytes(other.get(pid, "b")) == b"b1"
    assert other.get(pid, "b").hash == b1.hash


def test_a_batch_checks_the_heads_of_over_a_thousand_series_together(
    store_dir: Path, store: Store, alice, open_store
) -> None:
    """1,200 tombstones in one group commit (heads are checked 500 per query): one
    series changed by another writer meanwhile, the 1,101st, fails the whole batch;
    without it, every one is committed."""
    pid = store.create_partition("docs").id
    with store.batch():
        firsts = [store.put(pid, f"k{i:04d}", b"") for i in range(1200)]
    other = open_store(store_dir, alice)
    versions = version_count(store)
    with pytest.raises(ConflictError) as ei:
        with store.batch():
            for i, v in enumerate(firsts):
                if i == 1100:
                    moved = other.put(pid, v.sort_key, b"moved on", expect=v.hash)
                store.commit(store.partition(pid), v, source=None, tombstone=True)
    assert ei.value.current == moved.hash
    assert version_count(store) == versions + 1
    assert len(store.list(pid)) == 1200
    with store.batch():
        for v in firsts[:1100]:
            store.commit(store.partition(pid), v, source=None, tombstone=True)
    assert [e.sort_key for e in store.list(pid)] == [f"k{i:04d}" for i in range(1100, 1200)]


def test_batch_with_one_conflict_commits_nothing(store_dir: Path, store: Store, alice, open_store) -> None:
    pid = store.create_partition("docs").id
    a1 = store.put(pid, "a", b"a1")
    b1 = store.put(pid, "b", b"b1")
    other = open_store(store_dir, alice)
    versions, files = version_count(store), blobfiles.stored(store_dir)
    with pytest.raises(ConflictError) as ei:
        with store.batch():
            store.put(pid, "a", b"a2", expect=a1.hash)
            store.put(pid, "c", b"c1")
            b2 = other.put(pid, "b", b"b2 by someone else")  # not in the batch: commits at once
            store.put(pid, "b", b"b2", expect=b1.hash)
    assert ei.value.current == b2.hash
    assert version_count(store) == versions + 1  # only the other writer's version
    assert store.get(pid, "a").hash == a1.hash
    assert store.get(pid, "b").hash == b2.hash
    with pytest.raises(NotFoundError):
        store.get(pid, "c")
    # no header blob of the failed batch is left behind (payload chunks may stay, as garbage)
    leftover = blobfiles.stored(store_dir) - files - {b2.hash}
    kinds = {blobfiles.read(store_dir, i)[5] for i in leftover}
    assert crypto.KIND_HEADER not in kinds
