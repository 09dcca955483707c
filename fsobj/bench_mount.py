"""``fsobj bench --mount``: the mount against gocryptfs and a plain directory.

Owns: the filesystem-level benchmark of issue 3. The same work runs, in one
run and on the same disk, on a plain directory, a gocryptfs mount (if the
``gocryptfs`` binary is installed) and an fsobj mount, with ordinary tools
(``cp``, ``cat``, ``ls -l``) and plain system calls; each figure is reported
with its ratio to gocryptfs, and for the daemons the CPU they spent on the big
file and on the small-file work. Cold reads remount and drop the page cache (root).
Two more targets measure what the binding allows, each on the work it can do:
``null`` (``fsobj.bench_null``, files in memory) on the small files, ``ceiling``
(``fsobj.bench_ceiling``, the least a cold read of fsobj's format takes) on the
cold reads; their ratios to gocryptfs share the last column of the table.

The daemons it starts run the ``fsobj`` this process imported, whatever the
working directory: ``python -m`` puts the working directory first on
``sys.path``, so a daemon started from a checkout would otherwise run that
checkout's code (``Daemon.env``, and the daemons' working directory is their
target's own).
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from fsobj import identity as identity_files
from fsobj.bench import MIB, PASS, _drop_caches, _make_file
from fsobj.blobs.local import fsync_dir
from fsobj.store import Store

FileOps = Callable[[Path], None]

#: the directory that holds the ``fsobj`` package this process runs
SOURCE = str(Path(__file__).resolve().parent.parent)
BIG = "big.bin"
COLD_READS = 3  # cold reads of the big file per target and round, interleaved across targets


class Target:
    """One filesystem under test: how to mount it and where its files go."""

    def __init__(self, name: str, root: Path) -> None:
        self.name = name
        self.root = root.resolve()  # the daemons run in it: every path they get is absolute
        self.mnt = self.root / "mnt"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def work(self) -> Path:
        return self.mnt

    def mount(self) -> None:
        self.mnt.mkdir(parents=True, exist_ok=True)

    def unmount(self) -> None:
        pass

    def peak_rss_mib(self) -> float | None:
        return None

    def cpu_s(self) -> float | None:
        """CPU seconds used so far by the processes that serve the mount (None: no daemon)."""
        return None


class Plain(Target):
    pass


def _tree_cpu_s(pid: int) -> float:
    """User and system CPU seconds of process ``pid`` and of its descendants alive now
    (the fsobj daemon and its commit helper)."""
    stats: dict[int, tuple[int, int]] = {}  # pid -> (parent, clock ticks)
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            stats[int(entry)] = (int(fields[1]), int(fields[11]) + int(fields[12]))
    tree: set[int] = set()
    todo = [pid]
    while todo:
        p = todo.pop()
        if p in stats and p not in tree:
            tree.add(p)
            todo += [c for c, (parent, _) in stats.items() if parent == p]
    return sum(stats[p][1] for p in tree) / os.sysconf("SC_CLK_TCK")


class Gocryptfs(Target):
    def __init__(self, root: Path) -> None:
        super().__init__("gocryptfs", root)
        self.cipher = self.root / "cipher"
        self.pid: int | None = None

    def mount(self) -> None:
        super().mount()
        pw = self.root / "pw"
        if not self.cipher.exists():
            self.cipher.mkdir()
            pw.write_text("bench\n")
            subprocess.run(["gocryptfs", "-init", "-q", "-passfile", str(pw), str(self.cipher)], check=True)
        subprocess.run(
            ["gocryptfs", "-q", "-nosyslog", "-passfile", str(pw), str(self.cipher), str(self.mnt)], check=True
        )
        self.pid = self._daemon_pid()

    def _daemon_pid(self) -> int | None:
        """The gocryptfs process serving this mount (it daemonizes: found by its arguments)."""
        want = os.fsencode(self.mnt)
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    args = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
                except OSError:
                    continue
                if args and os.path.basename(args[0]) == b"gocryptfs" and want in args:
                    return int(entry)
        return None

    def cpu_s(self) -> float | None:
        return _tree_cpu_s(self.pid) if self.pid is not None else None

    def unmount(self) -> None:
        subprocess.run(["fusermount3", "-u", str(self.mnt)], check=True)
        self.pid = None


class Daemon(Target):
    """A target served by a daemon this process starts, and always stops."""

    def __init__(self, name: str, root: Path) -> None:
        super().__init__(name, root)
        path = os.environ.get("PYTHONPATH")
        self.env = dict(os.environ, PYTHONPATH=SOURCE + (os.pathsep + path if path else ""))

    def _start(self, args: list[str], timeout: float = 60.0) -> None:
        self.proc = subprocess.Popen(
            args, env=self.env, cwd=self.root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + timeout
        try:
            while not os.path.ismount(self.mnt):
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the {self.name} mount did not come up")
                time.sleep(0.05)
        except BaseException:
            self._abandon()  # a daemon that is late or half-started must not outlive us
            raise

    def _stop(self, unmount: list[str]) -> None:
        assert self.proc is not None
        subprocess.run(unmount, env=self.env, cwd=self.root, check=False)
        try:
            self.proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            self._abandon()
        self.proc = None

    def cpu_s(self) -> float | None:
        return _tree_cpu_s(self.proc.pid) if self.proc is not None else None

    def _abandon(self) -> None:
        """Lazily unmount (if mounted) and kill the daemon."""
        assert self.proc is not None
        if os.path.ismount(self.mnt):
            subprocess.run(["fusermount3", "-u", "-z", str(self.mnt)], check=False)
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.proc = None


class Fsobj(Daemon):
    def __init__(self, root: Path) -> None:
        super().__init__("fsobj", root)
        self.store = self.root / "store"
        self.ident = self.root / "identity.json"
        self.env.update(FSOBJ_PASSPHRASE=PASS, FSOBJ_IDENTITY=str(self.ident))
        self.hwm_kib = 0

    @property
    def work(self) -> Path:
        return self.mnt / "bench"

    def mount(self) -> None:
        super().mount()
        if not self.store.exists():
            Store.init(self.store)
            ident = identity_files.create(self.ident, "bench", PASS)
            with Store.open(self.store, ident) as s:
                s.create_partition("bench")
        # its log and staging go with the run's directory, not to the user's cache
        cache = f"cache_dir={self.root / 'cache'}"
        self._start([sys.executable, "-m", "fsobj", "mount", "-f", "-o", cache, str(self.store), str(self.mnt)])

    def unmount(self) -> None:
        assert self.proc is not None
        self.hwm_kib = max(self.hwm_kib, _vm_hwm_kib(self.proc.pid))
        self._stop([sys.executable, "-m", "fsobj", "umount", str(self.mnt)])

    def peak_rss_mib(self) -> float | None:
        return round(self.hwm_kib / 1024, 1)


class NullFs(Daemon):
    """``fsobj.bench_null``: the binding alone (pyfuse3 on trio, files in memory); small files only."""

    def __init__(self, root: Path) -> None:
        super().__init__("null", root)

    def mount(self) -> None:
        super().mount()
        self._start([sys.executable, "-m", "fsobj.bench_null", str(self.mnt)])

    def unmount(self) -> None:
        self._stop(["fusermount3", "-u", str(self.mnt)])


class Ceiling(Daemon):
    """``fsobj.bench_ceiling``: the least work of a cold read of fsobj's format; cold reads only.
    Its blobs are sealed from the round's big file, untimed, in place of the write."""

    def __init__(self, root: Path) -> None:
        super().__init__("ceiling", root)
        self.blobs = self.root / "blobs"

    def seal(self, src: Path) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(self.blobs, ignore_errors=True)
        subprocess.run(
            [sys.executable, "-m", "fsobj.bench_ceiling", "make", str(src), str(self.blobs)],
            env=self.env,
            cwd=self.root,
            check=True,
        )

    def mount(self) -> None:
        super().mount()
        self._start([sys.executable, "-m", "fsobj.bench_ceiling", "mount", str(self.blobs), str(self.mnt)])

    def unmount(self) -> None:
        self._stop(["fusermount3", "-u", str(self.mnt)])


