"""The command line, driven as a user drives it: subprocesses, real files, exit codes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import blobfiles
import pytest

from fsobj import errors

PASS = "cli-test-passphrase"


class Cli:
    def __init__(self, tmp: Path, name: str = "alice") -> None:
        self.tmp = tmp
        self.store = tmp / "store"
        self.ident = tmp / f"{name}.json"
        self.env = dict(os.environ, FSOBJ_STORE=str(self.store), FSOBJ_IDENTITY=str(self.ident), FSOBJ_PASSPHRASE=PASS)

    def run(
        self, *args: str, input: bytes | None = None, env: dict[str, str] | None = None, expect: int = 0
    ) -> subprocess.CompletedProcess[bytes]:
        proc = subprocess.run(
            [sys.executable, "-m", "fsobj", *args], input=input, env=env or self.env, capture_output=True, timeout=120
        )
        assert proc.returncode == expect, (
            f"fsobj {' '.join(args)} exited {proc.returncode}, expected {expect}\n"
            f"stdout: {proc.stdout[-2000:]!r}\nstderr: {proc.stderr[-2000:]!r}"
        )
        return proc

    def json(self, *args: str) -> object:
        return json.loads(self.run(*args, "--json").stdout)

    def other(self, name: str) -> Cli:
        """Another identity on the same store."""
        c = Cli(self.tmp, name)
        c.run("identity", "create", "--name", name)
        return c


@pytest.fixture()
def cli(tmp_path: Path) -> Cli:
    c = Cli(tmp_path)
    c.run("identity", "create", "--name", "alice")
    c.run("init", str(c.store))
    c.run("partition", "create", "docs")
    return c


def test_put_get_ls_log_rm_round_trip(cli: Cli, tmp_path: Path) -> None:
    src = tmp_path / "report.txt"
    src.write_bytes(b"version one\n")
    v1 = cli.json("put", "docs", "reports/q1.txt", str(src), "--header", "owner=finance")
    src.write_bytes(b"version two\n")
    v2 = cli.json("put", "docs", "reports/q1.txt", str(src))
    assert v2["base_hash"] == v1["absolute_hash"] and v2["previous_hash"] == v1["absolute_hash"]
    assert v2["headers"] == [["owner", "finance"]], "user headers carry over when not given"
    cli.run("put", "docs", "a.txt", "-", input=b"from stdin")

    assert cli.run("get", "docs", "reports/q1.txt").stdout == b"version two\n"
    out = tmp_path / "out.txt"
    cli.run("get", "--hash", v1["absolute_hash"], "--exact", "-o", str(out))
    assert out.read_bytes() == b"version one\n"
    assert cli.run("get", "--hash", v1["base_hash"]).stdout == b"version two\n", "baseHash gives the latest"

    assert [e["sort_key"] for e in cli.json("ls", "docs")] == ["a.txt", "reports/q1.txt"]
    assert [e["sort_key"] for e in cli.json("ls", "docs", "--prefix", "rep")] == ["reports/q1.txt"]
    assert [e["sort_key"] for e in cli.json("ls", "docs", "--after", "a.txt")] == ["reports/q1.txt"]

    cli.run("rm", "docs", "reports/q1.txt")
    proc = cli.run("get", "docs", "reports/q1.txt", expect=errors.DeletedError.exit_code)
    assert b"deleted" in proc.stderr
    log = cli.json("log", "docs", "reports/q1.txt")
    assert [(e["version"], e["tombstone"]) for e in log] == [(1, False), (2, False), (3, True)]
    assert cli.run("get", "--hash", log[1]["absolute_hash"]).stdout == b"version two\n", "history stays readable"
    assert [e["sort_key"] for e in cli.json("ls", "docs")] == ["a.txt"]
    cli.run("verify")


def test_checksum_of_a_local_file_is_the_checksum_of_the_object(cli: Cli, tmp_path: Path) -> None:
    """`fsobj checksum` needs no store or key and prints what `get --info` shows (for a file,
    stdin, an empty file, a multi-block file); a missing file exits 1."""
    files = {"empty": b"", "small": b"hello\n", "big": os.urandom(2 * 1024 * 1024 + 17)}
    bare = {k: v for k, v in os.environ.items() if not k.startswith("FSOBJ_")}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        cli.run("put", "docs", name, str(tmp_path / name))
        info = json.loads(cli.run("get", "docs", name, "--info").stdout)
        assert info["checksum_type"] == "blake3-blocks-1m"
        line = cli.run("checksum", str(tmp_path / name), env=bare).stdout.decode()
        assert line == f"{info['checksum']}  {tmp_path / name}\n"
        assert cli.run("checksum", "-", input=data, env=bare).stdout.decode() == f"{info['checksum']}  -\n"
    proc = cli.run("checksum", str(tmp_path / "missing"), env=bare, expect=1)
    assert b"No such file" in proc.stderr


def test_purge_frees_blobs_and_gc_keeps_live_data(cli: Cli, tmp_path: Path) -> None:
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(12 * 1024 * 1024))  # at least 3 chunks of at most 4 MiB
    cli.run("put", "docs", "big", str(big))
    cli.run("put", "docs", "keep", "-", input=b"keep me")
    before = blobfiles.stored(cli.store)
    cli.run("purge", "--yes", "docs", "big")
    after = blobfiles.stored(cli.store)
    assert after < before and len(before - after) > 2
    cli.run("get", "docs", "big", expect=errors.NotFoundError.exit_code)
    cli.run("gc", "--grace", "0")
    assert cli.run("get", "docs", "keep").stdout == b"keep me"
    cli.run("verify")


def test_error_exit_codes(cli: Cli, tmp_path: Path) -> None:
    cli.run("get", "docs", "nope", expect=errors.NotFoundError.exit_code)
    cli.run("ls", "nopartition", expect=errors.NotFoundError.exit_code)
    cli.run("put", "docs", "", "-", input=b"x", expect=errors.UsageError.exit_code)
    bad_utf8 = os.fsdecode(b"bad\xff")
    cli.run("put", "docs", bad_utf8, "-", input=b"x", expect=errors.UsageError.exit_code)
    cli.run("init", str(cli.store), expect=errors.ExistsError.exit_code)
    cli.run("partition", "create", "docs", expect=errors.ExistsError.exit_code)
    wrong = dict(cli.env, FSOBJ_PASSPHRASE="wrong")
    proc = cli.run("ls", "docs", env=wrong, expect=errors.IdentityError.exit_code)
    assert b"passphrase" in proc.stderr
    missing = dict(cli.env, FSOBJ_IDENTITY=str(tmp_path / "none.json"))
    cli.run("ls", "docs", env=missing, expect=errors.IdentityError.exit_code)
    notastore = dict(cli.env, FSOBJ_STORE=str(tmp_path))
    proc = cli.run("ls", "docs", env=notastore, expect=errors.FormatError.exit_code)
    assert b"not an fsobj store" in proc.stderr
    marker = cli.store / "fsobj-store.json"
    doc = json.loads(marker.read_text())
    marker.write_text(json.dumps(doc | {"version": 99}))
    proc = cli.run("ls", "docs", expect=errors.FormatError.exit_code)
    assert b"version 99" in proc.stderr
    marker.write_text(json.dumps(doc))
    cli.run("ls", "docs")
    exit_table = cli.run("exit-codes").stdout.decode()
    for code in errors.EXIT_CODES:
        assert f"{code:>4}  " in exit_table


def test_optimistic_lock_conflict_names_current_version(cli: Cli) -> None:
    v1 = cli.json("put", "docs", "k", "-")  # empty payload from empty stdin
    v2 = cli.json("put", "docs", "k", "-", "--expect", v1["absolute_hash"])
    proc = cli.run("put", "docs", "k", "-", "--expect", v1["absolute_hash"], expect=errors.ConflictError.exit_code)
    assert v2["absolute_hash"].encode() in proc.stderr
    assert len(cli.json("log", "docs", "k")) == 2, "nothing written by the failed update"
    cli.run("rm", "docs", "k", "--expect", v1["absolute_hash"], expect=errors.ConflictError.exit_code)


def test_sharing_read_then_write_then_revoke(cli: Cli, tmp_path: Path) -> None:
    bob = cli.other("bob")
    bob_pub = tmp_path / "bob.pub"
    bob.run("identity", "export", "-o", str(bob_pub))
    cli.run("put", "docs", "shared.txt", "-", input=b"for bob")
    alice_id = cli.json("identity", "show")["user_id"]  # type: ignore[index]
    bob.run("ls", "docs", expect=errors.NotFoundError.exit_code)
    cli.run("partition", "grant", "docs", "--to", str(bob_pub), "--read")
    ref = f"docs@{alice_id[:8]}"
    assert bob.run("get", ref, "shared.txt").stdout == b"for bob"
    bob.run("put", ref, "x", "-", input=b"no", expect=errors.AccessDeniedError.exit_code)
    cli.run("partition", "grant", "docs", "--to", str(bob_pub), "--write")
    bob.run("put", ref, "from-bob.txt", "-", input=b"hi alice")
    info = json.loads(cli.run("get", "docs", "from-bob.txt", "--info").stdout)
    assert info["author"] == bob.json("identity", "show")["user_id"]  # type: ignore[index]
    cli.run("partition", "revoke", "docs", "--from", "bob")
    cli.run("put", "docs", "after.txt", "-", input=b"secret")
    bob.run("get", ref, "after.txt", expect=errors.NotFoundError.exit_code)  # no longer a member: sees nothing
    assert cli.run("get", "docs", "from-bob.txt").stdout == b"hi alice"
    cli.run("verify")


def test_index_rebuild_brings_everything_back(cli: Cli) -> None:
    for i in range(5):
        cli.run("put", "docs", f"k{i}", "-", input=f"v{i}".encode())
    cli.run("put", "docs", "k0", "-", input=b"v0 again")
    cli.run("rm", "docs", "k1")
    before_ls = cli.json("ls", "docs", "--all")
    before_log = cli.json("log", "docs", "k0")
    (cli.store / "index.sqlite").unlink()
    for extra in ("index.sqlite-wal", "index.sqlite-shm"):
        (cli.store / extra).unlink(missing_ok=True)
    proc = cli.run("ls", "docs", expect=errors.NotFoundError.exit_code)
    assert b"rebuild-index" in proc.stderr
    cli.run("gc", expect=errors.UsageError.exit_code)  # refuses on an incomplete index
    cli.run("verify", "--rebuild-index")
    assert cli.json("ls", "docs", "--all") == before_ls
    assert cli.json("log", "docs", "k0") == before_log
    cli.run("gc", "--grace", "0")
    assert cli.run("get", "docs", "k0").stdout == b"v0 again"


def test_tampered_blob_is_an_integrity_error(cli: Cli) -> None:
    cli.run("put", "docs", "t", "-", input=b"A" * 1000)
    info = json.loads(cli.run("get", "docs", "t", "--info").stdout)
    blobfiles.flip(cli.store, bytes.fromhex(info["absolute_hash"]), -5)
    proc = cli.run("get", "docs", "t", expect=errors.IntegrityError.exit_code)
    assert info["absolute_hash"].encode() in proc.stderr and proc.stdout == b""
    cli.run("verify", expect=errors.VerifyFailed.exit_code)


def test_killed_put_leaves_a_consistent_store(cli: Cli) -> None:
    cli.run("put", "docs", "committed", "-", input=b"safe")
    proc = subprocess.Popen(
        [sys.executable, "-m", "fsobj", "put", "docs", "half", "-"],
        env=cli.env,
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    assert proc.stdin is not None
    block = os.urandom(1024 * 1024)
    for _ in range(24):
        proc.stdin.write(block)
    proc.stdin.flush()
    deadline = time.monotonic() + 30
    blobs = cli.store / "blobs"
    while sum(1 for p in blobs.rglob("*") if p.is_file()) < 10 and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    cli.run("get", "docs", "half", expect=errors.NotFoundError.exit_code)
    assert cli.run("get", "docs", "committed").stdout == b"safe"
    cli.run("verify")
    gc = cli.json("gc", "--grace", "0")
    assert gc["deleted"] >= 1  # type: ignore[index]
    cli.run("verify")


def test_bench_refuses_a_scratch_directory_that_does_not_exist(tmp_path: Path) -> None:
    missing = tmp_path / "not-there"
    proc = subprocess.run(
        [sys.executable, "-m", "fsobj", "bench", "--mount", "--dir", str(missing)], capture_output=True, timeout=60
    )
    assert proc.returncode == 2
    assert b"does not exist" in proc.stderr and not missing.exists()


def test_bench_reports_figures_and_targets(tmp_path: Path) -> None:
    env = dict(os.environ)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "fsobj",
            "bench",
            "--dir",
            str(tmp_path),
            "--size-mib",
            "4",
            "--objects",
            "300",
            "--rss-size-mib",
            "0",
            "--feed-messages",
            "200",
            "--json",
        ],
        env=env,
        capture_output=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["big_file"]["identical_reput_new_chunk_blobs"] == 0
    assert result["big_file"]["first_put_new_blob_bytes"] >= 4 * 1024 * 1024
    assert {t["figure"] for t in result["targets"]} >= {
        "big_file.put_vs_cp",
        "many.list_1000_cold_ms",
        "feeds.wakeup_latency_ms_median",
    }
    assert result["feeds"]["wakeup_samples"] == 60
    assert list(tmp_path.iterdir()) == [], "bench cleans up its scratch directory"


def test_bench_daemons_run_the_benchs_own_code_whatever_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``python -m fsobj`` imports the working directory's ``fsobj`` first: started from
    a directory holding another ``fsobj`` (a checkout, a copy under test), the bench's
    daemon must still run the code of the bench that started it."""
    from fsobj import bench_mount

    decoy = tmp_path / "decoy"
    (decoy / "fsobj").mkdir(parents=True)
    (decoy / "fsobj" / "__init__.py").write_text("raise SystemExit('the decoy fsobj ran')\n")
    (decoy / "fsobj" / "__main__.py").write_text("raise SystemExit('the decoy fsobj ran')\n")
    monkeypatch.chdir(decoy)
    target = bench_mount.Fsobj(Path("target"))  # relative: the daemon gets absolute paths
    assert target.root == decoy / "target"
    try:
        target.mount()  # a mount that does not come up is unmounted and killed by mount() itself
        assert os.path.ismount(target.mnt)
        (target.work / "f").write_bytes(b"written through the daemon")
        assert (target.work / "f").read_bytes() == b"written through the daemon"
    finally:
        if target.proc is not None:
            target.unmount()
        if os.path.ismount(target.mnt):
            subprocess.run(["fusermount3", "-u", "-z", str(target.mnt)], check=False)
    assert not os.path.ismount(target.mnt)
    # the daemon's log and staging stay in the run's directory, not in the user's cache
    assert "mounted" in (target.root / "cache" / "mount.log").read_text()


