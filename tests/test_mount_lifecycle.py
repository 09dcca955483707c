"""The daemon's life: crashes, signals, unmounting, two mounts of one store,
conflicts, and partitions shared read-only."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_mount_support import (  # noqa: F401
    FSOBJ,
    PASSPHRASE,
    World,
    needs_fuse,
    sh,
    sync_dir,
    wait_for,
    world,
    write_synced,
)

from fsobj import identity as identity_files
from fsobj.store import Store

pytestmark = needs_fuse

WRITER = """
import os, sys
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
os.write(fd, sys.argv[2].encode())
print("written", flush=True)
sys.stdin.readline()
try:
    os.close(fd)
    print("closed", flush=True)
except OSError as e:
    print("close failed", e.errno, flush=True)
"""


def open_writer(path: Path, data: str) -> subprocess.Popen[str]:
    """A separate process that writes ``data`` to ``path`` and keeps it open until told to close."""
    p = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path), data], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert p.stdout is not None and p.stdout.readline().strip() == "written"
    return p


def close_writer(p: subprocess.Popen[str]) -> str:
    out, _ = p.communicate("\n", timeout=30)
    return out.strip()


def test_kill_9_then_remount_and_verify(world: World) -> None:  # noqa: F811
    m = world.mount()
    (m.part / "d").mkdir()
    for i in range(20):
        (m.part / "d" / f"f{i}").write_bytes(os.urandom(1000 * i))
    sync_dir(m.part / "d")  # closed files are durable once their directory is fsynced
    write_synced(m.part / "synced", b"durable")
    (m.part / "closed only").write_bytes(b"either wholly there or wholly absent")
    writer = open_writer(m.part / "in-flight", "not committed")
    m.kill9()
    writer.kill()
    writer.wait()
    assert world.fsobj("verify").returncode == 0
    m2 = world.mount("again")
    assert (m2.part / "synced").read_bytes() == b"durable"
    assert sorted(os.listdir(m2.part / "d")) == sorted(f"f{i}" for i in range(20))
    assert not (m2.part / "in-flight").exists()  # a version that never committed is wholly absent
    closed = m2.part / "closed only"
    assert not closed.exists() or closed.read_bytes() == b"either wholly there or wholly absent"
    (m2.part / "after").write_text("works")
    m2.stop()
    assert world.fsobj("verify").returncode == 0


def test_sync_of_the_mount_commits_open_files_and_survives_kill_9(world: World) -> None:  # noqa: F811
    """``sync MOUNTPOINT`` (coreutils fsyncs the named directory) and ``fsobj sync`` commit
    what files still open hold, as sync(1) writes out a local filesystem's dirty data;
    fsync of another directory commits only closed files. After ``kill -9`` the synced
    data of the open files is there; ``fsobj sync`` of a directory that is no fsobj
    mount fails with exit code 2."""
    m = world.mount()

    def listed() -> set[str]:
        return {e["sort_key"] for e in json.loads(world.fsobj("ls", "p", "--json").stdout)}

    first = open_writer(m.part / "open1", "first")
    sync_dir(m.part)  # a partition directory: closed files only
    assert "open1" not in listed()
    subprocess.run(["sync", str(m.path)], check=True)
    assert "open1" in listed()
    assert [v.name[:4] for v in sorted((m.part / ".versions" / "open1").iterdir())] == ["0001"]
    assert close_writer(first) == "closed"
    assert len(list((m.part / ".versions" / "open1").iterdir())) == 1  # closing added nothing new

    second = open_writer(m.part / "open2", "second")
    assert world.fsobj("sync", str(m.path)).returncode == 0
    m.kill9()
    second.kill()
    second.wait()
    m2 = world.mount("again")
    assert (m2.part / "open1").read_text() == "first"
    assert (m2.part / "open2").read_text() == "second"
    assert world.fsobj("verify").returncode == 0

    bad = world.fsobj("sync", str(m2.part), check=False)
    assert bad.returncode == 2 and b"is not the root of an fsobj mount" in bad.stderr
    m2.stop()


def _helper_of(daemon_pid: int) -> int | None:
    """The pid of a daemon's commit helper process (fsobj.fs.helper), if it runs."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == daemon_pid and b"fsobj.fs.helper" in cmdline:
            return int(entry)
    return None


def _write_syscalls(pid: int) -> int:
    io = dict(line.split(": ") for line in Path(f"/proc/{pid}/io").read_text().splitlines())
    return int(io["syscw"])


