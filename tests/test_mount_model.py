"""A Hypothesis state machine applies random file operations (create, write at
offset, truncate, rename, rename with exchange, unlink, mkdir, rmdir) to the mount and to a plain
directory, and checks that both give the same results and the same tree; at the end of each
run, that the store itself (as the CLI lists it, once the group commit is drained) holds the
plain directory's files: the mount's own view could hide a change it never committed."""

from __future__ import annotations

import errno
import itertools
import json
import os
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test
from test_mount_support import Mount, World, exchange, needs_fuse, shared_mount, sync_dir  # noqa: F401

pytestmark = needs_fuse

NAMES = st.sampled_from(["a", "b", "c"])
DIRS = st.sampled_from(["", "d", "d/e", "f"])
PATHS = st.builds(lambda d, n: f"{d}/{n}" if d else n, DIRS, NAMES)
ANY_PATH = st.one_of(PATHS, DIRS.filter(bool))
DATA = st.binary(max_size=3000)
#: errno values that mean the same refusal (filesystems differ in which one they pick)
SAME = [{errno.ENOTEMPTY, errno.EEXIST}]


def outcome(fn: object, *args: object) -> int | None:
    try:
        fn(*args)  # type: ignore[operator]
    except OSError as e:
        return e.errno
    return None


def same(a: int | None, b: int | None) -> bool:
    return a == b or any(a in s and b in s for s in SAME)


def snapshot(root: Path) -> dict[str, bytes | None]:
    out: dict[str, bytes | None] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        for n in dirnames:
            out[os.path.normpath(os.path.join(rel, n))] = None
        for n in filenames:
            with open(os.path.join(dirpath, n), "rb") as f:
                out[os.path.normpath(os.path.join(rel, n))] = f.read()
    return out


def write_at(path: Path, off: int, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, data, off)
    finally:
        os.close(fd)


class MountAgreesWithPlainDirectory(RuleBasedStateMachine):
    mount_root: Path
    plain_root: Path
    world: World
    counter = itertools.count()

    def __init__(self) -> None:
        super().__init__()
        n = next(self.counter)
        self.m = self.mount_root / f"run{n}"
        self.p = self.plain_root / f"run{n}"
        self.m.mkdir()
        self.p.mkdir()

    def both(self, fn: object, *paths_and_args: object, paths: int = 1) -> None:
        args_m = [self.m / a if i < paths else a for i, a in enumerate(paths_and_args)]
        args_p = [self.p / a if i < paths else a for i, a in enumerate(paths_and_args)]
        want = outcome(fn, *args_p)
        got = outcome(fn, *args_m)
        assert same(got, want), f"{getattr(fn, '__name__', fn)}{paths_and_args}: mount {got}, plain {want}"

    @rule(path=PATHS, data=DATA)
    def create(self, path: str, data: bytes) -> None:
        self.both(Path.write_bytes, path, data)

    @rule(path=PATHS, off=st.integers(0, 5000), data=DATA)
    def write(self, path: str, off: int, data: bytes) -> None:
        self.both(write_at, path, off, data)

    @rule(path=PATHS, size=st.integers(0, 6000))
    def truncate(self, path: str, size: int) -> None:
        self.both(os.truncate, path, size)

    @rule(src=ANY_PATH, dst=ANY_PATH)
    def rename(self, src: str, dst: str) -> None:
        self.both(os.rename, src, dst, paths=2)

    @rule(a=ANY_PATH, b=ANY_PATH)
    def exchange(self, a: str, b: str) -> None:
        self.both(exchange, a, b, paths=2)

    @rule(path=PATHS)
    def unlink(self, path: str) -> None:
        self.both(os.unlink, path)

    @rule(path=DIRS.filter(bool))
    def mkdir(self, path: str) -> None:
        self.both(os.mkdir, path)

    @rule(path=ANY_PATH)
    def rmdir(self, path: str) -> None:
        self.both(os.rmdir, path)

    @invariant()
    def trees_agree(self) -> None:
        assert snapshot(self.m) == snapshot(self.p)

    def teardown(self) -> None:
        sync_dir(self.m)  # commits what waits in the group commit
        prefix = f"{self.m.relative_to(self.mount_root)}/"
        listing = json.loads(self.world.fsobj("ls", "p", "--prefix", prefix, "--json").stdout)
        stored = {e["sort_key"][len(prefix) :]: e["length"] for e in listing if not e["sort_key"].endswith("/")}
        plain = {str(f.relative_to(self.p)): f.stat().st_size for f in self.p.rglob("*") if f.is_file()}
        assert stored == plain


def test_random_operations_agree_with_a_plain_directory(shared_mount: Mount, tmp_path: Path) -> None:  # noqa: F811
    MountAgreesWithPlainDirectory.mount_root = shared_mount.part
    MountAgreesWithPlainDirectory.plain_root = tmp_path
    MountAgreesWithPlainDirectory.world = shared_mount.world
    run_state_machine_as_test(
        MountAgreesWithPlainDirectory,
        settings=settings(
            max_examples=80,
            stateful_step_count=40,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        ),
    )
    assert next(MountAgreesWithPlainDirectory.counter) > 10  # it really ran
