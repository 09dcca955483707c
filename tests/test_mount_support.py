"""Fixtures and helpers for the real-mount tests (tests/test_mount_*.py); holds no tests.

A mount runs ``fsobj mount --foreground`` in a subprocess; the fixture waits
until the mount point is mounted and, in teardown, always lazily unmounts and
kills the daemon by PID if it is still alive. The identity passphrase goes
through ``FSOBJ_PASSPHRASE``; the cache directory (staging, log) lives under
the test's temporary directory.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from fsobj import identity as identity_files
from fsobj.blobs.local import fsync_dir
from fsobj.store import Store

PASSPHRASE = "mount-test-passphrase"
FSOBJ = str(Path(sys.executable).with_name("fsobj"))
MOUNT_TIMEOUT_S = 20.0

needs_fuse = pytest.mark.skipif(
    not os.path.exists("/dev/fuse") or shutil.which("fusermount3") is None, reason="needs /dev/fuse and fusermount3"
)


def exchange(a: Path | str, b: Path | str) -> None:
    """renameat2(a, b, RENAME_EXCHANGE), what ``mv --exchange`` of newer coreutils calls."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.renameat2(-100, os.fsencode(a), -100, os.fsencode(b), 2) != 0:  # AT_FDCWD, RENAME_EXCHANGE
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), str(a))


@dataclass
class World:
    """A store with an identity and one partition ``p``, and the environment to reach them."""

    root: Path
    store: Path
    identity: Path
    env: dict[str, str]
    mounts: list[Mount] = field(default_factory=list)

    def fsobj(self, *args: str, input: bytes | None = None, check: bool = True) -> subprocess.CompletedProcess[bytes]:
        """Run the fsobj CLI on this store."""
        result = subprocess.run([FSOBJ, "-s", str(self.store), *args], env=self.env, input=input, capture_output=True)
        if check and result.returncode != 0:
            raise AssertionError(f"fsobj {' '.join(args)} failed ({result.returncode}): {result.stderr.decode()}")
        return result

    def mount(self, name: str = "mnt", *options: str) -> Mount:
        mp = self.root / name
        mp.mkdir(exist_ok=True)
        log = self.root / f"{name}.log"
        args = [FSOBJ, "mount", str(self.store), str(mp), "--foreground", "--log", str(log)]
        for opt in options:
            args += ["-o", opt]
        out = open(self.root / f"{name}.out", "wb")  # closed in Mount.stop
        proc = subprocess.Popen(args, env=self.env, stdout=out, stderr=subprocess.STDOUT)
        m = Mount(self, mp, proc, log, out)
        self.mounts.append(m)
        m.wait_mounted()
        return m

    def close(self) -> None:
        for m in reversed(self.mounts):
            m.stop(graceful=False)

    def daemon_errors(self) -> list[str]:
        """ERROR lines and tracebacks the daemons logged (none are expected in these tests)."""
        lines = []
        for m in self.mounts:
            if m.log.exists():
                lines += [ln for ln in m.log.read_text(errors="replace").splitlines() if " ERROR " in ln]
        return lines


@dataclass
class Mount:
    world: World
    path: Path
    proc: subprocess.Popen[bytes]
    log: Path
    out: object

    @property
    def part(self) -> Path:
        """The partition ``p`` as a directory."""
        return self.path / "p"

    def wait_mounted(self) -> None:
        deadline = time.monotonic() + MOUNT_TIMEOUT_S
        while time.monotonic() < deadline:
            if os.path.ismount(self.path):
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        self.stop(graceful=False)
        raise AssertionError(f"mount did not come up: {self.output()}")

    def output(self) -> str:
        p = self.path.with_suffix(".out")
        return p.read_text(errors="replace")[-4000:] if p.exists() else ""

    def stop(self, graceful: bool = True, timeout: float = 30.0) -> int | None:
        """SIGTERM (commit, then unmount) and wait; always leaves nothing mounted or running."""
        if graceful and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        subprocess.run(["fusermount3", "-u", "-z", str(self.path)], capture_output=True)
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.out.close()  # type: ignore[attr-defined]
        return self.proc.returncode

    def kill9(self) -> None:
        self.proc.kill()
        self.proc.wait(10)
        subprocess.run(["fusermount3", "-u", "-z", str(self.path)], capture_output=True)


def make_world(root: Path, partitions: tuple[str, ...] = ("p",)) -> World:
    root.mkdir(parents=True, exist_ok=True)
    ident_path = root / "identity.json"
    ident = identity_files.create(ident_path, "tester", PASSPHRASE)
    store_path = root / "store"
    Store.init(store_path)
    with Store.open(store_path, ident) as s:
        for name in partitions:
            s.create_partition(name)
    env = dict(os.environ)
    env.update(
        FSOBJ_PASSPHRASE=PASSPHRASE,
        FSOBJ_IDENTITY=str(ident_path),
        XDG_CACHE_HOME=str(root / "cache"),
        LC_ALL="C.UTF-8",
    )
    return World(root, store_path, ident_path, env)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    w = make_world(tmp_path / "w")
    try:
        yield w
    finally:
        w.close()
    assert not w.daemon_errors(), "\n".join(w.daemon_errors())


@pytest.fixture(scope="module")
def shared_mount(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mount]:
    """One mount for a whole module; each test works in its own directory of partition ``p``."""
    w = make_world(tmp_path_factory.mktemp("shared"))
    try:
        yield w.mount()
    finally:
        w.close()
    assert not w.daemon_errors(), "\n".join(w.daemon_errors())


def sh(cmd: str, cwd: Path | None = None, check: bool = True, env: dict[str, str] | None = None) -> str:
    """Run a shell command line with ordinary tools; return its stdout."""
    r = subprocess.run(cmd, shell=True, cwd=cwd, capture_output=True, text=True, env=env)
    if check and r.returncode != 0:
        raise AssertionError(f"{cmd!r} failed ({r.returncode}): {r.stderr}")
    return r.stdout


def wait_for(pred: object, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def sync_dir(path: Path) -> None:
    """fsync a directory: the mount commits every closed file still waiting in its group commit."""
    fsync_dir(path)


def write_synced(path: Path, data: bytes) -> None:
    """Write, fsync and close: the version is committed and durable when this returns."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