def test_the_commit_helper_commits_closed_files_and_never_outlives_the_daemon(world: World) -> None:  # noqa: F811
    m = world.mount()
    helper = _helper_of(m.proc.pid)
    assert helper is not None, m.log.read_text()
    before = _write_syscalls(helper)
    (m.part / "d").mkdir()
    for i in range(200):
        (m.part / "d" / f"f{i}").write_bytes(f"file {i}\n".encode() * (i + 1))
    sync_dir(m.part / "d")
    assert _write_syscalls(helper) - before >= 200  # the helper wrote the blobs (one header each)
    listed = {e["sort_key"] for e in json.loads(world.fsobj("ls", "p", "--prefix", "d/", "--json").stdout)}
    assert listed == {"d/"} | {f"d/f{i}" for i in range(200)}  # the directory's marker and its files
    assert "commit helper started" in m.log.read_text()
    m.kill9()
    wait_for(lambda: _helper_of(m.proc.pid) is None and not Path(f"/proc/{helper}").exists(), what="the helper to exit")
    assert world.fsobj("verify").returncode == 0
    m2 = world.mount("again")
    assert (m2.part / "d" / "f199").read_bytes() == b"file 199\n" * 200


def test_a_dead_commit_helper_leaves_the_daemon_committing_by_itself(world: World) -> None:  # noqa: F811
    m = world.mount()
    helper = _helper_of(m.proc.pid)
    assert helper is not None
    os.kill(helper, signal.SIGKILL)
    wait_for(lambda: _helper_of(m.proc.pid) is None, what="the helper to be gone")
    for i in range(30):
        (m.part / f"g{i}").write_text(f"after {i}")
    sync_dir(m.part)
    os.unlink(m.part / "g0")
    sync_dir(m.part)
    names = {e["sort_key"] for e in json.loads(world.fsobj("ls", "p", "--json").stdout)}
    assert names == {f"g{i}" for i in range(1, 30)} | {"/"}  # "/": the root's marker, with its mtime
    assert "the daemon commits by itself" in m.log.read_text()
    assert m.stop() == 0
    assert world.fsobj("get", "p", "g29").stdout == b"after 29"


def test_a_request_that_waits_leaves_every_other_request_answered(world: World) -> None:  # noqa: F811
    """The daemon reads requests with one task until a handler has to wait; then another
    task reads on (fsobj/fs/loop.py). Here ``fsync`` of a directory waits for the group
    commit, held up by a stopped commit helper; meanwhile ``ls -l``, ``cat``, ``stat``,
    ``getfattr`` and a new file are answered; the fsync returns once the helper goes on."""
    m = world.mount()
    helper = _helper_of(m.proc.pid)
    assert helper is not None
    (m.part / "o").mkdir()
    (m.part / "q").mkdir()
    (m.part / "o" / "other.txt").write_text("other")
    sync_dir(m.part)
    os.kill(helper, signal.SIGSTOP)
    try:
        (m.part / "q" / "queued.txt").write_text("queued")  # closed: it waits in the group commit
        syncer = subprocess.Popen(
            [sys.executable, "-c", "import os, sys; os.fsync(os.open(sys.argv[1], os.O_RDONLY))", str(m.part / "q")]
        )
        time.sleep(0.5)
        assert syncer.poll() is None  # waiting for the stopped helper
        ls = subprocess.run(["ls", "-l", str(m.part / "o")], capture_output=True, text=True, timeout=20)
        assert ls.returncode == 0 and "other.txt" in ls.stdout
        cat = subprocess.run(["cat", str(m.part / "o" / "other.txt")], capture_output=True, timeout=20)
        assert cat.stdout == b"other"
        st = subprocess.run(
            ["stat", "-c", "%s", str(m.part / "o" / "other.txt")], capture_output=True, text=True, timeout=20
        )
        assert st.stdout.strip() == "5"
        ga = subprocess.run(
            ["getfattr", "-n", "system.fsobj.sort_key", str(m.part / "o" / "other.txt")],
            capture_output=True,
            text=True,
            timeout=20,
        )
        assert 'system.fsobj.sort_key="o/other.txt"' in ga.stdout, ga.stderr
        subprocess.run(["cp", str(m.part / "o" / "other.txt"), str(m.part / "o" / "copy.txt")], check=True, timeout=20)
        assert syncer.poll() is None  # all of that while the fsync still waited
    finally:
        os.kill(helper, signal.SIGCONT)
    assert syncer.wait(timeout=60) == 0
    sync_dir(m.part)
    names = {e["sort_key"] for e in json.loads(world.fsobj("ls", "p", "--json").stdout)}
    assert {"o/other.txt", "q/queued.txt", "o/copy.txt"} <= names
    assert m.stop() == 0