def _vm_hwm_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _tree_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def _timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _measured(t: Target, fn: Callable[[], object]) -> tuple[float, float | None]:
    """Seconds ``fn`` took, and the CPU seconds ``t``'s daemon spent meanwhile (None: none)."""
    before = t.cpu_s()
    secs = _timed(fn)
    after = t.cpu_s()
    return secs, None if before is None or after is None else after - before


def _sh(cmd: str) -> None:
    subprocess.run(["sh", "-c", cmd], check=True, stdout=subprocess.DEVNULL)


class MountBench:
    def __init__(
        self,
        base: Path,
        log: TextIO,
        size_mib: int,
        small_files: int,
        dir_entries: int,
        versions: int,
        rss_size_mib: int,
    ) -> None:
        self.base = base
        self.log = log
        self.size_mib = size_mib
        self.small_files = small_files
        self.dir_entries = dir_entries
        self.versions = versions
        self.rss_size_mib = rss_size_mib

    def say(self, msg: str) -> None:
        print(f"bench --mount: {msg}", file=self.log, flush=True)

    def round(
        self, targets: list[Target], src: Path, extras: bool
    ) -> tuple[dict[str, dict[str, Any]], dict[str, list[float]]]:
        """One round on every target, in the order given; ``extras``: also the fsobj-only
        figures. The big file is written on each target, then read cold on each target in
        turn, ``COLD_READS`` times over (a ratio compares reads seconds apart, not minutes:
        a slow spell of a shared machine then hits both), then the rest runs per target.
        Returns the figures (a cold read: the median of its reads) and every cold read."""
        out: dict[str, dict[str, Any]] = {t.name: {} for t in targets}
        files = [t for t in targets if not isinstance(t, NullFs)]  # it holds files in memory
        for t in files:
            if isinstance(t, Ceiling):
                self.say(f"{t.name}: sealing {self.size_mib} MiB (untimed)")
                t.seal(src)
            else:
                out[t.name].update(self.write_big(t, src))
        reads: dict[str, list[float]] = {t.name: [] for t in files}
        read_cpu: dict[str, list[float]] = {t.name: [] for t in files}
        for _ in range(COLD_READS):
            for t in files:
                rate, cpu = self.read_cold(t)
                reads[t.name].append(rate)
                if cpu is not None:
                    read_cpu[t.name].append(cpu)
        for t in files:
            out[t.name]["seq_read_cold_MiB_s"] = round(statistics.median(reads[t.name]), 1)
            if read_cpu[t.name]:
                out[t.name]["seq_read_cold_cpu_s_per_GiB"] = round(statistics.median(read_cpu[t.name]), 2)
        for t in targets:
            if not isinstance(t, Ceiling):  # it serves the one big file, read-only
                out[t.name].update(self.rest(t, extras, out[t.name].get("seq_write_MiB_s")))
        return out, reads

    def write_big(self, t: Target, src: Path) -> dict[str, float]:
        """MiB/s of ``cp`` of the big file onto ``t`` and ``sync`` of it, and the CPU its
        daemon spent per GiB."""
        self.say(f"{t.name}: sequential write of {self.size_mib} MiB")
        t.mount()
        try:
            t.work.mkdir(exist_ok=True)
            _drop_caches()
            secs, cpu = _measured(t, lambda: _sh(f"cp '{src}' '{t.work / BIG}' && sync '{t.work / BIG}'"))
        finally:
            t.unmount()
        out = {"seq_write_MiB_s": round(self.size_mib / secs, 1)}
        if cpu is not None:
            out["seq_write_cpu_s_per_GiB"] = round(cpu * 1024 / self.size_mib, 2)
        return out

    def read_cold(self, t: Target) -> tuple[float, float | None]:
        """MiB/s of ``cat`` of the big file on a fresh mount, with the page cache dropped,
        and the CPU seconds its daemon spent per GiB (None: no daemon)."""
        self.say(f"{t.name}: cold read of {self.size_mib} MiB")
        _drop_caches()
        t.mount()
        try:
            secs, cpu = _measured(t, lambda: _sh(f"cat '{t.work / BIG}' > /dev/null"))
        finally:
            t.unmount()
        return round(self.size_mib / secs, 1), None if cpu is None else cpu * 1024 / self.size_mib

    def rest(self, t: Target, extras: bool, write_MiB_s: float | None) -> dict[str, Any]:
        """The 4 KiB edit of the big file (then removed; ``write_MiB_s``: how fast it was
        written), the small files, and with ``extras`` the fsobj-only figures."""
        out: dict[str, Any] = {}
        t.mount()
        try:
            if write_MiB_s:
                dst = t.work / BIG
                out.update(self.edit(t, dst, self.size_mib / write_MiB_s))
                os.unlink(dst)
            self.say(f"{t.name}: small files")
            out.update(self.small(t))
            if not isinstance(t, NullFs) and shutil.which("rsync"):
                out.update(self.rsync(t.work))
            if extras and isinstance(t, Fsobj) and self.versions:
                out.update(self.version_listing(t))
        finally:
            t.unmount()
        if extras and isinstance(t, Fsobj) and self.rss_size_mib:
            out.update(self.rss(t))
        return out

    def edit(self, t: Target, dst: Path, t_write: float) -> dict[str, Any]:
        """4 KiB overwritten in the middle of the big file, then fsync: the time, its share
        of the time the whole file took to write, and (fsobj) the bytes the store grew by."""
        self.say(f"{t.name}: 4 KiB edit in the middle of {self.size_mib} MiB")
        grown = _tree_bytes(t.store) if isinstance(t, Fsobj) else 0
        mid = self.size_mib * MIB // 2 + 12345

        def edit() -> None:
            fd = os.open(dst, os.O_WRONLY)
            try:
                os.pwrite(fd, os.urandom(4096), mid)
                os.fsync(fd)
            finally:
                os.close(fd)

        t_edit = _timed(edit)
        out: dict[str, Any] = {"edit_4k_s": round(t_edit, 3), "edit_4k_share_of_write": round(t_edit / t_write, 3)}
        if isinstance(t, Fsobj):
            out["edit_4k_store_grew_KiB"] = round((_tree_bytes(t.store) - grown) / 1024)
        return out

    def small(self, t: Target) -> dict[str, Any]:
        """Creating, listing, stat-ing, reading and removing 4 KiB files: rates, and for
        creating, ``ls -l`` and ``rm -r`` the CPU the daemon spent per file or entry
        (round trips cost a FUSE daemon CPU whatever the disk does, so these move less
        from run to run than the rates)."""
        work = t.work
        d = work / "small"
        d.mkdir()
        # every file has its own bytes: shared content would let fsobj store one chunk for
        # all of them (and read it from one cached blob), which no real tree of files does
        seed = os.urandom(4088)

        def create(n: int, start: int = 0) -> None:
            for i in range(start, start + n):
                with open(d / f"f{i:06d}", "wb") as f:
                    f.write(i.to_bytes(8, "little") + seed)

        # each phase ends with fsync of the directory, so work a filesystem defers (fsobj's
        # group commit, for one) is counted where it was caused, not in the next phase
        t_create, cpu_create = _measured(t, lambda: (create(self.small_files), fsync_dir(d)))
        if self.dir_entries > self.small_files:
            create(self.dir_entries - self.small_files, self.small_files)
            fsync_dir(d)
        t_ls, cpu_ls = _measured(t, lambda: _sh(f"ls -l '{d}'"))
        names = sorted(os.listdir(d))
        assert len(names) == self.dir_entries
        t_stat = _timed(lambda: [os.stat(d / n) for n in names])

        def read_all() -> None:
            for n in names:
                with open(d / n, "rb") as f:
                    f.read()

        t_read = _timed(read_all)
        t_rm, cpu_rm = _measured(t, lambda: (_sh(f"rm -r '{d}'"), fsync_dir(work)))
        n = self.dir_entries
        out: dict[str, Any] = {
            "create_4k_files_per_s": round(self.small_files / t_create),
            "ls_l_entries_per_s": round(n / t_ls),
            "stat_per_s": round(n / t_stat),
            "read_4k_files_per_s": round(n / t_read),
            "rm_r_entries_per_s": round(n / t_rm),
        }
        if cpu_create is not None and cpu_ls is not None and cpu_rm is not None:
            out["create_4k_cpu_us_per_file"] = round(cpu_create / self.small_files * 1e6)
            out["ls_l_cpu_us_per_entry"] = round(cpu_ls / n * 1e6)
            out["rm_r_cpu_us_per_entry"] = round(cpu_rm / n * 1e6)
        return out

    def rsync(self, work: Path) -> dict[str, Any]:
        """``rsync -a`` of a tree of ``small_files`` 4 KiB files (modes and mtimes of their
        own) into the target, then fsync of the directory: files per second. rsync writes
        each file to a temporary name, sets its mode and mtime after closing it and
        renames it, which is not the work of ``cp``."""
        src = self.base / "rsync-src"
        if not src.exists():
            seed = os.urandom(4088)
            for i in range(self.small_files):
                f = src / f"d{i % 20:02d}" / f"f{i:06d}"
                f.parent.mkdir(parents=True, exist_ok=True)
                f.write_bytes(i.to_bytes(8, "little") + seed)
                f.chmod(0o640 if i % 2 else 0o600)
                os.utime(f, ns=(1_600_000_000_000_000_000 + i, 1_600_000_000_000_000_000 + i))
        self.say(f"rsync -a of {self.small_files} files")
        dst = work / "rsync"
        t = _timed(lambda: (_sh(f"rsync -a '{src}/' '{dst}/'"), fsync_dir(dst)))
        _sh(f"rm -r '{dst}'")
        return {"rsync_files_per_s": round(self.small_files / t)}

    def version_listing(self, t: Fsobj) -> dict[str, Any]:
        self.say(f"fsobj: a file with {self.versions} versions")
        f = t.work / "many-versions.txt"
        for i in range(self.versions):
            f.write_text(f"version {i}\n")
        vdir = t.mnt / "bench" / ".versions" / "many-versions.txt"
        t_ls = _timed(lambda: _sh(f"ls -l '{vdir}'"))
        count = len(os.listdir(vdir))
        return {"versions_of_one_file": count, "ls_versions_s": round(t_ls, 3)}

    def rss(self, t: Fsobj) -> dict[str, Any]:
        self.say(f"fsobj: daemon peak RSS copying {self.rss_size_mib} MiB")
        src = self.base / "rss.bin"
        _make_file(src, self.rss_size_mib * MIB, b"rss")
        t.hwm_kib = 0
        t.mount()
        try:
            _sh(f"cp '{src}' '{t.work}/rss.bin' && sync '{t.work}/rss.bin'")
        finally:
            t.unmount()
            src.unlink()
        return {"daemon_peak_rss_MiB_copying_big_file": t.peak_rss_mib(), "rss_file_MiB": self.rss_size_mib}


