"""Through a real mount, with ordinary tools: copy, versions, restore, rm, mv,
byte-exact writes, extended attributes, special files. One mount serves the
module; each test works in its own directory."""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from test_mount_support import FSOBJ, Mount, exchange, needs_fuse, sh, shared_mount, sync_dir  # noqa: F401

pytestmark = needs_fuse


@pytest.fixture
def d(shared_mount: Mount, request: pytest.FixtureRequest) -> Path:  # noqa: F811
    path = shared_mount.part / request.node.name
    path.mkdir()
    return path


def make_tree(src: Path) -> None:
    rnd = random.Random(7)
    (src / "sub" / "deeper").mkdir(parents=True)
    (src / "empty dir").mkdir()
    (src / "zero").write_bytes(b"")
    (src / "tiny.txt").write_text("hello\n")
    (src / "sub" / "page.bin").write_bytes(rnd.randbytes(4096))
    (src / "sub" / "deeper" / "big.bin").write_bytes(rnd.randbytes(3 * 1024 * 1024 + 17))
    (src / "sub" / "ünïcode näme.txt").write_text("ü\n")
    (src / "exec.sh").write_text("#!/bin/sh\necho hi\n")
    (src / "exec.sh").chmod(0o755)
    (src / "link").symlink_to("sub/page.bin")
    (src / "dangling").symlink_to("nowhere")


def versions_of(path: Path) -> list[Path]:
    vdir = _versions_dir(path)
    return sorted(vdir.iterdir())


def _versions_dir(path: Path) -> Path:
    # <partition>/.versions/<path inside the partition>
    parts = path.parts
    i = parts.index("p")
    return Path(*parts[: i + 1], ".versions", *parts[i + 1 :])