def test_sigterm_commits_open_files_then_unmounts(world: World) -> None:  # noqa: F811
    m = world.mount()
    writer = open_writer(m.part / "pending.txt", "pending data")
    assert m.stop() == 0
    assert not os.path.ismount(m.path)
    assert close_writer(writer).startswith("close failed")  # the mount is gone, the data is not
    assert world.fsobj("get", "p", "pending.txt").stdout == b"pending data"


def test_daemon_mode_and_fsobj_umount(world: World) -> None:  # noqa: F811
    mp = world.root / "bg"
    mp.mkdir()
    r = subprocess.run([FSOBJ, "mount", str(world.store), str(mp)], env=world.env, capture_output=True, timeout=30)
    try:
        assert r.returncode == 0, r.stderr
        assert os.path.ismount(mp)  # mounted when the command returns
        pid = int(os.getxattr(mp, "system.fsobj.daemon_pid"))
        writer = open_writer(mp / "p" / "bg.txt", "background")
        r = subprocess.run([FSOBJ, "umount", str(mp)], env=world.env, capture_output=True, timeout=60)
        assert r.returncode == 0, r.stderr
        assert not os.path.ismount(mp)
        close_writer(writer)
        assert world.fsobj("get", "p", "bg.txt").stdout == b"background"
        wait_for(lambda: not Path(f"/proc/{pid}").exists(), what="the daemon to exit")
        log = (world.root / "cache").rglob("mount.log")
        assert any("unmounted" in p.read_text() for p in log)
    finally:
        subprocess.run(["fusermount3", "-u", "-z", str(mp)], capture_output=True)
    bad = subprocess.run(
        [FSOBJ, "mount", str(world.store), str(world.root / "nope")], env=world.env, capture_output=True
    )
    assert bad.returncode != 0 and b"not a directory" in bad.stderr


def test_mount_helper_for_mount_t_fsobj_and_fstab(world: World, tmp_path: Path) -> None:  # noqa: F811
    helper = Path(__file__).resolve().parent.parent / "mountscripts" / "mount.fsobj"
    mp = world.root / "helper"
    mp.mkdir()
    pass_file = tmp_path / "pass"
    pass_file.write_text(PASSPHRASE + "\n")
    env = {k: v for k, v in world.env.items() if k != "FSOBJ_PASSPHRASE"}
    opts = f"fsobj_bin={FSOBJ},identity={world.identity},passphrase_file={pass_file},rw,noauto,nofail,x-systemd.foo"
    r = subprocess.run([str(helper), str(world.store), str(mp), "-o", opts], env=env, capture_output=True, timeout=30)
    try:
        assert r.returncode == 0, r.stderr
        assert os.path.ismount(mp)
        (mp / "p" / "via-helper").write_text("ok")
    finally:
        r2 = subprocess.run([FSOBJ, "umount", str(mp)], env=env, capture_output=True, timeout=60)
        subprocess.run(["fusermount3", "-u", "-z", str(mp)], capture_output=True)
    assert r2.returncode == 0, r2.stderr
    assert world.fsobj("get", "p", "via-helper").stdout == b"ok"
    fake = subprocess.run(
        [str(helper), str(world.store), str(mp), "-f", "-v", "-o", opts], env=env, capture_output=True
    )
    assert fake.returncode == 0 and b" mount " in fake.stderr and not os.path.ismount(mp)