TARGETS_MOUNT = [
    ("seq_write_MiB_s", ">=", 1.0),
    ("seq_read_cold_MiB_s", ">=", 1.0),
    ("create_4k_files_per_s", ">=", 0.5),
    ("ls_l_entries_per_s", ">=", 0.5),
    ("stat_per_s", ">=", 0.5),
    ("read_4k_files_per_s", ">=", 0.5),
    ("rm_r_entries_per_s", ">=", 0.5),
]


def run(
    workdir: Path | None,
    log: TextIO,
    size_mib: int = 1024,
    small_files: int = 2000,
    dir_entries: int = 10_000,
    versions: int = 1000,
    rss_size_mib: int = 4096,
    rounds: int = 3,
) -> dict[str, Any]:
    """The work in ``rounds`` rounds, each running every target in turn (so a slow spell
    of a shared machine hits all of them alike); a figure is the median over the rounds,
    a ratio the median of the ratios measured within one round."""
    base = Path(os.path.realpath(workdir or Path.cwd())) / f"fsobj-bench-mount-{os.getpid()}"
    base.mkdir()
    bench = MountBench(base, log, size_mib, small_files, dir_entries, versions, rss_size_mib)
    targets: list[Target] = [Plain("plain", base / "plain")]
    if shutil.which("gocryptfs"):
        targets.append(Gocryptfs(base / "gocryptfs"))
    targets += [NullFs(base / "null"), Ceiling(base / "ceiling"), Fsobj(base / "fsobj")]
    per_round: list[dict[str, dict[str, Any]]] = []
    cold_reads: list[dict[str, list[float]]] = []
    try:
        src = base / "src.bin"
        for r in range(rounds):
            bench.say(f"round {r + 1} of {rounds}")
            # other bytes each round: fsobj keeps the chunks of the removed file (its history),
            # and would otherwise store none of them again
            _make_file(src, size_mib * MIB, f"mount bench round {r + 1}".encode())
            # each round starts with another target, so none always follows the others' work
            # (on ext4 without a journal, creates are slow for minutes after mass deletions nearby)
            order = targets[r % len(targets) :] + targets[: r % len(targets)]
            done, reads = bench.round(order, src, extras=r == rounds - 1)
            per_round.append({t.name: done[t.name] for t in targets})
            cold_reads.append(reads)
    finally:
        for t in targets:
            if os.path.ismount(t.mnt):
                subprocess.run(["fusermount3", "-u", "-z", str(t.mnt)], check=False)
            if t.proc is not None and t.proc.poll() is None:
                t.proc.kill()
        shutil.rmtree(base, ignore_errors=True)
    results = {t.name: _medians([rr[t.name] for rr in per_round]) for t in targets}
    ratios = _ratios(per_round, "fsobj")
    return {
        "mount": results,
        "ratios": ratios,
        # what the binding allows: null's small-file figures, the ceiling's cold read
        "binding_ratios": {**_ratios(per_round, "null"), **_ratios(per_round, "ceiling")},
        "rounds": per_round,
        "cold_reads": cold_reads,
        "mount_targets": _check(results, ratios),
    }


