"""Feeds: notifications pushed with each commit, at-least-once delivery with ack."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
import trio

from fsobj import identity as identity_files
from fsobj.crypto import Identity
from fsobj.errors import AccessDeniedError, ExistsError, NotFoundError, UsageError
from fsobj.feeds import Feeds
from fsobj.store import Store

OpenStore = Callable[[Path, Identity], Store]


@pytest.fixture
def feeds(store: Store) -> Feeds:
    store.create_partition("p")
    return Feeds(store)


def test_every_kind_of_commit_queues_one_notification(store: Store, feeds: Feeds) -> None:
    feeds.create("all", [("p", "")])
    v1 = store.put("p", "a", b"1")
    store.put("p", "a", b"2")
    store.commit(store.partition("p"), store.get("p", "a"), sort_key="b")  # rename: same series
    store.delete("p", "b")
    notes = feeds.read("all", 10)
    assert [n.seq for n in notes] == [1, 2, 3, 4]
    assert [n.event for n in notes] == ["created", "updated", "renamed", "deleted"]
    assert {n.header["base_hash"] for n in notes} == {v1.hash.hex()}
    assert notes[3].header["tombstone"] is True
    assert "payload" not in notes[0].to_json()
    assert feeds.show("all")["depth"] == 4 and feeds.show("all")["in_flight"] == 4
    feeds.ack("all", [n.receipt for n in notes])
    assert feeds.show("all")["depth"] == 0


def test_visibility_timeout_redelivers_unacked_and_extend_keeps_hidden(store: Store, feeds: Feeds) -> None:
    feeds.create("f", [("p", "")])
    store.put("p", "x", b"1")
    store.put("p", "y", b"2")
    first = feeds.read("f", 10, visibility_s=0.4)
    assert len(first) == 2
    assert feeds.read("f", 10) == [], "hidden while leased"
    feeds.extend("f", first[1].receipt, 30)
    time.sleep(0.5)
    again = feeds.read("f", 10, visibility_s=30)
    assert [(n.seq, n.deliveries) for n in again] == [(1, 2)], "only the un-extended one comes back"
    with pytest.raises(NotFoundError, match="expired"):
        feeds.ack("f", [first[0].receipt])  # the old receipt of a redelivered notification
    feeds.ack("f", [again[0].receipt, first[1].receipt])
    assert feeds.show("f")["depth"] == 0
    with pytest.raises(NotFoundError):
        feeds.extend("f", first[1].receipt, 5)


def test_prefix_subscription_and_several_partitions(store: Store, feeds: Feeds) -> None:
    store.create_partition("q")
    feeds.create("docs", [("p", "docs/"), ("q", "")])
    store.put("p", "docs/a", b"1")
    store.put("p", "img/b", b"2")
    store.put("q", "anything", b"3")
    notes = feeds.read("docs", 10)
    assert sorted((n.partition, n.header["sort_key"]) for n in notes) == [("p", "docs/a"), ("q", "anything")]
    assert feeds.show("docs")["depth"] == 2, "the non-matching one was consumed when read"


def test_feed_management_and_bad_input(
    store: Store, feeds: Feeds, store_dir: Path, bob: Identity, open_store: OpenStore
) -> None:
    info = feeds.create("f", [("p", "")], expires_s=3600)
    assert info["expires_us"] is not None
    with pytest.raises(ExistsError):
        feeds.create("f", [("p", "")])
    with pytest.raises(NotFoundError):
        feeds.read("nope")
    with pytest.raises(NotFoundError):
        feeds.create("g", [("no-such-partition", "")])
    with pytest.raises(UsageError):
        feeds.read("f", max_messages=0)
    store.create_partition("q")
    feeds.subscribe("f", [("q", "x/")])
    assert {s["partition"] for s in feeds.show("f")["subscriptions"]} == {"p", "q"}
    feeds.unsubscribe("f", "p")
    assert [s["prefix"] for s in feeds.show("f")["subscriptions"]] == ["x/"]
    assert [f["name"] for f in feeds.list()] == ["f"]
    # bob: cannot subscribe to a partition he cannot read, nor read alice's feed by id
    bob_feeds = Feeds(open_store(store_dir, bob))
    with pytest.raises(NotFoundError):
        bob_feeds.create("spy", [("p", "")])
    with pytest.raises(AccessDeniedError):
        bob_feeds.read(info["feed_id"])
    feeds.set_expiry("f", 0.01)
    time.sleep(0.05)
    with pytest.raises(NotFoundError):
        feeds.read("f")
    assert feeds.list() == []
    feeds.create("f", [("p", "")])  # the name is free again
    feeds.delete("f")
    with pytest.raises(NotFoundError):
        feeds.show("f")


def test_notifications_reveal_no_sort_key_at_rest(store: Store, feeds: Feeds, store_dir: Path) -> None:
    feeds.create("secret-feed-name", [("p", "secret-prefix/")])
    store.put("p", "secret-prefix/secret-name.txt", b"x")
    store.index.close()
    raw = b"".join(p.read_bytes() for p in store_dir.glob("index.sqlite*"))
    for word in (b"secret-prefix", b"secret-name", b"secret-feed-name"):
        assert word not in raw


def test_long_poll_wakes_on_commit_from_another_process(
    store: Store, feeds: Feeds, store_dir: Path, tmp_path: Path
) -> None:
    feeds.create("f", [("p", "")])
    ident = tmp_path / "alice.json"
    identity_files.create(ident, "alice", "pw")
    # the writer process is another identity with write access
    writer = identity_files.load(ident, "pw")
    store.grant("p", writer.public, "write")
    pid = store.partition("p").id.hex()
    code = (
        "import sys, time; from fsobj import identity; from fsobj.store import Store\n"
        f"w = identity.load({str(ident)!r}, 'pw')\n"
        "time.sleep(0.5)\n"
        f"Store.open({str(store_dir)!r}, w).put(bytes.fromhex({pid!r}), 'from-writer', b'x')\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code])
    try:
        t0 = time.monotonic()
        notes = feeds.read("f", 10, wait_s=30)
        elapsed = time.monotonic() - t0
    finally:
        proc.wait(timeout=60)
    assert [n.header["sort_key"] for n in notes] == ["from-writer"]
    assert notes[0].header["author"] == writer.user_id.hex()
    assert elapsed < 20, "the reader woke on the commit, not at the end of its wait"


def test_trio_api(store: Store, feeds: Feeds) -> None:
    feeds.create("f", [("p", "")])

    async def main() -> list[str]:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.to_thread.run_sync, lambda: (time.sleep(0.2), store.put("p", "t", b"1")))
            notes = await feeds.aread("f", 5, wait_s=10)
        await feeds.aack("f", [n.receipt for n in notes])
        return [n.header["sort_key"] for n in notes]

    assert trio.run(main) == ["t"]
    assert feeds.show("f")["depth"] == 0


# ---------------------------------------------------------------- crash and concurrency


def _writer(store_dir: str, ident_path: str, n: int) -> None:
    ident = identity_files.load(Path(ident_path), "pw")
    with Store.open(Path(store_dir), ident) as s:
        for i in range(n):
            s.put("p", f"k{i % 50}", str(i).encode())


def test_kill_9_writer_every_committed_version_has_exactly_one_notification(tmp_path: Path) -> None:
    store_dir = tmp_path / "store"
    Store.init(store_dir)
    ident_path = tmp_path / "id.json"
    ident = identity_files.create(ident_path, "w", "pw")
    with Store.open(store_dir, ident) as s:
        s.create_partition("p")
        Feeds(s).create("f1", [("p", "")])
        Feeds(s).create("f2", [("p", "k1")])
    ctx = multiprocessing.get_context("spawn")
    proc = ctx.Process(target=_writer, args=(str(store_dir), str(ident_path), 100_000))
    proc.start()
    with Store.open(store_dir, ident) as s:
        deadline = time.monotonic() + 60
        while s.index.stats()["versions"] < 150 and time.monotonic() < deadline:
            time.sleep(0.02)
    assert proc.pid is not None
    os.kill(proc.pid, signal.SIGKILL)
    proc.join()
    with Store.open(store_dir, ident) as s:
        committed = {r.hash for r in s.index.versions_in(s.partition("p").id)}
        assert len(committed) >= 150
        for feed in ("f1", "f2"):
            fid = bytes.fromhex(Feeds(s).show(feed)["feed_id"])
            queued = Counter(r[0] for r in s.index.q("SELECT version_hash FROM feed_messages WHERE feed_id = ?", [fid]))
            assert set(queued) == committed, "every committed version queued in every subscribed feed"
            assert max(queued.values()) == 1, "exactly once"


def _consumer(store_dir: str, ident_path: str, out_path: str) -> None:
    ident = identity_files.load(Path(ident_path), "pw")
    got = []
    with Store.open(Path(store_dir), ident) as s:
        feeds = Feeds(s)
        while True:
            notes = feeds.read("f", 100, wait_s=1.0, visibility_s=120)
            if not notes:
                break
            feeds.ack("f", [n.receipt for n in notes])
            got.extend((n.seq, n.deliveries) for n in notes)
    Path(out_path).write_text(json.dumps(got))


def test_four_consumers_ten_thousand_notifications_each_acked_once(tmp_path: Path) -> None:
    store_dir = tmp_path / "store"
    Store.init(store_dir)
    ident_path = tmp_path / "id.json"
    ident = identity_files.create(ident_path, "w", "pw")
    total = 10_000
    with Store.open(store_dir, ident) as s:
        s.create_partition("p")
        Feeds(s).create("f", [("p", "")])
        for start in range(0, total, 2500):
            with s.batch():
                for i in range(start, start + 2500):
                    s.put("p", f"k{i:05d}", b"")
    ctx = multiprocessing.get_context("spawn")
    outs = [tmp_path / f"c{i}.json" for i in range(4)]
    procs = [ctx.Process(target=_consumer, args=(str(store_dir), str(ident_path), str(o))) for o in outs]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
        assert p.exitcode == 0
    got = [tuple(x) for o in outs for x in json.loads(o.read_text())]
    seqs = Counter(seq for seq, _ in got)
    assert len(seqs) == total and set(seqs) == set(range(1, total + 1)), "none lost"
    assert max(seqs.values()) == 1, "no duplicates inside the visibility window"
    assert all(d == 1 for _, d in got)
    assert sum(1 for o in outs if json.loads(o.read_text())) >= 2, "the work was shared"
    with Store.open(store_dir, ident) as s:
        assert Feeds(s).show("f")["depth"] == 0


def test_threads_share_a_feed_without_duplicates(store: Store, feeds: Feeds) -> None:
    feeds.create("f", [("p", "")])
    with store.batch():
        for i in range(400):
            store.put("p", f"k{i}", b"")
    got: list[int] = []
    lock = threading.Lock()

    def consume() -> None:
        while notes := feeds.read("f", 25, visibility_s=120):
            feeds.ack("f", [n.receipt for n in notes])
            with lock:
                got.extend(n.seq for n in notes)

    threads = [threading.Thread(target=consume) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got) == list(range(1, 401))


def test_feed_cli(tmp_path: Path) -> None:
    env = dict(
        os.environ, FSOBJ_STORE=str(tmp_path / "store"), FSOBJ_IDENTITY=str(tmp_path / "id.json"), FSOBJ_PASSPHRASE="pw"
    )

    def fsobj(*args: str, expect: int = 0, input: bytes | None = None) -> bytes:
        proc = subprocess.run(
            [sys.executable, "-m", "fsobj", *args], env=env, capture_output=True, input=input, timeout=120
        )
        assert proc.returncode == expect, proc.stderr
        return proc.stdout

    fsobj("identity", "create")
    fsobj("init", str(tmp_path / "store"))
    fsobj("partition", "create", "p")
    fsobj("feed", "create", "f", "--partition", "p", "--prefix", "a")
    fsobj("put", "p", "a1", "-", input=b"x")
    fsobj("put", "p", "b1", "-", input=b"x")
    fsobj("put", "p", "a2", "-", input=b"x")
    notes = json.loads(fsobj("feed", "read", "f", "--max", "1", "--json"))
    assert [n["header"]["sort_key"] for n in notes] == ["a1"]
    fsobj("feed", "extend", "f", notes[0]["receipt"], "--by", "60")
    fsobj("feed", "ack", "f", notes[0]["receipt"])
    fsobj("feed", "ack", "f", notes[0]["receipt"], expect=NotFoundError.exit_code)
    lines = fsobj("feed", "follow", "f", "--count", "1").decode().splitlines()
    assert [json.loads(line)["header"]["sort_key"] for line in lines] == ["a2"]
    assert json.loads(fsobj("feed", "show", "f"))["depth"] == 0
    assert b"f\tdepth 0" in fsobj("feed", "ls")
    fsobj("feed", "read", "nope", expect=NotFoundError.exit_code)
    fsobj("feed", "create", "g", "--partition", "nope", expect=NotFoundError.exit_code)
    fsobj("feed", "rm", "f")
    fsobj("feed", "show", "f", expect=NotFoundError.exit_code)