def test_two_mounts_see_each_others_changes_and_a_conflict_keeps_both(world: World) -> None:  # noqa: F811
    a = world.mount("a", "refresh=0.2", "attr_timeout=0.2")
    b = world.mount("b", "refresh=0.2", "attr_timeout=0.2")
    (a.part / "shared.txt").write_text("from a\n")
    wait_for(lambda: (b.part / "shared.txt").exists(), what="b to see a's file")
    assert (b.part / "shared.txt").read_text() == "from a\n"
    (b.part / "dir").mkdir()
    (b.part / "dir" / "x").write_text("from b\n")
    wait_for(lambda: (a.part / "dir" / "x").exists(), what="a to see b's file")
    assert (a.part / "dir" / "x").read_text() == "from b\n"
    (b.part / "shared.txt").write_text("b overwrote\n")
    wait_for(lambda: (a.part / "shared.txt").read_text() == "b overwrote\n", what="a to see b's version")
    # a writer on mount a, while mount b changes the same file: nothing is lost
    writer = open_writer(a.part / "shared.txt", "a appended\n")
    write_synced(b.part / "shared.txt", b"b won\n")
    assert close_writer(writer) == "closed"
    wait_for(lambda: any(n.startswith("shared.txt.conflict-") for n in os.listdir(b.part)), what="the conflict copy")
    copy = next(n for n in os.listdir(b.part) if n.startswith("shared.txt.conflict-"))
    assert (b.part / copy).read_text() == "b overwrote\na appended\n"
    assert (a.part / "shared.txt").read_text() == "b won\n"
    assert "conflict" in a.log.read_text()
    rm_gone = a.part / "dir" / "x"
    os.unlink(rm_gone)
    wait_for(lambda: not (b.part / "dir" / "x").exists(), what="b to see a's rm")


def test_a_directory_s_mtime_follows_its_entries_and_survives_a_remount(world: World, tmp_path: Path) -> None:  # noqa: F811
    """As on a local filesystem: making, removing or renaming an entry sets the mtime and
    ctime of its directory, ``touch`` sets it, ``chmod`` keeps it. The times are written
    (fsync of the directory here) so another mount and a remount show the same; a
    directory whose mtime rsync set after filling it keeps that mtime."""
    m = world.mount("m", "refresh=0.2", "attr_timeout=0.2")
    d = m.part / "d"
    d.mkdir()

    def changed_by(cmd: str, *dirs: Path) -> None:
        before = [os.stat(x).st_mtime_ns for x in dirs]
        start = time.time_ns()
        sh(cmd)
        for x, b in zip(dirs, before, strict=True):
            st = os.stat(x)
            assert st.st_mtime_ns > b and st.st_mtime_ns >= start and st.st_ctime_ns >= st.st_mtime_ns, (cmd, x)

    changed_by(f"cp /etc/hostname '{d}/a'", d)
    changed_by(f"mkdir '{d}/sub'", d)
    changed_by(f"mv '{d}/a' '{d}/sub/a'", d, d / "sub")
    changed_by(f"mv '{d}/sub/a' '{m.part}/a'", d / "sub", m.part)
    changed_by(f"rm '{m.part}/a'", m.part)
    changed_by(f"rmdir '{d}/sub'", d)
    changed_by(f"ln -s nowhere '{d}/link'", d)
    sh(f"touch -m -d '2001-02-03 04:05:06Z' '{d}'")
    assert os.stat(d).st_mtime == 981173106
    os.chmod(d, 0o750)  # a new version of the directory's marker, with the same mtime
    assert os.stat(d).st_mtime == 981173106
    changed_by(f"rm '{d}/link'", d)

    src = tmp_path / "src"  # rsync sets a directory's mtime after it filled it
    (src / "in").mkdir(parents=True)
    for i in range(20):
        (src / "in" / f"f{i}").write_text(str(i))
    os.utime(src / "in", ns=(1_200_000_000_000_000_000, 1_200_000_000_000_000_000))
    sh(f"rsync -a '{src}/' '{d}/mirror/'")
    assert os.stat(d / "mirror" / "in").st_mtime_ns == 1_200_000_000_000_000_000

    sync_dir(d)  # writes the times the group commit has not written yet
    want = {x: os.stat(x).st_mtime_ns for x in (m.part, d, d / "mirror", d / "mirror" / "in")}
    other = world.mount("other", "refresh=0.2", "attr_timeout=0.2")
    assert {x: os.stat(other.path / x.relative_to(m.path)).st_mtime_ns for x in want} == want
    assert m.stop() == 0 and other.stop() == 0
    again = world.mount("again")
    assert {x: os.stat(again.path / x.relative_to(m.path)).st_mtime_ns for x in want} == want