def _medians(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    keys = [k for r in rounds for k in r]
    return {k: statistics.median(r[k] for r in rounds if k in r) for k in dict.fromkeys(keys)}


COMPARED = [*(key for key, _, _ in TARGETS_MOUNT), "rsync_files_per_s"]  # figures with a ratio (no target for rsync)


def _ratios(per_round: list[dict[str, dict[str, Any]]], name: str) -> dict[str, dict[str, float]]:
    """Per figure: ``name``/gocryptfs within each round, and their median, min and max."""
    out: dict[str, dict[str, float]] = {}
    for key in COMPARED:
        rs = [
            r[name][key] / r["gocryptfs"][key]
            for r in per_round
            if "gocryptfs" in r and r["gocryptfs"].get(key) and key in r.get(name, {})
        ]
        if rs:
            out[key] = {"median": round(statistics.median(rs), 2), "min": round(min(rs), 2), "max": round(max(rs), 2)}
    return out


def _check(results: dict[str, dict[str, Any]], ratios: dict[str, dict[str, float]]) -> list[dict[str, Any]]:
    out = []
    fs = results.get("fsobj", {})
    for key, _, target in TARGETS_MOUNT:
        if key in ratios:
            ratio = ratios[key]["median"]
            out.append(
                {
                    "figure": f"mount.{key} vs gocryptfs",
                    "value": ratio,
                    "target": f">= {target}",
                    "met": ratio >= target,
                }
            )
    if "ls_versions_s" in fs:
        out.append(
            {
                "figure": "mount.ls_versions_s",
                "value": fs["ls_versions_s"],
                "target": "< 0.5",
                "met": fs["ls_versions_s"] < 0.5,
            }
        )
    if "edit_4k_share_of_write" in fs:
        v = fs["edit_4k_share_of_write"]
        out.append({"figure": "mount.edit_4k_share_of_write", "value": v, "target": "< 0.05", "met": v < 0.05})
    if "daemon_peak_rss_MiB_copying_big_file" in fs:
        v = fs["daemon_peak_rss_MiB_copying_big_file"]
        out.append({"figure": "mount.daemon_peak_rss_MiB", "value": v, "target": "< 300", "met": v < 300})
    return out


def _span(q: dict[str, float]) -> str:
    return f"{q['median']:.2f} ({q['min']:.2f}-{q['max']:.2f})"


def table(result: dict[str, Any]) -> str:
    results = result["mount"]
    ratios = result.get("ratios", {})
    binding = result.get("binding_ratios", {})
    names = list(results)
    keys = list(next(iter(results.values())))
    for r in results.values():
        keys += [k for k in r if k not in keys]
    width = max(len(k) for k in keys) + 2
    rounds = len(result.get("rounds", [])) or 1
    lines = [
        f"medians of {rounds} round(s); ratio: median of the per-round ratios (min-max)",
        f"{'figure':<{width}}" + "".join(f"{n:>14}" for n in names) + "   fsobj/gocryptfs   null or ceiling/gocryptfs",
    ]
    for k in keys:
        vals = [results[n].get(k) for n in names]
        ratio = "".join(f"{_span(q[k]) if k in q else '':<18}" for q in (ratios, binding)).rstrip()
        lines.append(f"{k:<{width}}" + "".join(f"{'' if v is None else v!s:>14}" for v in vals) + f"   {ratio}")
    for r, reads in enumerate(result.get("cold_reads", []), 1):
        each = "; ".join(f"{n} {' '.join(f'{v:g}' for v in vs)}" for n, vs in reads.items())
        lines.append(f"cold reads of round {r}, MiB/s, each: {each}")
    lines.append("")
    for t in result["mount_targets"]:
        lines.append(f"{t['figure']:<44} {t['value']!s:>10}  {t['target']:<8} {'yes' if t['met'] else 'NO'}")
    return "\n".join(lines)