def test_cp_r_of_a_mixed_tree_then_diff(d: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    make_tree(src)
    sh(f"cp -a '{src}' '{d}/copy'")
    sh(f"diff -r --no-dereference '{src}' '{d}/copy'")
    assert (d / "copy" / "empty dir").is_dir()
    assert os.readlink(d / "copy" / "link") == "sub/page.bin"
    assert stat.S_IMODE(os.stat(d / "copy" / "exec.sh").st_mode) == 0o755
    st_src, st_dst = os.stat(src / "tiny.txt"), os.stat(d / "copy" / "tiny.txt")
    assert st_dst.st_mtime_ns == st_src.st_mtime_ns  # cp -a keeps times
    assert sh(f"ls '{d}/copy'").split() == sh(f"ls '{src}'").split()


def test_overwrite_and_read_back_every_version(d: Path) -> None:
    f = d / "notes.txt"
    contents = [f"version {i}\n" * (i + 1) for i in range(5)]
    for c in contents:
        f.write_text(c)
    sh(f"echo appended >> '{f}'")
    contents.append(contents[-1] + "appended\n")
    vs = versions_of(f)
    assert [p.read_text() for p in vs] == contents  # ls order is oldest first
    assert [p.name[:4] for p in vs] == ["0001", "0002", "0003", "0004", "0005", "0006"]
    assert vs[-1].name.endswith(os.getxattr(f, "system.fsobj.absolute_hash").decode()[:8])
    with pytest.raises(OSError) as e:
        vs[0].write_text("no")
    assert e.value.errno in (errno.EROFS, errno.EACCES)
    assert ".versions" not in os.listdir(d.parent)  # hidden from readdir, reachable by path


def test_restore_by_cp(d: Path) -> None:
    f = d / "doc.txt"
    f.write_text("original\n")
    f.write_text("mistake\n")
    first = versions_of(f)[0]
    sh(f"cp '{first}' '{f}'")
    assert f.read_text() == "original\n"
    assert len(versions_of(f)) == 3


def test_rm_then_find_the_history(shared_mount: Mount, d: Path) -> None:  # noqa: F811
    f = d / "gone.txt"
    f.write_text("keep me\n")
    sh(f"rm '{f}'")
    assert not f.exists()
    assert "gone.txt" not in os.listdir(d)
    vs = versions_of(f)
    assert [p.read_text() for p in vs] == ["keep me\n"]
    log = shared_mount.world.fsobj("log", "p", f"{d.name}/gone.txt").stdout.decode()
    assert "tombstone" in log
    sh(f"cp '{vs[0]}' '{f}'")
    assert f.read_text() == "keep me\n"


def test_rm_r_and_mv_right_after_creating_more_files_than_one_group_commit_holds(
    shared_mount: Mount,  # noqa: F811
    d: Path,
) -> None:
    """``rm -r``, or ``chmod`` then ``mv``, of files still being committed (1,500 files: a
    group commit holds 1,000): every one goes, or changes and moves, in the store too
    (checked through a second mount). An unlink that waited
    for a file's commit used to find the file's new name (its baseHash) too late: the
    file vanished from the mount, and came back once the listing was read again."""
    for attempt in range(3):
        made = d / f"made{attempt}"
        made.mkdir()
        sh(f"cd '{made}' && for i in $(seq 1 1500); do echo $i > f$i; done")
        if attempt == 2:  # a metadata version, then a rename of the whole tree instead
            sh(f"chmod 600 '{made}'/*")
            sh(f"mv '{made}' '{d}/moved'")
            names = os.listdir(d / "moved")
            assert sorted(names, key=lambda n: int(n[1:])) == [f"f{i}" for i in range(1, 1501)]
            assert {stat.S_IMODE(os.stat(d / "moved" / n).st_mode) for n in names} == {0o600}
        else:
            sh(f"rm -r '{made}'")  # fails with "Directory not empty" if rm's unlink of a file was lost
            assert not made.exists()
    sync_dir(d)
    listing = shared_mount.world.fsobj("ls", "p", "--prefix", f"{d.name}/", "--json").stdout.decode()
    keys = {e["sort_key"] for e in json.loads(listing)}
    files = {k for k in keys if not k.endswith("/")}  # the others: directory markers
    assert files == {f"{d.name}/moved/f{i}" for i in range(1, 1501)}, sorted(files - {f"{d.name}/moved/"})[:5]
    assert not [k for k in keys if "/made" in k]  # nothing left of the removed trees, markers included
    other = shared_mount.world.mount("other")  # what the store holds, not what this mount remembers
    try:
        moved = other.part / d.name / "moved"
        assert {stat.S_IMODE(os.stat(moved / f"f{i}").st_mode) for i in range(1, 1501)} == {0o600}
    finally:
        other.stop()


def test_mv_of_files_and_directories(shared_mount: Mount, d: Path) -> None:  # noqa: F811
    (d / "a" / "b").mkdir(parents=True)
    (d / "a" / "b" / "x.txt").write_text("x\n")
    (d / "a" / "y.txt").write_text("y\n")
    (d / "a" / "empty").mkdir()
    base = os.getxattr(d / "a" / "y.txt", "system.fsobj.base_hash")
    sh(f"mv '{d}/a/y.txt' '{d}/a/b/z.txt'")
    assert os.getxattr(d / "a" / "b" / "z.txt", "system.fsobj.base_hash") == base  # rename keeps the series
    assert os.getxattr(d / "a" / "b" / "z.txt", "system.fsobj.version") == b"2"
    sh(f"mv '{d}/a' '{d}/moved'")
    assert not (d / "a").exists()
    assert (d / "moved" / "b" / "x.txt").read_text() == "x\n"
    assert (d / "moved" / "b" / "z.txt").read_text() == "y\n"
    assert (d / "moved" / "empty").is_dir()
    sync_dir(d)  # what the CLI sees: commit what waits in the group commit
    listing = shared_mount.world.fsobj("ls", "p", "--json").stdout.decode()
    keys = {e["sort_key"] for e in json.loads(listing)}
    assert f"{d.name}/moved/b/x.txt" in keys and not any(k.startswith(f"{d.name}/a/") for k in keys)
    # rename over an existing file replaces it; the replaced one gets a tombstone
    (d / "old.txt").write_text("old\n")
    (d / "new.txt").write_text("new\n")
    sync_dir(d)  # both committed (else new.txt's first version would be made under its final name)
    os.rename(d / "new.txt", d / "old.txt")
    assert (d / "old.txt").read_text() == "new\n"
    assert sorted(p.name for p in d.iterdir()) == ["moved", "old.txt"]
    # its history holds both series: the replaced one, and the moved one (written, then renamed)
    assert [p.read_text() for p in versions_of(d / "old.txt")] == ["old\n", "new\n", "new\n"]
    # the directory emptied by the move is still there, as on a local filesystem
    (d / "keep").mkdir()
    (d / "keep" / "only").write_text("1")
    sh(f"mv '{d}/keep/only' '{d}/only'")
    assert (d / "keep").is_dir() and os.listdir(d / "keep") == []
    with pytest.raises(OSError) as e:
        os.rename(d / "moved", d / "moved" / "b" / "inside")
    assert e.value.errno == errno.EINVAL


def test_truncate_append_random_writes_match_a_plain_directory(d: Path, tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    rnd = random.Random(3)
    start = rnd.randbytes(2_500_000)
    ops = [(rnd.choice("wtaW"), rnd.randrange(0, 4_000_000), rnd.randrange(1, 200_000)) for _ in range(60)]
    for base in (d, plain):
        (base / "f.bin").write_bytes(start)
        fd = os.open(base / "f.bin", os.O_RDWR)
        try:
            for i, (op, off, n) in enumerate(ops):
                data = random.Random(i).randbytes(n)
                if op == "w":
                    os.pwrite(fd, data, off)
                elif op == "t":
                    os.ftruncate(fd, off)
                elif op == "a":
                    os.lseek(fd, 0, os.SEEK_END)
                    os.write(fd, data)
                else:  # sparse: far beyond the end
                    os.pwrite(fd, data[:100], os.fstat(fd).st_size + off)
                # reads of the open file see the unflushed writes
                assert os.pread(fd, 4096, off // 2) == _read_other(base / "f.bin", off // 2)
        finally:
            os.close(fd)
    assert (d / "f.bin").read_bytes() == (plain / "f.bin").read_bytes()
    for cmd in (
        "truncate -s 123457 {}/f.bin",
        "printf tail >> {}/f.bin",
        "truncate -s 200000 {}/f.bin",
        "dd if=/dev/zero of={}/f.bin bs=1000 seek=50 count=3 conv=notrunc status=none",
        "truncate -s 0 {}/f.bin",
        "printf x | dd of={}/f.bin bs=1 seek=99999 conv=notrunc status=none",
    ):
        sh(cmd.format(d))
        sh(cmd.format(plain))
        assert (d / "f.bin").read_bytes() == (plain / "f.bin").read_bytes(), cmd
    assert os.stat(d / "f.bin").st_size == 100000


def _read_other(path: Path, off: int) -> bytes:
    """Read through a second descriptor of the same file."""
    with open(path, "rb") as f:
        f.seek(off)
        return f.read(4096)


def _snapshot(root: Path) -> dict[str, bytes | None]:
    out: dict[str, bytes | None] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        out.update({os.path.normpath(os.path.join(rel, n)): None for n in dirnames})
        out.update({os.path.normpath(os.path.join(rel, n)): Path(dirpath, n).read_bytes() for n in filenames})
    return out


def test_rename_exchange_swaps_files_and_directories_like_a_local_filesystem(
    shared_mount: Mount,  # noqa: F811
    d: Path,
    tmp_path: Path,
) -> None:
    results = []
    for root in (d, tmp_path / "plain"):  # the same steps on a plain directory must end the same
        (root / "dir1" / "sub").mkdir(parents=True)
        (root / "dir1" / "sub" / "deep.txt").write_text("deep")
        (root / "dir2").mkdir()
        (root / "dir2" / "two.txt").write_text("two")
        (root / "f.txt").write_text("file f")
        (root / "g.txt").write_text("file g")
        bases = {n: os.getxattr(root / n, "system.fsobj.base_hash") for n in ("f.txt", "g.txt")} if root == d else {}
        exchange(root / "f.txt", root / "g.txt")
        exchange(root / "dir1", root / "dir2")
        exchange(root / "f.txt", root / "dir2")  # a file and a directory
        errors = []
        for a, b in (("f.txt", "f.txt/sub"), ("g.txt", "missing")):
            with pytest.raises(OSError) as e:
                exchange(root / a, root / b)
            errors.append(e.value.errno)
        results.append((_snapshot(root), errors))
        if bases:  # each object kept its series: the swapped names carry the old baseHashes
            assert os.getxattr(root / "g.txt", "system.fsobj.base_hash") == bases["f.txt"]
            assert os.getxattr(root / "dir2", "system.fsobj.base_hash") == bases["g.txt"]
    assert results[0] == results[1]
    assert results[0][1] == [errno.EINVAL, errno.ENOENT]
    assert results[0][0]["f.txt/sub/deep.txt"] == b"deep" and results[0][0]["dir2"] == b"file g"
    keys = {e["sort_key"] for e in json.loads(shared_mount.world.fsobj("ls", "p", "--prefix", d.name, "--json").stdout)}
    assert f"{d.name}/f.txt/sub/deep.txt" in keys and f"{d.name}/dir1/two.txt" in keys


def test_getfattr_and_setfattr(shared_mount: Mount, d: Path) -> None:  # noqa: F811
    f = d / "photo.jpg"
    f.write_bytes(b"\xff\xd8" + bytes(1000))
    dump = sh(f"getfattr -d -m - '{f}'")
    for name in (
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
    ):
        assert f"system.fsobj.{name}=" in dump, name
    assert os.getxattr(f, "system.fsobj.checksum_type") == b"blake3-blocks-1m"
    assert sh(f"{FSOBJ} checksum '{f}'").split()[0].encode() == os.getxattr(f, "system.fsobj.checksum")
    assert os.getxattr(f, "system.fsobj.length") == b"1002"
    assert os.getxattr(f, "system.fsobj.sort_key") == f"{d.name}/photo.jpg".encode()
    sh(f"setfattr -n user.camera -v X100 '{f}'")
    assert sh(f"getfattr --only-values -n user.camera '{f}'") == "X100"
    assert os.getxattr(f, "system.fsobj.version") == b"2"
    sync_dir(d)
    info = json.loads(shared_mount.world.fsobj("get", "p", f"{d.name}/photo.jpg", "--info").stdout)
    assert ["camera", "X100"] in info["headers"]
    sh(f"setfattr -x user.camera '{f}'")
    assert "user.camera" not in os.listxattr(f)
    facts_changes = (
        lambda: os.setxattr(f, "system.fsobj.version", b"9"),
        lambda: os.removexattr(f, "system.fsobj.sort_key"),
    )
    for change in facts_changes:
        with pytest.raises(OSError) as e:
            change()
        assert e.value.errno == errno.ENOTSUP  # read-only facts, as other filesystems refuse names they do not store
    assert os.getxattr(f, "system.fsobj.version") == b"3"
    assert os.getxattr(f, "system.fsobj.sort_key") == f"{d.name}/photo.jpg".encode()
    v1 = versions_of(f)[0]
    assert os.getxattr(v1, "system.fsobj.version") == b"1"
    with pytest.raises(OSError):
        os.setxattr(v1, "user.camera", b"no")
    assert os.getxattr(d, "system.fsobj.partition_id") == os.getxattr(f, "system.fsobj.partition_id")
    assert b"tester" in os.getxattr(d.parent, "system.fsobj.owner_name")


def test_attributes_of_a_file_still_open_for_writing_name_what_was_written(d: Path) -> None:
    """close(2) returns before the kernel's RELEASE reaches the daemon, so a `getfattr`
    right after `cp` can meet a file that is still open: it commits what was written."""
    f = d / "open.txt"
    with open(f, "wb") as w:
        w.write(b"first")
        w.flush()
        assert os.getxattr(f, "system.fsobj.length") == b"5"
        assert os.getxattr(f, "system.fsobj.version") == b"1"
        w.write(b" and more")
    assert os.getxattr(f, "system.fsobj.length") == b"14"
    assert os.getxattr(f, "system.fsobj.version") == b"2"
    assert [p.read_bytes() for p in versions_of(f)] == [b"first", b"first and more"]


def test_symlinks_special_files_and_hard_links(d: Path) -> None:
    sh(f"ln -s ../target '{d}/sym'")
    assert os.readlink(d / "sym") == "../target"
    # the kernel hides user.* names of symlinks, not system.* ones: a link shows its facts
    assert os.getxattr(d / "sym", "system.fsobj.sort_key", follow_symlinks=False) == f"{d.name}/sym".encode()
    sh(f"mkfifo '{d}/fifo'")
    assert stat.S_ISFIFO(os.lstat(d / "fifo").st_mode)
    (d / "file").write_text("x")
    with pytest.raises(OSError) as e:
        os.link(d / "file", d / "hard")
    assert e.value.errno == errno.EPERM
    os.mknod(d / "dev", stat.S_IFCHR | 0o600, os.makedev(1, 3))
    st = os.lstat(d / "dev")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(1, 3)


def test_chmod_chown_touch_are_versions(d: Path) -> None:
    f = d / "m.txt"
    f.write_text("m")
    # the kernel reports the close (RELEASE) asynchronously: a chmod that overtakes it is
    # folded into the write's version (docs/mount.md); reading an attribute commits first
    assert os.getxattr(f, "system.fsobj.version") == b"1"
    os.chmod(f, 0o640)
    os.chown(f, 1234, 5678)
    os.utime(f, ns=(1_000_000_000, 2_000_000_000))
    st = os.stat(f)
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_mtime_ns) == (0o640, 1234, 5678, 2_000_000_000)
    assert os.getxattr(f, "system.fsobj.version") == b"4"
    assert all(p.read_text() == "m" for p in versions_of(f))
    v1 = os.stat(versions_of(f)[0])  # history is readable by exactly those who may read the file
    assert (stat.S_IMODE(v1.st_mode), v1.st_uid, v1.st_gid) == (0o440, 1234, 5678)
    sh(f"touch -m -d '2001-02-03 04:05:06Z' '{f}'")
    assert os.stat(f).st_mtime == 981173106
    os.chmod(d, 0o750)
    assert stat.S_IMODE(os.stat(d).st_mode) == 0o750


def test_unlink_while_open_keeps_the_handle_working(d: Path) -> None:
    f = d / "open.txt"
    f.write_text("still here\n")
    with open(f) as h:
        os.unlink(f)
        assert not f.exists()
        assert h.read() == "still here\n"
        assert os.fstat(h.fileno()).st_size == 11


def test_objects_by_hash(d: Path) -> None:
    f = d / "h.txt"
    f.write_text("one")
    v1 = os.getxattr(f, "system.fsobj.absolute_hash").decode()
    f.write_text("two")
    base = os.getxattr(f, "system.fsobj.base_hash").decode()
    objects = d.parent / ".objects"
    assert v1 == base  # the first version's absoluteHash is the series' baseHash
    assert (objects / base).read_text() == "two"  # a baseHash means the series: its latest version
    assert (objects / f"{v1}@exact").read_text() == "one"
    v2 = os.getxattr(f, "system.fsobj.absolute_hash").decode()
    assert (objects / v2).read_text() == "two"
    assert not (objects / ("0" * 64)).exists()
    assert os.listdir(objects) == []


def test_escaped_names_and_ties(shared_mount: Mount, d: Path) -> None:  # noqa: F811
    w = shared_mount.world
    w.fsobj("put", "p", f"{d.name}/same", "-", input=b"first")
    w.fsobj("put", "p", f"{d.name}/same", "-", "--new", input=b"second")
    w.fsobj("put", "p", f"{d.name}//double", "-", input=b"escaped")
    import time

    time.sleep(1.2)  # the mount notices others' changes within its refresh interval
    names = sorted(os.listdir(d))
    assert "same" in names and len([n for n in names if n.startswith("same~")]) == 1
    assert sorted((d / n).read_text() for n in names if n.startswith("same")) == ["first", "second"]
    root_names = os.listdir(d.parent)
    escaped = f"{d.name}%2F%2Fdouble"
    assert escaped in root_names
    assert (d.parent / escaped).read_text() == "escaped"


def test_mkdir_in_the_root_creates_a_partition(shared_mount: Mount) -> None:  # noqa: F811
    (shared_mount.path / "newpart").mkdir()
    (shared_mount.path / "newpart" / "f").write_text("in a new partition")
    out = shared_mount.world.fsobj("partition", "ls").stdout.decode()
    assert "newpart" in out
    with pytest.raises(OSError) as e:
        (shared_mount.path / "plainfile").write_text("x")
    assert e.value.errno == errno.EPERM


def test_rmdir_of_a_partition_only_when_empty(shared_mount: Mount) -> None:  # noqa: F811
    part = shared_mount.path / "gone"
    part.mkdir()
    (part / "d").mkdir()
    (part / "d" / "f").write_text("x")
    os.chmod(part, 0o750)  # gives the partition root a marker
    with pytest.raises(OSError) as e:
        part.rmdir()
    assert e.value.errno == errno.ENOTEMPTY
    (part / "d" / "f").unlink()  # its tombstone waits in the group commit
    (part / "d").rmdir()
    part.rmdir()
    assert "gone" not in os.listdir(shared_mount.path)
    assert "gone" not in shared_mount.world.fsobj("partition", "ls").stdout.decode()
    with pytest.raises(OSError) as e:
        (shared_mount.path / "nosuch").rmdir()
    assert e.value.errno == errno.ENOENT
    (shared_mount.path / "gone").mkdir()  # the name is free again
    assert os.listdir(shared_mount.path / "gone") == []


def test_mmap_shared_writes_reach_the_file(d: Path) -> None:
    import mmap

    f = d / "mapped.bin"
    f.write_bytes(bytes(20000))
    fd = os.open(f, os.O_RDWR)
    try:
        with mmap.mmap(fd, 20000, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE) as mm:
            mm[100:105] = b"hello"
            mm[15000:15003] = b"end"
            mm.flush()
    finally:
        os.close(fd)
    data = f.read_bytes()
    assert (data[100:105], data[15000:15003], len(data)) == (b"hello", b"end", 20000)


def test_tar_extract_keeps_modes_times_and_links(d: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    make_tree(src)
    os.utime(src / "tiny.txt", ns=(1_500_000_000_000_000_000, 1_500_000_000_000_000_000))
    sh(f"tar -C '{src}' -cf - . | tar -C '{d}' -xpf -")
    sh(f"diff -r --no-dereference '{src}' '{d}'")
    assert os.stat(d / "tiny.txt").st_mtime_ns == 1_500_000_000_000_000_000
    assert stat.S_IMODE(os.stat(d / "exec.sh").st_mode) == 0o755


def test_rsync_keeps_everything_and_a_second_run_finds_nothing_to_do(d: Path, tmp_path: Path) -> None:
    """rsync writes a temporary file, sets its mtime, chmods it through a new descriptor
    and renames it over the name: every file keeps content, mode and mtime, no conflict
    copy appears, and a second run (sizes and mtimes compared) transfers nothing."""
    src = tmp_path / "src"
    src.mkdir()
    make_tree(src)
    (src / "many").mkdir()
    for i in range(300):
        f = src / "many" / f"f{i:03}"
        f.write_bytes(b"%d\n" % i * (i % 5))
        f.chmod(0o600 if i % 2 else 0o640)
        os.utime(f, ns=(1_600_000_000_000_000_000 + i, 1_600_000_000_000_000_000 + i))
    dst = d / "mirror"
    sh(f"rsync -a '{src}/' '{dst}/'")
    sh(f"diff -r --no-dereference '{src}' '{dst}'")
    assert [p for p in dst.rglob("*") if ".conflict-" in p.name] == []
    for f in (src / "many").iterdir():
        got, want = os.stat(dst / "many" / f.name), os.stat(f)
        assert (got.st_mtime_ns, got.st_mode) == (want.st_mtime_ns, want.st_mode), f.name
    assert sh(f"rsync -a -i '{src}/' '{dst}/'") == ""
    # the temporary file's fchmod, mtime, chmod and rename are part of its first version
    # (each was a version of its own, committed at once, before); a file that the group
    # commit took between rsync's close and its utime has them as versions of their own
    counts = [len(versions_of(dst / "many" / f"f{i:03}")) for i in range(300)]
    assert sum(c == 1 for c in counts) >= 240, counts

    (src / "tiny.txt").write_text("changed\n")
    (src / "many" / "f007").unlink()
    out = sh(f"rsync -a -i --delete '{src}/' '{dst}/'")
    assert {line.split(maxsplit=1)[1] for line in out.splitlines()} == {"tiny.txt", "many/f007", "many/"}, out
    sh(f"diff -r --no-dereference '{src}' '{dst}'")
    assert [p.read_text() for p in versions_of(dst / "tiny.txt")][-1] == "changed\n"


def test_copy_tools_keep_user_headers_and_pass_over_the_facts(
    shared_mount: Mount,  # noqa: F811
    d: Path,
    tmp_path: Path,
) -> None:
    """``rsync -aX``, ``cp -a``, ``cp --preserve=all``, ``mv`` between partitions and
    ``tar --xattrs`` copy the user headers, into the mount and out of it, and leave the
    facts of a version (``system.fsobj.*``) behind, without a word. When the facts were
    ``user.fsobj.*``, every ``rsync -aX`` into the mount failed with exit 23 (it removes
    destination attributes its source lacks), mv, tar and cp --preserve=all printed one
    error per fact, and copies out of the mount carried stale hashes."""

    def quiet(cmd: str) -> None:
        r = subprocess.run(cmd, shell=True, capture_output=True, text=True)
        assert (r.returncode, r.stderr) == (0, ""), cmd

    src = tmp_path / "src"
    src.mkdir()
    (src / "a").write_text("one")
    os.setxattr(src / "a", "user.tag", b"t1")
    (src / "b").write_text("two")
    dst = d / "mirror"
    quiet(f"rsync -aX '{src}/' '{dst}/'")
    assert os.getxattr(dst / "a", "user.tag") == b"t1"
    assert os.getxattr(dst / "a", "system.fsobj.version") == b"1"
    os.utime(src / "a", ns=(1, 1))  # the second run sends a again, and compares b's attributes
    quiet(f"rsync -aX '{src}/' '{dst}/'")
    assert (dst / "a").stat().st_mtime_ns == 1 and os.getxattr(dst / "a", "user.tag") == b"t1"

    out = tmp_path / "out"
    quiet(f"rsync -aX '{dst}/' '{out}/'")
    quiet(f"cp -a '{dst}/a' '{tmp_path}/cp-a'")
    quiet(f"tar --xattrs -C '{d}' -cf '{tmp_path}/t.tar' mirror")
    quiet(f"mkdir '{tmp_path}/untar' && tar --xattrs -C '{tmp_path}/untar' -xf '{tmp_path}/t.tar'")
    for copy in (out / "a", tmp_path / "cp-a", tmp_path / "untar" / "mirror" / "a"):
        assert os.listxattr(copy) == ["user.tag"], copy
    assert os.listxattr(out / "b") == []

    other = shared_mount.path / "q"  # a second partition: rename(2) gives EXDEV, mv copies
    other.mkdir(exist_ok=True)
    quiet(f"cp --preserve=all '{dst}/a' '{other}/{d.name}-cp'")  # reads the facts, cannot set them
    quiet(f"mv '{dst}/a' '{other}/{d.name}-mv'")
    quiet(f"mkdir '{other}/{d.name}-tar' && tar --xattrs -C '{other}/{d.name}-tar' -xf '{tmp_path}/t.tar'")
    for copy in (other / f"{d.name}-cp", other / f"{d.name}-mv", other / f"{d.name}-tar" / "mirror" / "a"):
        assert copy.read_text() == "one"
        assert os.getxattr(copy, "user.tag") == b"t1"
        assert os.getxattr(copy, "system.fsobj.partition_id") != os.getxattr(d, "system.fsobj.partition_id")


@pytest.mark.skipif(not shutil.which("vim"), reason="needs vim")
def test_vim_edits_a_file_in_place(d: Path, tmp_path: Path) -> None:
    f = d / "v.txt"
    f.write_text("line one\nline two\n")
    env = dict(os.environ, HOME=str(tmp_path))
    sh(f"vim -u NONE -i NONE -es -c '%s/two/2/' -c 'set backup' -c wq '{f}'", env=env)
    assert f.read_text() == "line one\nline 2\n"
    assert [p.name for p in d.iterdir()] in (["v.txt"], ["v.txt", "v.txt~"])
    assert [p.read_text() for p in versions_of(f)][-1] == "line one\nline 2\n"


def test_concurrent_out_of_order_reads_of_a_big_file(d: Path) -> None:
    """Eight threads read a committed 24 MiB file in shuffled 256 KiB pieces: every piece
    matches (read-ahead started for one reader is never cancelled under another)."""
    from concurrent.futures import ThreadPoolExecutor

    data = random.Random(3).randbytes(24 * 1024 * 1024)
    f = d / "big.bin"
    f.write_bytes(data)
    piece = 256 * 1024
    offsets = list(range(0, len(data), piece))
    for attempt in range(3):
        random.Random(attempt).shuffle(offsets)
        fd = os.open(f, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # the kernel's cached pages go: reads reach the daemon
            with ThreadPoolExecutor(8) as pool:
                pieces = pool.map(os.pread, [fd] * len(offsets), [piece] * len(offsets), offsets)
                got = dict(zip(offsets, pieces, strict=True))
        finally:
            os.close(fd)
        assert all(got[off] == data[off : off + piece] for off in offsets), f"attempt {attempt}"


def test_streamed_big_writes_with_reads_and_a_seek_back_while_open(d: Path) -> None:
    """A file written sequentially past the in-memory staging (4 MiB) is streamed, the spill
    file filled by the stream's thread: a read while it is open, a write back at offset 0
    and more appends all land byte for byte, and so does a plain sequential copy."""
    rnd = random.Random(11)
    piece = 1024 * 1024
    expected = bytearray()
    f = d / "streamed.bin"
    with open(f, "wb", buffering=0) as w:
        for _ in range(9):
            block = rnd.randbytes(piece)
            w.write(block)
            expected += block
        with open(f, "rb") as r:  # a read of the open file: the stream's pending bytes must be there
            r.seek(6 * piece + 123)
            assert r.read(piece) == bytes(expected[6 * piece + 123 : 7 * piece + 123])
        for _ in range(3):
            block = rnd.randbytes(piece)
            w.write(block)
            expected += block
        w.seek(0)
        w.write(b"header!")  # not an append: the stream stops, the spill file must be complete
        expected[0:7] = b"header!"
        w.seek(0, os.SEEK_END)
        w.write(b"tail")
        expected += b"tail"
    assert f.read_bytes() == bytes(expected)
    g = d / "seek-back.bin"
    with open(g, "wb", buffering=0) as w:
        head = rnd.randbytes(9 * piece)
        w.write(head)
        w.seek(0)
        w.write(b"patched")  # while the stream's thread may still hold appends for the spill file
    assert g.read_bytes() == b"patched" + head[7:]
    sequential = rnd.randbytes(13 * piece + 5)
    (d / "sequential.bin").write_bytes(sequential)
    assert (d / "sequential.bin").read_bytes() == sequential
    assert versions_of(f)[-1].read_bytes() == bytes(expected)


def test_a_small_edit_of_a_big_file_is_the_version_a_whole_write_gives(d: Path, tmp_path: Path) -> None:
    """A 4 KiB overwrite, an append and a truncate of a 12 MiB file commit spliced payloads
    (only the chunks around the change are cut again): byte for byte the edited content,
    with the checksum and chunk count of the same bytes copied in whole; ``fsobj
    checksum`` of the local copy prints that checksum."""
    local = tmp_path / "big.bin"
    local.write_bytes(random.Random(11).randbytes(12 * 1024 * 1024))
    f = d / "big.bin"
    sh(f"cp '{local}' '{f}'")
    patch = random.Random(12).randbytes(4096)
    (tmp_path / "patch").write_bytes(patch)
    steps = [
        f"dd if='{tmp_path}/patch' of='{{}}' bs=4096 count=1 seek=1500 conv=notrunc status=none",
        "printf 'appended\\n' >> '{}'",
        f"truncate -s {12 * 1024 * 1024 - 7777} '{{}}'",
    ]
    for n, step in enumerate(steps, start=2):
        sh(step.format(local))
        sh(step.format(f))
        assert os.getxattr(f, "system.fsobj.version") == str(n).encode()
        sh(f"cmp '{local}' '{f}'")
        whole = d / f"whole{n}.bin"
        sh(f"cp '{local}' '{whole}'")
        assert os.getxattr(f, "system.fsobj.checksum") == sh(f"{FSOBJ} checksum '{local}'").split()[0].encode()
        for name in ("checksum", "chunks", "length"):
            assert os.getxattr(f, f"system.fsobj.{name}") == os.getxattr(whole, f"system.fsobj.{name}"), name