def test_kernel_caches_are_invalidated_when_another_mount_changes_things(world: World) -> None:  # noqa: F811
    """Mount b keeps names and attributes in the kernel for 30 s (the default), yet sees
    mount a's changes within seconds: the daemon tells the kernel what went stale."""
    a = world.mount("a", "refresh=0.2")
    b = world.mount("b", "refresh=0.2")
    write_synced(a.part / "f.txt", b"first\n")
    (a.part / "d" / "e").mkdir(parents=True)
    write_synced(a.part / "d" / "e" / "inner.txt", b"inner\n")
    write_synced(a.part / "old-name", b"moving\n")
    wait_for(lambda: (b.part / "old-name").exists(), what="b to see a's files")
    # b looks everything up and reads it: names, attributes and pages are now cached by b's kernel
    assert (b.part / "f.txt").read_bytes() == b"first\n"
    assert (b.part / "d" / "e" / "inner.txt").read_bytes() == b"inner\n"
    assert os.stat(b.part / "f.txt").st_size == 6
    before = os.stat(b.part / "f.txt").st_ino

    write_synced(a.part / "f.txt", b"second, longer\n")
    wait_for(lambda: os.stat(b.part / "f.txt").st_size == 15, what="b's kernel to drop the old size")
    assert (b.part / "f.txt").read_bytes() == b"second, longer\n"  # not the cached page
    assert os.stat(b.part / "f.txt").st_ino == before  # same object, same inode

    os.rename(a.part / "old-name", a.part / "new-name")
    sync_dir(a.part)
    wait_for(lambda: not (b.part / "old-name").exists(), what="b to see the old name go")
    assert (b.part / "new-name").read_bytes() == b"moving\n"

    shutil.rmtree(a.part / "d")
    sync_dir(a.part)
    wait_for(lambda: not (b.part / "d").exists(), what="b to see the directory go")
    assert not (b.part / "d" / "e" / "inner.txt").exists()
    assert "f.txt" in os.listdir(b.part)


def test_a_partition_shared_read_only_cannot_be_changed(world: World, tmp_path: Path) -> None:  # noqa: F811
    bob_file = tmp_path / "bob.json"
    identity_files.create(bob_file, "bob", PASSPHRASE)
    alice = identity_files.load(world.identity, PASSPHRASE)
    with Store.open(world.store, alice) as s:
        s.put("p", "shared.txt", b"for bob")
        s.grant("p", identity_files.load_public(bob_file), "read")
    world.env["FSOBJ_IDENTITY"] = str(bob_file)
    m = world.mount("bob")
    names = os.listdir(m.path)
    assert len(names) == 1 and names[0].startswith("p@")
    part = m.path / names[0]
    assert (part / "shared.txt").read_text() == "for bob"
    for attempt in (
        lambda: (part / "shared.txt").write_text("no"),
        lambda: (part / "new").write_text("no"),
        lambda: os.unlink(part / "shared.txt"),
        lambda: os.mkdir(part / "dir"),
    ):
        with pytest.raises(OSError) as e:
            attempt()
        assert e.value.errno in (errno.EROFS, errno.EACCES)
    grants = json.loads(os.getxattr(part, "system.fsobj.grants"))
    assert grants[0]["name"] == "bob" and grants[0]["role"] == "read"
    with Store.open(world.store, alice) as s:
        assert s.read_bytes(s.get("p", "shared.txt")) == b"for bob"


def test_mount_read_only_option(world: World) -> None:  # noqa: F811
    m = world.mount("ro", "ro")
    with pytest.raises(OSError) as e:
        (m.part / "x").write_text("no")
    assert e.value.errno == errno.EROFS
    assert sh(f"ls -a '{m.part}'").split() == [".", ".."]


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("runuser"), reason="needs root and runuser")
def test_allow_other_with_permissions_checked_by_the_kernel(world: World) -> None:  # noqa: F811
    restore = [(p, os.stat(p).st_mode) for p in [world.root, *world.root.parents] if not os.stat(p).st_mode & 0o001]
    for p, mode in restore:  # nobody must be able to reach the mount point
        os.chmod(p, mode | 0o001)
    try:
        _check_allow_other(world)
    finally:
        for p, mode in restore:
            os.chmod(p, mode)