def test_a_bench_daemon_that_does_not_come_up_is_killed_and_unmounted(tmp_path: Path) -> None:
    """A daemon that mounts nothing in time, or exits, leaves neither a process nor a mount."""
    from fsobj import bench_mount

    target = bench_mount.NullFs(tmp_path / "t")
    target.mount()  # makes the mount point and the scratch directories
    target.unmount()
    pid_file = tmp_path / "pid"
    never_mounts = f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(600)"
    with pytest.raises(RuntimeError, match="did not come up"):
        target._start([sys.executable, "-c", never_mounts], timeout=5.0)
    assert target.proc is None
    assert not os.path.exists(f"/proc/{pid_file.read_text()}"), "the daemon was killed and reaped"
    assert not os.path.ismount(target.mnt)


def test_the_cold_read_ceiling_serves_sealed_chunks_exactly_and_refuses_a_tampered_one(tmp_path: Path) -> None:
    from fsobj import bench_ceiling

    src = tmp_path / "src.bin"
    size = 20 * bench_ceiling.CHUNK + 12345  # more chunks than arena slots, and a short last one
    src.write_bytes(os.urandom(size))
    blobs, mnt = tmp_path / "blobs", tmp_path / "mnt"
    mnt.mkdir()
    made = subprocess.run([sys.executable, "-m", "fsobj.bench_ceiling", "make", str(src), str(blobs)], timeout=60)
    assert made.returncode == 0
    assert len(list((blobs / "chunks").iterdir())) == 21

    def mounted(check: Callable[[Path], None]) -> None:
        daemon = subprocess.Popen([sys.executable, "-m", "fsobj.bench_ceiling", "mount", str(blobs), str(mnt)])
        try:
            deadline = time.monotonic() + 30
            while not os.path.ismount(mnt):
                assert daemon.poll() is None and time.monotonic() < deadline, "the ceiling did not mount"
                time.sleep(0.05)
            check(mnt / "big.bin")
        finally:
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)], check=False)
            try:
                daemon.wait(timeout=10)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait()

    def reads_back(big: Path) -> None:
        tail = subprocess.run(["tail", "-c", "3000000", str(big)], capture_output=True, timeout=60)
        assert tail.returncode == 0 and tail.stdout == src.read_bytes()[-3_000_000:]  # the end first: out of order
        whole = subprocess.run(["cat", str(big)], capture_output=True, timeout=60)
        assert whole.returncode == 0 and whole.stdout == src.read_bytes()  # across the arena's end too

    mounted(reads_back)
    chunk = blobs / "chunks" / "00000002"
    data = bytearray(chunk.read_bytes())
    data[5000] ^= 1
    chunk.write_bytes(bytes(data))

    def refuses(big: Path) -> None:
        got = subprocess.run(["cat", str(big)], capture_output=True, timeout=60)
        assert got.returncode == 1 and b"Input/output error" in got.stderr
        assert len(got.stdout) <= 2 * bench_ceiling.CHUNK and src.read_bytes().startswith(got.stdout)

    mounted(refuses)
    assert not os.path.ismount(mnt)