def _check_allow_other(w: World) -> None:
    m = w.mount("shared", "allow_other")
    (m.part / "public").write_text("pub")
    (m.part / "secret").write_text("sec")
    os.chmod(m.part / "secret", 0o600)
    (m.part / "sticky").mkdir(mode=0o1777)
    os.chmod(m.part / "sticky", 0o1777)
    (m.part / "sticky" / "roots").write_text("r")

    def as_nobody(cmd: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["runuser", "-u", "nobody", "--", "sh", "-c", cmd], capture_output=True, text=True)

    assert as_nobody(f"cat '{m.part}/public'").stdout == "pub"
    assert as_nobody(f"cat '{m.part}/secret'").returncode != 0
    assert as_nobody(f"cat '{m.part}'/.versions/secret/*").returncode != 0  # history follows the file
    # the kernel checks no permission for system.* names: the daemon does, so that the
    # checksum of a file's plaintext does not reach someone who may not read the file
    assert len(as_nobody(f"getfattr --only-values -n system.fsobj.checksum '{m.part}/public'").stdout) == 64
    denied = as_nobody(f"getfattr --only-values -n system.fsobj.checksum '{m.part}/secret'")
    assert denied.returncode != 0 and "Permission denied" in denied.stderr, denied
    assert "system.fsobj.checksum" in as_nobody(f"getfattr -m - '{m.part}/secret'").stdout  # names are no secret
    assert as_nobody(f"echo x > '{m.part}/mine'").returncode != 0  # the partition root is 0755 root
    assert as_nobody(f"echo x > '{m.part}/sticky/nobodys'").returncode == 0
    assert as_nobody(f"rm '{m.part}/sticky/roots'").returncode != 0  # sticky directory
    assert os.stat(m.part / "sticky" / "nobodys").st_uid != 0


@pytest.mark.skipif(os.geteuid() != 0, reason="only root may change a device's read-ahead")
def test_the_kernel_reads_ahead_1_mib_on_the_mount_unless_told_otherwise(world: World) -> None:  # noqa: F811
    from fsobj.fs.daemon import mount_device

    def read_ahead(mp: Path) -> int:
        return int(Path(f"/sys/class/bdi/{mount_device(mp)}/read_ahead_kb").read_text())

    # The daemon sets it when the first request after FUSE_INIT arrives, before it
    # answers: so it is in place as soon as the mount answers at all (the fixture
    # waits for os.path.ismount), before any file can be opened with less.
    for i in range(3):
        m = world.mount(f"ra{i}")
        assert read_ahead(m.path) == 1024
        assert "kernel read-ahead set to 1024 KiB" in m.log.read_text()
        m.stop()
    m = world.mount()
    m3 = world.mount("three", "read_ahead_kb=256")
    assert read_ahead(m3.path) == 256
    m2 = world.mount("two", "read_ahead_kb=0")  # the kernel's own choice
    (m2.part / "x").write_text("x")
    assert "kernel read-ahead" not in m2.log.read_text()
    bad = subprocess.run(
        [FSOBJ, "mount", str(world.store), str(world.root / "three"), "-o", "read_ahead_kb=-1"],
        env=world.env,
        capture_output=True,
    )
    assert bad.returncode != 0 and b"bad value for mount option read_ahead_kb" in bad.stderr


STRESS = Path(__file__).with_name("stress_ops.py")


def test_processes_racing_on_one_mount_while_another_mount_writes_lose_nothing(world: World) -> None:  # noqa: F811
    """Four processes apply random operations (rsync's temporary file, overwrite, append,
    unlink, rename over, chmod, utime, setxattr, truncate, reads) on one mount, partly on
    names they share, while a fifth does the same on a second mount of the store: every
    process's own files end as its model says (content, mode, mtime), no conflict copy
    appears (one mount orders its own writers), no daemon logs an error, and the store
    verifies. Fixed seeds; the interleaving is the machine's. Six shared names keep the
    races frequent: with a metadata change that still brought removed files back, two
    runs made 7 and 9 conflict copies."""
    a = world.mount("a", "refresh=0.2")
    b = world.mount("b", "refresh=0.2")
    seconds = "12"
    procs = [
        subprocess.Popen(
            [sys.executable, str(STRESS), str(m.part / where), str(i), seconds, str(1000 + i)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for i, (m, where) in enumerate([(a, "race")] * 4 + [(b, "other")])
    ]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err.decode()
        results.append(json.loads(out))
    assert all(r["ops"] > 50 for r in results), results
    assert [r for r in results if r["problems"]] == []
    conflicts = [n for m in (a, b) for _, _, names in os.walk(m.part) for n in names if ".conflict-" in n]
    assert conflicts == []
    assert world.daemon_errors() == []
    for m in (a, b):
        assert m.stop() == 0
    verify = world.fsobj("verify", check=False)
    assert verify.returncode == 0, verify.stdout.decode() + verify.stderr.decode()