def test_bench_mount_runs_rounds_on_real_mounts_and_cleans_up(tmp_path: Path) -> None:
    # 12 MiB: a file of up to 4 MiB can be a single chunk (the largest, under the store's
    # random chunker seed: 6 seeds in 300 for 3 MiB), and its edit then stores it all again
    size_mib = 12
    small = f"--size-mib {size_mib} --small-files 20 --dir-entries 30 --versions 5 --rss-size-mib 0 --rounds 2"
    proc = subprocess.run(
        [sys.executable, "-m", "fsobj", "bench", "--mount", "--dir", str(tmp_path), *small.split(), "--json"],
        capture_output=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert len(result["rounds"]) == 2
    for r in result["rounds"]:
        assert r["fsobj"]["seq_write_MiB_s"] > 0 and r["plain"]["read_4k_files_per_s"] > 0
        assert r["fsobj"]["edit_4k_s"] > 0 and r["plain"]["edit_4k_share_of_write"] > 0
        assert 0 < r["fsobj"]["edit_4k_store_grew_KiB"] < size_mib * 1024  # the chunks around the edit, not the file
        # the binding alone, in memory: the small-file figures only (not rsync's renames)
        small = {k for k in r["plain"] if k.endswith("_per_s") and not k.startswith(("seq", "rsync"))}
        cpu = {"create_4k_cpu_us_per_file", "ls_l_cpu_us_per_entry", "rm_r_cpu_us_per_entry"}
        assert set(r["null"]) == small | cpu
        if shutil.which("rsync"):
            assert r["fsobj"]["rsync_files_per_s"] > 0 and r["plain"]["rsync_files_per_s"] > 0
        assert all(r["null"][k] > 0 for k in small)
        # the CPU of the daemons (a plain directory has none): a 12 MiB write costs fsobj's
        # daemon tens of milliseconds; the other figures may round to 0 at these sizes
        assert not any("cpu" in k for k in r["plain"])
        assert cpu | {"seq_write_cpu_s_per_GiB", "seq_read_cold_cpu_s_per_GiB"} <= set(r["fsobj"])
        assert r["fsobj"]["seq_write_cpu_s_per_GiB"] > 0
        assert all(r[name][k] >= 0 for name in ("fsobj", "null") for k in cpu)
        # the cold-read ceiling: its blobs are sealed, not written through it, and it only reads
        assert set(r["ceiling"]) == {"seq_read_cold_MiB_s", "seq_read_cold_cpu_s_per_GiB"}
    # cold reads interleaved across the targets, the round's figure their median
    assert len(result["cold_reads"]) == 2
    for r, reads in zip(result["rounds"], result["cold_reads"], strict=True):
        assert "null" not in reads and {"plain", "ceiling", "fsobj"} <= set(reads)
        for name, each in reads.items():
            assert len(each) == 3 and all(v > 0 for v in each)
            assert r[name]["seq_read_cold_MiB_s"] == round(statistics.median(each), 1)
    fs = result["mount"]["fsobj"]
    assert fs["versions_of_one_file"] == 5  # measured in the last round only
    assert "versions_of_one_file" not in result["rounds"][0]["fsobj"]
    if shutil.which("gocryptfs"):
        q = result["ratios"]["stat_per_s"]
        assert q["min"] <= q["median"] <= q["max"]
        binding = {k for k in result["mount"]["null"] if k.endswith("_per_s")} | {"seq_read_cold_MiB_s"}
        assert set(result["binding_ratios"]) == binding  # null's small files, the ceiling's cold read
        assert "seq_write_cpu_s_per_GiB" in result["mount"]["gocryptfs"]  # its daemon was found
        assert {t["figure"] for t in result["mount_targets"]} >= {"mount.seq_write_MiB_s vs gocryptfs"}
    assert list(tmp_path.iterdir()) == [], "bench cleans up its scratch directory"
    assert str(tmp_path) not in Path("/proc/mounts").read_text()
